"""The attacks of `mjp_hf.evaluation.privacy`: a rank-aware least-squares solver, the textbook analytic attack, the
analytic attack with a total-variation image prior, the optimisation attack and the multi-round attacker.

Every attack sees only what the threat model of `mjp_hf.evaluation.privacy` gives the server: the weights and one
client's batch-1 gradient (or, for the multi-round attacker, the gradients of the same image in several rounds).
Which positions were shuffled is read from the gradient (their position-embedding rows get none), never from the
client's draw.
"""

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from .common import is_mjp_model, patch_grid, unpatchify, uses_unk_position_embedding


POSITION_EMBEDDINGS = "vit.embeddings.position_embeddings"
PATCH_WEIGHT = "vit.embeddings.patch_embeddings.projection.weight"
UNK_POSITION_EMBEDDING = "vit.embeddings.unk_position_embedding"
CLASSIFIER_BIAS = "classifier.bias"
DALR_HEAD = "vit.dalr_head."
# Smoothing of the total variation the prior minimises, in `pixel_values` units: small against a pixel step, large
# enough to keep the objective differentiable for L-BFGS.
TV_SMOOTHING = 1e-3
# A least-squares fit whose relative residual is below this explains the gradient to about float32 precision: no
# shuffled patch disturbed it. Plain steps of the demo models fit to about 1e-8; a jigsawed step whose shuffled
# patches differ leaves 2e-5 or more, so the line sits well between them.
CLEAN_FIT_ERROR = 1e-6


def _trainable(model) -> tuple[list[str], list[torch.nn.Parameter]]:
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    return [name for name, _ in named], [param for _, param in named]


def infer_label(gradients: dict[str, torch.Tensor]) -> torch.Tensor:
    """The label of a batch-1 cross-entropy step: the class whose classifier bias gradient is negative (iDLG)."""
    return gradients[CLASSIFIER_BIAS].argmin().view(1)


def placed_positions(gradients: dict[str, torch.Tensor]) -> torch.BoolTensor:
    """`[N]`: positions whose position-embedding row received a gradient. Rows replaced by the unknown embedding
    in the client's step get exactly none, so the attacker sees which positions were shuffled."""
    norms = gradients[POSITION_EMBEDDINGS][0, 1:].norm(dim=-1)
    return norms > 1e-7 * norms.max().clamp(min=torch.finfo(norms.dtype).tiny)


# ----------------------------------------------------------------------------------------------------------------
# The solver


@dataclass
class LeastSquaresSolution:
    """The minimum-norm least-squares solution `X` `[M, P]` of `A^T X = B`, with `A` `[M, D]` the regressors.

    `rank` is the number of singular values kept; `null_basis` `[M, M - rank]` spans the directions of `X` the
    system does not determine (its `unresolved` dimensions); `tolerance` is the truncation threshold used.
    """

    solution: torch.Tensor
    rank: int
    null_basis: torch.Tensor
    singular_values: torch.Tensor
    tolerance: float

    @property
    def unresolved(self) -> int:
        return self.null_basis.shape[1]


def truncation_tolerance(largest_singular_value: float, shape: tuple[int, int], eps: float) -> float:
    """The smallest singular value told apart from zero, for a `shape` matrix whose entries carry precision `eps`.

    Each entry of a gradient computed in float32 is off by a few float32 eps relative to the largest entries, so
    the matrix is off by a perturbation `E` with `|E|_2 <= |E|_F ~ eps * s_max * sqrt(M * D) <= eps * s_max *
    max(M, D)`; by Weyl's inequality no singular value below that bound can be told apart from zero. This is
    numpy's `matrix_rank` rule with the eps of the precision the gradients were computed in, not the float64 the
    solve runs in: float64's eps would keep rounding noise (a 5e-10 relative singular value, at the demo width, where
    a centred LayerNorm input gradient leaves the 49 regressors in 47 dimensions) and invert it.
    """
    return float(largest_singular_value) * max(shape) * eps


def noise_tolerance(noise_std: float, shape: tuple[int, int]) -> float:
    """The largest singular value of a `shape` matrix of independent N(0, noise_std^2) entries, about
    `noise_std * (sqrt(rows) + sqrt(columns))` (Gordon's bound on its mean): below it a singular value of noisy
    regressors is the noise's, not the signal's (Weyl), and inverting it would amplify the noise."""
    return float(noise_std) * (shape[0] ** 0.5 + shape[1] ** 0.5)


def pruning_perturbation_std(gradients: dict[str, torch.Tensor], prune_ratio: float) -> float:
    """What the attacker knows of the error pruning made in the position-embedding gradient (the regressors it
    inverts): the zeroed entries were each at most `t` in magnitude, `t` the smallest entry still sent, on a share
    `prune_ratio` of the entries, so the error's RMS per entry is at most `t * sqrt(prune_ratio)`; solving below that
    level (`noise_tolerance`) would invert the pruning's error, as it would a noise's."""
    sent = gradients[POSITION_EMBEDDINGS].abs()
    kept = sent[sent > 0]
    if prune_ratio <= 0 or kept.numel() == 0:
        return 0.0
    return float(kept.min()) * prune_ratio**0.5


