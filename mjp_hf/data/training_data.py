"""The data of a training run (`examples/run_image_classification.py`): the image folders it is given, checked
before anything loads; the dataset (a dataset `datasets` opens, an image folder, or the embedded Fashion-MNIST);
and its train and evaluation splits with their labels. The errors name the example's flags."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .fashion_mnist import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_HUB_ID,
    INSTALL_HINT,
    fashion_mnist_available,
    load_fashion_mnist,
)


logger = logging.getLogger(__name__)

_SHOWN_EXTENSIONS = ".bmp, .jpeg, .jpg, .pgm, .png, .ppm, .webp"


def _first_image(folder: Path) -> Path | None:
    """An image file in `folder` or below (linked class folders included), or None."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    extensions = {extension.lower() for extension in ImageFolder.EXTENSIONS}
    seen = set()
    for root, folders, files in os.walk(folder, followlinks=True):
        if os.path.realpath(root) in seen:  # a link back up the tree
            folders.clear()
            continue
        seen.add(os.path.realpath(root))
        for name in files:
            if Path(name).suffix.lower() in extensions:
                return Path(root) / name
    return None


def check_image_folder(flag: str, value: str) -> None:
    """Refuse an image folder (`--train_dir`, `--validation_dir`) that is not a folder or holds no image."""
    if not Path(value).is_dir():
        raise FileNotFoundError(f"{flag} {value} is not a folder; pass an image folder (one sub-folder per class).")
    if _first_image(Path(value)) is None:
        alternative = (
            ", or leave --validation_dir out to evaluate on --train_val_split of the training images"
            if flag == "--validation_dir"
            else ""
        )
        raise ValueError(
            f"{flag} {value} holds no images ({_SHOWN_EXTENSIONS}, ...); pass an image folder with one sub-folder of "
            f"images per class{alternative}."
        )


def load_image_dataset(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    cache_dir: str | None = None,
    token: str | None = None,
):
    """`(DatasetDict with a train split, Hub id of the dataset for the model card or None)`: `dataset_name` through
    `datasets.load_dataset`, else the image folders, else the embedded Fashion-MNIST (the Debian package; the Hub
    dataset when it is missing and the Hub is reachable)."""
    from datasets import DatasetDict, load_dataset

    hub_id = None
    if dataset_name is not None:
        dataset = load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir, token=token)
        hub_id = dataset_name
    elif train_dir is not None:
        data_files = {"train": os.path.join(train_dir, "**")}
        if validation_dir is not None:
            data_files["validation"] = os.path.join(validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)
    elif fashion_mnist_available():
        logger.info("No dataset given: Fashion-MNIST from %s.", FASHION_MNIST_DIR)
        dataset, hub_id = load_fashion_mnist(), FASHION_MNIST_HUB_ID
    else:
        logger.warning(
            "Fashion-MNIST is not in %s (%s); trying the Hub dataset %s.",
            FASHION_MNIST_DIR,
            INSTALL_HINT,
            FASHION_MNIST_HUB_ID,
        )
        try:
            dataset = load_dataset(FASHION_MNIST_HUB_ID, cache_dir=cache_dir)
        except Exception as error:
            raise RuntimeError(
                f"No dataset given, Fashion-MNIST is missing from {FASHION_MNIST_DIR} and the Hub dataset "
                f"{FASHION_MNIST_HUB_ID} could not be loaded ({error}). Either {INSTALL_HINT}, go online, or pass "
                "--dataset_name / --train_dir."
            ) from error
        hub_id = FASHION_MNIST_HUB_ID
    if not isinstance(dataset, DatasetDict) or "train" not in dataset:
        raise ValueError(f"The dataset has no 'train' split (splits: {list(getattr(dataset, 'keys', list)())}).")
    return dataset, hub_id


@dataclass
class TrainingSplits:
    """What a run trains and evaluates on: `train` and `eval` datasets, the class names (index = label id), and
    what the eval split is (`validation`, `test`, or a held-out share of the training split), for messages."""

    train: object
    eval: object
    label_names: list[str]
    eval_split: str

    def check_full_batch(self, per_device_batch_size: int, processes: int = 1) -> None:
        """Refuse a training split too small for one full batch (with `--dataloader_drop_last`, nothing would be
        trained), before any model is built."""
        batch = per_device_batch_size * processes
        if len(self.train) < batch:
            raise ValueError(
                f"{len(self.train)} training examples make no full batch of {batch} (--per_device_train_batch_size "
                f"{per_device_batch_size} x {processes} processes) with --dataloader_drop_last: nothing would be "
                "trained. Pass a smaller batch, more examples (--max_train_samples), or drop --dataloader_drop_last."
            )


def _check_columns(train, image_column: str, label_column: str, from_image_folder: bool) -> None:
    for flag, column in (("--image_column_name", image_column), ("--label_column_name", label_column)):
        if column not in train.column_names:
            hint = ""
            if from_image_folder and flag == "--label_column_name":
                hint = (
                    " An image folder gets its labels from its sub-folders, and none when there is only one: a "
                    "classifier needs at least 2 classes, one sub-folder each."
                )
            raise ValueError(
                f"The training data has no column {column!r} (its columns: {train.column_names}); name the right one "
                f"with {flag}.{hint}"
            )


def training_splits(
    dataset,
    *,
    image_column: str = "image",
    label_column: str = "label",
    train_val_split: float = 0.15,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
    from_image_folder: bool = False,
) -> TrainingSplits:
    """The train and eval splits of `dataset` (from `load_image_dataset`), its columns and labels checked: the eval
    split is `validation`, else `test`, else a stratified `train_val_split` share held out of `train`. A random
    `max_train_samples` of the training examples (keyed to `seed`) and the first `max_eval_samples` of the eval
    ones, when given. `from_image_folder` adds the image folder's layout to a missing-label message."""
    from datasets import ClassLabel

    train = dataset["train"]
    _check_columns(train, image_column, label_column, from_image_folder)
    if not isinstance(train.features[label_column], ClassLabel):
        dataset = dataset.class_encode_column(label_column)
        train = dataset["train"]
    names = list(train.features[label_column].names)
    if len(names) < 2:
        raise ValueError(
            f"The label column {label_column!r} has {len(names)} class ({names}); a classifier needs at least 2. Check "
            "--label_column_name, or the folder layout of --train_dir (one sub-folder per class)."
        )
    eval_split = next((name for name in ("validation", "test") if name in dataset), None)
    if eval_split is None:
        split = train.train_test_split(test_size=train_val_split, seed=seed, stratify_by_column=label_column)
        train, evaluation = split["train"], split["test"]
        eval_split = f"held-out {train_val_split:.0%} of the training"
    else:
        evaluation = dataset[eval_split]
        if evaluation.features[label_column] != train.features[label_column]:
            evaluation = evaluation.cast_column(label_column, train.features[label_column])
    if max_train_samples is not None:
        train = train.shuffle(seed=seed).select(range(min(max_train_samples, len(train))))
    if max_eval_samples is not None:
        evaluation = evaluation.select(range(min(max_eval_samples, len(evaluation))))
    return TrainingSplits(train, evaluation, names, eval_split)


__all__ = ["TrainingSplits", "check_image_folder", "load_image_dataset", "training_splits"]
