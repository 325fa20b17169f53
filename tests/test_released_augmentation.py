"""The hand-written augmentations against the reference definitions of the released recipe (DeiT's, which the MJP
release trains with): timm 0.4.12's `rand-m9-mstd0.5-inc1` RandAugment, `RandomErasing(mode="pixel")` and `Mixup` in
batch mode with label smoothing, and torchvision's `RandomResizedCrop.get_params` (timm's
`RandomResizedCropAndInterpolation` draws the same way).

The references below are plain transcriptions of those library functions (`timm/data/auto_augment.py`,
`timm/data/random_erasing.py`, `timm/data/mixup.py`, `torchvision/transforms/transforms.py`), written independently of
`mjp_hf`, with their random calls replaced by given numbers: `random.uniform(a, b)` -> `a + (b - a) * u`,
`randint(0, n)` -> `floor(u * (n + 1))`, `_randomly_negate(v)` -> `-v` with probability 1/2. What they pin is the
semantics (op table, magnitude -> parameter maps, box areas, lambda correction, targets), not the random stream.

The geometric ops (rotate, shear, translate) resample with the training interpolation, which timm takes from its
`interpolation` hparam (bicubic under DeiT's `--train-interpolation bicubic`) and `mjp_hf` from the image processor's
`resample`: they are compared at both filters.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from mjp_hf.data.augmentation import sample_erasing_boxes, sample_resized_crop_boxes
from mjp_hf.data.mixup import MixupCutmixCollator
from mjp_hf.data.rand_augment import OPS, RandAugment, parse_rand_augment


# --- timm 0.4.12, auto_augment.py -----------------------------------------------------------------------------------

_MAX_LEVEL = 10.0
_RAND_INCREASING_TRANSFORMS = [
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
]


def _reference_level_to_arg(name, level, negate):
    """timm's `LEVEL_TO_ARG` for the increasing set (`hparams` translate_pct 0.45, the default)."""

    def randomly_negate(value):
        return -value if negate else value

    if name in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name == "Rotate":
        return (randomly_negate(level / _MAX_LEVEL * 30.0),)
    if name == "PosterizeIncreasing":
        return (4 - int(level / _MAX_LEVEL * 4),)
    if name == "SolarizeIncreasing":
        return (256 - int(level / _MAX_LEVEL * 256),)
    if name == "SolarizeAdd":
        return (int(level / _MAX_LEVEL * 110),)
    if name.endswith("Increasing"):  # Color, Contrast, Brightness, Sharpness: _enhance_increasing_level_to_arg
        return (1.0 + randomly_negate(level / _MAX_LEVEL * 0.9),)
    if name in ("ShearX", "ShearY"):
        return (randomly_negate(level / _MAX_LEVEL * 0.3),)
    if name in ("TranslateXRel", "TranslateYRel"):
        return (randomly_negate(level / _MAX_LEVEL * 0.45),)
    raise KeyError(name)


def _reference_op(name, image, args, fill, resample):
    """timm's op functions (`NAME_TO_OP`), with `fillcolor=fill` and `resample` (timm's `_interpolation(kwargs)`)."""
    kwargs = dict(resample=resample, fillcolor=fill)
    if name == "AutoContrast":
        return ImageOps.autocontrast(image)
    if name == "Equalize":
        return ImageOps.equalize(image)
    if name == "Invert":
        return ImageOps.invert(image)
    if name == "Rotate":
        return image.rotate(args[0], **kwargs)
    if name == "PosterizeIncreasing":
        bits = args[0]
        if bits >= 8:
            return image
        mask = ~(2 ** (8 - bits) - 1) & 0xFF  # ImageOps.posterize's table, also for 0 bits
        return image.point([value & mask for value in range(256)] * len(image.getbands()))
    if name == "SolarizeIncreasing":
        return ImageOps.solarize(image, args[0])
    if name == "SolarizeAdd":
        lut = [min(255, value + args[0]) if value < 128 else value for value in range(256)]
        return image.point(lut * len(image.getbands()))
    enhancers = {
        "ColorIncreasing": ImageEnhance.Color,
        "ContrastIncreasing": ImageEnhance.Contrast,
        "BrightnessIncreasing": ImageEnhance.Brightness,
        "SharpnessIncreasing": ImageEnhance.Sharpness,
    }
    if name in enhancers:
        return enhancers[name](image).enhance(args[0])
    if name == "ShearX":
        return image.transform(image.size, Image.Transform.AFFINE, (1, args[0], 0, 0, 1, 0), **kwargs)
    if name == "ShearY":
        return image.transform(image.size, Image.Transform.AFFINE, (1, 0, 0, args[0], 1, 0), **kwargs)
    if name == "TranslateXRel":
        pixels = args[0] * image.size[0]
        return image.transform(image.size, Image.Transform.AFFINE, (1, 0, pixels, 0, 1, 0), **kwargs)
    if name == "TranslateYRel":
        pixels = args[0] * image.size[1]
        return image.transform(image.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, pixels), **kwargs)
    raise KeyError(name)