def solve_least_squares(
    regressors: torch.Tensor, targets: torch.Tensor, eps: float, noise_std: float = 0.0
) -> LeastSquaresSolution:
    """Rank-aware least squares in float64: `X` minimising `|regressors^T X - targets|`, of minimum norm.

    Args:
        regressors: `[M, D]`, one regressor per unknown row of `X` (a token's input gradient).
        targets: `[D, P]` (the patch-embedding weight gradient).
        eps: machine epsilon of the precision the inputs were computed in (see `truncation_tolerance`).
        noise_std: the std of Gaussian noise a defence added to every entry (known to the attacker: the protocol's
            σC); singular values below `noise_tolerance` are dropped too, a truncated-SVD fit to noisy data.

    Works for `M` below, equal to and above `D`: singular values under the tolerance are dropped, and the
    directions of `X` they leave free are returned as `null_basis`.
    """
    matrix = regressors.double().T  # [D, M]
    num_unknowns = matrix.shape[1]
    u, s, vh = torch.linalg.svd(matrix, full_matrices=True)
    tolerance = truncation_tolerance(s.max().item() if s.numel() else 0.0, tuple(matrix.shape), eps)
    tolerance = max(tolerance, noise_tolerance(noise_std, tuple(matrix.shape)))
    rank = int((s > tolerance).sum().item()) if s.numel() and s.max() > 0 else 0
    coefficients = (u[:, :rank].T @ targets.double()) / s[:rank, None]
    solution = vh[:rank].T @ coefficients
    null_basis = vh[rank:num_unknowns].T
    return LeastSquaresSolution(solution, rank, null_basis, s, tolerance)


# ----------------------------------------------------------------------------------------------------------------
# The analytic attacks


@dataclass
class PatchSystem:
    """The linear system of one batch-1 step: `dW = A^T X`.

    A patch token enters the network as `z_i = W x_i + b + p_i`, so the gradient of position-embedding row `p_i` is
    the gradient at that token's input `g_i`, and the patch-embedding weight gradient is `dW = sum_i g_i x_i^T`.
    `regressors` `[M, D]` holds `g_i` of the placed positions (the DALR loss's input-independent part removed) and,
    when some positions were shuffled, the unknown embedding's gradient last (the sum of the shuffled tokens'
    `g_i`: its unknown solves for an average shuffled patch). `targets` is `dW` `[D, P]`.
    """

    regressors: torch.Tensor
    targets: torch.Tensor
    placed: torch.BoolTensor
    has_unk_row: bool
    eps: float
    noise_std: float = 0.0

    @property
    def num_placed(self) -> int:
        return int(self.placed.sum())

    def solve(self) -> LeastSquaresSolution:
        return solve_least_squares(self.regressors, self.targets, self.eps, self.noise_std)

    def fit_error(self, solution: torch.Tensor) -> float:
        residual = self.targets - self.regressors.T @ solution
        return float(residual.norm() / self.targets.norm().clamp(min=torch.finfo(torch.float64).tiny))


def _dalr_gradient(model, placed: torch.BoolTensor, gradients: dict[str, torch.Tensor] | None = None):
    """The DALR loss's gradient on the patch position embeddings `[N, D]`, given which positions were placed, at the
    scale the shared `gradients` carry it (`dalr_scale`; 1 without them)."""
    if model.vit.dalr_head is None:
        return None
    jigsaw_mask = None if placed.all() else (~placed)[None]
    head = [(name, p) for name, p in model.named_parameters() if name.startswith(DALR_HEAD) and p.requires_grad]
    position_embeddings = model.vit.embeddings.position_embeddings
    with torch.enable_grad():
        loss = model.vit.localization_loss(jigsaw_mask)
        grad, *head_grads = torch.autograd.grad(loss, [position_embeddings, *(p for _, p in head)], allow_unused=True)
    scale = 1.0
    if gradients is not None:
        expected = {name: g for (name, _), g in zip(head, head_grads) if g is not None}
        scale = dalr_scale(expected, gradients)
    return grad[0, 1:].detach() * scale


