"""Privacy under gradient inversion: how much of a client's image an attacker rebuilds from the gradient it shares.

The threat model is federated learning: a client computes the gradient of one training step on its own batch, the
way the model trains (train mode, labels, the loss it optimises, and for MJP models the masked jigsaw puzzle with
the unknown position embedding), and sends it to a server that knows the weights. Two attacks, both batch 1:

* **analytic** (APRIL, Lu et al. 2022): a patch token enters the network as `z_i = W x_i + b + p_i`, so the
  gradient of position embedding row `p_i` *is* the gradient at that token's input, `g_i = dL/dz_i`, and the patch
  embedding's weight gradient `dW = sum_i g_i x_i^T` is a linear system in the patches `x_i`, solved here by least
  squares. Under MJP's jigsaw the shuffled positions share the unknown embedding: their own rows get no gradient,
  so their patches cannot be placed (they are filled with the normaliser's mean colour) and their unknown
  contribution to `dW` also blurs the placed ones. The DALR loss adds an input-independent term to the position
  gradient, which the attacker (who knows the weights) computes and subtracts.
* **optimisation** (Geiping et al. 2020, "Inverting Gradients"): Adam on a dummy input, with signed gradients,
  minimising the cosine distance between its gradient and the shared one plus total variation; bounded by a number
  of steps and seconds. The label comes from the classifier bias gradient (the only negative entry for batch 1,
  as in iDLG), and the attacker runs the model with the unknown embedding at the positions whose rows got no
  gradient (the permutation among them does not change the gradient, so it is irrelevant).

Metrics per image, on pixels in `[0, 1]` (scikit-image): MSE, PSNR, SSIM, and the **fraction of patches recovered
at their true position**: the share of the grid's patches whose reconstruction at position `k` has a per-patch PSNR
of at least `psnr_threshold` dB (20 by default, a per-patch RMS error of at most 0.1) against the original patch at
the same position `k`. A patch rebuilt perfectly but at another position does not count. Because a blank patch is
"recovered" by any guess of its colour, `recovered_fraction_textured` gives the same share among the patches whose
original pixels span more than 0.1.

`python -m mjp_hf.evaluation.privacy --model_name_or_path DIR --output_dir DIR` writes `privacy.json` and
`privacy.png` (originals, the input as the network saw it, and the reconstructions).
"""

import time
from dataclasses import dataclass

import numpy as np
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from ..jigsaw import full_shuffle, random_jigsaw
from .common import (
    PixelNormalization,
    base_parser,
    finite,
    is_mjp_model,
    load_eval_data,
    load_model,
    output_path,
    patch_grid,
    patchify,
    resolve_device,
    shuffle_patches,
    unpatchify,
    uses_unk_position_embedding,
    write_json,
)

JIGSAW_VIEWS = ("auto", "on", "off")
ATTACKS = ("analytic", "optimization")
POSITION_EMBEDDINGS = "vit.embeddings.position_embeddings"
PATCH_WEIGHT = "vit.embeddings.patch_embeddings.projection.weight"
UNK_POSITION_EMBEDDING = "vit.embeddings.unk_position_embedding"
CLASSIFIER_BIAS = "classifier.bias"
PSNR_CAP = 100.0
# A patch "has content" when its pixel values span more than this (on [0, 1]).
TEXTURE_RANGE = 0.1
SUMMARY_KEYS = ("mse", "psnr", "ssim", "recovered_fraction", "recovered_fraction_textured")


@dataclass
class ClientUpdate:
    """The gradient a client shares for one step, with the jigsaw it drew (the ground truth, unknown to the
    attacker): `jigsaw_mask` / `jigsaw_permutation` `[1, N]`, `None` when the step was not jigsawed."""

    gradients: dict[str, torch.Tensor]
    jigsaw_mask: torch.BoolTensor | None = None
    jigsaw_permutation: torch.LongTensor | None = None


