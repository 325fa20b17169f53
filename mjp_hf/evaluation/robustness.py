"""Robustness: accuracy under common corruptions, accuracy under a heavy jigsaw, and prediction consistency.

* **Common corruptions** (Hendrycks & Dietterich 2019, the ImageNet-C set: noise, blur, weather and digital, at
  severities 1-5), generated with the `imagecorruptions` package (the maintained `imagecorruptions-imaug` release;
  the original 1.1.2 no longer imports with current setuptools, scikit-image and NumPy). It refuses images smaller
  than 32 pixels, so smaller images (Fashion-MNIST's 28x28) are reflect-padded to 32, corrupted and cropped back:
  the corruption acts at the image's own pixel scale. Reported: the accuracy per corruption and severity, the mean
  error per corruption, and their mean over corruptions, *unnormalised* (no AlexNet baseline), as the authors'
  `eval/cal_imagenet_c.py` reports its "mCE".
* **Jigsaw accuracy** (the released `eval.py`): accuracy when a block-wise jigsaw shuffles about 90% of the patches,
  one mask and permutation per batch (128), with the unknown position embedding at the shuffled positions when the
  model has one. A stock ViT (or an MJP model without the unknown embedding) gets the same patch shuffle in pixel
  space, with its ordinary position embeddings; the output says which was used. `accuracy_without_unk` gives every
  model that pixel-space shuffle, for a like-for-like comparison.
* **Prediction consistency** (the released `consistency.py`, which does not run as released): each image is fed
  clean and jigsawed at ratio 0.5 (its own mask); reported are the mean L2 distance between the two final CLS
  features after the last LayerNorm (`feature_l2`, as released), the same between the unit-normalised features
  (`feature_l2_unit`, comparable across models) and the argmax agreement.

`python -m mjp_hf.evaluation.robustness --model_name_or_path DIR --output_dir DIR` writes `robustness.json` and
`robustness.png`. The functions leave torch's thread count alone; their optional `between_batches` hook is called
after each batch (the command line passes the adaptive thread controller's update there).
"""

import argparse
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..configuration_mjp_vit import MJPViTConfig
from ..jigsaw import draw_jigsaw
from ..utils import bounded
from .common import (
    PixelNormalization,
    base_parser,
    batches,
    each_then,
    is_mjp_model,
    load_model_and_images,
    output_path,
    patch_grid,
    resolve_device,
    shuffle_patches,
    uses_unk_position_embedding,
    write_json,
)


SEVERITIES = (1, 2, 3, 4, 5)
# A callable run after each batch of an evaluation loop (e.g. the command line's thread-count update).
BetweenBatches = Callable[[], object]
# imagecorruptions' smallest accepted side.
MIN_CORRUPTION_SIZE = 32


def corruption_names(which: str = "common") -> list[str]:
    """Names of the corruptions: `"common"` (the 15 of ImageNet-C), `"all"` (with the 4 held-out ones), or a
    comma-separated list."""
    try:
        from imagecorruptions import get_corruption_names
    except ImportError as error:  # the original 1.1.2 fails here on setuptools >= 81 (no pkg_resources)
        raise ImportError(
            f"The corruption benchmark needs a working `imagecorruptions` ({error}); install the maintained release "
            "with `pip uninstall -y imagecorruptions && pip install imagecorruptions-imaug`."
        ) from error
    if which in ("common", "all"):
        return list(get_corruption_names(which))
    names = [name.strip() for name in which.split(",") if name.strip()]
    known = set(get_corruption_names("all"))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"Unknown corruptions {unknown}; choose from {sorted(known)}, 'common' or 'all'.")
    return names


