"""Data for the training example: the embedded default (Fashion-MNIST, read offline from Debian's
`dataset-fashion-mnist` package) and the dataset preparation the transforms rely on (a sample index that keys the
augmentation, undecoded images). The transforms are in `mjp_hf.data.transforms`, Mixup/CutMix in `mjp_hf.data.mixup`."""

import gzip
import os
from pathlib import Path

import numpy as np

from .arrays import array_image_column, array_image_feature


FASHION_MNIST_DIR = Path(os.environ.get("MJP_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_SPLITS = tuple(_FILES)
INSTALL_HINT = "install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu)"


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{path} is not an IDX file of the expected kind (magic {found}, expected {magic}).")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_available(data_dir: Path | str = FASHION_MNIST_DIR) -> bool:
    return all((Path(data_dir) / name).is_file() for pair in _FILES.values() for name in pair)


def load_fashion_mnist_arrays(split: str, data_dir: Path | str = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """`(images uint8 [n, 28, 28], labels int64 [n])` of the `train` (60,000) or `test` (10,000) split."""
    if split not in _FILES:
        raise ValueError(f"Unknown Fashion-MNIST split {split!r}; choose 'train' or 'test'.")
    data_dir = Path(data_dir)
    if not fashion_mnist_available(data_dir):
        raise FileNotFoundError(f"Fashion-MNIST files are missing from {data_dir}; {INSTALL_HINT}.")
    images_file, labels_file = _FILES[split]
    images = _read_idx(data_dir / images_file, 2051)
    labels = _read_idx(data_dir / labels_file, 2049).astype(np.int64)
    return images, labels


def load_fashion_mnist(data_dir: Path | str = FASHION_MNIST_DIR):
    """A `datasets.DatasetDict` with `train` and `test` splits, features `image` (the uint8 28x28 arrays as they are,
    see `mjp_hf.data.arrays`) and `label` (`ClassLabel` with the ten Fashion-MNIST names), read from the local IDX
    files with no network access."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features

    features = Features({"image": array_image_feature(), "label": ClassLabel(names=FASHION_MNIST_LABELS)})
    splits = {}
    for split in _FILES:
        images, labels = load_fashion_mnist_arrays(split, data_dir)
        splits[split] = Dataset.from_dict({"image": array_image_column(images), "label": labels}, features=features)
    return DatasetDict(splits)


def without_image_decoding(dataset, column: str = "image"):
    """`dataset` with its `Image` column left undecoded (`{"bytes", "path"}`): `ImageClassificationTransform` opens the
    images itself. Other columns (the embedded default's uint8 arrays) are returned as they are."""
    from datasets import Image

    feature = dataset.features.get(column)
    if isinstance(feature, Image) and feature.decode:
        return dataset.cast_column(column, Image(decode=False))
    return dataset


def with_sample_index(dataset, column: str = "sample_index"):
    """`dataset` with a column holding each example's index, which keys its augmentation (see
    `ImageClassificationTransform`)."""
    if column in dataset.column_names:
        raise ValueError(f"The dataset already has a column {column!r}; choose another name for the sample index.")
    return dataset.add_column(column, np.arange(len(dataset), dtype=np.int64))


__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_HUB_ID",
    "FASHION_MNIST_LABELS",
    "FASHION_MNIST_SPLITS",
    "INSTALL_HINT",
    "fashion_mnist_available",
    "load_fashion_mnist",
    "load_fashion_mnist_arrays",
    "with_sample_index",
    "without_image_decoding",
]
