"""RandAugment in PIL (`mjp_hf.data.rand_augment`), timm's `rand-m9-mstd0.5-inc1` without timm or torchvision."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTImageProcessorPil

from mjp_hf.data.rand_augment import OPS, RandAugment, parse_rand_augment
from mjp_hf.data.transforms import ImageClassificationTransform


def _image(mode="RGB", size=(32, 24), seed=0):
    rng = np.random.default_rng(seed)
    # a smooth gradient plus texture: every op has something to change
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    base = (x * 255 / size[0] * 0.6 + y * 255 / size[1] * 0.3 + rng.integers(0, 25, size=(size[1], size[0]))).astype(
        np.uint8
    )
    array = np.stack([base, base[::-1], 255 - base], -1) if mode == "RGB" else base
    return Image.fromarray(array, mode=mode)


def _difference(a, b):
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).mean())


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_every_op_keeps_size_and_mode_and_level_zero_of_graded_ops_is_identity(mode):
    image = _image(mode)
    fill = 128 if mode == "L" else (124, 116, 104)
    assert len(OPS) == 15
    for name, op in OPS.items():
        for level in (0.0, 5.0, 10.0):
            out = op(image, level, 0.7, fill, Image.Resampling.BICUBIC)
            assert out.size == image.size and out.mode == image.mode, name
        if name not in ("AutoContrast", "Equalize", "Invert", "PosterizeIncreasing", "SolarizeIncreasing"):
            assert _difference(op(image, 0.0, 0.7, fill, Image.Resampling.BICUBIC), image) == 0, name


def test_increasing_ops_change_more_at_higher_levels():
    image = _image()
    for name in (
        "Rotate",
        "PosterizeIncreasing",
        "SolarizeIncreasing",
        "SolarizeAdd",
        "ContrastIncreasing",
        "BrightnessIncreasing",
        "ShearX",
        "ShearY",
        "TranslateXRel",
        "TranslateYRel",
    ):
        changes = [
            _difference(OPS[name](image, level, 0.9, (124, 116, 104), Image.Resampling.BICUBIC), image)
            for level in (2.0, 6.0, 10.0)
        ]
        assert changes[0] < changes[1] < changes[2], (name, changes)
    # The sign draw picks the direction: brighter or darker.
    brighter = np.asarray(OPS["BrightnessIncreasing"](image, 9.0, 0.9, None, None), dtype=float).mean()
    darker = np.asarray(OPS["BrightnessIncreasing"](image, 9.0, 0.1, None, None), dtype=float).mean()
    assert darker < np.asarray(image, dtype=float).mean() < brighter


def test_ops_are_drawn_uniformly_at_noisy_magnitudes():
    augment = RandAugment(magnitude=9, magnitude_std=0.5, num_ops=2, prob=0.5)
    assert augment.draws == 10
    uniform = np.random.default_rng(0).random((30000, 2))
    levels = np.array([augment.level(a, b) for a, b in uniform])
    assert abs(levels.mean() - 9.0) < 0.03 and 0.45 < levels.std() < 0.52 and levels.max() <= 10
    assert RandAugment(magnitude=9, magnitude_std=0).level(0.3, 0.3) == 9
    picks = np.minimum((uniform[:, 0] * 15).astype(int), 14)
    assert np.bincount(picks, minlength=15).min() > 30000 / 15 * 0.9
    image = _image()
    never = RandAugment(prob=0.0)
    assert _difference(never(image, np.random.default_rng(1).random(10)), image) == 0
    always = RandAugment(prob=1.0, num_ops=2)
    changed = [_difference(always(image, row), image) > 0 for row in np.random.default_rng(2).random((40, 10))]
    assert sum(changed) > 30


def test_spec_parsing_and_bad_values():
    assert parse_rand_augment("rand-m9-mstd0.5-inc1") == {
        "magnitude": 9.0,
        "magnitude_std": 0.5,
        "num_ops": 2,
        "prob": 0.5,
    }
    assert parse_rand_augment("rand-m7-n3-p0.8") == {"magnitude": 7.0, "magnitude_std": 0.0, "num_ops": 3, "prob": 0.8}
    with pytest.raises(ValueError, match="must start with 'rand-'"):
        parse_rand_augment("augmix-m5")
    with pytest.raises(ValueError, match="Unknown part 'x3'"):
        parse_rand_augment("rand-m9-x3")
    with pytest.raises(ValueError, match="magnitude=12"):
        RandAugment(magnitude=12)


def test_transform_applies_it_keyed_to_the_sample():
    processor = ViTImageProcessorPil(size={"height": 28, "width": 28})
    images = [_image(size=(28, 28), seed=seed) for seed in range(16)]
    common = dict(train=True, crop_scale=(1.0, 1.0), horizontal_flip=False, index_column="index", seed=1)
    plain = ImageClassificationTransform(processor, **common)({"image": images, "index": list(range(16))})
    augmenting = ImageClassificationTransform(processor, rand_augment="rand-m9-mstd0.5-inc1", **common)
    augmented = augmenting({"image": images, "index": list(range(16))})["pixel_values"]
    changed = (augmented != plain["pixel_values"]).flatten(1).any(1)
    assert 4 <= int(changed.sum()) < 16  # each op applies with p 0.5, two per image: about 3 in 4 change
    again = augmenting({"image": images[3:6], "index": [3, 4, 5]})["pixel_values"]
    torch.testing.assert_close(again, augmented[3:6], rtol=0, atol=0)
    assert augmenting.rand_augment.fill == (128, 128, 128)  # the ViT processor's mean, 0.5
