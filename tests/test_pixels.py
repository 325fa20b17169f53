"""`mjp_hf.data.pixels`: the one path from uint8 images to `pixel_values`, the image processor's own arithmetic."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DeiTImageProcessorPil, ViTImageProcessorPil

import mjp_hf
from mjp_hf.data.arrays import array_image_items
from mjp_hf.data.pixels import geometry_is_identity, model_images, pixel_table, pixel_values
from mjp_hf.data.transforms import ImageClassificationTransform
from mjp_hf.evaluation.common import PixelNormalization


class GammaProcessor(ViTImageProcessorPil):
    """A processor whose arithmetic is not rescale-then-normalise: a gamma curve before normalising."""

    def rescale(self, image, scale, **kwargs):
        return ((np.asarray(image, dtype=np.float64) / 255.0) ** 2.2).astype(np.float32)


def test_the_table_is_the_processors_own_arithmetic():
    """Every path (evaluation, training's whole-image crops, the evaluations' `from_uint8`) gives the processor's
    pixels for a processor whose arithmetic is not the stock one: nothing of it is written again. (The transform
    before this change re-derived rescale and normalise in its training path and failed here.)"""
    processor = GammaProcessor(size={"height": 28, "width": 28})
    every_value = np.arange(256 * 3, dtype=np.uint8).reshape(16, 16, 3).repeat(2, 0).repeat(2, 1)[:28, :28]
    images = np.stack([every_value, every_value[::-1]])
    expected = processor([Image.fromarray(image) for image in images], return_tensors="pt")["pixel_values"]
    assert not torch.equal(
        expected, ViTImageProcessorPil(size=processor.size)(list(images), return_tensors="pt")["pixel_values"]
    )  # the gamma changes the pixels: the comparisons below can fail
    torch.testing.assert_close(pixel_values(images, processor), expected, rtol=0, atol=0)
    batch = {"image": array_image_items(images)}
    for transform in (
        ImageClassificationTransform(processor),
        ImageClassificationTransform(processor, train=True, crop_scale=(1.0, 1.0), horizontal_flip=False),
    ):
        torch.testing.assert_close(transform(batch)["pixel_values"], expected, rtol=0, atol=0)
    torch.testing.assert_close(
        PixelNormalization.from_processor(processor).from_uint8(images), expected, rtol=0, atol=0
    )


def test_the_geometry_is_skipped_only_where_it_is_the_identity():
    vit = ViTImageProcessorPil(size={"height": 28, "width": 28})
    cropping = DeiTImageProcessorPil(size={"height": 28, "width": 28}, crop_size={"height": 20, "width": 20})
    resizing = DeiTImageProcessorPil(size={"height": 32, "width": 32}, crop_size={"height": 28, "width": 28})
    assert geometry_is_identity(vit, (28, 28, 3)) and geometry_is_identity(vit, (28, 28, 1))
    assert not geometry_is_identity(vit, (32, 28, 3))
    assert not geometry_is_identity(cropping, (28, 28, 3)) and geometry_is_identity(cropping, (20, 20, 3)) is False
    assert not geometry_is_identity(resizing, (28, 28, 3))  # the output size, but resized up and cropped back
    rng = np.random.default_rng(0)
    for processor in (vit, cropping, resizing):
        for size in ((28, 28), (33, 41)):
            images = rng.integers(0, 256, (3, *size, 3), dtype=np.uint8)
            pil = [Image.fromarray(image) for image in images]
            expected = processor(pil, return_tensors="pt")["pixel_values"]
            torch.testing.assert_close(pixel_values(images, processor), expected, rtol=0, atol=0)
            torch.testing.assert_close(pixel_values(pil, processor), expected, rtol=0, atol=0)
            assert model_images(images, processor).shape == (3, *expected.shape[-2:], 3)


def test_grayscale_and_colour_for_one_and_three_channel_models():
    processor = ViTImageProcessorPil(
        size={"height": 28, "width": 28}, image_mean=[0.2, 0.4, 0.6], image_std=[0.3, 0.2, 0.1]
    )
    rng = np.random.default_rng(1)
    gray, colour = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8), rng.integers(0, 256, (4, 28, 28, 3), np.uint8)
    for images in (gray, colour):
        for channels, mode in ((1, "L"), (3, "RGB")):
            pil = [Image.fromarray(image).convert(mode) for image in images]
            statistics = {"image_mean": [0.2, 0.4, 0.6][:channels], "image_std": [0.3, 0.2, 0.1][:channels]}
            expected = processor(pil, return_tensors="pt", **statistics)["pixel_values"]
            out = pixel_values(images, processor, channels)
            assert out.shape == (4, channels, 28, 28)
            torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_a_processor_changed_after_use_gets_a_new_table_and_an_empty_batch_is_empty():
    processor = ViTImageProcessorPil(size={"height": 28, "width": 28})
    first = pixel_table(processor, 3).copy()
    processor.image_mean = [0.1, 0.2, 0.3]
    second = pixel_table(processor, 3)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(second[:, 0], (0 - np.float32([0.1, 0.2, 0.3])) / np.float32(0.5))
    processor.image_mean = np.array([0.1, 0.2, 0.3])
    pixel_table(processor, 3)
    processor.image_mean[0] = 0.4  # changed in place
    assert pixel_table(processor, 3)[0, 0] == (0 - np.float32(0.4)) / np.float32(0.5)
    assert pixel_values(np.zeros((0, 28, 28, 3), np.uint8), processor).shape == (0, 3, 28, 28)
    assert pixel_values([], processor).shape == (0, 3, 28, 28)
    with pytest.raises(ValueError, match="uint8 images"):
        pixel_values(np.zeros((2, 28, 28, 3), np.float32), processor)


def _functions(name_part: str) -> list[str]:
    found = []
    for path in Path(mjp_hf.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and name_part in node.name:
                found.append(f"{path.name}:{node.name}")
    return found


def test_one_implementation_of_the_image_to_pixels_step():
    """Issue 22: one function from images to `pixel_values` (one set of channel statistics, one table), and no image
    re-encoding of the embedded data."""
    assert _functions("channel_statistics") == ["pixels.py:channel_statistics"]
    assert sorted(_functions("table")) == ["pixels.py:pixel_table"]
    sources = "\n".join(path.read_text() for path in Path(mjp_hf.__file__).parent.rglob("*.py"))
    assert "netpbm" not in sources.lower() and "P5" not in sources
