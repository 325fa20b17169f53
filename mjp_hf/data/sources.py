"""Labelled images to evaluate on: the embedded default, an image folder, or any dataset `datasets` can open."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arrays import is_array_image, read_array_images
from .fashion_mnist import FASHION_MNIST_LABELS, FASHION_MNIST_SPLITS, load_fashion_mnist_arrays


@dataclass
class LabelledImages:
    """`images`: uint8 arrays `[n, H, W(, C)]` or a list of PIL images; `labels`: int64 `[n]`; `class_names`: the
    data's name of each label, where it has them; `source`: what the data is, for messages."""

    images: np.ndarray | list
    labels: np.ndarray
    class_names: list[str] | None
    source: str


def check_data_arguments(data_dir: str | Path | None, dataset_name: str | None, split: str) -> None:
    """Refuse, before anything is read, data arguments that cannot work: both sources, a `data_dir` that is not a
    folder, a split the embedded default does not have. The errors name the evaluations' flags."""
    if data_dir is not None and dataset_name is not None:
        raise ValueError("Pass either --data_dir (an image folder) or --dataset_name, not both.")
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise FileNotFoundError(
            f"--data_dir {str(data_dir)!r} is not a folder; pass an image folder with one sub-folder per class."
        )
    if data_dir is None and dataset_name is None and split not in FASHION_MNIST_SPLITS:
        raise ValueError(f"--split {split!r}: the embedded Fashion-MNIST has the splits 'train' and 'test'.")


def load_labelled_images(
    *,
    data_dir: str | Path | None = None,
    dataset_name: str | None = None,
    split: str = "test",
    image_column: str = "image",
    label_column: str = "label",
    max_samples: int | None = None,
) -> LabelledImages:
    """The first `max_samples` images of `split` (all without it) and their labels.

    The default (neither `data_dir` nor `dataset_name`) is the embedded Fashion-MNIST (its `train` or `test` split,
    whose first images are already mixed across classes). `data_dir` reads an image folder (one sub-folder per class)
    and `dataset_name` any dataset `datasets.load_dataset` opens (a local folder or, when online, the Hub). The
    errors name the command-line flags of the evaluations (`--data_dir`, `--split`, ...)."""
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples={max_samples}: pass at least 1 image, or None for all.")
    check_data_arguments(data_dir, dataset_name, split)
    if data_dir is None and dataset_name is None:
        images, labels = load_fashion_mnist_arrays(split)
        if max_samples is not None:
            images, labels = images[:max_samples], labels[:max_samples]
        return LabelledImages(images, labels, list(FASHION_MNIST_LABELS), f"Fashion-MNIST ({split} split)")

    from datasets import load_dataset

    if data_dir is not None:
        dataset = load_dataset("imagefolder", data_dir=str(Path(data_dir).expanduser()), split=split)
    else:
        dataset = load_dataset(dataset_name, split=split)
    missing = [column for column in (image_column, label_column) if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"The dataset has no column {missing}; its columns are {dataset.column_names}. Pass "
            "--image_column_name / --label_column_name."
        )
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    try:
        labels = np.asarray(dataset[label_column], dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(
            f"--label_column_name {label_column!r}: the column holds {dataset.features[label_column]} values, not "
            "class indices; pass the column of integer labels (a ClassLabel)."
        ) from None
    images = dataset[image_column]
    if len(images) and all(is_array_image(item) for item in images):
        images = read_array_images(images)
    return LabelledImages(
        images,
        labels,
        getattr(dataset.features[label_column], "names", None),
        f"{data_dir or dataset_name} ({split} split)",
    )


__all__ = ["LabelledImages", "check_data_arguments", "load_labelled_images"]
