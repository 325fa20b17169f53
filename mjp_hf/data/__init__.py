"""From images to `pixel_values`: the embedded default data set (`fashion_mnist`, kept as uint8 arrays, see
`arrays`), labelled images to evaluate on (`sources`), a training run's dataset and splits (`training_data`), the
one path from uint8 images to a model's `pixel_values` through its image processor (`pixels`), the training and
evaluation transforms (`transforms`, with the keyed randomness of `augmentation` and `rand_augment`) and
Mixup/CutMix (`mixup`)."""

from .fashion_mnist import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_HUB_ID,
    FASHION_MNIST_LABELS,
    FASHION_MNIST_SPLITS,
    INSTALL_HINT,
    fashion_mnist_available,
    load_fashion_mnist,
    load_fashion_mnist_arrays,
    with_sample_index,
    without_image_decoding,
)
from .pixels import pixel_values
from .sources import LabelledImages, load_labelled_images
from .training_data import TrainingSplits, check_image_folder, load_image_dataset, training_splits


__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_HUB_ID",
    "FASHION_MNIST_LABELS",
    "FASHION_MNIST_SPLITS",
    "INSTALL_HINT",
    "LabelledImages",
    "TrainingSplits",
    "check_image_folder",
    "fashion_mnist_available",
    "load_fashion_mnist",
    "load_fashion_mnist_arrays",
    "load_image_dataset",
    "load_labelled_images",
    "pixel_values",
    "training_splits",
    "with_sample_index",
    "without_image_decoding",
]
