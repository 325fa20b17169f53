"""Gradient inversion: the analytic attack against stock ViT and MJP steps, the optimisation attack, metrics, CLI."""

import json

import numpy as np
import pytest
import torch

from mjp_hf import MJPViTForImageClassification
from mjp_hf.data import fashion_mnist_available, load_fashion_mnist_arrays
from mjp_hf.evaluation import privacy
from mjp_hf.evaluation.common import PixelNormalization
from mjp_hf.presets import config_from_preset

NORMALIZATION = PixelNormalization()


def tiny_config(**overrides):
    # A 7x7 grid of 4x4 patches; hidden size above the 49 patches so the analytic system is overdetermined.
    shape = dict(num_labels=10, hidden_size=192, num_hidden_layers=2, num_attention_heads=3, intermediate_size=192)
    return config_from_preset("demo", **{**shape, **overrides})


def tiny_mjp(seed=0, **overrides):
    torch.manual_seed(seed)
    return MJPViTForImageClassification(tiny_config(**overrides))


def images(count):
    """Fashion-MNIST test images as `pixel_values` (smooth random images where the data is not installed)."""
    if fashion_mnist_available():
        gray, labels = load_fashion_mnist_arrays("test")
        gray, labels = gray[:count], labels[:count]
    else:
        rng = np.random.default_rng(0)
        gray = np.kron(rng.integers(0, 256, (count, 7, 7)), np.ones((4, 4))).astype(np.uint8)
        labels = rng.integers(0, 10, count)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    return NORMALIZATION.from_uint8(rgb), torch.as_tensor(labels)


def test_analytic_attack_recovers_stock_vit_input():
    vit = tiny_mjp().to_vit()
    pixel_values, labels = images(3)
    report, _ = privacy.evaluate_privacy(vit, pixel_values, labels, NORMALIZATION, attacks=("analytic",), progress=False)
    for entry in report["per_image"]:
        assert entry["analytic"]["psnr"] > 30
        assert entry["analytic"]["recovered_fraction"] == 1.0
        assert entry["shuffled_positions"] == []
        assert entry["inferred_label"] == entry["label"]
    assert report["jigsaw_applied"] is False


def test_analytic_attack_cannot_place_patches_shuffled_by_mjp():
    model = tiny_mjp()
    pixel_values, labels = images(4)
    report, _ = privacy.evaluate_privacy(
        model, pixel_values, labels, NORMALIZATION, attacks=("analytic",), jigsaw_ratio=0.2, progress=False
    )
    kept, shuffled = [], []
    for entry in report["per_image"]:
        result = entry["analytic"]
        positions = entry["shuffled_positions"]
        assert len(positions) > 0 and result["unplaced_positions"] == len(positions)
        patch_psnr = np.array(result["patch_psnr"])
        # Not one shuffled patch comes back at its own position.
        assert (patch_psnr[positions] < 20).all()
        kept.append(result["psnr_kept_patches"])
        shuffled.append(result["psnr_shuffled_patches"])
    assert np.mean(shuffled) < np.mean(kept) - 10

    # The same model's step without the jigsaw (a step that lost the coin flip) leaks like a stock ViT.
    plain, _ = privacy.evaluate_privacy(
        model, pixel_values, labels, NORMALIZATION, attacks=("analytic",), jigsaw="off", progress=False
    )
    assert plain["summary"]["analytic"]["psnr"] > 30


def test_attacker_sees_exactly_the_shuffled_positions():
    model = tiny_mjp()
    pixel_values, labels = images(1)
    update = privacy.client_gradient(
        model, pixel_values, labels, jigsaw_ratio=0.3, generator=torch.Generator().manual_seed(1)
    )
    assert update.jigsaw_mask is not None and update.jigsaw_mask.any()
    assert torch.equal(privacy.placed_positions(update.gradients), ~update.jigsaw_mask[0])
    assert privacy.infer_label(update.gradients).item() == labels.item()


def test_client_gradient_is_the_training_step_gradient():
    model = tiny_mjp()
    pixel_values, labels = images(1)
    update = privacy.client_gradient(model, pixel_values, labels, generator=torch.Generator().manual_seed(0))
    model.zero_grad()
    model.train()
    model(pixel_values, labels=labels, jigsaw_mask=update.jigsaw_mask, jigsaw_permutation=update.jigsaw_permutation).loss.backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(update.gradients[name], param.grad, msg=name)


