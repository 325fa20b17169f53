"""Robustness: corruptions on small images, accuracy under jigsaw, prediction consistency, pixel-space shuffle, CLI."""

import json

import numpy as np
import pytest
import torch

from mjp_hf import MJPViTForImageClassification
from mjp_hf.data import fashion_mnist_available
from mjp_hf.evaluation import robustness
from mjp_hf.evaluation.common import PixelNormalization, check_labels, shuffle_patches
from mjp_hf.jigsaw import random_jigsaw
from mjp_hf.training.presets import config_from_preset


NORMALIZATION = PixelNormalization()


def tiny_mjp(seed=0, **overrides):
    torch.manual_seed(seed)
    shape = dict(num_labels=10, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    return MJPViTForImageClassification(config_from_preset("demo", **{**shape, **overrides})).eval()


def uint8_images(count, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    gray = np.kron(rng.integers(0, 256, (count, 7, 7)), np.ones((4, 4))).astype(np.uint8)[..., None]
    return np.repeat(gray, channels, axis=-1), rng.integers(0, 10, count)


@pytest.mark.parametrize("name", ["gaussian_noise", "defocus_blur", "frost", "contrast", "jpeg_compression"])
def test_corruptions_work_on_28x28_images(name):
    images, _ = uint8_images(3)
    mild = robustness.corrupt_images(images, name, 1, seed=0)
    severe = robustness.corrupt_images(images, name, 5, seed=0)
    assert mild.shape == images.shape and mild.dtype == np.uint8
    assert np.array_equal(mild, robustness.corrupt_images(images, name, 1, seed=0))  # seeded
    change = lambda out: np.abs(out.astype(float) - images).mean()  # noqa: E731
    assert 0 < change(mild) < change(severe)


def test_corruptions_keep_grayscale_images_grayscale():
    images, _ = uint8_images(2, channels=1)
    out = robustness.corrupt_images(images, "shot_noise", 3)
    assert out.shape == images.shape and not np.array_equal(out, images)


def test_bad_corruption_inputs_are_named():
    with pytest.raises(ValueError, match="snowball"):
        robustness.corruption_names("snow,snowball")
    with pytest.raises(ValueError, match="severity=6"):
        robustness.corrupt_images(uint8_images(1)[0], "snow", 6)
    assert len(robustness.corruption_names("common")) == 15


def test_corruption_accuracy_fields(tmp_path):
    model = tiny_mjp()
    images, labels = uint8_images(12)
    result = robustness.corruption_accuracy(
        model,
        images,
        labels,
        NORMALIZATION,
        corruptions=["gaussian_noise", "pixelate"],
        severities=(1, 5),
        batch_size=5,
        cache_dir=tmp_path,
        progress=False,
    )
    assert set(result) == {
        "num_images",
        "clean_accuracy",
        "clean_error",
        "per_corruption",
        "mean_corruption_error",
        "relative_mean_corruption_error",
    }
    assert result["clean_accuracy"] == pytest.approx(
        robustness.accuracy(robustness.predict(model, NORMALIZATION.from_uint8(images)), torch.as_tensor(labels))
    )
    for entry in result["per_corruption"].values():
        assert entry["severities"] == [1, 5] and len(entry["accuracy"]) == 2
        assert entry["mean_error"] == pytest.approx(1 - np.mean(entry["accuracy"]))
    errors = [entry["mean_error"] for entry in result["per_corruption"].values()]
    assert result["mean_corruption_error"] == pytest.approx(np.mean(errors))
    # The cache is reused: a second run reads the same corrupted images back.
    assert len(list(tmp_path.glob("*.npy"))) == 4
    again = robustness.corruption_accuracy(
        model,
        images,
        labels,
        NORMALIZATION,
        corruptions=["gaussian_noise", "pixelate"],
        severities=(1, 5),
        cache_dir=tmp_path,
        progress=False,
    )
    assert again["per_corruption"] == result["per_corruption"]


def test_pixel_shuffle_is_the_token_shuffle():
    # Without the unknown embedding, the model's own jigsaw and moving pixel patches give the same network input.
    model = tiny_mjp(use_unk_position_embedding=False)
    pixel_values = torch.randn(3, 3, 28, 28)
    mask, permutation = random_jigsaw(1, (7, 7), 0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        jigsawed = model(pixel_values, jigsaw_mask=mask, jigsaw_permutation=permutation).logits
        moved = model(shuffle_patches(pixel_values, (4, 4), permutation), jigsaw=False).logits
    torch.testing.assert_close(jigsawed, moved)


def test_jigsaw_accuracy():
    model = tiny_mjp()
    pixel_values, labels = NORMALIZATION.from_uint8(uint8_images(20)[0]), torch.randint(0, 10, (20,))
    result = robustness.jigsaw_accuracy(model, pixel_values, labels, ratio=0.9, batch_size=8, progress=False)
    assert set(result) == {
        "ratio",
        "accuracy",
        "accuracy_without_unk",
        "uses_unk_position_embedding",
        "mean_shuffled_fraction",
        "note",
    }
    assert result["uses_unk_position_embedding"] is True
    assert 0.5 < result["mean_shuffled_fraction"] <= 0.9
    clean = robustness.accuracy(robustness.predict(model, pixel_values), labels)
    assert robustness.jigsaw_accuracy(model, pixel_values, labels, ratio=0.0, progress=False)[
        "accuracy"
    ] == pytest.approx(clean)

    vit = model.to_vit()
    stock = robustness.jigsaw_accuracy(vit, pixel_values, labels, ratio=0.9, batch_size=8, progress=False)
    assert stock["uses_unk_position_embedding"] is False and stock["accuracy"] == stock["accuracy_without_unk"]
    assert "no unknown position embedding" in stock["note"]
    # Same draws, same pixel-space shuffle: the stock export scores what the MJP model scores without UNK.
    assert stock["accuracy"] == result["accuracy_without_unk"]


@pytest.mark.parametrize("stock", [False, True])
def test_prediction_consistency(stock):
    model = tiny_mjp()
    model = model.to_vit().eval() if stock else model
    pixel_values = NORMALIZATION.from_uint8(uint8_images(10)[0])
    same = robustness.prediction_consistency(model, pixel_values, ratio=0.0, progress=False)
    assert same["feature_l2"] == pytest.approx(0, abs=1e-5) and same["agreement"] == 1.0
    moved = robustness.prediction_consistency(model, pixel_values, ratio=0.5, batch_size=4, progress=False)
    assert set(moved) == {"ratio", "feature_l2", "feature_l2_unit", "agreement", "uses_unk_position_embedding"}
    assert moved["feature_l2"] > 0 and 0 < moved["feature_l2_unit"] <= 2 and 0 <= moved["agreement"] <= 1
    assert moved["uses_unk_position_embedding"] is (not stock)


def test_cli_writes_json_and_png(tmp_path):
    model_dir = tmp_path / "model"
    tiny_mjp().to_vit().save_pretrained(model_dir)
    out = tmp_path / "out"
    robustness.main(
        [
            "--model_name_or_path",
            str(model_dir),
            "--output_dir",
            str(out),
            "--max_eval_samples",
            "16",
            "--corruptions",
            "gaussian_noise,fog",
            "--severities",
            "1,3",
            "--device",
            "cpu",
        ]
    )
    report = json.loads((out / "robustness.json").read_text())
    assert (out / "robustness.png").stat().st_size > 0
    assert report["model_class"] == "ViTForImageClassification"
    assert set(report["corruption"]["per_corruption"]) == {"gaussian_noise", "fog"}
    assert report["jigsaw"]["ratio"] == 0.9 and report["consistency"]["ratio"] == 0.5
    with pytest.raises(FileExistsError):
        robustness.main(["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--corruptions", "none"])


def test_cli_reads_an_image_folder(tmp_path, capsys):
    from PIL import Image

    images, labels = uint8_images(6)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "data" / "test" / f"class{label % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        # 32x32 files: the evaluation resizes them to the model's 28x28.
        Image.fromarray(image).resize((32, 32)).save(folder / f"{index}.png")
    model_dir = tmp_path / "model"
    tiny_mjp().save_pretrained(model_dir)
    report = robustness.main(
        [
            "--model_name_or_path",
            str(model_dir),
            "--output_dir",
            str(tmp_path / "out"),
            "--data_dir",
            str(tmp_path / "data"),
            "--corruptions",
            "contrast",
            "--severities",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert report["corruption"]["num_images"] == 6
    with pytest.raises(SystemExit):
        robustness.main(
            [
                "--model_name_or_path",
                str(model_dir),
                "--output_dir",
                str(tmp_path / "out2"),
                "--data_dir",
                str(tmp_path / "data"),
                "--dataset_name",
                "x",
            ]
        )
    assert "not both" in capsys.readouterr().err and not (tmp_path / "out2").exists()


# --- data whose classes are not the model's: refused before any number is computed --------------------------------


def _two_class_folder(tmp_path, **overrides):
    model_dir = tmp_path / "two-class"
    labels = {0: "cat", 1: "dog"}
    tiny_mjp(num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()}, **overrides).save_pretrained(
        model_dir
    )
    return model_dir


@pytest.mark.skipif(not fashion_mnist_available(), reason="the embedded Fashion-MNIST is not installed")
def test_a_two_class_model_is_not_evaluated_on_ten_class_data(tmp_path):
    from mjp_hf.evaluation import privacy

    model_dir = _two_class_folder(tmp_path)
    message = (
        r"Fashion-MNIST \(test split\) has labels 0..9 \(T-shirt/top, .*\), but the model classifies 2 classes "
        r"\(cat, dog\)"
    )
    with pytest.raises(ValueError, match=message):
        robustness.main(
            [
                "--model_name_or_path",
                str(model_dir),
                "--output_dir",
                str(tmp_path / "r"),
                "--max_eval_samples",
                "64",
                "--corruptions",
                "none",
                "--device",
                "cpu",
            ]
        )
    with pytest.raises(ValueError, match="but the model classifies 2 classes"):
        privacy.main(
            [
                "--model_name_or_path",
                str(model_dir),
                "--output_dir",
                str(tmp_path / "p"),
                "--num_images",
                "2",
                "--steps",
                "1",
                "--device",
                "cpu",
            ]
        )
    assert not (tmp_path / "r" / "robustness.json").exists() and not (tmp_path / "p" / "privacy.json").exists()


def test_class_names_are_checked_where_both_sides_name_them(tmp_path):
    from PIL import Image

    images, _ = uint8_images(4)
    for index, image in enumerate(images):
        folder = tmp_path / "data" / "test" / ("bird" if index % 2 else "cat")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index}.png")
    model_dir = _two_class_folder(tmp_path)
    argv = ["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "out")]
    argv += ["--data_dir", str(tmp_path / "data"), "--corruptions", "none", "--device", "cpu"]
    with pytest.raises(ValueError, match=r"names class 0 'bird', but the model's id2label names it 'cat'"):
        robustness.main(argv)
    (tmp_path / "data" / "test" / "bird").rename(tmp_path / "data" / "test" / "dog_")  # same class, other spelling
    report = robustness.main(argv)
    assert report["corruption"]["num_images"] == 4


def test_check_labels_directly():
    config = tiny_mjp(num_labels=3).config  # generic names LABEL_0..: only the range is checked
    check_labels(config, np.array([0, 2, 1]), ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"labels -1..2"):
        check_labels(config, np.array([-1, 2]))
    with pytest.raises(ValueError, match="holds no images"):
        check_labels(config, np.array([], dtype=np.int64))