def _image(mode, seed=0, size=(24, 20)):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)


def test_the_spec_and_op_table_are_timms_increasing_set():
    assert parse_rand_augment("rand-m9-mstd0.5-inc1") == {
        "magnitude": 9.0,
        "magnitude_std": 0.5,
        "num_ops": 2,
        "prob": 0.5,
    }
    assert list(OPS) == _RAND_INCREASING_TRANSFORMS  # 15 ops, drawn uniformly with replacement


@pytest.mark.parametrize("name", _RAND_INCREASING_TRANSFORMS)
@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("resample", [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR])
def test_each_op_maps_magnitude_to_timms_parameter(name, mode, resample):
    fill = (124, 116, 104) if mode == "RGB" else 124
    for level in (0.0, 2.5, 5.0, 9.0, 9.7, 10.0):
        for sign_draw, negate in ((0.2, True), (0.8, False)):
            image = _image(mode, seed=int(level * 10))
            ours = OPS[name](image, level, sign_draw, fill, resample)
            reference = _reference_op(name, image, _reference_level_to_arg(name, level, negate), fill, resample)
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(reference), err_msg=f"{name} at {level}")


def test_magnitude_noise_and_op_choice_follow_timms_augment_op():
    """`AugmentOp.__call__`: skip with probability 1 - prob, else magnitude ~ gauss(m, mstd) clipped to [0, 10]."""
    augment = RandAugment.from_spec("rand-m9-mstd0.5-inc1")
    rng = np.random.default_rng(0)
    levels = np.array([augment.level(*rng.random(2)) for _ in range(20000)])
    assert levels.min() >= 0 and levels.max() <= 10
    reference = np.clip(np.random.default_rng(1).normal(9.0, 0.5, 200000), 0, _MAX_LEVEL)  # timm: gauss, then clip
    assert levels.mean() == pytest.approx(reference.mean(), abs=0.01)
    assert levels.std() == pytest.approx(reference.std(), abs=0.01)
    assert RandAugment(magnitude=9.8, magnitude_std=0.5).level(0.999, 0.0) == 10.0  # clipped like timm
    image = _image("RGB")
    # whether >= prob: the op is skipped; otherwise the op the `which` draw picks, at the noisy level.
    untouched = augment(image, np.array([0.0, 0.5, 0.3, 0.3, 0.9] * 2))
    np.testing.assert_array_equal(np.asarray(untouched), np.asarray(image))
    uniform = np.array([2 / 15 + 1e-6, 0.1, 0.3, 0.3, 0.9, 0.0, 0.9, 0.3, 0.3, 0.9])  # Invert, then skipped
    np.testing.assert_array_equal(np.asarray(augment(image, uniform)), np.asarray(ImageOps.invert(image)))


# --- timm 0.4.12, random_erasing.py (mode "pixel", count 1) ----------------------------------------------------------


def _reference_erasing_box(img_h, img_w, uniform, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
    """`RandomErasing._erase`'s box: 10 attempts, the first that fits strictly inside, at a uniform position."""
    max_aspect = 1 / min_aspect
    log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
    area = img_h * img_w
    attempts = (len(uniform) - 2) // 2
    for attempt in range(attempts):
        target_area = (min_area + (max_area - min_area) * uniform[attempt]) * area
        aspect_ratio = math.exp(
            log_aspect_ratio[0] + (log_aspect_ratio[1] - log_aspect_ratio[0]) * uniform[attempts + attempt]
        )
        h = int(round(math.sqrt(target_area * aspect_ratio)))
        w = int(round(math.sqrt(target_area / aspect_ratio)))
        if w < img_w and h < img_h:
            top = math.floor(uniform[-2] * (img_h - h + 1))
            left = math.floor(uniform[-1] * (img_w - w + 1))
            return top, left, top + h, left + w
    return None


@pytest.mark.parametrize("size", [(224, 224), (28, 28), (7, 40)])
def test_erasing_boxes_are_timms(size):
    uniform = np.random.default_rng(size[1]).random((3000, 22))
    boxes, found = sample_erasing_boxes(*size, uniform)
    for row, box, ok in zip(uniform, boxes, found):
        reference = _reference_erasing_box(*size, row)
        assert ok == (reference is not None)
        if ok:
            assert tuple(box.tolist()) == reference


# --- torchvision RandomResizedCrop.get_params (scale (0.08, 1), ratio (3/4, 4/3)) -----------------------------------


def _reference_crop(width, height, uniform, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for attempt in range(attempts):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * uniform[attempt])
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * uniform[attempts + attempt])
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = math.floor(uniform[-1] * (height - h + 1))
            j = math.floor(uniform[-2] * (width - w + 1))
            return j, i, j + w, i + h
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    i = (height - h) // 2
    j = (width - w) // 2
    return j, i, j + w, i + h