def test_naive_ablation_step_leaks_the_shuffled_input_not_the_image():
    model = tiny_mjp(jigsaw_mode="naive")
    pixel_values, labels = images(2)
    report, recon = privacy.evaluate_privacy(model, pixel_values, labels, NORMALIZATION, attacks=("analytic",), progress=False)
    for entry in report["per_image"]:
        # Every patch is placed (no unknown embedding), but at the wrong place: little is recovered in place.
        assert entry["analytic"]["unplaced_positions"] == 0
        assert entry["analytic"]["recovered_fraction_textured"] < 0.5


def test_jigsaw_on_needs_an_mjp_model():
    vit = tiny_mjp().to_vit()
    pixel_values, labels = images(1)
    with pytest.raises(ValueError, match="needs an MJP-ViT"):
        privacy.client_gradient(vit, pixel_values, labels, jigsaw="on")
    with pytest.raises(ValueError, match="jigsaw='sometimes'"):
        privacy.client_gradient(vit, pixel_values, labels, jigsaw="sometimes")


def test_optimization_attack_is_bounded_and_lowers_its_objective():
    vit = tiny_mjp(hidden_size=48, intermediate_size=48).to_vit()
    pixel_values, labels = images(1)
    update = privacy.client_gradient(vit, pixel_values, labels)
    reconstruction, info = privacy.optimization_attack(
        vit, update.gradients, pixel_bounds=(-1.0, 1.0), steps=12, generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert reconstruction.shape == pixel_values.shape
    assert reconstruction.min() >= -1 and reconstruction.max() <= 1
    assert info["steps_run"] == 12
    assert info["best_objective"] < info["initial_objective"]
    _, info = privacy.optimization_attack(vit, update.gradients, steps=1000, max_seconds=0.0, progress=False)
    assert info["steps_run"] == 1


def test_reconstruction_metrics_count_patches_in_place():
    rng = np.random.default_rng(0)
    original = rng.random((8, 8, 3))
    exact = privacy.reconstruction_metrics(original, original, (4, 4))
    assert exact["psnr"] == privacy.PSNR_CAP and exact["ssim"] == pytest.approx(1.0) and exact["mse"] == 0
    assert exact["recovered_fraction"] == 1.0 and len(exact["patch_psnr"]) == 4
    # Swap the two top patches: perfect patches, wrong places.
    swapped = original.copy()
    swapped[:4, :4], swapped[:4, 4:] = original[:4, 4:], original[:4, :4]
    moved = privacy.reconstruction_metrics(original, swapped, (4, 4), shuffled=np.array([True, True, False, False]))
    assert moved["recovered_fraction"] == 0.5
    assert moved["psnr_kept_patches"] == privacy.PSNR_CAP and moved["psnr_shuffled_patches"] < 20
    blank = np.zeros((8, 8, 3))
    assert privacy.reconstruction_metrics(blank, blank, (4, 4))["recovered_fraction_textured"] is None


def test_cli_writes_json_and_png(tmp_path):
    model_dir = tmp_path / "model"
    tiny_mjp(hidden_size=48, intermediate_size=48).save_pretrained(model_dir)
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--num_images", "2", "--steps", "2",
            "--device", "cpu", "--jigsaw_ratio", "0.3"]
    privacy.main(argv)
    report = json.loads((out / "privacy.json").read_text())
    assert (out / "privacy.png").stat().st_size > 0
    assert set(report["summary"]) == {"analytic", "optimization"}
    assert set(report["summary"]["analytic"]) == set(privacy.SUMMARY_KEYS)
    assert len(report["per_image"]) == 2 and report["jigsaw_applied"] and report["uses_unk_position_embedding"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        privacy.main(argv)
    privacy.main(argv + ["--overwrite", "--attacks", "analytic"])


def test_analytic_attack_removes_the_dalr_gradient():
    # The DALR loss adds an input-independent term to the position-embedding gradient; an attacker who knows the
    # weights subtracts it. Left in (weight 1 makes it large), it would wreck the linear system.
    model = tiny_mjp(dalr_loss_weight=1.0)
    pixel_values, labels = images(2)
    report, _ = privacy.evaluate_privacy(
        model, pixel_values, labels, NORMALIZATION, attacks=("analytic",), jigsaw="off", progress=False
    )
    assert report["summary"]["analytic"]["psnr"] > 30
