"""Privacy under gradient inversion: how much of a client's image an attacker rebuilds from the gradient it shares.

**Threat model.** Federated learning with an honest-but-curious server: it knows the model's weights and
architecture, follows the protocol, and sees the gradient one client computes for one training step on a batch of
one image (its label included, implicitly). It does not see the client's jigsaw draw: which positions were
shuffled it reads from the gradient (their position-embedding rows get none), and where the shuffled patches went
(the split behind the unknown position embedding) stays hidden. The client computes the step the way the model
trains: train mode, labels, the loss it optimises, and for an MJP model the masked jigsaw with probability
`jigsaw_prob` per step. `--jigsaw auto` attacks exactly those steps: a plain step for a stock ViT or a model with
`jigsaw_prob == 0`, the jigsawed step for `jigsaw_prob == 1`, and both kinds otherwise, weighted by `jigsaw_prob`.

The attacks (`mjp_hf.evaluation.privacy_attacks`), each reported:

* **analytic** (textbook, APRIL, Lu et al. 2022): a patch token enters the network as `z_i = W x_i + b + p_i`,
  so the gradient of position-embedding row `p_i` *is* the gradient at that token's input, `g_i = dL/dz_i`, and
  the patch embedding's weight gradient `dW = sum_i g_i x_i^T` is a linear system in the patches, solved by a
  rank-aware float64 least squares whose tolerance follows the float32 precision of the gradients. Shuffled
  positions are filled with the normaliser's mean colour.
* **analytic_prior**: the same solution moved, along the directions the gradient leaves free (the system's null
  space, the subspace a jigsawed step's error lies in, the shuffled positions), to the image of least total
  variation.
* **analytic_refined**: the analytic_prior image refined by the shuffled patches' content: a shuffled token's
  input gradient depends on its content, not on its position (they all carry the unknown embedding), so it is
  fitted to the least-squares residual from the inpainted patches, and the placed patches are solved again
  without it (alternating least squares).
* **optimization**: the generic attacker, gradient matching from scratch (`optimization_attack`): it uses the
  weights, the gradient and the label the classifier's bias gradient gives, nothing of the position embeddings'
  structure. Its figures count only when the same budget rebuilds this model's plain step at 20 dB or more on
  average (`summary.optimization.calibration_psnr`); otherwise `inconclusive` is true and it is left out of the
  headline.
* **optimization_refined**: the same gradient matching started from the analytic_prior reconstruction (which the
  attacker computes from the same gradient); the start is one of its candidates, so it never matches worse.
* **multi_round**: the same image in k rounds (k in 1, 2, 4, 8) with independent masks and coin flips, at the
  model's own `jigsaw_prob` and those of `--multi_round_probs` its training can take; the first round is the
  audited step itself. Candidates: every attack of every round, per patch the best estimate over the rounds, and
  a joint solve.

The **headline** is the auditor's view: per image and per metric, the best of the attacks by the ground truth
(the attacker cannot pick per image, so it bounds what an attacker gets from above, never from below).
`summary.<attack>` and `summary.headline` are the expected leak per training step: `p x jigsawed + (1 - p) x
plain` at the model's `jigsaw_prob` p; `summary.by_step` gives each kind of step, `summary.exposure` the chance
that an image seen in k rounds is sent at least once in a plain step, which leaks it whole, the lower bound that
gives from the single-step figures (`single_step_bound`) and, where the multi-round attacker ran, its figure
(`multi_round_headline`).

Metrics per image, on pixels in `[0, 1]` (scikit-image): MSE, PSNR, SSIM, and the **fraction of patches recovered
at their true position**: the share of the grid's patches whose reconstruction at position `k` has a per-patch PSNR
of at least `psnr_threshold` dB (20 by default, a per-patch RMS error of at most 0.1) against the original patch at
the same position `k`. A patch rebuilt perfectly but at another position does not count. Because a blank patch is
"recovered" by any guess of its colour, `recovered_fraction_textured` gives the same share among the patches whose
original pixels span more than 0.1.

**Defences.** `defense` (`--defense dp_sgd|local_noise|prune`, a `mjp_hf.training.defenses.Defense`) makes every
update attacked the defended one the server receives (`defend_update`), each with its own noise draw; the analytic
solves then stop at the defence's error level instead of inverting it (`solve_least_squares`). docs/PRIVACY.md,
"Defended gradients", says what each defence does to the attacks.

`python -m mjp_hf.evaluation.privacy --model_name_or_path DIR --output_dir DIR` writes `privacy.json` and
`privacy.png` (originals, the input as the network saw it, and the reconstructions). It says before starting what
it will run and the most the optimisation may take, and after the first image what the rest should take.
"""

import argparse
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity
from tqdm.auto import tqdm

from ..jigsaw import draw_jigsaw
from ..training.defenses import DEFENSE_KINDS, Defense, keyed_generator
from ..utils import bounded
from .common import (
    PixelNormalization,
    base_parser,
    each_then,
    finite,
    is_mjp_model,
    load_model_and_images,
    output_path,
    patch_grid,
    patchify,
    resolve_device,
    shuffle_patches,
    uses_unk_position_embedding,
    write_json,
)

# The attacks live in `privacy_attacks`; their names stay importable from here, where they were first published.
from .privacy_attacks import (  # noqa: F401
    CLASSIFIER_BIAS,
    OPTIMIZATION_RECIPE,
    PATCH_WEIGHT,
    POSITION_EMBEDDINGS,
    UNK_POSITION_EMBEDDING,
    AnalyticReconstruction,
    _trainable,
    best_of_rounds,
    infer_label,
    joint_attack,
    optimization_attack,
    placed_positions,
    prior_attack,
    pruning_perturbation_std,
    refined_attack,
    solve_least_squares,
    textbook_attack,
    total_variation,
    truncation_tolerance,
)


JIGSAW_VIEWS = ("auto", "on", "off")
ANALYTIC_ATTACKS = ("analytic", "analytic_prior", "analytic_refined")
# From scratch (the generic attacker, calibrated) and from the analytic_prior image.
OPTIMIZATION_ATTACKS = ("optimization", "optimization_refined")
# The attacks with one reconstruction per step (the multi-round attacker is reported apart).
SINGLE_STEP_ATTACKS = ANALYTIC_ATTACKS + OPTIMIZATION_ATTACKS
ATTACKS = (*SINGLE_STEP_ATTACKS, "multi_round")
STEP_KINDS = ("jigsawed", "plain")
MULTI_ROUND_COUNTS = (1, 2, 4, 8)
MULTI_ROUND_PROBS = (0.5, 1.0)
# The optimisation attack's figures count only when its budget rebuilds a plain step at least this well.
OPTIMIZATION_CALIBRATION_PSNR = 20.0
PSNR_CAP = 100.0
# A patch "has content" when its pixel values span more than this (on [0, 1]).
TEXTURE_RANGE = 0.1
SUMMARY_KEYS = ("mse", "psnr", "ssim", "recovered_fraction", "recovered_fraction_textured")
# For the headline, the best value of each metric: the lowest MSE, the highest of the others.
LOWER_IS_BETTER = ("mse",)
THREAT_MODEL = (
    "honest-but-curious server: knows the weights, sees one client's batch-1 gradient of one training step taken "
    "as the model trains; reads the shuffled positions from the gradient, never the client's jigsaw draw"
)


