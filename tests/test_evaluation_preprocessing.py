"""Every evaluation, and the training transform, preprocesses through the model's saved image processor: its resize,
resampling filter, centre crop, rescale and normalisation, to the bit."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DeiTImageProcessorPil, ViTImageProcessorPil

from mjp_hf import MJPViTForImageClassification
from mjp_hf.data import fashion_mnist_available, load_fashion_mnist_arrays
from mjp_hf.data.arrays import array_image_items
from mjp_hf.data.pixels import model_images
from mjp_hf.data.transforms import ImageClassificationTransform
from mjp_hf.evaluation import privacy, robustness
from mjp_hf.evaluation.common import PixelNormalization, load_eval_images, load_image_processor
from mjp_hf.training.presets import config_from_preset


MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def cropping_processor():
    """The release's protocol at the demo size: bicubic resize to 32, centre crop to the model's 28, ImageNet stats."""
    return DeiTImageProcessorPil(
        size={"height": 32, "width": 32}, crop_size={"height": 28, "width": 28}, image_mean=MEAN, image_std=STD
    )


def demo_model(num_labels=2, **overrides):
    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    return MJPViTForImageClassification(config_from_preset("demo", num_labels=num_labels, **shape, **overrides)).eval()


def image_folder(root, count=6):
    """Non-square colour images of several sizes, two classes."""
    rng = np.random.default_rng(3)
    for index in range(count):
        height, width = 37 + 3 * index, 45 - 2 * index
        smooth = np.kron(rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3)), np.ones((4, 4, 1)))
        folder = root / "test" / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth[:height, :width].astype(np.uint8)).save(folder / f"{index}.png")
    return root


def processor_pixels(processor, data_dir, mode="RGB", **kwargs):
    """The processor run on the folder's images, in the dataset's order: what the evaluations must feed the model."""
    from datasets import load_dataset

    dataset = load_dataset("imagefolder", data_dir=str(data_dir), split="test")
    images = [image.convert(mode) for image in dataset["image"]]
    return processor(images, return_tensors="pt", **kwargs)["pixel_values"]


@pytest.fixture
def cropping_setup(tmp_path):
    model_dir = tmp_path / "model"
    demo_model().save_pretrained(model_dir)
    cropping_processor().save_pretrained(model_dir)
    return model_dir, image_folder(tmp_path / "data")


def test_evaluation_images_are_the_processors_pixels(cropping_setup):
    model_dir, data_dir = cropping_setup
    config = demo_model().config
    processor = load_image_processor(model_dir, config)
    assert type(processor).__name__.startswith("DeiTImageProcessor") and processor.resample == Image.Resampling.BICUBIC
    images, labels = load_eval_images(config, data_dir=str(data_dir), image_processor=processor)
    assert images.shape == (6, 28, 28, 3) and images.dtype == np.uint8 and sorted(set(labels.tolist())) == [0, 1]
    pixel_values = PixelNormalization.from_processor(processor, 3).from_uint8(images)
    expected = processor_pixels(cropping_processor(), data_dir)
    assert pixel_values.dtype == torch.float32 and torch.equal(pixel_values, expected)
    # The old protocol (a bilinear resize straight to 28, mean and std 0.5) gives other pixels: the test can fail.
    plain = load_eval_images(config, data_dir=str(data_dir))
    assert not np.array_equal(plain, images)


def test_robustness_clean_accuracy_and_privacy_get_the_processors_pixels(cropping_setup, tmp_path, monkeypatch):
    model_dir, data_dir = cropping_setup
    expected = processor_pixels(cropping_processor(), data_dir)
    seen = []
    predict = robustness.predict
    monkeypatch.setattr(
        robustness,
        "predict",
        lambda model, pixel_values, *a, **k: (
            seen.append(pixel_values.clone()),
            predict(model, pixel_values, *a, **k),
        )[1],
    )
    report = robustness.main(
        [
            "--model_name_or_path",
            str(model_dir),
            "--output_dir",
            str(tmp_path / "r"),
            "--data_dir",
            str(data_dir),
            "--corruptions",
            "none",
            "--device",
            "cpu",
        ]
    )
    assert torch.equal(seen[0], expected)  # the clean-accuracy pass
    model = demo_model()
    from datasets import load_dataset

    labels = torch.as_tensor(load_dataset("imagefolder", data_dir=str(data_dir), split="test")["label"])
    clean = (model(expected).logits.argmax(-1) == labels).float().mean().item()
    assert report["corruption"]["clean_accuracy"] == pytest.approx(clean)

    class Captured(Exception):
        pass

    def capture(model, pixel_values, labels, normalization, **kwargs):
        raise Captured(pixel_values, normalization)

    monkeypatch.setattr(privacy, "evaluate_privacy", capture)
    with pytest.raises(Captured) as caught:
        privacy.main(
            [
                "--model_name_or_path",
                str(model_dir),
                "--output_dir",
                str(tmp_path / "p"),
                "--data_dir",
                str(data_dir),
                "--num_images",
                "6",
                "--device",
                "cpu",
            ]
        )
    pixel_values, normalization = caught.value.args
    assert torch.equal(pixel_values, expected)
    # The attacks map reconstructions back to [0, 1] pixels with the processor's statistics.
    assert normalization.mean == pytest.approx(MEAN) and normalization.std == pytest.approx(STD)


def test_normalization_inverts_to_unit_pixels_with_the_processors_statistics():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    unit = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    for processor in (
        cropping_processor(),
        ViTImageProcessorPil(do_rescale=False, image_mean=[100.0] * 3, image_std=[50.0] * 3),
    ):
        normalization = PixelNormalization.from_processor(processor, 3)
        pixel_values = normalization.from_uint8(images)
        expected = processor(
            list(images), do_resize=False, do_center_crop=False, input_data_format="channels_last", return_tensors="pt"
        )["pixel_values"]
        assert torch.equal(pixel_values, expected)
        torch.testing.assert_close(normalization.denormalize(pixel_values), unit)
        torch.testing.assert_close(normalization.normalize(unit), pixel_values)


def test_a_one_channel_model_uses_the_first_channels_statistics_as_in_training():
    processor = ViTImageProcessorPil(
        size={"height": 28, "width": 28},
        image_mean=[0.2, 0.4, 0.6],
        image_std=[0.3, 0.2, 0.1],
        resample=Image.Resampling.BICUBIC,
    )
    config = demo_model(num_channels=1, num_labels=10).config
    gray = np.random.default_rng(1).integers(0, 256, (5, 30, 33), dtype=np.uint8)
    pil_images = [Image.fromarray(image) for image in gray]
    images = model_images(pil_images, processor, config.num_channels)
    pixel_values = PixelNormalization.from_processor(processor, 1).from_uint8(images)
    expected = processor(pil_images, return_tensors="pt", image_mean=[0.2], image_std=[0.3])["pixel_values"]
    assert pixel_values.shape == (5, 1, 28, 28) and torch.equal(pixel_values, expected)
    training_eval = ImageClassificationTransform(processor, num_channels=1)({"image": pil_images})["pixel_values"]
    assert torch.equal(pixel_values, training_eval)


def test_a_folder_without_a_processor_gets_the_stock_vit_one_at_the_models_size(tmp_path):
    config = demo_model().config
    demo_model().save_pretrained(tmp_path / "bare")
    processor = load_image_processor(tmp_path / "bare", config)
    assert isinstance(processor, ViTImageProcessorPil) and processor.size == {"height": 28, "width": 28}
    assert list(processor.image_mean) == [0.5] * 3 and list(processor.image_std) == [0.5] * 3
    assert processor.resample == Image.Resampling.BILINEAR
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "bare")
    with pytest.raises(ValueError, match="gives 32x32 images but the model takes 28x28"):
        load_image_processor(tmp_path / "bare", config)


@pytest.mark.skipif(not fashion_mnist_available(), reason="the embedded Fashion-MNIST is not installed")
def test_fashion_mnist_default_keeps_its_pixels(tmp_path):
    """The 28x28 demo models: with their saved size-28 processor or none, the images are Fashion-MNIST's own, scaled
    to [-1, 1], as before the processor was used."""
    config = demo_model(num_labels=10).config
    gray, _ = load_fashion_mnist_arrays("test")
    old = torch.from_numpy(np.repeat(gray[:16, None], 3, axis=1)).float() / 255 * 2 - 1
    demo_model(num_labels=10).save_pretrained(tmp_path / "bare")
    ViTImageProcessorPil(size={"height": 28, "width": 28}).save_pretrained(tmp_path / "saved")
    for folder in ("bare", "saved"):
        processor = load_image_processor(tmp_path / folder, config)
        images, labels = load_eval_images(config, 16, image_processor=processor)
        pixel_values = PixelNormalization.from_processor(processor, 3).from_uint8(images)
        expected = processor([Image.fromarray(image).convert("RGB") for image in gray[:16]], return_tensors="pt")[
            "pixel_values"
        ]
        assert torch.equal(pixel_values, expected) and len(labels) == 16
        torch.testing.assert_close(pixel_values, old)
    torch.testing.assert_close(PixelNormalization().from_uint8(images), old)


@pytest.mark.parametrize("channels", [1, 3])
def test_training_transform_fast_paths_give_the_processors_pixels_exactly(channels):
    """The uint8 array path and the whole-image array path of `ImageClassificationTransform` against the processor
    itself, bit for bit: a plain ViT processor (its geometry the identity at its size: a table lookup) and the
    cropping bicubic one, on images at the model's size and at others."""
    rng = np.random.default_rng(2)
    mode = "RGB" if channels == 3 else "L"
    vit = ViTImageProcessorPil(size={"height": 28, "width": 28}, image_mean=MEAN, image_std=STD)
    for processor in (vit, cropping_processor()):
        for size in ((28, 28), (35, 31)):
            arrays = rng.integers(0, 256, (5, *size, 3), dtype=np.uint8)
            raw = {"image": array_image_items(arrays)}
            expected = processor(
                [Image.fromarray(array).convert(mode) for array in arrays],
                return_tensors="pt",
                image_mean=MEAN[:channels],
                image_std=STD[:channels],
            )["pixel_values"]
            out = ImageClassificationTransform(processor, num_channels=channels)(raw)["pixel_values"]
            assert out.shape == (5, channels, 28, 28) and torch.equal(out, expected), (type(processor), size)
