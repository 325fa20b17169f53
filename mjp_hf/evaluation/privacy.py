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
* **optimization** ("Inverting Gradients", Geiping et al. 2020): cosine gradient matching with a total-variation
  prior, started from the analytic_prior reconstruction (the attacker computes it from the same gradient) unless
  `--optimization_init random`. Its figures count only when the same budget rebuilds this model's plain step at
  20 dB or more on average; otherwise `inconclusive` is true and it is left out of the headline.
* **multi_round**: the same image in k rounds (k in 1, 2, 4, 8) with independent masks and coin flips, at
  `jigsaw_prob` 0.5 and 1 (and the model's own): per patch the best estimate over the rounds, and a joint solve.

The **headline** is the auditor's view: per image and per metric, the best of the attacks by the ground truth
(the attacker cannot pick per image, so it bounds what an attacker gets from above, never from below).
`summary.<attack>` and `summary.headline` are the expected leak per training step: `p x jigsawed + (1 - p) x
plain` at the model's `jigsaw_prob` p; `summary.by_step` gives each kind of step, `summary.exposure` the chance
that an image seen in k rounds is sent at least once in a plain step, which leaks it whole, with the multi-round
attacker's figure (`multi_round_headline`) or, where it cannot run (no unknown PE), a lower bound from the
single-step figures (`single_step_bound`).

Metrics per image, on pixels in `[0, 1]` (scikit-image): MSE, PSNR, SSIM, and the **fraction of patches recovered
at their true position**: the share of the grid's patches whose reconstruction at position `k` has a per-patch PSNR
of at least `psnr_threshold` dB (20 by default, a per-patch RMS error of at most 0.1) against the original patch at
the same position `k`. A patch rebuilt perfectly but at another position does not count. Because a blank patch is
"recovered" by any guess of its colour, `recovered_fraction_textured` gives the same share among the patches whose
original pixels span more than 0.1.

`python -m mjp_hf.evaluation.privacy --model_name_or_path DIR --output_dir DIR` writes `privacy.json` and
`privacy.png` (originals, the input as the network saw it, and the reconstructions).
"""

from dataclasses import dataclass

import numpy as np
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity
from tqdm.auto import tqdm

from ..jigsaw import draw_jigsaw
from ..training.threads import adaptive_threads
from .common import (
    PixelNormalization,
    base_parser,
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
    PATCH_WEIGHT,
    POSITION_EMBEDDINGS,
    UNK_POSITION_EMBEDDING,
    _trainable,
    best_of_rounds,
    infer_label,
    joint_attack,
    optimization_attack,
    placed_positions,
    prior_attack,
    refined_attack,
    solve_least_squares,
    textbook_attack,
    total_variation,
    truncation_tolerance,
)


JIGSAW_VIEWS = ("auto", "on", "off")
ATTACKS = ("analytic", "analytic_prior", "analytic_refined", "optimization", "multi_round")
# The attacks with one reconstruction per step (the multi-round attacker is reported apart).
SINGLE_STEP_ATTACKS = ("analytic", "analytic_prior", "analytic_refined", "optimization")
STEP_KINDS = ("jigsawed", "plain")
OPTIMIZATION_INITS = ("analytic", "random")
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
    when none does) and, when `shuffled` (bool `[N]`) is given, the mean patch PSNR over the `kept` and the
    `shuffled` positions.
    """
    original = np.asarray(original, dtype=np.float64)
    reconstruction = np.clip(np.asarray(reconstruction, dtype=np.float64), 0.0, 1.0)
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
    for key in ("unresolved_dimensions", "unplaced_positions"):
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


class _Attacker:
    """Runs the single-step attacks on one image's update and scores them against the original."""

    def __init__(self, model, normalization, patch_size, psnr_threshold, optimization_kwargs):
        self.model, self.normalization, self.patch_size = model, normalization, patch_size
        self.psnr_threshold, self.optimization_kwargs = psnr_threshold, optimization_kwargs

    def score(self, original, pixel_values, shuffled) -> tuple[dict, np.ndarray]:
        recon = _to_hwc(pixel_values, self.normalization)
        metrics = reconstruction_metrics(
            original, recon, self.patch_size, psnr_threshold=self.psnr_threshold, shuffled=shuffled
        )
        return metrics, np.clip(recon, 0, 1)

    def run(self, attacks, update: "ClientUpdate", original, shuffled) -> tuple[dict, dict]:
        results, pictures = {}, {}
        placed = placed_positions(update.gradients)
        prior = None
        starts_from_prior = "optimization" in attacks and self.optimization_kwargs["init"] == "analytic"
        if {"analytic_prior", "analytic_refined"} & set(attacks) or starts_from_prior:
            prior = prior_attack(self.model, update.gradients, self.normalization)
        for name in attacks:
            extra = {"unplaced_positions": int((~placed).sum())}
            if name == "analytic":
                reconstruction = textbook_attack(self.model, update.gradients)
                pixel_values = reconstruction.pixel_values(self.model.config)
                extra.update(unresolved_dimensions=reconstruction.unresolved, rank=reconstruction.rank)
            elif name == "analytic_prior":
                pixel_values = prior.pixel_values(self.model.config)
                extra.update(unresolved_dimensions=prior.unresolved, rank=prior.rank)
            elif name == "analytic_refined":
                refined = refined_attack(self.model, update.gradients, prior)
                pixel_values = refined.pixel_values(self.model.config)
                extra.update(unresolved_dimensions=refined.unresolved, rank=refined.rank)
            else:
                kwargs = dict(self.optimization_kwargs)
                init = kwargs.pop("init")
                start = prior.pixel_values(self.model.config) if init == "analytic" else None
                pixel_values, info = optimization_attack(self.model, update.gradients, init=start, **kwargs)
                extra.update(info)
            metrics, picture = self.score(original, pixel_values, shuffled)
            results[name] = {**metrics, **extra}
            pictures[name] = picture
        return results, pictures


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
    plain_update: "ClientUpdate | None" = None,
) -> list[dict]:
    """The multi-round attacker on one image `[1, C, H, W]`: the client sends its gradient in `max(counts)` rounds,
    each jigsawed with probability `jigsaw_prob` with a fresh mask (same weights, as in federated SGD where the
    image is revisited), and the attacker combines the first k rounds for every k in `counts`.

    Returns `{k: result}`, each with `plain_rounds` (how many of the k were not jigsawed, ground truth),
    and `reconstructions`, the attacker's candidates as patches: `best_of_rounds` (per patch the best estimate,
    chosen from what the gradients show) and `joint` (one solve over the rounds). Every round is first attacked
    on its own with `prior_attack`; a plain round's gradient is the same in every round, computed once.
    """
    if not uses_unk_position_embedding(model):
        raise ValueError(
            f"The multi-round attacker reads the shuffled positions from the gradient, which needs an MJP model with "
            f"the unknown position embedding; {type(model).__name__} (jigsaw_mode="
            f"{getattr(model.config, 'jigsaw_mode', None)!r}) has none."
        )
    gen_device = generator.device if generator is not None else None
    plain_cache = None
    updates, singles, plain_flags, results = [], [], [], {}
    for count in range(1, max(counts) + 1):
        jigsawed = bool(torch.rand(1, generator=generator, device=gen_device).item() < jigsaw_prob)
        if jigsawed:
            update = client_gradient(
                model, pixel_values, labels, jigsaw="on", jigsaw_ratio=jigsaw_ratio, generator=generator
            )
            single = prior_attack(model, update.gradients, normalization)
        else:
            if plain_cache is None:
                update = plain_update or client_gradient(model, pixel_values, labels, jigsaw="off")
                plain_cache = (update, prior_attack(model, update.gradients, normalization))
            update, single = plain_cache
        updates.append(update.gradients)
        singles.append(single)
        plain_flags.append(not jigsawed)
        if count in counts:
            best = best_of_rounds(singles)
            joint = joint_attack(model, updates, best, normalization=normalization)
            results[count] = {
                "plain_rounds": int(sum(plain_flags)),
                "reconstructions": {"best_of_rounds": best, "joint": joint, "rounds": list(singles)},
            }
    return results