@dataclass
class ClientUpdate:
    """The gradient a client shares for one step, with the jigsaw it drew (the ground truth, unknown to the
    attacker): `jigsaw_mask` / `jigsaw_permutation` `[1, N]`, `None` when the step was not jigsawed."""

    gradients: dict[str, torch.Tensor]
    jigsaw_mask: torch.BoolTensor | None = None
    jigsaw_permutation: torch.LongTensor | None = None
    # The std of the error a defence added to every entry, as the attacker knows it: σC under noise (public, as the
    # protocol's parameters are), a bound read from the pruned gradient under pruning (`pruning_perturbation_std`).
    # The analytic attacks do not invert what lies below it (`solve_least_squares`).
    noise_std: float = 0.0


def step_weights(model, jigsaw: str = "auto") -> dict[str, float]:
    """The kinds of training step the attacker sees, with their share of the model's steps.

    `"auto"` follows the model's training: a stock ViT (`model_type: vit`, e.g. a `to_vit()` export) or an MJP
    model with `jigsaw_prob == 0` takes plain steps only, one with `jigsaw_prob == 1` jigsawed steps only (the
    naive ablation's pixel and patch shuffle in `naive` mode), and any other both, jigsawed with probability
    `jigsaw_prob`. `"on"` and `"off"` pick one kind.
    """
    if jigsaw not in JIGSAW_VIEWS:
        raise ValueError(f"jigsaw={jigsaw!r} is invalid; choose one of {JIGSAW_VIEWS}.")
    if jigsaw == "on" and not is_mjp_model(model):
        raise ValueError(
            f"jigsaw='on' needs an MJP-ViT model, but {type(model).__name__} has no jigsaw; use 'auto' or 'off'."
        )
    if not is_mjp_model(model) or jigsaw == "off":
        return {"plain": 1.0}
    if jigsaw == "on":
        return {"jigsawed": 1.0}
    probability = float(model.config.jigsaw_prob)
    weights = {"jigsawed": probability, "plain": 1.0 - probability}
    return {kind: weight for kind, weight in weights.items() if weight > 0}


def draw_training_jigsaw(model, batch_size: int, ratio: float | None = None, generator: torch.Generator | None = None):
    """A jigsaw `(mask, permutation)` as the MJP model's training step draws it (block-wise, or every patch for the
    naive ablation), at `ratio` instead of `config.jigsaw_ratio` when given."""
    config = model.config
    num_masks = batch_size if config.jigsaw_per_sample else 1
    return draw_jigsaw(config, num_masks, patch_grid(config)[0], ratio=ratio, generator=generator, device=model.device)


def client_gradient(
    model,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    *,
    jigsaw: str = "auto",
    jigsaw_ratio: float | None = None,
    generator: torch.Generator | None = None,
) -> ClientUpdate:
    """The gradient of one training step on `(pixel_values, labels)`, as a client would share it.

    Args:
        jigsaw: `"auto"` (the step the model's training takes: for an MJP model, jigsawed with probability
            `jigsaw_prob`, the coin flipped with `generator`; plain for a stock ViT), `"on"` (a jigsawed step, MJP
            models only) or `"off"` (a plain step, as one that lost the coin flip).
        jigsaw_ratio: the attacker-view shuffle ratio; the model's `jigsaw_ratio` by default.
        generator: source of the coin flip and the jigsaw draw (and of the naive ablation's pixel permutation).
    """
    probability = step_weights(model, jigsaw).get("jigsawed", 0.0)  # also checks `jigsaw`
    mjp = is_mjp_model(model)
    if jigsaw == "auto" and mjp:
        coin = torch.rand(1, generator=generator, device=generator.device if generator is not None else None)
        jigsaw = "on" if coin.item() < probability else "off"
    apply_jigsaw = mjp and jigsaw == "on"
    kwargs, mask, permutation = {}, None, None
    if apply_jigsaw:
        mask, permutation = draw_training_jigsaw(model, pixel_values.shape[0], jigsaw_ratio, generator)
        mask, permutation = mask.to(pixel_values.device), permutation.to(pixel_values.device)
        kwargs = {"jigsaw_mask": mask, "jigsaw_permutation": permutation}
    elif mjp:
        kwargs = {"jigsaw": False}

    was_training = model.training
    embeddings = model.vit.embeddings
    saved_generator = getattr(embeddings, "jigsaw_generator", None)
    try:
        model.train()
        if mjp and generator is not None:
            # The naive ablation draws its pixel permutation inside the model: make it reproducible too.
            embeddings.jigsaw_generator = generator
        loss = model(pixel_values, labels=labels, **kwargs).loss
        names, params = _trainable(model)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        if mjp:
            embeddings.jigsaw_generator = saved_generator
        model.train(was_training)
    gradients = {name: grad.detach() for name, grad in zip(names, grads) if grad is not None}
    return ClientUpdate(gradients, mask, permutation)


def noise_is_drawn(defense: Defense) -> bool:
    """Whether `defense` adds random noise (then every update the client sends gets its own draw)."""
    return defense.kind in ("dp_sgd", "local_noise") and defense.noise_multiplier > 0


def defend_update(
    update: ClientUpdate, defense: Defense, *, seed: int, image_index: int, kind: str, round_index: int = 0
) -> ClientUpdate:
    """The update as the server receives it from a client that applies `defense` to its batch-1 step.

    `dp_sgd` is DP-SGD's step on a batch of one (expected size 1): the step's gradient is the one example's gradient,
    clipped to C with Opacus' rule and noised with std σC. `local_noise` clips the whole update to C and adds the
    same noise (Flower's `LocalDpMod`); `prune` zeroes the smallest share of every tensor. The noise is drawn from
    `keyed_generator(seed, "privacy <defence> <kind>", image_index, round_index)` on the CPU: the same for an image
    and a round whichever other images, attacks or devices ran. The update's `noise_std` is what the attacker knows
    of the error the defence made (σC, or the bound `pruning_perturbation_std` reads from a pruned gradient)."""
    if defense.kind == "none":
        return update
    generator = None
    if noise_is_drawn(defense):
        generator = keyed_generator(seed, f"privacy {defense.kind} {kind}", image_index, round_index)
    gradients = update.gradients
    if defense.needs_per_sample_gradients:
        per_sample = {name: gradient[None] for name, gradient in gradients.items()}
        defended = defense.apply(per_sample_gradients=per_sample, generator=generator, expected_batch_size=1)
    else:
        defended = defense.apply(gradients, generator=generator)
    if noise_is_drawn(defense):
        noise_std = defense.noise_multiplier * defense.max_grad_norm
    elif defense.kind == "prune":
        noise_std = pruning_perturbation_std(defended, defense.prune_ratio)
    else:
        noise_std = 0.0
    return ClientUpdate(dict(defended), update.jigsaw_mask, update.jigsaw_permutation, noise_std)


@dataclass(frozen=True)
class ClientDefense:
    """The defence one client applies to the updates it sends of image `image_index` (`defend_update`, noise keyed
    by the audit's `seed`)."""

    defense: Defense
    seed: int
    image_index: int

    @property
    def noise(self) -> bool:
        return noise_is_drawn(self.defense)

    def __call__(self, update: ClientUpdate, kind: str, round_index: int = 0) -> ClientUpdate:
        return defend_update(
            update, self.defense, seed=self.seed, image_index=self.image_index, kind=kind, round_index=round_index
        )


def defense_record(defense: Defense) -> dict:
    """What `privacy.json` records of the defence: its `name`, every parameter (`None` where it does not apply)
    and a `description`."""
    return {
        "name": defense.kind,
        **{name: getattr(defense, name) for name in ("noise_multiplier", "max_grad_norm", "prune_ratio")},
        "description": defense.describe(),
    }


