"""Augmentation randomness and geometry, as pure functions of uniform numbers: counter-based draws keyed to
`(seed, epoch, sample index)` (so augmentation resumes exactly and does not depend on batches, workers or processes),
the random-resized crop boxes of torchvision's `RandomResizedCrop` and the rectangles of timm's `RandomErasing`.
"""

import numpy as np
import torch


_SPLITMIX_INCREMENT = np.uint64(0x9E3779B97F4A7C15)
_SPLITMIX_MULTIPLIERS = (np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (Steele et al. 2014): a bijective mix of uint64 values, element-wise."""
    z = np.asarray(values, dtype=np.uint64) + _SPLITMIX_INCREMENT
    z = (z ^ (z >> np.uint64(30))) * _SPLITMIX_MULTIPLIERS[0]
    z = (z ^ (z >> np.uint64(27))) * _SPLITMIX_MULTIPLIERS[1]
    return z ^ (z >> np.uint64(31))


def keyed_uniform(seed: int, epoch: int, indices, draws: int, stream: int = 0) -> np.ndarray:
    """Uniform numbers in [0, 1), `float64 [len(indices), draws]`, that depend only on `(seed, epoch, sample index)`
    and the `stream` (one per kind of augmentation, so that turning one on leaves the others' draws alone).

    Counter-based randomness for augmentation: a sample gets the same crop and flip in a given epoch whatever the
    batch it lands in, the number of data-loader workers or processes, and whether the run was resumed in between.
    """
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        key = splitmix64(splitmix64(np.uint64(seed % 2**64)) ^ np.uint64(epoch % 2**64))
        stream = splitmix64(key ^ np.uint64(stream % 2**64)) if stream else key
        counters = np.asarray(indices, dtype=np.uint64).reshape(-1, 1) * np.uint64(draws) + np.arange(
            draws, dtype=np.uint64
        )
        bits = splitmix64(splitmix64(counters) ^ stream)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sample_resized_crop_boxes(
    sizes: np.ndarray,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    attempts: int = 10,
    uniform: np.ndarray | None = None,
) -> np.ndarray:
    """Boxes `(left, top, right, bottom)` of random-resized crops, one per `(width, height)` row of `sizes`.

    The rule of torchvision's `RandomResizedCrop`: an area fraction uniform in `scale` and a log-uniform aspect
    ratio in `ratio`, `attempts` tries per image, else a centre crop clamped to `ratio`. All images are sampled
    at once. The randomness is `uniform` (`[n, 2 * attempts + 2]` numbers in [0, 1), e.g. from `keyed_uniform`)
    or else comes from torch (its default generator unless one is given), so seeding torch reproduces the crops.
    """
    if not (0 < scale[0] <= scale[1] <= 1):
        raise ValueError(f"crop scale={scale!r} must satisfy 0 < min <= max <= 1 (e.g. (0.08, 1.0)).")
    sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    width, height = sizes[:, :1], sizes[:, 1:]
    if uniform is None:
        # One draw from torch for everything; the arithmetic on these few numbers is cheaper in numpy.
        uniform = torch.rand(len(sizes), 2 * attempts + 2, generator=generator, dtype=torch.float64).numpy()
    if uniform.shape != (len(sizes), 2 * attempts + 2):
        raise ValueError(f"uniform has shape {uniform.shape}; expected {(len(sizes), 2 * attempts + 2)}.")
    target_area = width * height * (scale[0] + (scale[1] - scale[0]) * uniform[:, :attempts])
    log_ratio = np.log(ratio[0]) + (np.log(ratio[1]) - np.log(ratio[0])) * uniform[:, attempts : 2 * attempts]
    crop_w = np.round(np.sqrt(target_area * np.exp(log_ratio)))
    crop_h = np.round(np.sqrt(target_area / np.exp(log_ratio)))
    valid = (crop_w > 0) & (crop_h > 0) & (crop_w <= width) & (crop_h <= height)
    # First valid attempt per image; images with none fall back to the centre crop clamped to `ratio`.
    first = valid.argmax(axis=1)[:, None]
    found = valid.any(axis=1)
    width, height = width[:, 0], height[:, 0]
    in_ratio = width / height
    fallback_w = np.where(in_ratio > ratio[1], np.round(height * ratio[1]), width)
    fallback_h = np.where(in_ratio < ratio[0], np.round(width / ratio[0]), height)
    crop_w = np.where(found, np.take_along_axis(crop_w, first, 1)[:, 0], fallback_w)
    crop_h = np.where(found, np.take_along_axis(crop_h, first, 1)[:, 0], fallback_h)
    position = uniform[:, 2 * attempts :]
    left = np.where(found, np.floor(position[:, 0] * (width - crop_w + 1)), np.floor((width - crop_w) / 2))
    top = np.where(found, np.floor(position[:, 1] * (height - crop_h + 1)), np.floor((height - crop_h) / 2))
    return np.stack((left, top, left + crop_w, top + crop_h), axis=1).astype(np.int64)


def sample_erasing_boxes(
    height: int,
    width: int,
    uniform: np.ndarray,
    scale: tuple[float, float] = (0.02, 1 / 3),
    ratio: tuple[float, float] = (0.3, 1 / 0.3),
) -> tuple[np.ndarray, np.ndarray]:
    """Rectangles `(top, left, bottom, right)` of random erasing (Zhong et al. 2020, timm's `RandomErasing` as DeiT
    uses it), one per row of `uniform` (`[n, 2 * attempts + 2]` numbers in [0, 1)), and whether one was found.

    An area fraction uniform in `scale` and a log-uniform aspect ratio in `ratio`, the first of `attempts` tries
    that fits inside the image, at a uniform position."""
    attempts = (uniform.shape[1] - 2) // 2
    area = height * width * (scale[0] + (scale[1] - scale[0]) * uniform[:, :attempts])
    aspect = np.exp(np.log(ratio[0]) + (np.log(ratio[1]) - np.log(ratio[0])) * uniform[:, attempts : 2 * attempts])
    box_h = np.round(np.sqrt(area * aspect))
    box_w = np.round(np.sqrt(area / aspect))
    valid = (box_h < height) & (box_w < width)
    first = valid.argmax(axis=1)[:, None]
    box_h = np.take_along_axis(box_h, first, 1)[:, 0]
    box_w = np.take_along_axis(box_w, first, 1)[:, 0]
    top = np.floor(uniform[:, -2] * (height - box_h + 1))
    left = np.floor(uniform[:, -1] * (width - box_w + 1))
    boxes = np.stack((top, left, top + box_h, left + box_w), axis=1).astype(np.int64)
    return boxes, valid.any(axis=1)
