"""Helpers shared by the evaluations: loading a saved model and the image processor every evaluation preprocesses
through, the evaluation images, pixel-space patch shuffling, output files and the command-line flags every evaluation
takes."""

import argparse
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ..configuration_mjp_vit import pair as _pair
from ..configuration_mjp_vit import patch_grid  # noqa: F401  (the evaluations import it from here)
from ..data.pixels import channel_statistics, model_images, pixel_values, processor_image_size
from ..data.sources import check_data_arguments, load_labelled_images
from ..modeling_mjp_vit import MJPViTForImageClassification
from ..utils import bounded, listed
from ..utils.model_source import MODEL_FLAG, MODEL_TYPES, check_model_source, refuse, unsafe_pickle  # noqa: F401


# transformers' ViT image processor normalisation, used when a model folder has no preprocessor_config.json.
DEFAULT_IMAGE_MEAN = (0.5, 0.5, 0.5)
DEFAULT_IMAGE_STD = (0.5, 0.5, 0.5)


def _mentions_unsafe_loading(error: BaseException) -> bool:
    while error is not None:
        if "weights_only" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def load_model(model_name_or_path: str | Path, device: torch.device | str = "cpu"):
    """A saved image classifier (MJP-ViT or stock ViT folder, see `check_model_source`) in eval mode on `device`.

    Weights load from safetensors, or from a `pytorch_model.bin` with `torch.load(weights_only=True)`; one that needs
    more than that is refused, and no advice to load it unsafely is passed on."""
    from transformers import AutoModelForImageClassification

    import mjp_hf  # noqa: F401  (registers the mjp_vit Auto classes)

    source = check_model_source(model_name_or_path)
    try:
        model, info = AutoModelForImageClassification.from_pretrained(source, output_loading_info=True)
    except Exception as error:
        if _mentions_unsafe_loading(error):
            raise unsafe_pickle(source) from None
        if not Path(source).expanduser().exists():
            raise OSError(
                f"{MODEL_FLAG} {source!r}: no such folder, and the Hub has no such model ({error})"
            ) from None
        raise
    missing = sorted(info["missing_keys"])
    if missing:
        # Weights left at their random initialisation would make every evaluation meaningless.
        if all(key.startswith("classifier.") for key in missing):
            raise refuse(
                source,
                f"has no classification head (it lacks {missing}): it is a bare encoder",
                "the evaluations need an image classifier (ViTForImageClassification or MJPViTForImageClassification)",
            )
        raise ValueError(
            f"{model_name_or_path} lacks weights for {missing}: it was saved by a version of mjp_hf with other "
            "parameter names. Load it with that version, or re-save it with this one."
        )
    return model.to(device).eval()


def is_mjp_model(model) -> bool:
    return isinstance(model, MJPViTForImageClassification)


def uses_unk_position_embedding(model) -> bool:
    """Whether the model replaces the position embedding of shuffled patches by the unknown embedding."""
    return is_mjp_model(model) and model.vit.embeddings.unk_position_embedding is not None


def load_image_processor(model_name_or_path: str | Path | None, config):
    """The image processor saved with the model (`AutoImageProcessor`), which every evaluation preprocesses through.

    transformers has no default for a folder without a `preprocessor_config.json` (`AutoImageProcessor` raises), so
    such a folder (and `None`) gets the stock ViT processor (bilinear resize, no crop, mean and std 0.5) at the model's
    `image_size`. A processor whose output size is not the model's is refused."""
    from transformers import AutoImageProcessor, ViTImageProcessorPil

    path = Path(model_name_or_path) if model_name_or_path is not None else None
    processor = None
    if path is not None and (path / "preprocessor_config.json").is_file():
        processor = AutoImageProcessor.from_pretrained(str(path))
    elif path is not None and not path.exists():
        try:  # a Hub id: its processor when it has one
            processor = AutoImageProcessor.from_pretrained(str(model_name_or_path))
        except OSError:
            processor = None
    if processor is None:
        height, width = _pair(config.image_size)
        processor = ViTImageProcessorPil(size={"height": height, "width": width})
    size, expected = processor_image_size(processor), _pair(config.image_size)
    if size != expected:
        raise ValueError(
            f"The image processor of {model_name_or_path} gives {size[0]}x{size[1]} images but the model takes "
            f"{expected[0]}x{expected[1]}; save the processor the model was trained with beside it."
        )
    return processor