def analytic_attack(model, gradients: dict[str, torch.Tensor], fill_value: float = 0.0):
    """The textbook analytic attack as `(pixel_values [1, C, H, W], placed [N])` (see `textbook_attack`)."""
    reconstruction = textbook_attack(model, gradients, fill_value)
    return reconstruction.pixel_values(model.config), reconstruction.placed


def reconstruction_metrics(
    original: np.ndarray,
    reconstruction: np.ndarray,
    patch_size: tuple[int, int],
    *,
    psnr_threshold: float = 20.0,
    shuffled: np.ndarray | None = None,
) -> dict:
    """Metrics of one reconstruction, both `[H, W, C]` pixels in `[0, 1]` (the reconstruction is clipped first).

    Returns `mse`, `psnr`, `ssim` (scikit-image; PSNR capped at 100 dB for an exact match), `patch_psnr` (per
    patch position, row-major), `recovered_fraction` (share of positions whose patch PSNR is >= `psnr_threshold`)
    `recovered_fraction_textured` (the same among patches whose pixels span more than `TEXTURE_RANGE`; `None`
    when none does; non-finite reconstruction pixels count as 0.5) and, when `shuffled` (bool `[N]`) is given, the mean patch PSNR over the `kept` and the
    `shuffled` positions.
    """
    original = np.asarray(original, dtype=np.float64)
    # A non-finite pixel (a failed solve) is scored as the uninformed guess, mid-grey: it neither crashes the metrics
    # nor counts as a perfect match (`mse > 0` is False for NaN, which read as the 100 dB cap).
    reconstruction = np.nan_to_num(np.asarray(reconstruction, dtype=np.float64), nan=0.5, posinf=1.0, neginf=0.0)
    reconstruction = np.clip(reconstruction, 0.0, 1.0)
    height, width, channels = original.shape
    patch_h, patch_w = patch_size
    mse = mean_squared_error(original, reconstruction)
    psnr = finite(peak_signal_noise_ratio(original, reconstruction, data_range=1.0), PSNR_CAP) if mse > 0 else PSNR_CAP
    ssim = structural_similarity(original, reconstruction, channel_axis=-1, data_range=1.0)

    def per_patch(image):
        grid = image.reshape(height // patch_h, patch_h, width // patch_w, patch_w, channels)
        return grid.transpose(0, 2, 1, 3, 4).reshape(-1, patch_h * patch_w * channels)

    # Per-patch PSNR is vectorised here: the same formula as scikit-image's, once per position.
    patch_mse = ((per_patch(original) - per_patch(reconstruction)) ** 2).mean(-1)
    patch_psnr = np.minimum(10 * np.log10(1.0 / np.maximum(patch_mse, 10 ** (-PSNR_CAP / 10))), PSNR_CAP)
    recovered = patch_psnr >= psnr_threshold
    # A blank patch (Fashion-MNIST's black background) is "recovered" by any dark guess: also report the share
    # among patches with content.
    original_patches = per_patch(original)
    textured = original_patches.max(-1) - original_patches.min(-1) > TEXTURE_RANGE
    result = {
        "mse": float(mse),
        "psnr": float(psnr),
        "ssim": float(ssim),
        "recovered_fraction": float(recovered.mean()),
        "recovered_fraction_textured": float(recovered[textured].mean()) if textured.any() else None,
        "patch_psnr": [round(float(v), 3) for v in patch_psnr],
    }
    if shuffled is not None:
        shuffled = np.asarray(shuffled, dtype=bool)
        result["psnr_kept_patches"] = float(patch_psnr[~shuffled].mean()) if (~shuffled).any() else None
        result["psnr_shuffled_patches"] = float(patch_psnr[shuffled].mean()) if shuffled.any() else None
    return result


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _to_hwc(pixel_values: torch.Tensor, normalization: PixelNormalization) -> np.ndarray:
    return normalization.denormalize(pixel_values.detach().float().cpu())[0].permute(1, 2, 0).numpy()


def best_per_image(results: list[dict]) -> dict:
    """The auditor's headline for one image: per metric, the best value among `results` (each a
    `reconstruction_metrics` dict), judged by the ground truth, and which attack gave the best PSNR."""
    headline = {}
    for key in SUMMARY_KEYS:
        values = [r[key] for r in results if r.get(key) is not None]
        headline[key] = (min(values) if key in LOWER_IS_BETTER else max(values)) if values else None
    return headline


def _summarise(entries: list[dict]) -> dict:
    summary = {key: _mean([entry.get(key) for entry in entries]) for key in SUMMARY_KEYS}
    for key in ("unresolved_dimensions", "unplaced_positions", "seconds"):
        if any(key in entry for entry in entries):
            summary[key] = _mean([entry.get(key) for entry in entries])
    return summary


def exposure_lower_bound(by_step: dict[str, dict], plain_step_probability: float) -> dict:
    """What the best of k rounds leaks at least, from single-step figures alone: with probability `P` (that one of
    the k rounds is a plain step) the best round is at least as good as a plain step, otherwise at least as good as
    a jigsawed one, so the expected best-of-k figure is at least `P x plain + (1 - P) x jigsawed` (at most, for the
    MSE). The bound for models the multi-round attacker cannot run on (no unknown PE: a stock ViT, the naive
    ablation), `by_step[kind]["headline"]` per kind of step."""
    kinds = {"plain": plain_step_probability, "jigsawed": 1.0 - plain_step_probability}
    present = {kind: weight for kind, weight in kinds.items() if kind in by_step}
    if not present:
        return {}
    if len(present) == 1:  # one kind of step only: its figure
        present = dict.fromkeys(present, 1.0)
    return _weighted({kind: by_step[kind]["headline"] for kind in present}, present)


def _weighted(per_kind: dict[str, dict], weights: dict[str, float]) -> dict:
    """`sum_kind weight x figure`: the expected figure per training step."""
    keys = [key for key in per_kind[next(iter(per_kind))] if key not in ("inconclusive",)]
    result = {}
    for key in keys:
        values = [(weights[kind], per_kind[kind].get(key)) for kind in per_kind]
        result[key] = None if any(v is None for _, v in values) else float(sum(w * v for w, v in values))
    return result


# ----------------------------------------------------------------------------------------------------------------
# One step, attacked


@dataclass
class OptimizationBudget:
    """What each run of the optimisation attacks may spend (one run: one image, one step): at most `steps`
    iterations per start and `max_seconds` of wall time in all, shared by `restarts` starts from scratch (the
    refinement runs once). `tv_weight` is the recipe's (`optimization_attack`); `None` keeps its default."""

    steps: int = 300
    max_seconds: float | None = 60.0
    restarts: int = 1
    tv_weight: float | None = None

    def as_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class StepAttack:
    """What the attacker made of one step: the `update`, its `kind` (ground truth, for the report), the
    `prior` reconstruction (what the multi-round attacker combines), every attack's image as `pixel_values`, the
    attacks' side figures (`extras`: null space, the optimisation's run) and, once scored, their `metrics`."""

    update: ClientUpdate
    kind: str
    prior: AnalyticReconstruction | None
    pixel_values: dict[str, torch.Tensor]
    extras: dict[str, dict]
    metrics: dict[str, dict] | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class _Attacker:
    """Runs the single-step attacks on one step's update and scores reconstructions against the original."""

    def __init__(self, model, normalization, psnr_threshold, budget, bounds, generator, watch, progress):
        self.model, self.normalization, self.psnr_threshold = model, normalization, psnr_threshold
        self.budget, self.bounds, self.generator, self.watch, self.progress = (
            budget,
            bounds,
            generator,
            watch,
            progress,
        )
        self.patch_size = patch_grid(model.config)[1]

    def score(self, original, pixel_values, shuffled=None) -> tuple[dict, np.ndarray]:
        recon = _to_hwc(pixel_values, self.normalization)
        metrics = reconstruction_metrics(
            original, recon, self.patch_size, psnr_threshold=self.psnr_threshold, shuffled=shuffled
        )
        return metrics, np.clip(recon, 0, 1)

    def _optimize(self, gradients, init):
        budget = self.budget
        options = {"tv_weight": budget.tv_weight} if budget.tv_weight is not None else {}
        return optimization_attack(
            self.model,
            gradients,
            pixel_bounds=self.bounds,
            steps=budget.steps,
            max_seconds=budget.max_seconds,
            restarts=1 if init is not None else budget.restarts,
            init=init,
            generator=self.generator,
            progress=self.progress,
            watch=self.watch,
            **options,
        )

    def attack(self, update: ClientUpdate, kind: str, attacks, keep_prior: bool = True) -> StepAttack:
        """Every attack of `attacks` on `update`; the prior reconstruction is made when an attack needs it or
        `keep_prior` (the multi-round attacker combines it)."""
        config, gradients, noise_std = self.model.config, update.gradients, update.noise_std
        step = StepAttack(update, kind, None, {}, {})
        unplaced = int((~placed_positions(gradients)).sum())

        def timed(name, run):
            start = time.perf_counter()
            result = run()
            step.seconds[name] = time.perf_counter() - start
            return result

        solved = {}
        if keep_prior or {"analytic_prior", "analytic_refined", "optimization_refined"} & set(attacks):
            step.prior = timed(
                "analytic_prior", lambda: prior_attack(self.model, gradients, self.normalization, noise_std=noise_std)
            )
            solved["analytic_prior"] = step.prior
        if "analytic" in attacks:
            solved["analytic"] = timed("analytic", lambda: textbook_attack(self.model, gradients, noise_std=noise_std))
        if "analytic_refined" in attacks:
            solved["analytic_refined"] = timed(
                "analytic_refined",
                lambda: refined_attack(self.model, gradients, step.prior, self.normalization, noise_std),
            )
        for name, reconstruction in solved.items():
            if name in attacks:
                step.pixel_values[name] = reconstruction.pixel_values(config)
                step.extras[name] = {
                    "unplaced_positions": unplaced,
                    "unresolved_dimensions": reconstruction.unresolved,
                    "rank": reconstruction.rank,
                }
        for name in OPTIMIZATION_ATTACKS:
            if name in attacks:
                init = step.prior.pixel_values(config) if name == "optimization_refined" else None
                pixel_values, info = timed(name, lambda init=init: self._optimize(gradients, init))
                step.pixel_values[name] = pixel_values
                step.extras[name] = {"unplaced_positions": unplaced, **info}
        return step

    def scored(self, step: StepAttack, original, shuffled) -> tuple[dict, dict]:
        """`({attack: metrics and extras}, {attack: picture})` for a step, kept on it for the multi-round
        attacker, which reuses the audited step as its first round."""
        results, pictures = {}, {}
        for name, pixel_values in step.pixel_values.items():
            metrics, pictures[name] = self.score(original, pixel_values, shuffled)
            results[name] = {**metrics, **step.extras[name], "seconds": step.seconds.get(name)}
        step.metrics = {name: _summary_keys(result) for name, result in results.items()}
        return results, pictures


def _summary_keys(metrics: dict) -> dict:
    return {key: metrics.get(key) for key in SUMMARY_KEYS}


def _shuffled_positions(update: ClientUpdate, num_patches: int) -> np.ndarray:
    if update.jigsaw_mask is None:
        return np.zeros(num_patches, dtype=bool)
    return update.jigsaw_mask[0].cpu().numpy()


# ----------------------------------------------------------------------------------------------------------------
# The multi-round attacker


def multi_round_probabilities(model, requested) -> tuple[list[float], dict[str, str]]:
    """The `jigsaw_prob` values the multi-round attacker runs at for `model` (the model's own and those of
    `requested` its training can take), and why each of the others is not run."""
    if not uses_unk_position_embedding(model):
        return [], {}
    own = float(model.config.jigsaw_prob)
    run, not_run = [], {}
    for probability in sorted(set(requested) | {own}):
        if own == 0:
            not_run[str(probability)] = "the model trains with jigsaw_prob 0: it never takes a jigsawed step"
        elif probability == 0:
            not_run[str(probability)] = "every round is a plain step: the single-step plain figure"
        elif probability < 1 and own == 1:
            not_run[str(probability)] = "the model trains with jigsaw_prob 1: it never takes a plain step"
        else:
            run.append(probability)
    return run, not_run


class RoundSource:
    """The steps a client sends of one image over the rounds, attacked once each and shared by the multi-round
    trials at every probability (common random numbers: the trials differ only in which rounds are plain). Round
    `r`'s jigsawed step is the `r`-th drawn, the first being the audited jigsawed step when there is one; the plain
    step, the same gradient in every round, is the audited one or attacked once.

    Under a defence (`defend`, a `ClientDefense` for this image) every round's update is defended; one that draws
    noise draws it afresh in every round, so plain rounds differ too: round `r`'s plain step is then attacked on its
    own (the audited one is round 0)."""

    def __init__(
        self, model, pixel_values, labels, *, jigsaw_ratio, generator, normalization, audited=None, defend=None
    ):
        audited = audited or {}
        self.model, self.pixel_values, self.labels = model, pixel_values, labels
        self.jigsaw_ratio, self.generator = jigsaw_ratio, generator
        self.defend = defend
        self.attacker = _Attacker(model, normalization, 20.0, None, None, generator, None, False)
        self.jigsawed = [audited["jigsawed"]] if "jigsawed" in audited else []
        self.plain = {0: audited["plain"]} if "plain" in audited else {}
        self.plain_differs = defend is not None and defend.noise

    def _attack(self, kind: str, round_index: int) -> StepAttack:
        update = client_gradient(
            self.model,
            self.pixel_values,
            self.labels,
            jigsaw="on" if kind == "jigsawed" else "off",
            jigsaw_ratio=self.jigsaw_ratio,
            generator=self.generator,
        )
        if self.defend is not None:
            update = self.defend(update, kind, round_index)
        return self.attacker.attack(update, kind, ANALYTIC_ATTACKS)

    def step(self, index: int, kind: str) -> StepAttack:
        if kind == "plain":
            round_index = index if self.plain_differs else 0
            if round_index not in self.plain:
                self.plain[round_index] = self._attack("plain", round_index)
            return self.plain[round_index]
        while len(self.jigsawed) <= index:
            self.jigsawed.append(self._attack("jigsawed", len(self.jigsawed)))
        return self.jigsawed[index]


def multi_round_attack(
    model,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    *,
    jigsaw_prob: float,
    counts: tuple[int, ...] = MULTI_ROUND_COUNTS,
    jigsaw_ratio: float | None = None,
    generator: torch.Generator | None = None,
    normalization: PixelNormalization | None = None,
    audited: dict[str, StepAttack] | None = None,
    source: RoundSource | None = None,
) -> dict:
    """The multi-round attacker on one image `[1, C, H, W]`: the client sends its gradient in `max(counts)` rounds,
    each jigsawed with probability `jigsaw_prob` with a fresh mask (same weights, as in federated SGD where the
    image is revisited), and the attacker combines the first k rounds for every k in `counts`.

    `audited` maps a kind of step to the single-step attack of that kind already made on this image: the first
    round, when of a kind found there, *is* that step, so the k-round attacker holds everything the single-step
    attacker had. `source` (a `RoundSource`, made from `audited` by default) shares the rounds' steps with the
    trials at other probabilities.

    Returns `rounds` (a `StepAttack` per round: its analytic attacks' images, the prior reconstruction) and
    `combined`, `{k: {"plain_rounds", "best_of_rounds", "joint"}}`: per patch the best estimate over the first k
    rounds, chosen from what the gradients show, and one solve over them (`AnalyticReconstruction`s).
    """
    if not uses_unk_position_embedding(model):
        raise ValueError(
            f"The multi-round attacker reads the shuffled positions from the gradient, which needs an MJP model with "
            f"the unknown position embedding; {type(model).__name__} (jigsaw_mode="
            f"{getattr(model.config, 'jigsaw_mode', None)!r}) has none."
        )
    if source is None:
        source = RoundSource(
            model,
            pixel_values,
            labels,
            jigsaw_ratio=jigsaw_ratio,
            generator=generator,
            normalization=normalization,
            audited=audited,
        )
    gen_device = generator.device if generator is not None else None
    rounds, combined = [], {}
    for count in range(1, max(counts) + 1):
        jigsawed = torch.rand(1, generator=generator, device=gen_device).item() < jigsaw_prob
        rounds.append(source.step(count - 1, "jigsawed" if jigsawed else "plain"))
        if count in counts:
            best = best_of_rounds([r.prior for r in rounds])
            joint = joint_attack(
                model,
                [r.update.gradients for r in rounds],
                best,
                normalization=normalization,
                noise_std=max(r.update.noise_std for r in rounds),
            )
            plain = sum(r.kind == "plain" for r in rounds)
            combined[count] = {"plain_rounds": plain, "best_of_rounds": best, "joint": joint}
    return {"rounds": rounds, "combined": combined}


def _multi_round_entry(attacker: _Attacker, trial: dict, original: np.ndarray) -> tuple[dict, dict]:
    """One image's multi-round trial, scored: per k the combinations' figures, and the rounds (their kinds, ground
    truth, and each attack's figures: the audited step's own when it is the first round)."""
    config = attacker.model.config
    round_metrics, scored = [], {}
    for step in trial["rounds"]:
        if id(step) not in scored:
            scored[id(step)] = step.metrics or {
                name: _summary_keys(attacker.score(original, pixel_values)[0])
                for name, pixel_values in step.pixel_values.items()
            }
        round_metrics.append(scored[id(step)])
    by_count = {
        str(count): {
            "plain_rounds": result["plain_rounds"],
            **{
                name: _summary_keys(attacker.score(original, result[name].pixel_values(config))[0])
                for name in ("best_of_rounds", "joint")
            },
        }
        for count, result in trial["combined"].items()
    }
    return by_count, {"kinds": [step.kind for step in trial["rounds"]], "figures": round_metrics}


def _multi_round_headlines(by_count: dict, rounds: dict, headline_attacks) -> None:
    """Adds to each k of `by_count` the `headline`: per metric the best of every reconstruction a k-round attacker
    holds, each of its rounds attacked alone (by every headline attack) and every combination of its first
    k' <= k rounds."""
    held = []
    for count in sorted(by_count, key=int):
        figures = by_count[count]
        held += [figures["best_of_rounds"], figures["joint"]]
        alone = [
            metrics[name]
            for metrics in rounds["figures"][: int(count)]
            for name in headline_attacks
            if name in metrics
        ]
        figures["headline"] = best_per_image(held + alone)


# ----------------------------------------------------------------------------------------------------------------
# The audit


@dataclass
class _Plan:
    """What `evaluate_privacy` runs, resolved from its arguments."""

    kinds: list[str]
    weights: dict[str, float]
    single_attacks: list[str]
    calibrate: bool
    round_probs: list[float]
    rounds_not_run: dict[str, str]
    counts: tuple[int, ...]
    jigsaw_ratio: float | None
    defense: Defense


def _plan(model, jigsaw, jigsaw_ratio, attacks, multi_round_counts, multi_round_probs, defense=None) -> _Plan:
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise ValueError(f"Unknown attacks {sorted(unknown)}; choose from {ATTACKS}.")
    defense = Defense() if defense is None else defense
    if not isinstance(defense, Defense):
        raise TypeError(
            f"defense must be a mjp_hf.training.defenses.Defense, not {type(defense).__name__}; e.g. "
            "Defense('dp_sgd', noise_multiplier=1.0, max_grad_norm=1.0)."
        )
    weights = step_weights(model, jigsaw)
    kinds = [kind for kind in STEP_KINDS if kind in weights]
    single_attacks = [name for name in SINGLE_STEP_ATTACKS if name in attacks]
    counts = tuple(sorted(set(multi_round_counts))) if "multi_round" in attacks else ()
    round_probs, not_run = multi_round_probabilities(model, multi_round_probs) if counts else ([], {})
    return _Plan(
        kinds=kinds,
        weights=weights,
        single_attacks=single_attacks,
        # The calibration of the optimisation attack: the same budget, from scratch, on this model's plain step,
        # undefended: it says whether the budget inverts this model at all, not whether the defence works (a
        # defence that beat the calibration would drop the attack from the headline even where it leaked most).
        calibrate="optimization" in single_attacks and ("plain" not in kinds or defense.kind != "none"),
        round_probs=round_probs if counts else [],
        rounds_not_run=not_run,
        counts=counts,
        jigsaw_ratio=jigsaw_ratio,
        defense=defense,
    )


def _attack_image(attacker: _Attacker, plan: _Plan, x, y, generator, defend: ClientDefense) -> tuple[dict, dict]:
    """Every attack on one image `[1, C, H, W]`: each kind of step, defended by `defend` as the server receives it,
    the calibration (undefended), the multi-round attacker. Returns the image's report entry and its pictures."""
    model, normalization = attacker.model, attacker.normalization
    start = time.perf_counter()
    original = _to_hwc(x, normalization)
    pictures = {"original": original}
    entry = {"label": int(y.item()), "steps": {}}
    audited = {}
    for kind in plan.kinds:
        jigsaw = "on" if kind == "jigsawed" else "off"
        update = client_gradient(model, x, y, jigsaw=jigsaw, jigsaw_ratio=plan.jigsaw_ratio, generator=generator)
        update = defend(update, kind)
        entry["inferred_label"] = int(infer_label(update.gradients).item())
        shuffled = _shuffled_positions(update, patchify(x, attacker.patch_size).shape[1])
        permutation = update.jigsaw_permutation
        view = x if permutation is None else shuffle_patches(x, attacker.patch_size, permutation)
        pictures[f"{kind} view"] = np.clip(_to_hwc(view, normalization), 0, 1)
        audited[kind] = attacker.attack(update, kind, plan.single_attacks, keep_prior=bool(plan.round_probs))
        results, step_pictures = attacker.scored(audited[kind], original, shuffled)
        pictures.update({f"{kind} {name}": picture for name, picture in step_pictures.items()})
        entry["steps"][kind] = {"shuffled_positions": np.flatnonzero(shuffled).tolist(), **results}
    if plan.calibrate:
        update = client_gradient(model, x, y, jigsaw="off")
        plain = attacker.attack(update, "plain", ("optimization",), keep_prior=False)
        results, _ = attacker.scored(plain, original, None)
        entry["optimization_calibration"] = {**_summary_keys(results["optimization"]), "seconds": plain.seconds}
    entry["multi_round"], entry["multi_round_rounds"], entry["multi_round_seconds"] = {}, {}, {}
    source = RoundSource(
        model,
        x,
        y,
        jigsaw_ratio=plan.jigsaw_ratio,
        generator=generator,
        normalization=normalization,
        audited=audited,
        defend=defend,
    )
    for probability in plan.round_probs:
        started = time.perf_counter()
        trial = multi_round_attack(
            model,
            x,
            y,
            jigsaw_prob=probability,
            counts=plan.counts,
            generator=generator,
            normalization=normalization,
            source=source,
        )
        by_count, rounds = _multi_round_entry(attacker, trial, original)
        entry["multi_round"][str(probability)], entry["multi_round_rounds"][str(probability)] = by_count, rounds
        entry["multi_round_seconds"][str(probability)] = time.perf_counter() - started
    entry["seconds"] = time.perf_counter() - start
    return entry, pictures


def _optimization_status(plan: _Plan, per_image: list[dict], budget: OptimizationBudget) -> dict | None:
    """The from-scratch optimisation attack is a privacy figure only when its budget rebuilds this model's plain
    step: `calibration_psnr` (mean over the images) at least `OPTIMIZATION_CALIBRATION_PSNR`."""
    if "optimization" not in plan.single_attacks:
        return None
    source = [
        entry["optimization_calibration"] if plan.calibrate else entry["steps"]["plain"]["optimization"]
        for entry in per_image
    ]
    psnr = _mean([result["psnr"] for result in source])
    return {
        "calibration_psnr": psnr,
        "calibration_recovered_fraction_textured": _mean([r["recovered_fraction_textured"] for r in source]),
        "calibration_threshold": OPTIMIZATION_CALIBRATION_PSNR,
        "inconclusive": bool(psnr is None or psnr < OPTIMIZATION_CALIBRATION_PSNR),
        "budget": budget.as_dict(),
    }


def _multi_round_summary(plan: _Plan, per_image: list[dict]) -> dict:
    def over_trials(probability, count) -> dict:
        trials = [entry["multi_round"][str(probability)][str(count)] for entry in per_image]
        return {
            "trials": len(trials),
            "trials_with_plain_round": sum(trial["plain_rounds"] > 0 for trial in trials),
            **{
                name: {key: _mean([trial[name][key] for trial in trials]) for key in SUMMARY_KEYS}
                for name in ("best_of_rounds", "joint", "headline")
            },
        }

    return {str(p): {str(k): over_trials(p, k) for k in plan.counts} for p in plan.round_probs}


def _summary(plan: _Plan, per_image: list[dict], model, budget: OptimizationBudget) -> dict:
    """Per attack and for the headline: the expected figure per training step, per kind of step, the exposure
    over k rounds and the multi-round attacker (see `evaluate_privacy`)."""
    optimization = _optimization_status(plan, per_image, budget)
    headline_attacks = [
        name for name in plan.single_attacks if not (name == "optimization" and optimization["inconclusive"])
    ]
    for entry in per_image:
        for step in entry["steps"].values():
            step["headline"] = best_per_image([step[name] for name in headline_attacks])
        for probability, by_count in entry["multi_round"].items():
            _multi_round_headlines(by_count, entry["multi_round_rounds"][probability], headline_attacks)
    names = [*plan.single_attacks, "headline"]
    by_step = {
        kind: {name: _summarise([entry["steps"][kind][name] for entry in per_image]) for name in names}
        for kind in plan.kinds
    }
    summary = {name: _weighted({kind: by_step[kind][name] for kind in plan.kinds}, plan.weights) for name in names}
    if optimization is not None:
        summary["optimization"].update(optimization)
    summary["headline"]["attacks"] = headline_attacks
    summary["by_step"], summary["step_weights"] = by_step, plan.weights
    jigsawed_share = plan.weights.get("jigsawed", 0.0)
    summary["exposure"] = {}
    for k in MULTI_ROUND_COUNTS:
        share = 1.0 - jigsawed_share**k
        summary["exposure"][str(k)] = {
            "plain_step_probability": share,
            "single_step_bound": exposure_lower_bound(by_step, share),
        }
    if plan.round_probs:
        summary["multi_round"] = _multi_round_summary(plan, per_image)
        # At the model's own jigsaw_prob, what the multi-round attacker measured beside the exposure.
        measured = summary["multi_round"].get(str(float(model.config.jigsaw_prob)), {})
        for k, exposure in summary["exposure"].items():
            if k in measured:
                exposure["multi_round_headline"] = measured[k]["headline"]
    elif plan.counts:
        summary["multi_round"] = {"skipped": _multi_round_skipped(model)}
    return summary


def _multi_round_skipped(model) -> str:
    if not uses_unk_position_embedding(model):
        return (
            "needs an MJP model with the unknown position embedding (the shuffled positions must show in the "
            "gradient); every step of this model is attacked as a single step above, and "
            "`exposure.<k>.single_step_bound` bounds k rounds from below"
        )
    return (
        "the model trains with jigsaw_prob 0: every round is a plain step, whose figure is the single-step one "
        "(`exposure.<k>.single_step_bound`)"
    )


def evaluate_privacy(
    model,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    normalization: PixelNormalization,
    *,
    jigsaw: str = "auto",
    jigsaw_ratio: float | None = None,
    attacks: tuple[str, ...] = ATTACKS,
    optimization: OptimizationBudget | None = None,
    psnr_threshold: float = 20.0,
    multi_round_counts: tuple[int, ...] = MULTI_ROUND_COUNTS,
    multi_round_probs: tuple[float, ...] = MULTI_ROUND_PROBS,
    seed: int = 0,
    progress: bool = True,
    watch: Callable[[Iterable], Iterable] | None = None,
    defense: Defense | None = None,
) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """Attack each image of `pixel_values` `[B, C, H, W]` on its own (batch 1), in every kind of step the
    model's training takes (`step_weights`).

    Args:
        optimization: the optimisation attacks' budget per run (`OptimizationBudget()` by default).
        multi_round_probs: `jigsaw_prob` values of the multi-round attacker besides the model's own; those the
            model's training cannot take (any, for `jigsaw_prob 0`; below 1, for `jigsaw_prob 1`) are not run.
        watch: wraps the loop over the images and the optimisation's iterations (e.g. a thread controller's
            `watch`); the identity by default.
        defense: the client's gradient defence (`mjp_hf.training.defenses.Defense`; none by default). Every update
            attacked, the multi-round attacker's rounds included, is the defended one the server receives
            (`defend_update`), its noise drawn from `seed`, the image's index, its kind of step and its round; the
            optimisation's calibration alone runs on the undefended plain step.

    Returns `(report, images)`. `report["per_image"]` has, per image, `label`, `inferred_label`, `seconds` and,
    per kind of step (`steps.jigsawed`, `steps.plain`), the ground-truth `shuffled_positions`, each attack's
    `reconstruction_metrics` (plus `unplaced_positions`, its `seconds`, for the analytic attacks
    `unresolved_dimensions`, the null space of the linear system, and for the optimisation its run) and the
    `headline` (best per image); `multi_round.<p>.<k>`, the combinations' figures and the headline, and
    `multi_round_rounds.<p>`, the kinds of the rounds (ground truth) and each round's figures per attack, and
    `multi_round_seconds.<p>`. `report["summary"]` has, per attack and for the headline, the mean of each of
    `SUMMARY_KEYS` as the expected figure per training step (`summary.<attack>`), per kind of step
    (`summary.by_step`), the `step_weights`, the `exposure` over k rounds, and the `multi_round` attacker.
    `images` maps `original`, `<kind> view` (the patch order the network saw; the naive ablation's in-patch pixel
    permutation is not drawn) and `<kind> <attack>` to `[H, W, C]` arrays in `[0, 1]`, for plotting.
    """
    plan = _plan(model, jigsaw, jigsaw_ratio, attacks, multi_round_counts, multi_round_probs, defense)
    budget = optimization or OptimizationBudget()
    device = pixel_values.device
    generator = torch.Generator(device=device).manual_seed(seed)
    # The optimisation attack keeps its dummy input inside the image of [0, 1] pixels.
    black = torch.zeros(1, model.config.num_channels, 1, 1, device=device)
    bounds = (normalization.normalize(black), normalization.normalize(black + 1))
    attacker = _Attacker(model, normalization, psnr_threshold, budget, bounds, generator, watch, progress)
    per_image, images = [], {}
    indices = tqdm(range(pixel_values.shape[0]), desc="privacy attacks", disable=not progress)
    for index in (watch or _identity)(indices):
        x, y = pixel_values[index : index + 1], labels[index : index + 1]
        entry, pictures = _attack_image(attacker, plan, x, y, generator, ClientDefense(plan.defense, seed, index))
        per_image.append({"index": index, **entry})
        for name, picture in pictures.items():
            images.setdefault(name, []).append(picture)
        if progress and index == 0 and len(indices) > 1:
            rest = len(indices) - 1
            tqdm.write(
                f"privacy: the first image took {_duration(entry['seconds'])}; expect about "
                f"{_duration(entry['seconds'] * rest)} more for the other {rest}."
            )
    summary = _summary(plan, per_image, model, budget)
    return _report(model, plan, jigsaw, budget, psnr_threshold, summary, per_image), images


def _identity(iterable: Iterable) -> Iterable:
    return iterable


def _duration(seconds: float) -> str:
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def _report(model, plan: _Plan, jigsaw, budget, psnr_threshold, summary, per_image) -> dict:
    jigsawed_steps = [entry["steps"]["jigsawed"] for entry in per_image if "jigsawed" in entry["steps"]]
    mjp = is_mjp_model(model)
    optimizing = any(name in plan.single_attacks for name in OPTIMIZATION_ATTACKS)
    return {
        "threat_model": THREAT_MODEL,
        "defense": defense_record(plan.defense),
        "jigsaw_view": jigsaw,
        "step_kinds": plan.kinds,
        "jigsaw_prob": float(model.config.jigsaw_prob) if mjp else None,
        "jigsaw_mode": getattr(model.config, "jigsaw_mode", None) if mjp else None,
        "jigsaw_applied": any(bool(step.get("shuffled_positions")) for step in jigsawed_steps),
        "jigsaw_ratio": plan.jigsaw_ratio
        if plan.jigsaw_ratio is not None
        else getattr(model.config, "jigsaw_ratio", None),
        "uses_unk_position_embedding": uses_unk_position_embedding(model),
        "psnr_threshold": psnr_threshold,
        "solver": {
            "method": "float64 SVD least squares, minimum norm",
            "truncation": "singular values <= eps(gradient dtype) * s_max * max(shape) are dropped",
        },
        "optimization": {**budget.as_dict(), **OPTIMIZATION_RECIPE} if optimizing else None,
        "multi_round": {"rounds": list(plan.counts), "jigsaw_probs": plan.round_probs, "not_run": plan.rounds_not_run}
        if plan.counts
        else None,
        "summary": summary,
        "per_image": per_image,
    }


def plot_reconstructions(images: dict[str, list[np.ndarray]], report: dict, path, max_rows: int = 8) -> None:
    """A PNG grid: one row per image (the first `max_rows`); the original, then per kind of step the client's
    view and each attack with its PSNR and share of patches recovered in place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(images)
    rows = min(len(images["original"]), max_rows)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.8 * len(columns), 1.9 * rows), squeeze=False)
    for row in range(rows):
        for col, name in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(images[name][row], vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            title = name.replace("_", " ")
            kind, _, attack = name.partition(" ")
            metrics = report["per_image"][row]["steps"].get(kind, {}).get(attack)
            if metrics is not None:
                title = f"{title}\n{metrics['psnr']:.1f} dB, {100 * metrics['recovered_fraction']:.0f}%"
            if row == 0 or metrics is not None:
                ax.set_title(title, fontsize=7)
    defense = (report.get("defense") or {}).get("description", "no defence")
    fig.suptitle(f"Gradient inversion, {defense} (PSNR, patches recovered in place)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------------
# The command line


def _number(cast, name: str, low: float | None = None, high: float | None = None, low_open: bool = False):
    """An argparse `type` that parses `name` (`a whole number`, `a number`) with `cast` and refuses values outside
    `[low, high]` (`(low, high]` when `low_open`), saying what to pass; argparse names the flag."""
    if high is not None:
        wanted = f"{name} in {'(' if low_open else '['}{low:g}, {high:g}]"
    else:
        wanted = f"{name} {'>' if low_open else '>='} {low:g}"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}; pass {wanted}") from None
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high) or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range; pass {wanted}")
        return value

    parse.__name__ = name
    return parse


def _list(item_type, name: str):
    def parse(text: str):
        values = tuple(item_type(v.strip()) for v in text.split(",") if v.strip())
        if not values:
            raise argparse.ArgumentTypeError(f"{text!r} names none; pass {name}")
        return values

    parse.__name__ = name
    return parse


POSITIVE_INT = _number(int, "a whole number", low=1)
POSITIVE_FLOAT = _number(float, "a number", low=0, low_open=True)
NON_NEGATIVE_FLOAT = _number(float, "a number", low=0)
FRACTION = _number(float, "a fraction", low=0, high=1)


def _prune_ratio(text: str) -> float:
    """`--prune_ratio`: a number in [0, 1) (1 would zero every entry)."""
    value = bounded(float, minimum=0, maximum=1)(text)
    if value == 1:
        raise argparse.ArgumentTypeError(f"{text!r} is out of range: pass a value in [0, 1) (1 would send nothing)")
    return value


_prune_ratio.__name__ = "float"
DEFENSE_FLAGS = ("noise_multiplier", "max_grad_norm", "prune_ratio")
DEFAULT_MAX_GRAD_NORM = 1.0


def _defense_from_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Defense:
    """The `Defense` of `--defense` and its flags; a flag of another defence, or a missing σ or prune ratio, stops
    the command naming the flag and the fix."""
    takes = DEFENSE_KINDS[args.defense]
    for flag in DEFENSE_FLAGS:
        value = getattr(args, flag)
        if value is not None and flag not in takes:
            owners = " or ".join(kind for kind, names in DEFENSE_KINDS.items() if flag in names)
            parser.error(
                f"--{flag} {value:g} does not apply to --defense {args.defense}: pass --defense {owners}, or drop "
                f"--{flag}."
            )
    for flag, example in (("noise_multiplier", "0.1"), ("prune_ratio", "0.9")):
        if flag in takes and getattr(args, flag) is None:
            parser.error(f"--defense {args.defense} needs --{flag}: pass it, e.g. --{flag} {example}.")
    parameters = {flag: getattr(args, flag) for flag in takes}
    if "max_grad_norm" in takes and parameters["max_grad_norm"] is None:
        parameters["max_grad_norm"] = DEFAULT_MAX_GRAD_NORM
    return Defense(args.defense, **parameters)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=POSITIVE_INT, default=8, help="Images attacked, one at a time (batch 1).")
    parser.add_argument(
        "--jigsaw",
        choices=JIGSAW_VIEWS,
        default="auto",
        help="The client's steps: 'auto' as the model trains (both kinds for 0 < jigsaw_prob < 1), 'on' jigsawed "
        "only, 'off' plain only.",
    )
    parser.add_argument(
        "--jigsaw_ratio",
        type=FRACTION,
        default=None,
        help="Shuffle ratio of the client's jigsaw (default: the model's).",
    )
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"Comma-separated subset of {','.join(ATTACKS)}.")
    defaults = OptimizationBudget()
    parser.add_argument(
        "--steps", type=POSITIVE_INT, default=defaults.steps, help="Optimisation attacks: iterations per run."
    )
    parser.add_argument(
        "--max_seconds",
        type=POSITIVE_FLOAT,
        default=defaults.max_seconds,
        help="Optimisation attacks: wall-time limit per run (one image, one step).",
    )
    parser.add_argument(
        "--restarts",
        type=POSITIVE_INT,
        default=defaults.restarts,
        help="Optimisation from scratch: starts per run, the one with the best gradient match kept (the budget is "
        "shared among them).",
    )
    parser.add_argument(
        "--tv_weight", type=NON_NEGATIVE_FLOAT, default=None, help="Optimisation attacks: total-variation weight."
    )
    parser.add_argument(
        "--multi_round_counts",
        type=_list(POSITIVE_INT, "round counts, e.g. 1,2,4,8"),
        default=MULTI_ROUND_COUNTS,
        help="Rounds k of the multi-round attacker.",
    )
    parser.add_argument(
        "--multi_round_probs",
        type=_list(FRACTION, "probabilities, e.g. 0.5,1"),
        default=MULTI_ROUND_PROBS,
        help="jigsaw_prob values the multi-round attacker is run at besides the model's own (only those the model's "
        "training can take).",
    )
    parser.add_argument(
        "--psnr_threshold",
        type=POSITIVE_FLOAT,
        default=20.0,
        help="Per-patch PSNR (dB) for a patch to count as recovered.",
    )
    parser.add_argument(
        "--defense",
        choices=tuple(DEFENSE_KINDS),
        default="none",
        help="The client's gradient defence: the attacks see the defended update, as the server receives it.",
    )
    parser.add_argument(
        "--noise_multiplier",
        type=bounded(float, minimum=0),
        default=None,
        help="dp_sgd, local_noise: sigma, the noise std over the clipping norm (needed with them).",
    )
    parser.add_argument(
        "--max_grad_norm",
        type=bounded(float, minimum=0, exclusive_minimum=True),
        default=None,
        help=f"dp_sgd, local_noise: the clipping norm C (default {DEFAULT_MAX_GRAD_NORM:g}).",
    )
    parser.add_argument(
        "--prune_ratio",
        type=_prune_ratio,
        default=None,
        help="prune: the share of every gradient tensor zeroed, in [0, 1) (needed with it).",
    )
    args = parser.parse_args(argv)
    args.defense = _defense_from_flags(parser, args)
    args.attacks = tuple(name.strip() for name in args.attacks.split(",") if name.strip())
    unknown = set(args.attacks) - set(ATTACKS)
    if unknown or not args.attacks:
        parser.error(
            f"--attacks {','.join(args.attacks)!r} names unknown attacks {sorted(unknown)}; choose from {ATTACKS}."
        )
    return args


def training_step_seconds(model, pixel_values: torch.Tensor, labels: torch.Tensor, repeats: int = 3) -> float:
    """The median wall time of one batch-1 training step of `model` (forward and backward, as a client computes
    it), the unit the audit's cost is measured in."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        client_gradient(model, pixel_values[:1], labels[:1], jigsaw="off")
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def describe_plan(model, args, num_images: int, step_seconds: float) -> str:
    """What the audit will run, and the most the optimisation attacks may take, said before it starts."""
    defense = getattr(args, "defense", None)
    plan = _plan(
        model, args.jigsaw, args.jigsaw_ratio, args.attacks, args.multi_round_counts, args.multi_round_probs, defense
    )
    received = "the raw gradient" if plan.defense.kind == "none" else f"the gradient under {plan.defense.describe()}"
    lines = [
        f"privacy audit: {num_images} image(s), one at a time; defence: {plan.defense.describe()} (the server "
        f"receives {received}); steps attacked: {', '.join(plan.kinds)}; attacks: "
        f"{', '.join(plan.single_attacks) or 'none'}; one training step of this model takes {1000 * step_seconds:.0f} ms.",
    ]
    runs = len(plan.kinds) * sum(name in plan.single_attacks for name in OPTIMIZATION_ATTACKS) + plan.calibrate
    if runs:
        bound = runs * num_images * args.max_seconds
        lines.append(
            f"  optimisation: {runs} run(s) per image (from scratch, refined, calibration as requested), each at most "
            f"{args.steps} iterations or {args.max_seconds:g} s: at most {_duration(bound)} for all images."
        )
    if plan.round_probs:
        lines.append(
            f"  multi-round attacker: k = {', '.join(map(str, plan.counts))} rounds at jigsaw_prob "
            f"{', '.join(f'{p:g}' for p in plan.round_probs)} (up to {max(plan.counts)} more client steps per image "
            "and probability, each attacked analytically)."
        )
    for probability, reason in plan.rounds_not_run.items():
        lines.append(f"  multi-round attacker not run at jigsaw_prob {probability}: {reason}.")
    lines.append("  The time per image is measured on the first image and printed with an estimate for the rest.")
    return "\n".join(lines)


def main(argv=None, *, between_batches: Callable[[], object] | None = None) -> dict:
    """The command line. `between_batches` (the thread-count update that `run_command_line` passes) runs after each
    attacked image and optimisation iteration when the model is on the CPU."""
    args = parse_arguments(argv)
    json_path = output_path(args.output_dir, "privacy.json", args.overwrite)
    png_path = output_path(args.output_dir, "privacy.png", args.overwrite)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model, normalization, images, labels = load_model_and_images(args, device, args.num_images)
    pixel_values = normalization.from_uint8(images, device)
    labels = torch.from_numpy(labels).to(device)
    print(
        describe_plan(model, args, len(pixel_values), training_step_seconds(model, pixel_values, labels)), flush=True
    )
    if torch.device(device).type != "cpu":
        between_batches = None  # on an accelerator the CPU threads only feed it
    budget = OptimizationBudget(args.steps, args.max_seconds, args.restarts, args.tv_weight)
    report, reconstructions = evaluate_privacy(
        model,
        pixel_values,
        labels,
        normalization,
        jigsaw=args.jigsaw,
        jigsaw_ratio=args.jigsaw_ratio,
        attacks=args.attacks,
        optimization=budget,
        psnr_threshold=args.psnr_threshold,
        multi_round_counts=args.multi_round_counts,
        multi_round_probs=args.multi_round_probs,
        seed=args.seed,
        watch=None if between_batches is None else partial(each_then, between_batches=between_batches),
        defense=args.defense,
    )
    report = {"model_name_or_path": str(args.model_name_or_path), "model_class": type(model).__name__, **report}
    write_json(json_path, report)
    plot_reconstructions(reconstructions, report, png_path)
    headline = report["summary"]["headline"]
    print(
        f"privacy ({args.defense.describe()}): steps {report['step_kinds']} (weights {report['summary']['step_weights']}); headline per step "
        f"{headline['psnr']:.1f} dB, {100 * (headline['recovered_fraction_textured'] or 0):.1f}% textured patches in "
        f"place -> {json_path}"
    )
    return report


if __name__ == "__main__":
    from ..training.command_line import run_command_line  # a command line adapts torch's thread count

    run_command_line(main)