def test_random_resized_crop_boxes_are_torchvisions():
    rng = np.random.default_rng(0)
    sizes = np.concatenate([rng.integers(8, 400, (1500, 2)), [[400, 9]] * 50, [[9, 400]] * 50])  # extremes fall back
    uniform = rng.random((len(sizes), 22))
    boxes = sample_resized_crop_boxes(sizes, uniform=uniform)
    for (width, height), row, box in zip(sizes.tolist(), uniform, boxes):
        assert tuple(box.tolist()) == _reference_crop(width, height, row)


# --- timm 0.4.12, mixup.py (mode "batch", prob 1, correct_lam True) -------------------------------------------------


def _reference_mixup(x, target, num_classes, smoothing, lam, use_cutmix, cy, cx):
    """`Mixup._mix_batch` + `mixup_target`, given the per-batch draws (`lam` from the Beta, the CutMix centre)."""
    x = x.clone()
    if use_cutmix:
        img_h, img_w = x.shape[-2:]
        ratio = np.sqrt(1 - lam)
        cut_h, cut_w = int(img_h * ratio), int(img_w * ratio)
        yl, yh = np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + cut_h // 2, 0, img_h)
        xl, xh = np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + cut_w // 2, 0, img_w)
        lam = 1.0 - (yh - yl) * (xh - xl) / float(img_h * img_w)
        x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
    else:
        x_flipped = x.flip(0).mul_(1.0 - lam)
        x.mul_(lam).add_(x_flipped)
    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    y1 = torch.full((len(target), num_classes), off_value).scatter_(1, target.view(-1, 1), on_value)
    y2 = torch.full((len(target), num_classes), off_value).scatter_(1, target.flip(0).view(-1, 1), on_value)
    return x, y1 * lam + y2 * (1.0 - lam)


class _GivenDraws:
    """Stands for the collator's numpy generator: returns the given switch draw, Beta sample and box centre."""

    def __init__(self, switch, lam, cy, cx):
        self._switch, self._lam, self._centre = switch, lam, [cy, cx]

    def random(self):
        return self._switch

    def beta(self, a, b):
        return self._lam

    def integers(self, high):
        value = self._centre.pop(0)
        assert 0 <= value < high
        return value


@pytest.mark.parametrize(
    "switch,lam,cy,cx", [(0.7, 0.63, 0, 0), (0.2, 0.63, 5, 3), (0.2, 0.1, 9, 9), (0.2, 0.97, 1, 8), (0.9, 0.05, 4, 4)]
)
def test_mixup_and_cutmix_batches_are_timms(monkeypatch, switch, lam, cy, cx):
    num_classes, smoothing = 5, 0.1
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(6, 3, 10, 10, generator=generator)
    labels = torch.tensor([0, 3, 1, 4, 4, 2])
    examples = [{"pixel_values": pixels[i], "labels": labels[i], "sample_index": torch.tensor(i)} for i in range(6)]
    collator = MixupCutmixCollator(
        num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=smoothing
    )
    monkeypatch.setattr(collator, "_rng", lambda indices: _GivenDraws(switch, lam, cy, cx))
    batch = collator(examples)
    reference_pixels, reference_targets = _reference_mixup(
        pixels, labels, num_classes, smoothing, lam, use_cutmix=switch < 0.5, cy=cy, cx=cx
    )
    torch.testing.assert_close(batch["pixel_values"], reference_pixels, rtol=0, atol=1e-6)
    torch.testing.assert_close(batch["labels"], reference_targets.float(), rtol=0, atol=1e-6)


def test_the_geometric_ops_resample_with_the_processors_filter():
    """A DeiT processor (bicubic) gives bicubic rotations, a ViT processor (bilinear) bilinear ones, like timm's
    `interpolation` hparam; a filter that differs changes the pixels, so the choice is visible."""
    from transformers import DeiTImageProcessorPil, ViTImageProcessorPil

    from mjp_hf.data.transforms import ImageClassificationTransform

    bicubic = ImageClassificationTransform(DeiTImageProcessorPil(), train=True, rand_augment="rand-m9-mstd0.5-inc1")
    bilinear = ImageClassificationTransform(ViTImageProcessorPil(), train=True, rand_augment="rand-m9-mstd0.5-inc1")
    assert bicubic.rand_augment.resample == Image.Resampling.BICUBIC
    assert bilinear.rand_augment.resample == Image.Resampling.BILINEAR
    image = _image("RGB", size=(40, 40))
    # One op, Rotate (the `which` draw), applied (0.0 < prob) at a noisy level with a positive sign; the second skipped.
    which = (_RAND_INCREASING_TRANSFORMS.index("Rotate") + 0.5) / len(_RAND_INCREASING_TRANSFORMS)
    draws = np.array([which, 0.0, 0.3, 0.3, 0.9, 0.0, 0.9, 0.0, 0.0, 0.0])
    cubic, linear = (np.asarray(t.rand_augment(image, draws)) for t in (bicubic, bilinear))
    assert not np.array_equal(cubic, linear)
    angle = bicubic.rand_augment.level(0.3, 0.3) / _MAX_LEVEL * 30.0
    fill = bicubic.rand_augment.fill
    reference = _reference_op("Rotate", image, (angle,), fill, Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(cubic, np.asarray(reference))