def dalr_scale(expected: dict[str, torch.Tensor], received: dict[str, torch.Tensor]) -> float:
    """The factor by which the shared gradient scales the DALR loss's part: the least-squares fit of the received
    DALR head gradient to the one the attacker computes (the head reads the position embeddings only, never the
    image, so the attacker knows its gradient exactly). 1 on an undefended step; the clipping factor under a clipping
    defence; a noisy estimate of it under noise. Entries the client zeroed (pruning) are left out of the fit; 1 when
    nothing is left to fit."""
    numerator = denominator = 0.0
    for name, reference in expected.items():
        if name not in received:
            continue
        sent = received[name].double().flatten()
        reference = reference.double().flatten().to(sent.device)
        kept = sent != 0
        numerator += float((sent[kept] * reference[kept]).sum())
        denominator += float(reference[kept].square().sum())
    return numerator / denominator if denominator > 0 else 1.0


def patch_system(model, gradients: dict[str, torch.Tensor], noise_std: float = 0.0) -> PatchSystem:
    """The attacker's linear system for a batch-1 gradient (see `PatchSystem`); `noise_std` is the std of the noise
    a defence added to every gradient entry (`solve_least_squares`)."""
    placed = placed_positions(gradients)
    position_grad = gradients[POSITION_EMBEDDINGS][0, 1:]
    eps = torch.finfo(position_grad.dtype).eps
    position_grad = position_grad.double()
    if is_mjp_model(model):
        dalr = _dalr_gradient(model, placed, gradients)
        if dalr is not None:
            position_grad = position_grad - dalr.double()
    regressors = position_grad[placed]
    unk_grad = gradients.get(UNK_POSITION_EMBEDDING)
    has_unk_row = unk_grad is not None and not bool(placed.all())
    if has_unk_row:
        # One more regressor absorbs the shuffled patches' common part (e.g. a plain background), which would
        # otherwise leak into the placed patches.
        regressors = torch.cat((regressors, unk_grad.double().view(1, -1)))
    targets = gradients[PATCH_WEIGHT].double().flatten(1)  # [D, C * ph * pw]
    return PatchSystem(regressors, targets, placed, has_unk_row, eps, float(noise_std))


@dataclass
class AnalyticReconstruction:
    """A reconstruction: `patches` `[N, P]` float64 in the patch embedding's order (`pixel_values` units), the
    `placed` positions `[N]`, the number of `unresolved` dimensions of the linear system (its null space) and its
    `fit_error`, the least-squares residual relative to `dW`: what the shuffled patches left unexplained, which the
    attacker sees (about float32 precision on a plain step)."""

    patches: torch.Tensor
    placed: torch.BoolTensor
    unresolved: int
    rank: int
    fit_error: float = 0.0

    def pixel_values(self, config) -> torch.Tensor:
        grid_size, patch_size = patch_grid(config)
        image_size = (grid_size[0] * patch_size[0], grid_size[1] * patch_size[1])
        return unpatchify(self.patches[None].float(), patch_size, image_size)


def textbook_attack(
    model, gradients: dict[str, torch.Tensor], fill_value: float = 0.0, noise_std: float = 0.0
) -> AnalyticReconstruction:
    """The textbook analytic attack (APRIL, Lu et al. 2022): the minimum-norm least-squares patches at the placed
    positions, `fill_value` at the shuffled ones (0 in `pixel_values` is the normaliser's mean colour). `noise_std`:
    the std of a defence's noise on every gradient entry (`solve_least_squares`)."""
    system = patch_system(model, gradients, noise_std)
    solved = system.solve()
    num_patches = system.placed.shape[0]
    patches = torch.full(
        (num_patches, system.targets.shape[1]), fill_value, dtype=torch.float64, device=system.targets.device
    )
    patches[system.placed] = solved.solution[: system.num_placed]
    return AnalyticReconstruction(
        patches, system.placed, solved.unresolved, solved.rank, system.fit_error(solved.solution)
    )


