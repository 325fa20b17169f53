"""From images to `pixel_values`: the embedded default data set (`fashion_mnist`), the training and evaluation
transforms (`transforms`, with the keyed randomness of `augmentation` and `rand_augment`) and Mixup/CutMix (`mixup`)."""

from .fashion_mnist import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_HUB_ID,
    FASHION_MNIST_LABELS,
    INSTALL_HINT,
    fashion_mnist_available,
    load_fashion_mnist,
    load_fashion_mnist_arrays,
    with_sample_index,
    without_image_decoding,
)


__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_HUB_ID",
    "FASHION_MNIST_LABELS",
    "INSTALL_HINT",
    "fashion_mnist_available",
    "load_fashion_mnist",
    "load_fashion_mnist_arrays",
    "with_sample_index",
    "without_image_decoding",
]
