"""The embedded default data: Fashion-MNIST, read offline from Debian's `dataset-fashion-mnist` package."""

import gzip
import os
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path(os.environ.get("MJP_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
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
    """A `datasets.DatasetDict` with `train` and `test` splits, features `image` (`Image`) and `label`
    (`ClassLabel` with the ten Fashion-MNIST names), read from the local IDX files with no network access."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage

    features = Features({"image": Image(), "label": ClassLabel(names=FASHION_MNIST_LABELS)})
    splits = {}
    for split in _FILES:
        images, labels = load_fashion_mnist_arrays(split, data_dir)
        splits[split] = Dataset.from_dict(
            {"image": [PILImage.fromarray(image, mode="L") for image in images], "label": labels.tolist()},
            features=features,
        )
    return DatasetDict(splits)