@dataclass
class PixelNormalization:
    """The image processor's rescale and normalisation, as the affine map between `[0, 1]` pixels (uint8 / 255) and
    the model's `pixel_values`, whose inverse maps reconstructions back to pixels and whose image of `[0, 1]` bounds
    them.

    `from_uint8` gives exactly the processor's `pixel_values` for uint8 images already at the model's size, through
    `mjp_hf.data.pixels.pixel_values`, the one path from images to pixels. Without a processor (the default), it is
    transformers' default ViT processor with `mean` and `std` (0.5).
    """

    mean: tuple[float, ...] = DEFAULT_IMAGE_MEAN
    std: tuple[float, ...] = DEFAULT_IMAGE_STD
    image_processor: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.image_processor is None:
            from transformers import ViTImageProcessorPil

            self.image_processor = ViTImageProcessorPil(image_mean=list(self.mean), image_std=list(self.std))

    @classmethod
    def from_processor(cls, image_processor, num_channels: int = 3) -> "PixelNormalization":
        """The normalisation of `image_processor`, for a model with `num_channels` channels."""
        # A 1-channel model with an RGB processor: its first channel's statistics, as the training transform uses.
        statistics = channel_statistics(image_processor, num_channels)
        # [0, 1] pixels are rescaled to `255 * rescale_factor` units before the processor normalises them.
        rescale = float(image_processor.rescale_factor) if getattr(image_processor, "do_rescale", True) else 1.0
        scale = 255.0 * rescale
        if getattr(image_processor, "do_normalize", True):
            mean, std = statistics["image_mean"], statistics["image_std"]
        else:
            mean, std = (0.0,) * num_channels, (1.0,) * num_channels
        return cls(
            mean=tuple(value / scale for value in mean),
            std=tuple(value / scale for value in std),
            image_processor=image_processor,
        )

    @classmethod
    def from_pretrained(cls, model_name_or_path: str | Path, config) -> "PixelNormalization":
        """The normalisation of the model folder's image processor (`load_image_processor`)."""
        return cls.from_processor(load_image_processor(model_name_or_path, config), config.num_channels)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, len(self.mean), 1, 1)
        return (
            torch.tensor(self.mean, dtype=like.dtype, device=like.device).view(shape),
            torch.tensor(self.std, dtype=like.dtype, device=like.device).view(shape),
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` pixels in `[0, 1]` -> `pixel_values`."""
        mean, std = self._stats(images)
        return (images - mean) / std

    def denormalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`pixel_values` -> pixels in `[0, 1]` (not clipped)."""
        mean, std = self._stats(pixel_values)
        return pixel_values * std + mean

    def from_uint8(self, images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """`[B, H, W, C]` uint8 images at the model's size -> the processor's `pixel_values` `[B, C, H, W]`."""
        return pixel_values(images, self.image_processor, len(self.mean), resize=False, device=device)


def load_eval_images(
    config,
    max_samples: int | None = None,
    data_dir: str | None = None,
    split: str = "test",
    dataset_name: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    image_processor=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation images as uint8 `[n, H, W, C]` at the model's resolution and channel count, and int64 labels.

    The images (`mjp_hf.data.sources.load_labelled_images`: the embedded default, `data_dir` or `dataset_name`) are
    resized and centre-cropped by `image_processor` (the model's, from `load_image_processor`; the stock ViT
    processor at the model's size when `None`) with its resampling filter; its rescale and normalisation are left to
    `PixelNormalization.from_uint8`, so that corruptions can act on the uint8 images the model sees.

    The labels are checked against the model's classes (`check_labels`) before anything is evaluated.
    """
    data = load_labelled_images(
        data_dir=data_dir,
        dataset_name=dataset_name,
        split=split,
        image_column=image_column,
        label_column=label_column,
        max_samples=max_samples,
    )
    check_labels(config, data.labels, data.class_names, source=data.source)
    if config.num_channels not in (1, 3):
        raise ValueError(
            f"Only 1- or 3-channel models can be evaluated on images, got num_channels={config.num_channels}."
        )
    if image_processor is None:
        image_processor = load_image_processor(None, config)
    images = model_images(data.images, image_processor, config.num_channels)
    if images.shape[-1] != config.num_channels:  # grayscale for an RGB model: corruptions see its three channels
        images = np.repeat(images, config.num_channels, axis=-1)
    return images, data.labels


def _name_key(name) -> str:
    # Folder names and hub datasets spell class names differently ("T-shirt/top", "t-shirt_top").
    return "".join(character for character in str(name).lower() if character.isalnum())


def check_labels(config, labels: np.ndarray, class_names=None, *, source: str = "the evaluation data") -> None:
    """Raise a `ValueError` unless the data's labels are classes of the model: every label in
    `[0, config.num_labels)`, and, where both the data and the model name their classes, the same name at each
    index the data uses. An accuracy computed on other classes would be a wrong number, printed as a result."""
    num_labels = config.num_labels
    id2label = {int(key): value for key, value in (config.id2label or {}).items()}
    model_names = [id2label.get(index, f"LABEL_{index}") for index in range(num_labels)]
    if len(labels) == 0:
        raise ValueError(f"{source} holds no images to evaluate; check the data flags and --split.")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_labels:
        data_names = f" ({listed(class_names)})" if class_names else ""
        raise ValueError(
            f"{source} has labels {low}..{high}{data_names}, but the model classifies {num_labels} classes "
            f"({listed(model_names)}): its accuracy on this data would be meaningless. Evaluate it on data with the "
            "model's classes (--data_dir / --dataset_name, --label_column_name)."
        )
    named = not all(name == f"LABEL_{index}" for index, name in enumerate(model_names))
    if class_names and named:
        mismatched = [
            (index, class_names[index], model_names[index])
            for index in sorted(set(labels.tolist()))
            if index < len(class_names) and _name_key(class_names[index]) != _name_key(model_names[index])
        ]
        if mismatched:
            index, data_name, model_name = mismatched[0]
            raise ValueError(
                f"{source} names class {index} {data_name!r}, but the model's id2label names it {model_name!r} "
                f"({len(mismatched)} classes differ): the labels would be compared with the wrong classes. Evaluate "
                "on data whose classes are the model's, in the model's order."
            )


def patchify(pixel_values: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """`[B, C, H, W]` -> `[B, N, C * ph * pw]` in the patch embedding's (row-major, channel-first) order."""
    return F.unfold(pixel_values, kernel_size=patch_size, stride=patch_size).transpose(1, 2)


def unpatchify(patches: torch.Tensor, patch_size: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """Inverse of `patchify`."""
    return F.fold(patches.transpose(1, 2), output_size=image_size, kernel_size=patch_size, stride=patch_size)


def shuffle_patches(
    pixel_values: torch.Tensor, patch_size: tuple[int, int], permutation: torch.LongTensor
) -> torch.Tensor:
    """Move whole pixel patches by a gather index `[B or 1, N]` (patch `i` of the result is patch `perm[i]`).

    Because the patch embedding is a convolution with stride = kernel, this is exactly the token shuffle of the
    jigsaw; it lets models without a jigsaw of their own (a stock ViT) be fed the same shuffled input.
    """
    patches = patchify(pixel_values, patch_size)
    index = permutation.expand(patches.shape[0], -1).unsqueeze(-1).expand_as(patches)
    return unpatchify(patches.gather(1, index), patch_size, pixel_values.shape[-2:])


def batches(num_items: int, batch_size: int):
    """`slice`s covering `range(num_items)` in steps of `batch_size`."""
    return [slice(start, min(start + batch_size, num_items)) for start in range(0, num_items, batch_size)]


def each_then(parts: Iterable, between_batches: Callable[[], object] | None) -> Iterator:
    """Yield `parts`, calling `between_batches` (a command line's thread-count update) after each one."""
    for part in parts:
        yield part
        if between_batches is not None:
            between_batches()


def output_path(output_dir: str | Path, name: str, overwrite: bool) -> Path:
    """`output_dir/name`, checked before any work: an existing file is replaced only with `overwrite`, never through
    a symbolic link (whose target may be anything, the evaluated model's weights included) nor when it is a folder,
    and the folder must be writable. Nothing is created here: `write_json` makes the folder when there is a result, so
    that a failed evaluation leaves no empty folder behind."""
    folder = Path(output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--output_dir {str(output_dir)!r} is a file; pass a folder (new or existing).")
    path = folder / name
    if path.is_symlink():
        raise FileExistsError(
            f"{path} is a symbolic link (to {os.readlink(path)}): the evaluation neither writes through it nor replaces "
            "it, even with --overwrite. Remove it, or choose another --output_dir."
        )
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; choose another --output_dir.")
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass --overwrite to replace it, or choose another --output_dir."
        )
    existing = next(parent for parent in (folder, *folder.absolute().parents) if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"--output_dir {str(output_dir)!r} cannot be written ({existing} is not writable).")
    return path


def finite(value: float, cap: float = 100.0) -> float:
    """A JSON-safe float: infinities (a perfect PSNR) become `cap`."""
    value = float(value)
    return cap if math.isinf(value) and value > 0 else value


def write_json(path: Path, payload: dict) -> None:
    """Write `payload` to `path` whole or not at all (a temporary file renamed over it), making its folder first."""
    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)


def resolve_device(device: str | None) -> torch.device:
    """The torch device of `--device`: 'auto' (CUDA when available), or a device this machine has."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device; pass auto, cpu, cuda or cuda:N.") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (resolved.index is not None and resolved.index >= count):
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ValueError(f"--device {device!r}: this machine has {have}; pass auto or cpu.")
    elif resolved.type not in ("cpu", "meta"):
        module = getattr(torch, resolved.type, None)
        if module is None or not getattr(module, "is_available", lambda: False)():
            raise ValueError(f"--device {device!r}: this machine has no {resolved.type} device; pass auto or cpu.")
    return resolved


class EvaluationArgumentParser(argparse.ArgumentParser):
    """An `ArgumentParser` that checks the shared flags of `base_parser` when it parses, before any work: an
    unusable `--output_dir`, `--model_name_or_path`, `--device`, data flags. A problem stops the command with argparse's
    usage and a message naming the flag, the value and the fix."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        try:
            check_shared_arguments(parsed)
        except (ValueError, OSError) as error:
            self.error(str(error))
        return parsed, extras


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.expanduser().resolve(), folder.expanduser().resolve()
    return path == folder or folder in path.parents


def check_shared_arguments(args) -> None:
    """The checks `EvaluationArgumentParser` runs on the flags of `base_parser`."""
    resolve_device(args.device)
    check_data_arguments(args.data_dir, args.dataset_name, args.split)
    if args.data_dir is not None:
        if _inside(Path(args.output_dir), Path(args.data_dir)):
            raise ValueError(
                f"--output_dir {args.output_dir!r} is inside --data_dir {args.data_dir!r}: its PNG would become an "
                "image of the data set the next time it is read. Choose an --output_dir outside it."
            )
    for name in (args.image_column_name, args.label_column_name):
        if not name.strip():
            raise ValueError("--image_column_name and --label_column_name name columns: pass non-empty names.")
    folder = Path(args.output_dir).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--output_dir {args.output_dir!r} is a file; pass a folder (new or existing).")
    check_model_source(args.model_name_or_path)


def base_parser(description: str) -> argparse.ArgumentParser:
    """Flags every evaluation takes (the data flags are ignored by the position probes, which read only weights),
    checked when parsed (`EvaluationArgumentParser`)."""
    parser = EvaluationArgumentParser(description=description)
    parser.add_argument("--model_name_or_path", required=True, help="A saved MJP-ViT or stock ViT model folder.")
    parser.add_argument("--output_dir", required=True, help="Folder for the JSON and PNG outputs.")
    parser.add_argument(
        "--data_dir",
        default=None,
        help="An image folder (one sub-folder per class) to evaluate on; default: the embedded Fashion-MNIST.",
    )
    parser.add_argument("--dataset_name", default=None, help="A dataset for `datasets.load_dataset` instead.")
    parser.add_argument("--image_column_name", default="image", help="Image column of --data_dir/--dataset_name.")
    parser.add_argument("--label_column_name", default="label", help="Label column of --data_dir/--dataset_name.")
    parser.add_argument("--split", default="test", help="Split of the data to use (default: test).")
    parser.add_argument(
        "--seed",
        type=bounded(int, minimum=0, maximum=2**31 - 1),
        default=0,
        help="Seed of every random draw (jigsaws, corruptions).",
    )
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ...")
    parser.add_argument("--overwrite", action="store_true", help="Replace existing output files.")
    return parser


def load_eval_data(args, config, max_samples: int | None, image_processor=None) -> tuple[np.ndarray, np.ndarray]:
    """`load_eval_images` driven by the parsed `base_parser` flags."""
    return load_eval_images(
        config,
        max_samples,
        image_processor=image_processor,
        data_dir=args.data_dir,
        split=args.split,
        dataset_name=args.dataset_name,
        image_column=args.image_column_name,
        label_column=args.label_column_name,
    )


def load_model_and_images(args, device, max_samples: int | None):
    """What an evaluation that reads images starts from, driven by the `base_parser` flags: the model in eval mode on
    `device`, its image processor's `PixelNormalization`, and up to `max_samples` uint8 images at the model's size
    (through that processor) with their labels."""
    model = load_model(args.model_name_or_path, device)
    image_processor = load_image_processor(args.model_name_or_path, model.config)
    normalization = PixelNormalization.from_processor(image_processor, model.config.num_channels)
    images, labels = load_eval_data(args, model.config, max_samples, image_processor)
    return model, normalization, images, labels