def _trainable(model) -> tuple[list[str], list[torch.nn.Parameter]]:
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    return [name for name, _ in named], [param for _, param in named]


def draw_training_jigsaw(model, batch_size: int, ratio: float | None = None, generator: torch.Generator | None = None):
    """A jigsaw `(mask, permutation)` as the MJP model's training step draws it (block-wise, or every patch for the
    naive ablation), at `ratio` instead of `config.jigsaw_ratio` when given."""
    config = model.config
    grid_size, _ = patch_grid(config)
    num_masks = batch_size if config.jigsaw_per_sample else 1
    device = model.device if generator is None else None
    if config.jigsaw_mode == "naive":
        return full_shuffle(num_masks, grid_size[0] * grid_size[1], generator=generator, device=device)
    return random_jigsaw(
        num_masks,
        grid_size,
        config.jigsaw_ratio if ratio is None else ratio,
        min_block=config.jigsaw_min_block,
        max_block=config.jigsaw_max_block,
        min_aspect=config.jigsaw_min_aspect,
        generator=generator,
        device=device,
    )


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
        jigsaw: `"auto"` (the jigsaw is on for MJP models, absent for stock ViTs), `"on"` (MJP models only) or
            `"off"` (a step that lost the `jigsaw_prob` coin flip).
        jigsaw_ratio: the attacker-view shuffle ratio; the model's `jigsaw_ratio` by default.
        generator: source of the jigsaw draw (and of the naive ablation's pixel permutation).
    """
    if jigsaw not in JIGSAW_VIEWS:
        raise ValueError(f"jigsaw={jigsaw!r} is invalid; choose one of {JIGSAW_VIEWS}.")
    mjp = is_mjp_model(model)
    if jigsaw == "on" and not mjp:
        raise ValueError(
            f"jigsaw='on' needs an MJP-ViT model, but {type(model).__name__} has no jigsaw; use 'auto' or 'off'."
        )
    apply_jigsaw = mjp and jigsaw != "off"
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


def infer_label(gradients: dict[str, torch.Tensor]) -> torch.Tensor:
    """The label of a batch-1 cross-entropy step: the class whose classifier bias gradient is negative (iDLG)."""
    return gradients[CLASSIFIER_BIAS].argmin().view(1)


def placed_positions(gradients: dict[str, torch.Tensor]) -> torch.BoolTensor:
    """`[N]`: positions whose position-embedding row received a gradient. Rows replaced by the unknown embedding
    in the client's step get exactly none, so the attacker sees which positions were shuffled."""
    norms = gradients[POSITION_EMBEDDINGS][0, 1:].norm(dim=-1)
    return norms > 1e-7 * norms.max().clamp(min=torch.finfo(norms.dtype).tiny)


def _dalr_gradient(model, placed: torch.BoolTensor) -> torch.Tensor | None:
    """The DALR loss's gradient on the patch position embeddings `[N, D]`, given which positions were placed."""
    embeddings = model.vit.embeddings
    if getattr(embeddings, "dalr_head", None) is None:
        return None
    jigsaw_mask = None if placed.all() else (~placed)[None]
    with torch.enable_grad():
        loss = embeddings.localization_loss(jigsaw_mask)
        (grad,) = torch.autograd.grad(loss, embeddings.position_embeddings)
    return grad[0, 1:].detach()


def analytic_attack(model, gradients: dict[str, torch.Tensor], fill_value: float = 0.0):
    """APRIL-style closed-form reconstruction of a batch-1 input from its gradient.

    Returns `(pixel_values [1, C, H, W], placed [N])`: the patches solved from `dW = G^T X` (least squares through
    the pseudo-inverse, in float64) at the positions whose embedding row got a gradient, `fill_value` elsewhere
    (0 in `pixel_values` space is the normaliser's mean colour).
    """
    config = model.config
    grid_size, patch_size = patch_grid(config)
    placed = placed_positions(gradients)
    position_grad = gradients[POSITION_EMBEDDINGS][0, 1:].double()
    dalr = _dalr_gradient(model, placed)
    if dalr is not None:
        position_grad = position_grad - dalr.double()
    weight_grad = gradients[PATCH_WEIGHT].double().flatten(1)  # [D, C * ph * pw]
    regressors = position_grad[placed]
    unk_grad = gradients.get(UNK_POSITION_EMBEDDING)
    if unk_grad is not None and not placed.all():
        # The unknown embedding's gradient is the sum of the shuffled tokens' input gradients: one more regressor
        # absorbs the shuffled patches' common part (e.g. a plain background), which would otherwise leak into the
        # placed patches. What it solves for is an average patch with no position.
        regressors = torch.cat((regressors, unk_grad.double().view(1, -1)))
    solved = (torch.linalg.pinv(regressors.T) @ weight_grad)[: int(placed.sum())]  # [M, C * ph * pw]
    patches = torch.full(
        (grid_size[0] * grid_size[1], weight_grad.shape[1]), fill_value, dtype=torch.float64, device=solved.device
    )
    patches[placed] = solved
    image_size = (grid_size[0] * patch_size[0], grid_size[1] * patch_size[1])
    pixel_values = unpatchify(patches[None].float(), patch_size, image_size)
    return pixel_values, placed


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels (anisotropic TV), as in "Inverting Gradients"."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return dx + dy


def _attacker_forward_kwargs(model, placed: torch.BoolTensor) -> dict:
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


def optimization_attack(
    model,
    gradients: dict[str, torch.Tensor],
    *,
    pixel_bounds: tuple[float, float] | tuple[torch.Tensor, torch.Tensor] = (-1.0, 1.0),
    steps: int = 300,
    lr: float = 0.1,
    tv_weight: float = 1e-2,
    max_seconds: float | None = 60.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, dict]:
    """Gradient matching ("Inverting Gradients"): returns the best dummy input `[1, C, H, W]` and a summary.

    The objective is `1 - cos(grad(x), shared) + tv_weight * TV(x)` over all shared gradients; Adam with signed
    gradients, learning rate divided by 10 at 3/8, 5/8 and 7/8 of `steps`, pixels clamped to `pixel_bounds` (the
    valid `pixel_values` range), stopped after `steps` or `max_seconds`.
    """
    if steps < 1:
        raise ValueError(f"steps={steps} is invalid; pass at least 1 optimisation step.")
    config = model.config
    grid_size, patch_size = patch_grid(config)
    shape = (1, config.num_channels, grid_size[0] * patch_size[0], grid_size[1] * patch_size[1])
    device = gradients[PATCH_WEIGHT].device
    label = infer_label(gradients)
    forward_kwargs = _attacker_forward_kwargs(model, placed_positions(gradients))
    names, params = _trainable(model)
    pairs = [(param, gradients[name]) for name, param in zip(names, params) if name in gradients]
    params, targets = [p for p, _ in pairs], [t for _, t in pairs]
    target_norm = torch.sqrt(sum((t * t).sum() for t in targets))
    low, high = (torch.as_tensor(bound, dtype=torch.float32, device=device) for bound in pixel_bounds)

    noise = torch.randn(shape, generator=generator, device=generator.device if generator is not None else device)
    dummy = noise.to(device).clamp(low, high).requires_grad_(True)
    optimizer = torch.optim.Adam([dummy], lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[steps * 3 // 8, steps * 5 // 8, steps * 7 // 8], gamma=0.1
    )
    was_training = model.training
    model.train()
    best, best_loss, initial_loss, run = dummy.detach().clone(), float("inf"), float("nan"), 0
    start = time.perf_counter()
    try:
        # Gradient matching differentiates through a gradient: only the math SDPA kernel has a double backward.
        with sdpa_kernel(SDPBackend.MATH):
            for _ in tqdm(range(steps), desc="inverting gradients", disable=not progress, leave=False):
                loss = model(dummy, labels=label, **forward_kwargs).loss
                grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
                dot = sum((g * t).sum() for g, t in zip(grads, targets) if g is not None)
                norm = torch.sqrt(sum((g * g).sum() for g in grads if g is not None))
                objective = 1 - dot / (norm * target_norm + 1e-12) + tv_weight * total_variation(dummy)
                (dummy_grad,) = torch.autograd.grad(objective, dummy)
                # The objective belongs to the current input, before the step: keep the best input seen.
                value = objective.item()
                if run == 0:
                    initial_loss = value
                if value < best_loss:
                    best, best_loss = dummy.detach().clone(), value
                optimizer.zero_grad(set_to_none=True)
                dummy.grad = dummy_grad.sign()
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    dummy.copy_(torch.clamp(dummy, low, high))
                run += 1
                if max_seconds is not None and time.perf_counter() - start > max_seconds:
                    break
    finally:
        model.train(was_training)
    return best, {
        "steps_run": run,
        "seconds": time.perf_counter() - start,
        "initial_objective": initial_loss,
        "best_objective": best_loss,
    }


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
    lr: float = 0.1,
    tv_weight: float = 1e-2,
    max_seconds: float | None = 60.0,
    psnr_threshold: float = 20.0,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict, dict[str, list[np.ndarray]]]:
    """Attack each image of `pixel_values` `[B, C, H, W]` on its own (batch 1).

    Returns `(report, images)`: `report` has `per_image` (label, ground-truth `shuffled_positions`, and per attack
    the metrics of `reconstruction_metrics` plus the number of `unplaced_positions`) and `summary` (per attack, the
    mean of each of `SUMMARY_KEYS`); `images` maps `original`, `client_view` (the patch order the network saw;
    the naive ablation's in-patch pixel permutation is not drawn) and each attack to `[H, W, C]` arrays in
    `[0, 1]`, for plotting.
    """
    unknown = set(attacks) - set(ATTACKS)
    if unknown:
        raise ValueError(f"Unknown attacks {sorted(unknown)}; choose from {ATTACKS}.")
    _, patch_size = patch_grid(model.config)
    device = pixel_values.device
    generator = torch.Generator(device=device).manual_seed(seed)
    # The optimisation attack keeps its dummy input inside the image of [0, 1] pixels.
    black = torch.zeros(1, model.config.num_channels, 1, 1, device=device)
    bounds = (normalization.normalize(black), normalization.normalize(black + 1))
    per_image, images = [], {"original": [], "client_view": [], **{name: [] for name in attacks}}
    for index in tqdm(range(pixel_values.shape[0]), desc="privacy attacks", disable=not progress):
        x, y = pixel_values[index : index + 1], labels[index : index + 1]
        update = client_gradient(model, x, y, jigsaw=jigsaw, jigsaw_ratio=jigsaw_ratio, generator=generator)
        shuffled = (
            update.jigsaw_mask[0].cpu().numpy()
            if update.jigsaw_mask is not None
            else np.zeros(patchify(x, patch_size).shape[1], dtype=bool)
        )
        original = _to_hwc(x, normalization)
        view = x if update.jigsaw_permutation is None else shuffle_patches(x, patch_size, update.jigsaw_permutation)
        images["original"].append(original)
        images["client_view"].append(np.clip(_to_hwc(view, normalization), 0, 1))
        entry = {
            "index": index,
            "label": int(y.item()),
            "inferred_label": int(infer_label(update.gradients).item()),
            "shuffled_positions": np.flatnonzero(shuffled).tolist(),
        }
        placed = placed_positions(update.gradients)
        for name in attacks:
            if name == "analytic":
                reconstruction, _ = analytic_attack(model, update.gradients)
                extra = {}
            else:
                reconstruction, extra = optimization_attack(
                    model,
                    update.gradients,
                    pixel_bounds=bounds,
                    steps=steps,
                    lr=lr,
                    tv_weight=tv_weight,
                    max_seconds=max_seconds,
                    generator=generator,
                    progress=progress,
                )
            recon = _to_hwc(reconstruction, normalization)
            images[name].append(np.clip(recon, 0, 1))
            metrics = reconstruction_metrics(
                original, recon, patch_size, psnr_threshold=psnr_threshold, shuffled=shuffled
            )
            entry[name] = {**metrics, "unplaced_positions": int((~placed).sum()), **extra}
        per_image.append(entry)

    summary = {
        name: {key: _mean([entry[name][key] for entry in per_image]) for key in SUMMARY_KEYS} for name in attacks
    }
    report = {
        "jigsaw_view": jigsaw,
        "jigsaw_applied": bool(any(entry["shuffled_positions"] for entry in per_image)),
        "jigsaw_ratio": jigsaw_ratio if jigsaw_ratio is not None else getattr(model.config, "jigsaw_ratio", None),
        "uses_unk_position_embedding": uses_unk_position_embedding(model),
        "psnr_threshold": psnr_threshold,
        "optimization": {"steps": steps, "lr": lr, "tv_weight": tv_weight, "max_seconds": max_seconds}
        if "optimization" in attacks
        else None,
        "summary": summary,
        "per_image": per_image,
    }
    return report, images


def plot_reconstructions(images: dict[str, list[np.ndarray]], report: dict, path, max_rows: int = 8) -> None:
    """A PNG grid: one row per image (the first `max_rows`); original, the client's (jigsawed) view, then each
    attack with its PSNR and share of patches recovered in place."""
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
            if name in report["summary"]:
                metrics = report["per_image"][row][name]
                title = f"{name}\n{metrics['psnr']:.1f} dB, {100 * metrics['recovered_fraction']:.0f}%"
            if row == 0 or name in report["summary"]:
                ax.set_title(title, fontsize=7)
    fig.suptitle("Gradient inversion (PSNR, patches recovered in place)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", type=int, default=8, help="Images attacked, one at a time (batch 1).")
    parser.add_argument(
        "--jigsaw", choices=JIGSAW_VIEWS, default="auto", help="The client's step: with or without the jigsaw."
    )
    parser.add_argument(
        "--jigsaw_ratio", type=float, default=None, help="Shuffle ratio of the client's jigsaw (default: the model's)."
    )
    parser.add_argument(
        "--attacks", default="analytic,optimization", help="Comma-separated subset of analytic,optimization."
    )
    parser.add_argument("--steps", type=int, default=300, help="Optimisation attack: Adam steps per image.")
    parser.add_argument("--max_seconds", type=float, default=60.0, help="Optimisation attack: time limit per image.")
    parser.add_argument("--lr", type=float, default=0.1, help="Optimisation attack: Adam learning rate.")
    parser.add_argument("--tv_weight", type=float, default=1e-2, help="Optimisation attack: total-variation weight.")
    parser.add_argument(
        "--psnr_threshold", type=float, default=20.0, help="Per-patch PSNR for a patch to count as recovered."
    )
    args = parser.parse_args(argv)
    attacks = tuple(name.strip() for name in args.attacks.split(",") if name.strip())

    json_path = output_path(args.output_dir, "privacy.json", args.overwrite)
    png_path = output_path(args.output_dir, "privacy.png", args.overwrite)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    model = load_model(args.model_name_or_path, device)
    normalization = PixelNormalization.from_pretrained(args.model_name_or_path, model.config.num_channels)
    images, labels = load_eval_data(args, model.config, args.num_images)
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
        psnr_threshold=args.psnr_threshold,
        seed=args.seed,
    )
    report = {"model_name_or_path": str(args.model_name_or_path), "model_class": type(model).__name__, **report}
    write_json(json_path, report)
    plot_reconstructions(reconstructions, report, png_path)
    print(f"privacy: {report['summary']} -> {json_path}")
    return report


if __name__ == "__main__":
    main()