def _pixel_scale(normalization, num_channels: int, like: torch.Tensor) -> torch.Tensor:
    """`[P]`: the factor from `pixel_values` to pixels of every patch entry (channel-first patch order)."""
    if normalization is None:
        return torch.ones(1, dtype=like.dtype, device=like.device)
    std = torch.tensor(normalization.std, dtype=like.dtype, device=like.device)
    return std.repeat_interleave(like.shape[-1] // num_channels)


def smooth_total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation with a Charbonnier smoothing (`TV_SMOOTHING`), summed over the image."""
    dx = images[..., :, 1:] - images[..., :, :-1]
    dy = images[..., 1:, :] - images[..., :-1, :]
    return (dx.square() + TV_SMOOTHING**2).sqrt().sum() + (dy.square() + TV_SMOOTHING**2).sqrt().sum()


def _residual_directions(system: PatchSystem, solution: torch.Tensor, num_shuffled: int) -> torch.Tensor:
    """`[P, r]`: the patch-space directions a jigsawed step's least-squares error lies in (see `prior_attack`)."""
    targets = system.targets
    if num_shuffled < 2:
        return torch.zeros(targets.shape[1], 0, dtype=targets.dtype, device=targets.device)
    residual = targets - system.regressors.T @ solution  # [D, P]
    _, s, vh = torch.linalg.svd(residual, full_matrices=False)
    scale = torch.linalg.matrix_norm(targets, ord=2).item()
    keep = int((s > truncation_tolerance(scale, tuple(targets.shape), system.eps)).sum())
    return vh[: min(keep, num_shuffled - 1)].T


def _patches_to_image(patches: torch.Tensor, grid_size, patch_size) -> torch.Tensor:
    """`[N, C * ph * pw]` -> `[C, H, W]`: `unpatchify` by a reshape (the same values, several times faster
    through autograd than `fold` on a 224x224 image)."""
    (rows, cols), (height, width) = grid_size, patch_size
    channels = patches.shape[-1] // (height * width)
    grid = patches.reshape(rows, cols, channels, height, width).permute(2, 0, 3, 1, 4)
    return grid.reshape(channels, rows * height, cols * width)


def minimise_total_variation(
    config,
    kept: torch.Tensor,
    placed: torch.BoolTensor,
    *,
    kept_null_basis: torch.Tensor | None = None,
    directions: torch.Tensor | None = None,
    fill: torch.Tensor | None = None,
    normalization=None,
    max_iter: int = 100,
) -> torch.Tensor:
    """The image prior: patches `[N, P]` minimising the smoothed total variation of the image in pixels, over
    the directions the gradient leaves free.

    Args:
        kept: `[M, P]` the least-squares patches at the `placed` positions.
        kept_null_basis: `[M, n]` the system's null space restricted to the placed rows: every column `c` and any
            patch `v` give an equally good fit `kept + c v^T`.
        directions: `[P, r]` patch-space directions along which each placed patch may move on its own (the
            error subspace of a jigsawed step).
        fill: `[P]` the start of the unplaced patches, which the prior inpaints (zeros by default).
    """
    grid_size, patch_size = patch_grid(config)
    num_placed, width = kept.shape
    dtype, device = torch.float64, kept.device
    kept = kept.double()
    num_shuffled = int((~placed).sum())
    if kept_null_basis is None:
        kept_null_basis = torch.zeros(num_placed, 0, dtype=dtype, device=device)
    if directions is None:
        directions = torch.zeros(width, 0, dtype=dtype, device=device)
    if fill is None:
        fill = torch.zeros(width, dtype=dtype, device=device)
    null_coefficients = torch.zeros(kept_null_basis.shape[1], width, dtype=dtype, device=device, requires_grad=True)
    error_coefficients = torch.zeros(num_placed, directions.shape[1], dtype=dtype, device=device, requires_grad=True)
    shuffled_patches = fill.double().expand(num_shuffled, -1).clone().requires_grad_(True)
    scale = _pixel_scale(normalization, config.num_channels, kept)
    placed_index = placed.nonzero().squeeze(1)
    shuffled_index = (~placed).nonzero().squeeze(1)

    def assemble():
        moved = kept + kept_null_basis.double() @ null_coefficients + error_coefficients @ directions.double().T
        patches = torch.zeros(placed.shape[0], width, dtype=dtype, device=device)
        return patches.index_copy(0, placed_index, moved).index_copy(0, shuffled_index, shuffled_patches)

    variables = [v for v in (null_coefficients, error_coefficients, shuffled_patches) if v.numel()]
    if variables:
        optimizer = torch.optim.LBFGS(
            variables,
            lr=1,
            max_iter=max_iter,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-10,
            tolerance_change=1e-12,
        )

        def closure():
            optimizer.zero_grad()
            loss = smooth_total_variation(_patches_to_image(assemble() * scale, grid_size, patch_size))
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
    with torch.no_grad():
        return assemble()


def prior_attack(
    model, gradients: dict[str, torch.Tensor], normalization=None, max_iter: int = 100, noise_std: float = 0.0
) -> AnalyticReconstruction:
    """The analytic attack with a total-variation image prior: the textbook solution, moved along the directions
    the gradient leaves undetermined so as to minimise the image's total variation (`minimise_total_variation`).

    Three sets of directions are free, all read from the gradient:

    * the system's null space (width below the number of tokens: at least `N + 1 - D` dimensions);
    * on a jigsawed step, the least-squares error of every placed patch. The shuffled tokens contribute
      `sum_{i in S} g_i x_{pi(i)}^T` to `dW`; with the unknown embedding's row absorbing their mean patch, what
      remains is `sum_i g_i d_i^T`, with `d_i` the shuffled patches' deviations from their mean, so every placed
      patch's error lies in `span(d_i)`, of dimension at most `m - 1` for `m` shuffled patches. The part of `g_i`
      outside the regressors' span shows in the residual `dW - A^T X`, whose row space lies in that same span: its
      leading right singular vectors (at most `m - 1`, above the solver's tolerance) give the directions;
    * the shuffled positions' patches, which no regressor reaches: the prior inpaints them, starting from the
      average shuffled patch the unknown embedding's row solves for.
    """
    system = patch_system(model, gradients, noise_std)
    solved = system.solve()
    num_placed = system.num_placed
    directions = _residual_directions(system, solved.solution, int((~system.placed).sum()))
    fill = solved.solution[num_placed] if system.has_unk_row else None
    patches = minimise_total_variation(
        model.config,
        solved.solution[:num_placed],
        system.placed,
        kept_null_basis=solved.null_basis[:num_placed],
        directions=directions,
        fill=fill,
        normalization=normalization,
        max_iter=max_iter,
    )
    return AnalyticReconstruction(
        patches, system.placed, solved.unresolved, solved.rank, system.fit_error(solved.solution)
    )


# ----------------------------------------------------------------------------------------------------------------
# The multi-round attacker


def _weighted_median(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Element-wise weighted median over the first axis of `values` `[k, N, P]`, weights `[k, N]` (>= 0)."""
    order = values.argsort(dim=0)
    sorted_values = values.gather(0, order)
    sorted_weights = weights[..., None].expand_as(values).gather(0, order)
    cumulative = sorted_weights.cumsum(0)
    half = cumulative[-1:] / 2
    index = (cumulative < half).sum(0, keepdim=True).clamp(max=values.shape[0] - 1)
    return sorted_values.gather(0, index)[0]


def best_of_rounds(reconstructions: list[AnalyticReconstruction]) -> AnalyticReconstruction:
    """Per patch, the best estimate over the rounds, chosen from what the gradients show: each round's gradient
    tells which positions it placed, and its least-squares `fit_error` whether its shuffled patches disturbed the
    fit at all. A patch placed by a clean round (a plain step, or one whose shuffled patches were alike, such as
    a plain background: `fit_error` below `CLEAN_FIT_ERROR`) takes that round's estimate (the clean rounds' mean,
    weighted by `1 / fit_error^2`, if several);
    any other patch the element-wise median of the rounds that placed it, weighted by `1 / fit_error` (with two
    rounds, the better-fitting one), whose errors come from different shuffled patches and largely cancel. A
    patch no round placed keeps the (inpainted) estimate of the best-fitting round."""
    errors = torch.tensor([r.fit_error for r in reconstructions], dtype=torch.float64)
    best = reconstructions[int(torch.argmin(errors))]
    placed_by = torch.stack([r.placed for r in reconstructions])  # [k, N]
    estimates = torch.stack([r.patches for r in reconstructions])  # [k, N, P]
    # `1 / fit_error`, scaled so that the best round weighs 1 (no overflow for an exact fit).
    floored = errors.clamp(min=1e-30)
    inverse = (floored.min() / floored).to(estimates.device)[:, None]
    clean = placed_by & (errors <= CLEAN_FIT_ERROR).to(placed_by.device)[:, None]
    clean_weights = clean.to(torch.float64) * inverse.square()
    clean_mean = (clean_weights[..., None] * estimates).sum(0) / clean_weights.sum(0).clamp(min=1e-300)[:, None]
    median = _weighted_median(estimates, placed_by.to(torch.float64) * inverse)
    placed = placed_by.any(0)
    patches = torch.where(clean.any(0)[:, None], clean_mean, torch.where(placed[:, None], median, best.patches))
    return AnalyticReconstruction(patches, placed, best.unresolved, best.rank, best.fit_error)


def joint_attack(
    model,
    rounds: list[dict[str, torch.Tensor]],
    start: AnalyticReconstruction,
    iterations: int = 5,
    normalization=None,
    noise_std: float = 0.0,
) -> AnalyticReconstruction:
    """One least-squares solve over the rounds of the same image, which share the `N` patches: a patch shuffled in
    one round is placed by the equations of another.

    A shuffled token carries the unknown embedding, which is the same at every shuffled position, so its input
    gradient `h_j` depends on its content `x_j`, not on where the permutation put it: round `r` gives
    `dW_r = sum_{j placed} g_{r,j} x_j^T + sum_{j shuffled} h_{r,j} x_j^T`, with the `g` read from the gradient and
    the `h` unknown. Alternating least squares: given the patches (from `start`, e.g. `best_of_rounds`), each
    round's `h` solve `dW_r - sum_placed g x^T = H_r X_S`; given every round's `g` and `h`, one solve over all rounds
    gives the patches. The positions no round placed keep `start`'s estimate (no equation can place them); a null
    space left by the last solve is filled by the total-variation prior. Rounds that all placed every position
    leave nothing to refine: `start` is returned.
    """
    systems = [patch_system(model, gradients, noise_std) for gradients in rounds]
    num_patches, width = systems[0].placed.shape[0], systems[0].regressors.shape[1]
    eps = systems[0].eps
    placed = torch.stack([system.placed for system in systems]).any(0)
    patches = start.patches.clone()
    if all(system.placed.all() for system in systems):
        return start
    for _ in range(iterations):
        regressors = patches.new_zeros(num_patches, width * len(systems))
        for index, system in enumerate(systems):
            block = slice(index * width, (index + 1) * width)
            regressors[system.placed, block] = system.regressors[: system.num_placed]
            shuffled = ~system.placed
            if shuffled.any():
                residual = system.targets - system.regressors[: system.num_placed].T @ patches[system.placed]
                # H_r^T solves X_S^T H_r^T = residual^T: the same rank-aware solve, one unknown row per shuffled patch.
                hidden = solve_least_squares(patches[shuffled], residual.T, eps).solution  # [m, D]
                regressors[shuffled, block] = hidden
        targets = torch.cat([system.targets for system in systems])
        solved = solve_least_squares(regressors, targets, eps, noise_std)
        patches = torch.where(placed[:, None], solved.solution, start.patches)
    if solved.unresolved:
        # The positions no round placed are inpainted again, from the mean of `start`'s estimates there.
        patches = minimise_total_variation(
            model.config,
            patches[placed],
            placed,
            kept_null_basis=solved.null_basis[placed],
            fill=patches[~placed].mean(0) if not placed.all() else None,
            normalization=normalization,
        )
    return AnalyticReconstruction(patches, placed, solved.unresolved, solved.rank, start.fit_error)


def refined_attack(
    model,
    gradients: dict[str, torch.Tensor],
    start: AnalyticReconstruction | None = None,
    normalization=None,
    noise_std: float = 0.0,
) -> AnalyticReconstruction:
    """The prior reconstruction refined by the content of the shuffled patches (`joint_attack` on one round): the
    shuffled tokens' input gradients are fitted to the residual from their inpainted patches, and the placed
    patches solved again with that contribution removed."""
    if start is None:
        start = prior_attack(model, gradients, normalization, noise_std=noise_std)
    return joint_attack(model, [gradients], start, normalization=normalization, noise_std=noise_std)


# ----------------------------------------------------------------------------------------------------------------
# The optimisation attack: the generic attacker

# Gradients below this share of the largest one are float32 rounding of an exact zero (the attention key biases':
# a softmax ignores a shift common to all keys); normalised by cosine they would only add noise to the objective.
STRUCTURAL_ZERO = 1e-6
# The coarse-to-fine schedule from scratch: (share of the image side optimised, share of the iterations).
COARSE_TO_FINE = ((0.25, 0.2), (0.5, 0.3), (1.0, 0.5))
# Weight of the chroma prior (the squared deviation of every channel from the pixel's channel mean) at each stage
# of the schedule: colour directions barely move a model trained on natural images' correlated channels, and
# without it they fill with noise.
CHROMA_WEIGHTS = (1e-1, 1e-2, 1e-3)
# Weight of the penalty on pixels outside the valid range (L-BFGS takes no box constraints).
BOX_WEIGHT = 1.0
LBFGS_CHUNK = 50
OPTIMIZATION_RECIPE = {
    "objective": "1 - cos(gradient of the dummy, shared gradient) over every parameter whose shared gradient is "
    "not a structural zero; the dummy's logits backpropagate the shared classifier-bias gradient (p - onehot)",
    "optimizer": "L-BFGS (strong Wolfe line search), float64",
    "from_scratch": "coarse to fine (a quarter, half, then full image side, bilinear), chroma and box priors; "
    "restart 0 from a constant grey, the others from smooth noise; the restart with the lowest matching term kept",
    "refined": "from the analytic_prior image, full resolution; the start is a candidate",
    "selection": "the iterate with the lowest gradient-matching term (priors excluded), never the ground truth",
}


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (anisotropic TV), as in "Inverting Gradients"."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return dx + dy


def attacker_forward_kwargs(model, placed: torch.BoolTensor) -> dict:
    """How the attacker runs the model to mimic the client's step: the unknown embedding at the positions whose
    rows got no gradient (the permutation among them does not change the gradient, so it is irrelevant)."""
    if not is_mjp_model(model):
        return {}
    if uses_unk_position_embedding(model) and not placed.all():
        num_patches = placed.shape[0]
        return {
            "jigsaw_mask": (~placed)[None],
            "jigsaw_permutation": torch.arange(num_patches, device=placed.device)[None],
        }
    # The naive ablation's shuffle leaves no trace in the gradient's shape: the attacker rebuilds the input as the
    # network saw it.
    return {"jigsaw": False}


class GradientMatching:
    """The generic attacker's objective for one shared gradient: `1 - cos` between the dummy's gradient and the
    shared one over every trainable parameter whose shared gradient is not a structural zero, computed in float64.

    The dummy's loss backpropagates the *shared* gradient of the logits, not its own: for a batch-1 cross-entropy
    step the classifier bias gradient is exactly `softmax(logits) - onehot(label)` (what iDLG reads the label
    from), so the attacker knows the output error of the client's step and uses it as the signal; the dummy need
    not first reproduce the client's prediction. The model's other losses (the DALR loss) are kept as they are.
    """

    def __init__(self, model, gradients: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64):
        self.model = copy.deepcopy(model).to(dtype).train()
        self.dtype = dtype
        names, params = _trainable(self.model)
        largest = max(float(gradient.norm()) for gradient in gradients.values())
        kept = [(p, gradients[n]) for n, p in zip(names, params) if n in gradients]
        kept = [(p, g) for p, g in kept if float(g.norm()) > STRUCTURAL_ZERO * largest]
        self.params = [p for p, _ in kept]
        self.targets = [g.to(dtype) for _, g in kept]
        self.target_norm = torch.sqrt(sum((t * t).sum() for t in self.targets))
        self.output_error = gradients[CLASSIFIER_BIAS].to(dtype).view(1, -1)
        self.label = infer_label(gradients)
        self.forward_kwargs = attacker_forward_kwargs(model, placed_positions(gradients))

    def __call__(self, pixel_values: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
        output = self.model(pixel_values.to(self.dtype), labels=self.label, **self.forward_kwargs)
        classification = torch.nn.functional.cross_entropy(output.logits, self.label)
        loss = output.loss - classification + (output.logits * self.output_error).sum()
        grads = torch.autograd.grad(loss, self.params, create_graph=create_graph, allow_unused=True)
        dot = sum((g * t).sum() for g, t in zip(grads, self.targets) if g is not None)
        norm = torch.sqrt(sum((g * g).sum() for g in grads if g is not None))
        return 1 - dot / (norm * self.target_norm).clamp(min=torch.finfo(self.dtype).tiny)

    def value(self, pixel_values: torch.Tensor) -> float:
        with torch.enable_grad():
            dummy = pixel_values.detach().to(self.dtype).requires_grad_(True)
            return float(self(dummy, create_graph=False))


def _chroma(images: torch.Tensor) -> torch.Tensor:
    return (images - images.mean(1, keepdim=True)).square().mean() if images.shape[1] > 1 else images.new_zeros(())


def _lbfgs_stage(matching, variables, render, *, iterations, deadline, low, high, chroma_weight, tv_weight, watch):
    """L-BFGS on `variables` (rendered to an image by `render`) for at most `iterations` or until `deadline`;
    returns the iterations run."""
    optimizer = torch.optim.LBFGS(
        [variables],
        lr=1,
        max_iter=LBFGS_CHUNK,
        history_size=100,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-15,
        tolerance_change=1e-18,
    )

    def closure():
        image = render(variables)
        outside = image - torch.maximum(torch.minimum(image, high), low)
        objective = matching(image) + BOX_WEIGHT * outside.square().sum() + chroma_weight * _chroma(image)
        if tv_weight:
            objective = objective + tv_weight * total_variation(image)
        (grad,) = torch.autograd.grad(objective, variables)
        variables.grad = grad.contiguous()
        return objective.detach()

    run, start = 0, time.perf_counter()
    for _ in watch(range(iterations)):
        # As many iterations per call as fit a quarter of the time left (at least one, at most `LBFGS_CHUNK`): a
        # large model's iteration takes seconds, and the deadline is only checked between calls. Splitting the
        # iterations among calls leaves L-BFGS's iterates as they are (its state persists between calls).
        per_iteration = (time.perf_counter() - start) / run if run else None
        left = deadline - time.perf_counter()
        fit = LBFGS_CHUNK if per_iteration is None or left == float("inf") else int(left / 4 / per_iteration)
        chunk = min(iterations - run, LBFGS_CHUNK, max(1, fit)) if run else 1
        optimizer.param_groups[0]["max_iter"] = chunk
        optimizer.step(closure)
        run += chunk
        if run >= iterations or time.perf_counter() > deadline or not torch.isfinite(variables).all():
            break
    return run


def optimization_attack(
    model,
    gradients: dict[str, torch.Tensor],
    *,
    pixel_bounds: tuple[float, float] | tuple[torch.Tensor, torch.Tensor] = (-1.0, 1.0),
    steps: int = 300,
    max_seconds: float | None = 60.0,
    restarts: int = 1,
    tv_weight: float = 0.0,
    init: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = True,
    watch: Callable[[Iterable], Iterable] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Gradient matching, the generic attacker: returns the dummy input `[1, C, H, W]` whose gradient matches the
    shared one best, and a summary of the run.

    It uses only what the threat model gives: the weights, the gradient, and the output error `p - onehot` (so
    the label) read from the classifier bias gradient; nothing of the position embeddings' structure. The
    objective is `GradientMatching` (float64); L-BFGS with a strong-Wolfe line search minimises it plus a penalty on pixels outside `pixel_bounds`, a chroma prior and, when
    `tv_weight > 0`, total variation. From scratch (`init=None`) each of `restarts` runs coarse to fine
    (`COARSE_TO_FINE`), restart 0 from a constant grey and the others from smooth noise drawn with `generator`;
    with `init` (e.g. an analytic reconstruction, which the attacker computes from the same gradient) one run
    refines it at full resolution and the start stays a candidate. The input returned is the candidate with the
    lowest matching term, priors excluded: the attacker's own choice, never the ground truth's.

    Budget: `steps` L-BFGS iterations per restart, `max_seconds` of wall time for the whole call (shared by the
    restarts). `watch` wraps the loops over iterations (the identity by default).
    """
    if steps < 1 or restarts < 1:
        raise ValueError(f"steps={steps}, restarts={restarts} are invalid; pass at least 1 of each.")
    watch = watch or (lambda iterable: iterable)
    config = model.config
    grid_size, patch_size = patch_grid(config)
    shape = (1, config.num_channels, grid_size[0] * patch_size[0], grid_size[1] * patch_size[1])
    start_time = time.perf_counter()
    limit = float("inf") if max_seconds is None else max_seconds
    matching = GradientMatching(model, gradients)
    dtype, device = matching.dtype, gradients[PATCH_WEIGHT].device
    low, high = (torch.as_tensor(bound, dtype=dtype, device=device).expand(shape) for bound in pixel_bounds)
    candidates, run = [], 0
    if init is not None:
        candidates.append(torch.maximum(torch.minimum(init.detach().to(dtype), high), low))
    runs = [("refine", init)] if init is not None else [("scratch", index) for index in range(restarts)]
    iterations = tqdm(runs, desc="inverting gradients", disable=not progress, leave=False)
    with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
        for number, (mode, start) in enumerate(iterations):
            deadline = start_time + limit * (number + 1) / len(runs)
            image, done = _matching_run(
                matching, mode, start, shape, steps, deadline, low, high, tv_weight, generator, watch
            )
            run += done
            candidates.append(torch.maximum(torch.minimum(image.detach(), high), low))
            if time.perf_counter() > start_time + limit:
                break
    values = [matching.value(candidate) for candidate in candidates]
    best = min(range(len(values)), key=lambda index: values[index] if values[index] == values[index] else float("inf"))
    return candidates[best].float(), {
        "steps_run": run,
        "restarts_run": len(candidates) - (init is not None),
        "seconds": time.perf_counter() - start_time,
        "start_matching": values[0] if init is not None else None,
        "best_matching": values[best],
        "kept_start": init is not None and best == 0,
    }


def _matching_run(matching, mode, start, shape, steps, deadline, low, high, tv_weight, generator, watch):
    """One restart of `optimization_attack`: the image it ends at and the iterations it ran."""
    dtype, device = matching.dtype, low.device
    if mode == "refine":
        stages = [(1.0, 1.0, CHROMA_WEIGHTS[-1])]
        variables = start.detach().to(dtype).clone()
    else:
        stages = [(side, share, weight) for (side, share), weight in zip(COARSE_TO_FINE, CHROMA_WEIGHTS)]
        coarse = _stage_shape(shape, stages[0][0])
        if start == 0:  # a constant grey, the middle of the valid range, with a trace of noise to break ties
            variables = ((low + high) / 2)[..., : coarse[2], : coarse[3]].clone()
            variables += 1e-3 * _noise(coarse, generator, device, dtype)
        else:
            variables = 0.5 * _noise(coarse, generator, device, dtype)
    done = 0
    for side, share, chroma_weight in stages:
        stage_shape = _stage_shape(shape, side)
        if variables.shape != stage_shape:
            variables = _resize(variables, stage_shape[2:])
        variables = variables.detach().requires_grad_(True)
        render = (lambda v: v) if stage_shape == shape else (lambda v: _resize(v, shape[2:]))
        done += _lbfgs_stage(
            matching,
            variables,
            render,
            iterations=max(1, round(steps * share)),
            deadline=deadline,
            low=low,
            high=high,
            chroma_weight=chroma_weight,
            tv_weight=tv_weight,
            watch=watch,
        )
        if time.perf_counter() > deadline:
            break
    with torch.no_grad():
        return _resize(variables, shape[2:]) if variables.shape != shape else variables.detach(), done


def _noise(shape, generator, device, dtype) -> torch.Tensor:
    source = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=source).to(device, dtype)


def _stage_shape(shape, side: float) -> tuple[int, ...]:
    return (*shape[:2], max(2, round(shape[2] * side)), max(2, round(shape[3] * side)))


def _resize(images: torch.Tensor, size) -> torch.Tensor:
    return torch.nn.functional.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)