def corrupt_images(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Apply one corruption at one severity (1-5) to uint8 images `[n, H, W, C]` (C = 1 or 3); same shape out.

    The draws are seeded (imagecorruptions uses NumPy's global generator, whose state is restored afterwards).
    """
    from imagecorruptions import corrupt

    if severity not in SEVERITIES:
        raise ValueError(f"severity={severity} is invalid; corruption severities are {SEVERITIES}.")
    _, height, width, channels = images.shape
    pad_h, pad_w = max(0, MIN_CORRUPTION_SIZE - height), max(0, MIN_CORRUPTION_SIZE - width)
    padding = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        out = np.empty_like(images)
        for index, image in enumerate(images):
            rgb = np.repeat(image, 3, axis=-1) if channels == 1 else image
            rgb = np.pad(rgb, padding, mode="reflect")
            corrupted = np.asarray(corrupt(rgb, corruption_name=name, severity=severity))
            corrupted = corrupted[padding[0][0] : padding[0][0] + height, padding[1][0] : padding[1][0] + width]
            out[index] = np.round(corrupted.mean(-1, keepdims=True)) if channels == 1 else corrupted
    finally:
        np.random.set_state(state)
    return out


def _cached_corruption(images, name, severity, seed, cache_dir, fingerprint) -> np.ndarray:
    if cache_dir is None:
        return corrupt_images(images, name, severity, seed=seed)
    path = Path(cache_dir) / f"{fingerprint}-{name}-{severity}-{seed}.npy"
    if path.is_file():
        return np.load(path)
    corrupted = corrupt_images(images, name, severity, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name first, so that a concurrent reader never sees half a file.
    temporary = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(temporary, corrupted)
    temporary.replace(path)
    return corrupted


@torch.no_grad()
def predict(
    model,
    pixel_values: torch.Tensor,
    batch_size: int = 256,
    *,
    between_batches: BetweenBatches | None = None,
    **forward_kwargs,
) -> torch.Tensor:
    """Logits of `pixel_values` in eval mode, batch by batch; MJP models run without jigsaw unless told."""
    if is_mjp_model(model) and not forward_kwargs:
        forward_kwargs = {"jigsaw": False}
    model.eval()
    parts = each_then(batches(pixel_values.shape[0], batch_size), between_batches)
    return torch.cat([model(pixel_values[part], **forward_kwargs).logits for part in parts])


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(-1) == labels.to(logits.device)).float().mean().item()


def corruption_accuracy(
    model,
    images: np.ndarray,
    labels: np.ndarray,
    normalization: PixelNormalization,
    *,
    corruptions: list[str] | None = None,
    severities: tuple[int, ...] = SEVERITIES,
    batch_size: int = 256,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    between_batches: BetweenBatches | None = None,
) -> dict:
    """Accuracy on clean and corrupted copies of uint8 `images` `[n, H, W, C]`.

    `images` are the model's inputs before rescaling: already resized and centre-cropped by its image processor
    (`load_eval_images`). The corruptions act on them at the model's input size, as ImageNet-C corrupts the 224-pixel
    crop, and only then does `normalization` apply the processor's rescale and normalisation; the clean images give
    exactly the processor's `pixel_values`.

    Corrupting is model-independent and costs more than evaluating a small model: with `cache_dir`, each
    corrupted set is stored there (keyed by the images' hash, corruption, severity and seed) and reused.

    Returns `clean_accuracy`, `clean_error`, `per_corruption` (`{name: {"accuracy": [one per severity],
    "mean_error": float}}`), `mean_corruption_error` (mean over corruptions of the mean error over severities,
    unnormalised) and `relative_mean_corruption_error` (the same minus the clean error).
    """
    corruptions = corruption_names("common") if corruptions is None else corruptions
    device = model.device
    targets = torch.as_tensor(labels, device=device)
    clean = accuracy(
        predict(model, normalization.from_uint8(images, device), batch_size, between_batches=between_batches), targets
    )
    per_corruption = {}
    jobs = [(name, severity) for name in corruptions for severity in severities]
    fingerprint = hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
    for step, (name, severity) in enumerate(tqdm(jobs, desc="corruptions", disable=not progress)):
        corrupted = _cached_corruption(images, name, severity, seed + step, cache_dir, fingerprint)
        logits = predict(
            model, normalization.from_uint8(corrupted, device), batch_size, between_batches=between_batches
        )
        acc = accuracy(logits, targets)
        per_corruption.setdefault(name, {"severities": list(severities), "accuracy": []})["accuracy"].append(acc)
    for result in per_corruption.values():
        result["mean_error"] = float(1 - np.mean(result["accuracy"]))
    mean_error = float(np.mean([r["mean_error"] for r in per_corruption.values()])) if per_corruption else None
    return {
        "num_images": int(len(images)),
        "clean_accuracy": clean,
        "clean_error": 1 - clean,
        "per_corruption": per_corruption,
        "mean_corruption_error": mean_error,
        "relative_mean_corruption_error": None if mean_error is None else mean_error - (1 - clean),
    }


def _jigsaw_config(model) -> MJPViTConfig:
    # A stock ViT gets the block mask of MJP's defaults (min block 8, aspect 0.3, released block cap).
    return model.config if is_mjp_model(model) else MJPViTConfig()


def _draw(model, num_masks: int, ratio: float, generator: torch.Generator):
    # Block-wise at `ratio` for every model, the naive ablation too: the evaluation compares models on one jigsaw.
    grid_size, _ = patch_grid(model.config)
    config = _jigsaw_config(model)
    mask, permutation = draw_jigsaw(config, num_masks, grid_size, ratio=ratio, mode="mjp", generator=generator)
    return mask.to(model.device), permutation.to(model.device)


def _jigsawed_cls_and_logits(model, pixel_values, mask, permutation, use_unk: bool):
    """Final CLS features and logits of the jigsawed input: through the model's unknown embedding when `use_unk`,
    else by moving the pixel patches (the same token shuffle, ordinary position embeddings)."""
    if use_unk:
        outputs = model.vit(pixel_values, jigsaw_mask=mask, jigsaw_permutation=permutation)
    else:
        _, patch_size = patch_grid(model.config)
        shuffled = shuffle_patches(pixel_values, patch_size, permutation)
        outputs = model.vit(shuffled, jigsaw=False) if is_mjp_model(model) else model.vit(shuffled)
    cls = outputs.last_hidden_state[:, 0]
    return cls, model.classifier(cls)


@torch.no_grad()
def jigsaw_accuracy(
    model,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    *,
    ratio: float = 0.9,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    between_batches: BetweenBatches | None = None,
) -> dict:
    """Accuracy under a block-wise jigsaw of `ratio`, one mask and permutation per batch (the released `eval.py`).

    Returns `ratio`, `accuracy` (with the unknown embedding when the model has one), `accuracy_without_unk`
    (pixel-space shuffle for every model), `uses_unk_position_embedding`, `mean_shuffled_fraction` (the block mask
    may fall short of the ratio, as released) and `note`.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    has_unk = uses_unk_position_embedding(model)
    correct, correct_plain, shuffled = 0, 0, []
    labels = labels.to(model.device)
    parts = tqdm(batches(pixel_values.shape[0], batch_size), desc="jigsaw accuracy", disable=not progress)
    for part in each_then(parts, between_batches):
        mask, permutation = _draw(model, 1, ratio, generator)
        shuffled.append(mask.float().mean().item())
        _, logits_plain = _jigsawed_cls_and_logits(model, pixel_values[part], mask, permutation, use_unk=False)
        correct_plain += (logits_plain.argmax(-1) == labels[part]).sum().item()
        if has_unk:
            _, logits = _jigsawed_cls_and_logits(model, pixel_values[part], mask, permutation, use_unk=True)
            correct += (logits.argmax(-1) == labels[part]).sum().item()
        else:
            correct = correct_plain
    total = pixel_values.shape[0]
    return {
        "ratio": ratio,
        "accuracy": correct / total,
        "accuracy_without_unk": correct_plain / total,
        "uses_unk_position_embedding": has_unk,
        "mean_shuffled_fraction": float(np.mean(shuffled)),
        "note": "shuffled positions carry the unknown position embedding"
        if has_unk
        else "the model has no unknown position embedding: patches are shuffled in pixel space and keep the ordinary "
        "position embeddings of the positions they land on",
    }


@torch.no_grad()
def prediction_consistency(
    model,
    pixel_values: torch.Tensor,
    *,
    ratio: float = 0.5,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
    between_batches: BetweenBatches | None = None,
) -> dict:
    """Clean vs jigsawed (`ratio`, one mask per image) predictions, as the released `consistency.py` meant.

    Returns `ratio`, `feature_l2` (mean L2 distance of the final post-LayerNorm CLS features), `feature_l2_unit`
    (the same on unit-normalised features), `agreement` (share of images whose argmax is unchanged) and
    `uses_unk_position_embedding`.
    """
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    has_unk = uses_unk_position_embedding(model)
    distances, unit_distances, agreements = [], [], []
    parts = tqdm(batches(pixel_values.shape[0], batch_size), desc="consistency", disable=not progress)
    for part in each_then(parts, between_batches):
        clean = pixel_values[part]
        outputs = model.vit(clean, jigsaw=False) if is_mjp_model(model) else model.vit(clean)
        cls_clean = outputs.last_hidden_state[:, 0]
        logits_clean = model.classifier(cls_clean)
        mask, permutation = _draw(model, clean.shape[0], ratio, generator)
        cls_jig, logits_jig = _jigsawed_cls_and_logits(model, clean, mask, permutation, use_unk=has_unk)
        distances.append((cls_clean - cls_jig).norm(dim=-1))
        unit = torch.nn.functional.normalize
        unit_distances.append((unit(cls_clean, dim=-1) - unit(cls_jig, dim=-1)).norm(dim=-1))
        agreements.append(logits_clean.argmax(-1) == logits_jig.argmax(-1))
    return {
        "ratio": ratio,
        "feature_l2": torch.cat(distances).mean().item(),
        "feature_l2_unit": torch.cat(unit_distances).mean().item(),
        "agreement": torch.cat(agreements).float().mean().item(),
        "uses_unk_position_embedding": has_unk,
    }


def plot_robustness(report: dict, path) -> None:
    """Mean error per corruption (bars) and error against severity (averaged over corruptions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bars, lines) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    corruption = report.get("corruption")
    if corruption and corruption["per_corruption"]:
        names = list(corruption["per_corruption"])
        errors = [100 * corruption["per_corruption"][n]["mean_error"] for n in names]
        bars.bar(range(len(names)), errors, color="tab:blue")
        bars.axhline(100 * corruption["clean_error"], color="k", ls="--", lw=1, label="clean error")
        bars.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=60, ha="right", fontsize=7)
        bars.set_ylabel("error (%), mean over severities")
        bars.legend(fontsize=7)
        accuracy_by_severity = np.array([corruption["per_corruption"][n]["accuracy"] for n in names])
        severities = corruption["per_corruption"][names[0]]["severities"]
        lines.plot(severities, 100 * (1 - accuracy_by_severity.mean(0)), marker="o")
        lines.set_xlabel("severity")
        lines.set_ylabel("error (%), mean over corruptions")
    jigsaw, consistency = report.get("jigsaw"), report.get("consistency")
    title = []
    if corruption and corruption["mean_corruption_error"] is not None:
        title.append(
            f"clean acc {100 * corruption['clean_accuracy']:.1f}%, mCE {100 * corruption['mean_corruption_error']:.1f}%"
        )
    if jigsaw:
        title.append(f"jigsaw {jigsaw['ratio']} acc {100 * jigsaw['accuracy']:.1f}%")
    if consistency:
        title.append(f"consistency agreement {100 * consistency['agreement']:.1f}%")
    fig.suptitle(" | ".join(title), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _corruption_list(text: str) -> list[str]:
    """`--corruptions`: 'none', 'common', 'all' or a comma-separated list of names."""
    if text.strip() == "none":
        return []
    try:
        names = corruption_names(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no corruption; pass 'none' to skip them.")
    return names


def _severity_list(text: str) -> tuple[int, ...]:
    """`--severities`: distinct severities in 1-5, comma-separated."""
    try:
        values = tuple(int(value) for value in text.split(",") if value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers") from None
    if not values or any(value not in SEVERITIES for value in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: pass distinct severities in 1-5, e.g. 1,2,3,4,5")
    return values


def main(argv=None, *, between_batches: BetweenBatches | None = None) -> dict:
    """The command line. `between_batches` (the thread-count update that `run_command_line` passes) runs after each
    batch when the model is on the CPU."""
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max_eval_samples", type=bounded(int, minimum=1), default=1000, help="Images evaluated (default 1000)."
    )
    parser.add_argument(
        "--corruptions",
        type=_corruption_list,
        default="common",
        help="'common' (15), 'all' (19), 'none', or a comma list.",
    )
    parser.add_argument(
        "--severities", type=_severity_list, default="1,2,3,4,5", help="Comma-separated severities in 1-5."
    )
    parser.add_argument(
        "--jigsaw_ratio",
        type=bounded(float, minimum=0, maximum=1),
        default=0.9,
        help="Shuffle ratio of the jigsaw accuracy (released 0.9).",
    )
    parser.add_argument(
        "--consistency_ratio",
        type=bounded(float, minimum=0, maximum=1),
        default=0.5,
        help="Shuffle ratio of the consistency test (released 0.5).",
    )
    parser.add_argument("--corruption_cache", default=None, help="Folder to store and reuse corrupted images in.")
    parser.add_argument(
        "--batch_size",
        type=bounded(int, minimum=1),
        default=128,
        help="Batch size; the jigsaw accuracy draws one mask per batch.",
    )
    args = parser.parse_args(argv)
    if args.corruption_cache is not None and Path(args.corruption_cache).expanduser().exists():
        if not Path(args.corruption_cache).expanduser().is_dir():
            parser.error(f"--corruption_cache {args.corruption_cache!r} is a file; pass a folder (new or existing).")
    severities, corruptions = args.severities, args.corruptions

    json_path = output_path(args.output_dir, "robustness.json", args.overwrite)
    png_path = output_path(args.output_dir, "robustness.png", args.overwrite)
    device = resolve_device(args.device)
    if torch.device(device).type != "cpu":
        between_batches = None  # on an accelerator the CPU threads only feed it
    model, normalization, images, labels = load_model_and_images(args, device, args.max_eval_samples)
    pixel_values = normalization.from_uint8(images, device)
    targets = torch.from_numpy(labels).to(device)
    report = {
        "model_name_or_path": str(args.model_name_or_path),
        "model_class": type(model).__name__,
        "corruption": corruption_accuracy(
            model,
            images,
            labels,
            normalization,
            corruptions=corruptions,
            severities=severities,
            batch_size=args.batch_size,
            seed=args.seed,
            cache_dir=args.corruption_cache,
            between_batches=between_batches,
        ),
        "jigsaw": jigsaw_accuracy(
            model,
            pixel_values,
            targets,
            ratio=args.jigsaw_ratio,
            batch_size=args.batch_size,
            seed=args.seed,
            between_batches=between_batches,
        ),
        "consistency": prediction_consistency(
            model,
            pixel_values,
            ratio=args.consistency_ratio,
            batch_size=args.batch_size,
            seed=args.seed,
            between_batches=between_batches,
        ),
    }
    write_json(json_path, report)
    plot_robustness(report, png_path)
    c = report["corruption"]
    print(
        f"robustness: clean {c['clean_accuracy']:.4f}, mCE {c['mean_corruption_error']}, jigsaw "
        f"{report['jigsaw']['accuracy']:.4f}, agreement {report['consistency']['agreement']:.4f} -> {json_path}"
    )
    return report


if __name__ == "__main__":
    from ..training.command_line import run_command_line  # a command line adapts torch's thread count

    run_command_line(main)