def evaluate_privacy(
    model,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    normalization: PixelNormalization,
    *,
    jigsaw: str = "auto",
    jigsaw_ratio: float | None = None,
    attacks: tuple[str, ...] = ATTACKS,
    steps: int = 300,
    lr: float | None = None,
    tv_weight: float = 1e-2,
    max_seconds: float | None = 60.0,
    optimization_init: str = "analytic",
    psnr_threshold: float = 20.0,
    multi_round_counts: tuple[int, ...] = MULTI_ROUND_COUNTS,
    multi_round_probs: tuple[float, ...] = MULTI_ROUND_PROBS,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """Attack each image of `pixel_values` `[B, C, H, W]` on its own (batch 1), in every kind of step the
    model's training takes (`step_weights`).

    Returns `(report, images)`. `report["per_image"]` has, per image, `label`, `inferred_label` and, per kind of
    step (`steps.jigsawed`, `steps.plain`), the ground-truth `shuffled_positions`, each attack's
    `reconstruction_metrics` (plus `unplaced_positions`, and for the analytic attacks `unresolved_dimensions`:
    the null space of the linear system) and the `headline` (best per image). `report["summary"]` has, per attack
    and for the headline, the mean of each of `SUMMARY_KEYS` as the expected figure per training step
    (`summary.<attack>`), per kind of step (`summary.by_step`), the `step_weights`, the `exposure` over k rounds,
    and the `multi_round` attacker. `images` maps `original`, `<kind> view` (the patch order the network saw; the
    naive ablation's in-patch pixel permutation is not drawn) and `<kind> <attack>` to `[H, W, C]` arrays in
    `[0, 1]`, for plotting.
    """
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise ValueError(f"Unknown attacks {sorted(unknown)}; choose from {ATTACKS}.")
    if optimization_init not in OPTIMIZATION_INITS:
        raise ValueError(f"optimization_init={optimization_init!r} is invalid; choose one of {OPTIMIZATION_INITS}.")
    weights = step_weights(model, jigsaw)
    kinds = [kind for kind in STEP_KINDS if kind in weights]
    single_attacks = [name for name in SINGLE_STEP_ATTACKS if name in attacks]
    _, patch_size = patch_grid(model.config)
    device = pixel_values.device
    generator = torch.Generator(device=device).manual_seed(seed)
    # The optimisation attack keeps its dummy input inside the image of [0, 1] pixels.
    black = torch.zeros(1, model.config.num_channels, 1, 1, device=device)
    bounds = (normalization.normalize(black), normalization.normalize(black + 1))
    if lr is None:
        # Signed Adam moves every pixel by about `lr` per step: large from noise, small from an analytic start.
        lr = 0.01 if optimization_init == "analytic" else 0.1
    optimization_kwargs = dict(
        pixel_bounds=bounds,
        steps=steps,
        lr=lr,
        tv_weight=tv_weight,
        max_seconds=max_seconds,
        init=optimization_init,
        generator=generator,
        progress=progress,
    )
    attacker = _Attacker(model, normalization, patch_size, psnr_threshold, optimization_kwargs)
    # The calibration of the optimisation attack: the same budget on this model's plain step.
    calibrate = "optimization" in single_attacks and "plain" not in kinds
    run_multi_round = "multi_round" in attacks and uses_unk_position_embedding(model)
    own_prob = float(getattr(model.config, "jigsaw_prob", 0.0))
    round_probs = sorted(set(multi_round_probs) | ({own_prob} if 0 < own_prob < 1 else set()))
    multi_round_counts = tuple(sorted(set(multi_round_counts)))
    max_rounds = max(multi_round_counts) if multi_round_counts else 0

    per_image = []
    images = {"original": [], **{f"{kind} view": [] for kind in kinds}}
    images.update({f"{kind} {name}": [] for kind in kinds for name in single_attacks})
    indices = tqdm(range(pixel_values.shape[0]), desc="privacy attacks", disable=not progress)
    for index in adaptive_threads().watch(indices, pixel_values.device):
        x, y = pixel_values[index : index + 1], labels[index : index + 1]
        original = _to_hwc(x, normalization)
        images["original"].append(original)
        entry = {"index": index, "label": int(y.item()), "steps": {}}
        plain_update = None
        for kind in kinds:
            update = client_gradient(
                model,
                x,
                y,
                jigsaw="on" if kind == "jigsawed" else "off",
                jigsaw_ratio=jigsaw_ratio,
                generator=generator,
            )
            if kind == "plain":
                plain_update = update
            entry["inferred_label"] = int(infer_label(update.gradients).item())
            shuffled = (
                update.jigsaw_mask[0].cpu().numpy()
                if update.jigsaw_mask is not None
                else np.zeros(patchify(x, patch_size).shape[1], dtype=bool)
            )
            permutation = update.jigsaw_permutation
            view = x if permutation is None else shuffle_patches(x, patch_size, permutation)
            images[f"{kind} view"].append(np.clip(_to_hwc(view, normalization), 0, 1))
            results, pictures = attacker.run(single_attacks, update, original, shuffled)
            for name, picture in pictures.items():
                images[f"{kind} {name}"].append(picture)
            entry["steps"][kind] = {"shuffled_positions": np.flatnonzero(shuffled).tolist(), **results}
        if calibrate:
            plain_update = client_gradient(model, x, y, jigsaw="off")
            results, _ = attacker.run(("optimization",), plain_update, original, None)
            entry["optimization_calibration"] = {key: results["optimization"][key] for key in SUMMARY_KEYS}
        if run_multi_round and max_rounds:
            entry["multi_round"] = {}
            for probability in round_probs:
                rounds = multi_round_attack(
                    model,
                    x,
                    y,
                    jigsaw_prob=probability,
                    counts=multi_round_counts,
                    jigsaw_ratio=jigsaw_ratio,
                    generator=generator,
                    normalization=normalization,
                    plain_update=plain_update,
                )
                scored = {}
                for count in multi_round_counts:
                    result = rounds[count]
                    candidates = result["reconstructions"]
                    metrics = {
                        name: attacker.score(original, candidates[name].pixel_values(model.config), None)[0]
                        for name in ("best_of_rounds", "joint")
                    }
                    # Every reconstruction a k-round attacker holds: each round alone, and the combinations of the
                    # first k' <= k rounds. The headline is the best of them per image (the auditor's view).
                    held = [metrics["best_of_rounds"], metrics["joint"]]
                    held += [
                        attacker.score(original, single.pixel_values(model.config), None)[0]
                        for single in candidates["rounds"]
                    ]
                    held += [scored[str(k)]["headline"] for k in multi_round_counts if k < count]
                    scored[str(count)] = {
                        "plain_rounds": result["plain_rounds"],
                        **{name: {key: m[key] for key in SUMMARY_KEYS} for name, m in metrics.items()},
                        "headline": best_per_image(held),
                    }
                entry["multi_round"][str(probability)] = scored
        per_image.append(entry)

    # The optimisation attack is a privacy figure only when its budget rebuilds a plain step.
    optimization_status = None
    if "optimization" in single_attacks:
        source = (
            [entry["optimization_calibration"] for entry in per_image]
            if calibrate
            else [entry["steps"]["plain"]["optimization"] for entry in per_image]
        )
        calibration_psnr = _mean([result["psnr"] for result in source])
        optimization_status = {
            "calibration_psnr": calibration_psnr,
            "calibration_threshold": OPTIMIZATION_CALIBRATION_PSNR,
            "inconclusive": bool(calibration_psnr is None or calibration_psnr < OPTIMIZATION_CALIBRATION_PSNR),
        }
    headline_attacks = [
        name for name in single_attacks if not (name == "optimization" and optimization_status["inconclusive"])
    ]
    for entry in per_image:
        for step in entry["steps"].values():
            step["headline"] = best_per_image([step[name] for name in headline_attacks])

    by_step = {
        kind: {
            name: _summarise([entry["steps"][kind][name] for entry in per_image])
            for name in [*single_attacks, "headline"]
        }
        for kind in kinds
    }
    summary = {
        name: _weighted({kind: by_step[kind][name] for kind in kinds}, weights)
        for name in [*single_attacks, "headline"]
    }
    if optimization_status is not None:
        summary["optimization"].update(optimization_status)
    summary["headline"]["attacks"] = headline_attacks
    summary["by_step"] = by_step
    summary["step_weights"] = weights
    jigsawed_share = weights.get("jigsawed", 0.0)
    summary["exposure"] = {str(k): {"plain_step_probability": 1.0 - jigsawed_share**k} for k in MULTI_ROUND_COUNTS}
    if run_multi_round and max_rounds:

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

        summary["multi_round"] = {
            str(probability): {str(count): over_trials(probability, count) for count in multi_round_counts}
            for probability in round_probs
        }
        # At the model's own jigsaw_prob, what the multi-round attacker measured beside the exposure.
        measured = summary["multi_round"].get(str(own_prob), {})
        for k, exposure in summary["exposure"].items():
            if k in measured:
                exposure["multi_round_headline"] = measured[k]["headline"]
    else:
        # Without the multi-round attacker, the single-step figures still bound what k rounds give away.
        for exposure in summary["exposure"].values():
            exposure["single_step_bound"] = exposure_lower_bound(by_step, exposure["plain_step_probability"])
        if "multi_round" in attacks:
            summary["multi_round"] = {
                "skipped": "needs an MJP model with the unknown position embedding (the shuffled positions must show "
                "in the gradient); every step of this model is attacked as a single step above, and "
                "`exposure.<k>.single_step_bound` bounds k rounds from below"
            }

    jigsawed_steps = [entry["steps"]["jigsawed"] for entry in per_image if "jigsawed" in entry["steps"]]
    report = {
        "threat_model": THREAT_MODEL,
        "jigsaw_view": jigsaw,
        "step_kinds": kinds,
        "jigsaw_prob": own_prob if is_mjp_model(model) else None,
        "jigsaw_mode": getattr(model.config, "jigsaw_mode", None) if is_mjp_model(model) else None,
        "jigsaw_applied": any(bool(step.get("shuffled_positions")) for step in jigsawed_steps),
        "jigsaw_ratio": jigsaw_ratio if jigsaw_ratio is not None else getattr(model.config, "jigsaw_ratio", None),
        "uses_unk_position_embedding": uses_unk_position_embedding(model),
        "psnr_threshold": psnr_threshold,
        "solver": {
            "method": "float64 SVD least squares, minimum norm",
            "truncation": "singular values <= eps(gradient dtype) * s_max * max(shape) are dropped",
        },
        "optimization": {
            "steps": steps,
            "lr": lr,
            "tv_weight": tv_weight,
            "max_seconds": max_seconds,
            "init": optimization_init,
        }
        if "optimization" in attacks
        else None,
        "multi_round": {"rounds": list(multi_round_counts), "jigsaw_probs": round_probs} if run_multi_round else None,
        "summary": summary,
        "per_image": per_image,
    }
    return report, images


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
    fig.suptitle("Gradient inversion (PSNR, patches recovered in place)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _counts(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise ValueError(f"--multi_round_counts {text!r} is invalid; pass positive round counts, e.g. 1,2,4,8.")
    return values


def _probs(text: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in text.split(",") if v.strip())
    if not values or not all(0 <= v <= 1 for v in values):
        raise ValueError(f"--multi_round_probs {text!r} is invalid; pass probabilities in [0, 1], e.g. 0.5,1.")
    return values


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=8, help="Images attacked, one at a time (batch 1).")
    parser.add_argument(
        "--jigsaw",
        choices=JIGSAW_VIEWS,
        default="auto",
        help="The client's steps: 'auto' as the model trains (both kinds for 0 < jigsaw_prob < 1), 'on' jigsawed "
        "only, 'off' plain only.",
    )
    parser.add_argument(
        "--jigsaw_ratio", type=float, default=None, help="Shuffle ratio of the client's jigsaw (default: the model's)."
    )
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"Comma-separated subset of {','.join(ATTACKS)}.")
    parser.add_argument("--steps", type=int, default=300, help="Optimisation attack: Adam steps per image.")
    parser.add_argument("--max_seconds", type=float, default=60.0, help="Optimisation attack: time limit per image.")
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Optimisation attack: Adam learning rate (default 0.01 from the analytic start, 0.1 from noise).",
    )
    parser.add_argument("--tv_weight", type=float, default=1e-2, help="Optimisation attack: total-variation weight.")
    parser.add_argument(
        "--optimization_init",
        choices=OPTIMIZATION_INITS,
        default="analytic",
        help="Optimisation attack: start from the analytic_prior reconstruction, or from Gaussian noise.",
    )
    parser.add_argument(
        "--multi_round_counts",
        default=",".join(map(str, MULTI_ROUND_COUNTS)),
        help="Rounds k of the multi-round attacker.",
    )
    parser.add_argument(
        "--multi_round_probs",
        default=",".join(map(str, MULTI_ROUND_PROBS)),
        help="jigsaw_prob values the multi-round attacker is run at (the model's own is added).",
    )
    parser.add_argument(
        "--psnr_threshold", type=float, default=20.0, help="Per-patch PSNR for a patch to count as recovered."
    )
    args = parser.parse_args(argv)
    attacks = tuple(name.strip() for name in args.attacks.split(",") if name.strip())
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        parser.error(f"--attacks {args.attacks!r} names unknown attacks {sorted(unknown)}; choose from {ATTACKS}.")
    try:
        counts, probs = _counts(args.multi_round_counts), _probs(args.multi_round_probs)
    except ValueError as error:
        parser.error(str(error))

    json_path = output_path(args.output_dir, "privacy.json", args.overwrite)
    png_path = output_path(args.output_dir, "privacy.png", args.overwrite)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model, normalization, images, labels = load_model_and_images(args, device, args.num_images)
    pixel_values = normalization.from_uint8(images, device)
    report, reconstructions = evaluate_privacy(
        model,
        pixel_values,
        torch.from_numpy(labels).to(device),
        normalization,
        jigsaw=args.jigsaw,
        jigsaw_ratio=args.jigsaw_ratio,
        attacks=attacks,
        steps=args.steps,
        lr=args.lr,
        tv_weight=args.tv_weight,
        max_seconds=args.max_seconds,
        optimization_init=args.optimization_init,
        psnr_threshold=args.psnr_threshold,
        multi_round_counts=counts,
        multi_round_probs=probs,
        seed=args.seed,
    )
    report = {"model_name_or_path": str(args.model_name_or_path), "model_class": type(model).__name__, **report}
    write_json(json_path, report)
    plot_reconstructions(reconstructions, report, png_path)
    headline = report["summary"]["headline"]
    print(
        f"privacy: steps {report['step_kinds']} (weights {report['summary']['step_weights']}); headline per step "
        f"{headline['psnr']:.1f} dB, {100 * (headline['recovered_fraction_textured'] or 0):.1f}% textured patches in "
        f"place -> {json_path}"
    )
    return report


if __name__ == "__main__":
    main()
