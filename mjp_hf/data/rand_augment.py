"""RandAugment (Cubuk et al., NeurIPS 2020) in PIL, as timm's `rand-m9-mstd0.5-inc1` that DeiT and the MJP release
train with, so that neither timm nor torchvision is needed.

Each image gets `num_ops` operations drawn uniformly from the 15 of timm's "increasing" set; each is applied with
probability `prob` at a magnitude drawn from N(magnitude, magnitude_std) clipped to [0, 10] (of 10). Geometric ops
fill with the dataset's mean colour and resample with the training interpolation (timm's `interpolation` hparam,
bicubic in DeiT's recipe; here the image processor's `resample`). The randomness is given as uniform numbers
(`RandAugment.draws` per image), so the caller keys it (see `augmentation.keyed_uniform`).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps


MAX_LEVEL = 10.0
# ImageNet's mean colour (timm's `IMAGENET_DEFAULT_MEAN` x 255), what timm fills uncovered pixels with.
IMAGENET_FILL = (124, 116, 104)


def _signed(value: float, sign_draw: float) -> float:
    return -value if sign_draw < 0.5 else value


def _affine(image: Image.Image, matrix: tuple, fill, resample) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


def _posterize(image: Image.Image, bits: int) -> Image.Image:
    # Keeping 0 bits (level 10) leaves black; PIL only takes 1 to 8.
    return ImageOps.posterize(image, bits) if bits > 0 else Image.new(image.mode, image.size)


def _solarize_add(image: Image.Image, addition: int, threshold: int = 128) -> Image.Image:
    table = [min(255, value + addition) if value < threshold else value for value in range(256)]
    return image.point(table * len(image.getbands()))


# name -> function(image, level in [0, 10], sign draw in [0, 1), fill colour, resampling filter) -> image
OPS = {
    "AutoContrast": lambda image, level, sign, fill, resample: ImageOps.autocontrast(image),
    "Equalize": lambda image, level, sign, fill, resample: ImageOps.equalize(image),
    "Invert": lambda image, level, sign, fill, resample: ImageOps.invert(image),
    "Rotate": lambda image, level, sign, fill, resample: image.rotate(
        _signed(level / MAX_LEVEL * 30.0, sign), resample=resample, fillcolor=fill
    ),
    # "Increasing" variants: a larger level is always a stronger change.
    "PosterizeIncreasing": lambda image, level, sign, fill, resample: _posterize(
        image, 4 - int(level / MAX_LEVEL * 4)
    ),
    "SolarizeIncreasing": lambda image, level, sign, fill, resample: ImageOps.solarize(
        image, 256 - int(level / MAX_LEVEL * 256)
    ),
    "SolarizeAdd": lambda image, level, sign, fill, resample: _solarize_add(image, int(level / MAX_LEVEL * 110)),
    "ColorIncreasing": lambda image, level, sign, fill, resample: ImageEnhance.Color(image).enhance(
        1.0 + _signed(level / MAX_LEVEL * 0.9, sign)
    ),
    "ContrastIncreasing": lambda image, level, sign, fill, resample: ImageEnhance.Contrast(image).enhance(
        1.0 + _signed(level / MAX_LEVEL * 0.9, sign)
    ),
    "BrightnessIncreasing": lambda image, level, sign, fill, resample: ImageEnhance.Brightness(image).enhance(
        1.0 + _signed(level / MAX_LEVEL * 0.9, sign)
    ),
    "SharpnessIncreasing": lambda image, level, sign, fill, resample: ImageEnhance.Sharpness(image).enhance(
        1.0 + _signed(level / MAX_LEVEL * 0.9, sign)
    ),
    "ShearX": lambda image, level, sign, fill, resample: _affine(
        image, (1, _signed(level / MAX_LEVEL * 0.3, sign), 0, 0, 1, 0), fill, resample
    ),
    "ShearY": lambda image, level, sign, fill, resample: _affine(
        image, (1, 0, 0, _signed(level / MAX_LEVEL * 0.3, sign), 1, 0), fill, resample
    ),
    "TranslateXRel": lambda image, level, sign, fill, resample: _affine(
        image, (1, 0, _signed(level / MAX_LEVEL * 0.45, sign) * image.size[0], 0, 1, 0), fill, resample
    ),
    "TranslateYRel": lambda image, level, sign, fill, resample: _affine(
        image, (1, 0, 0, 0, 1, _signed(level / MAX_LEVEL * 0.45, sign) * image.size[1]), fill, resample
    ),
}


def parse_rand_augment(spec: str) -> dict:
    """timm's config string, e.g. `rand-m9-mstd0.5-inc1` -> `{"magnitude": 9, "magnitude_std": 0.5, ...}`.

    Supported keys: `m` (magnitude), `mstd` (its std), `n` (ops per image), `p` (chance of each op); `inc1` (the
    increasing op set, the only one built in)."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment spec {spec!r} must start with 'rand-', e.g. 'rand-m9-mstd0.5-inc1'.")
    settings = {"magnitude": 10.0, "magnitude_std": 0.0, "num_ops": 2, "prob": 0.5}
    keys = {"mstd": "magnitude_std", "m": "magnitude", "n": "num_ops", "p": "prob"}
    for part in parts[1:]:
        if part == "inc1":
            continue
        key = next((key for key in keys if part.startswith(key) and _is_number(part[len(key) :])), None)
        if key is None:
            raise ValueError(f"Unknown part {part!r} in RandAugment spec {spec!r}; use m, mstd, n, p and inc1.")
        value = float(part[len(key) :])
        settings[keys[key]] = int(value) if key == "n" else value
    return settings


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class RandAugment:
    """`num_ops` random operations per image at magnitude ~ N(`magnitude`, `magnitude_std`) of 10, each applied with
    probability `prob`. `__call__(image, uniform)` takes `draws` uniform numbers in [0, 1) for that image."""

    def __init__(
        self,
        magnitude: float = 9.0,
        magnitude_std: float = 0.5,
        num_ops: int = 2,
        prob: float = 0.5,
        fill=IMAGENET_FILL,
        resample: Image.Resampling = Image.Resampling.BICUBIC,
    ):
        if not 0 <= magnitude <= MAX_LEVEL:
            raise ValueError(f"RandAugment magnitude={magnitude} must be in [0, {MAX_LEVEL:g}] (the release: 9).")
        if magnitude_std < 0 or num_ops < 1 or not 0 <= prob <= 1:
            raise ValueError(
                f"RandAugment needs magnitude_std >= 0, num_ops >= 1 and prob in [0, 1]; got "
                f"{magnitude_std}, {num_ops}, {prob}."
            )
        self.magnitude = magnitude
        self.magnitude_std = magnitude_std
        self.num_ops = num_ops
        self.prob = prob
        self.fill = tuple(fill)
        self.resample = Image.Resampling(int(resample))
        self.names = list(OPS)
        self.draws = 5 * num_ops  # per op: which, whether, two for the magnitude noise, the sign

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> RandAugment:
        return cls(**parse_rand_augment(spec), **kwargs)

    def level(self, uniform_a: float, uniform_b: float) -> float:
        """The magnitude with Gaussian noise (Box-Muller on two uniforms), clipped to [0, 10] as timm does."""
        if self.magnitude_std == 0:
            return self.magnitude
        normal = math.sqrt(-2.0 * math.log(1.0 - uniform_a)) * math.cos(2.0 * math.pi * uniform_b)
        return min(MAX_LEVEL, max(0.0, self.magnitude + self.magnitude_std * normal))

    def __call__(self, image: Image.Image, uniform: np.ndarray) -> Image.Image:
        fill = self.fill[0] if image.mode == "L" else self.fill
        for op in range(self.num_ops):
            which, whether, noise_a, noise_b, sign = uniform[5 * op : 5 * op + 5]
            if whether >= self.prob:
                continue
            name = self.names[min(int(which * len(self.names)), len(self.names) - 1)]
            image = OPS[name](image, self.level(noise_a, noise_b), sign, fill, self.resample)
        return image
