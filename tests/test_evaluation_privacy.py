"""Gradient inversion: the solver, the analytic attacks against stock ViT and MJP steps at the demo width, the
attacker's view of the model's training steps, the multi-round attacker, the optimisation attack, metrics, CLI."""

import json
from functools import cache

import numpy as np
import pytest
import torch

from mjp_hf import MJPViTForImageClassification
from mjp_hf.data import load_fashion_mnist_arrays
from mjp_hf.evaluation import privacy, privacy_attacks
from mjp_hf.evaluation.common import PixelNormalization
from mjp_hf.training.presets import config_from_preset


NORMALIZATION = PixelNormalization()
NUM_PATCHES = 49
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def demo_config(**overrides):
    """The demo preset (7x7 grid of 4x4 patches, width 48: fewer hidden units than patch tokens)."""
    return config_from_preset("demo", num_labels=10, **overrides)


def demo_model(seed=0, **overrides):
    torch.manual_seed(seed)
    return MJPViTForImageClassification(demo_config(**overrides))


def images(count, split="test", start=0):
    """Fashion-MNIST images as `pixel_values` (the CLI's default data: the same first test images)."""
    gray, labels = load_fashion_mnist_arrays(split)
    gray, labels = gray[start : start + count], labels[start : start + count]
    return NORMALIZATION.from_uint8(np.repeat(gray[..., None], 3, axis=-1)), torch.as_tensor(labels)


@cache
def _trained_state(overrides: tuple, steps: int = 40):
    """A demo model briefly trained through the model API: `steps` AdamW steps of batch 8 on 32 training images
    (different from the attacked test images), every step drawn as the model trains (jigsaw coin flips
    included)."""
    model = demo_model(**dict(overrides))
    pixel_values, labels = images(32, split="train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for step in range(steps):
        batch = slice(8 * (step % 4), 8 * (step % 4) + 8)
        loss = model(pixel_values[batch], labels=labels[batch]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.config, {k: v.clone() for k, v in model.state_dict().items()}


def trained_model(**overrides):
    config, state = _trained_state(tuple(sorted(overrides.items())))
    model = MJPViTForImageClassification(config)
    model.load_state_dict(state)
    return model.eval()


STANDARD_PE = dict(jigsaw_prob=0.0, dalr_head="none")


def run_cli(tmp_path, model, *args, name="out"):
    model_dir = tmp_path / f"{name}_model"
    model.save_pretrained(model_dir)
    out = tmp_path / name
    privacy.main(["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--device", "cpu", *args])
    return json.loads((out / "privacy.json").read_text())


# ------------------------------------------------------------------------------------------------------------------
# The solver


def reference_solve(regressors: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, int]:
    """An independent minimum-norm least squares: numpy's SVD of the float64 system `regressors^T X = targets`,
    dropping singular values <= float32 eps x s_max x max(shape) (the rule of `truncation_tolerance`)."""
    matrix = regressors.T.astype(np.float64)
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    rank = int((s > FLOAT32_EPS * s.max() * max(matrix.shape)).sum())
    return vh[:rank].T @ np.diag(1 / s[:rank]) @ u[:, :rank].T @ targets, rank


@pytest.mark.parametrize("width", [32, 48, 49, 50, 64])
def test_solver_matches_an_independent_svd_solve_at_every_width(width):
    heads = 7 if width == 49 else 2
    model = demo_model(hidden_size=width, num_attention_heads=heads, intermediate_size=2 * width)
    pixel_values, labels = images(1)
    update = privacy.client_gradient(model, pixel_values, labels, jigsaw="off")
    system = privacy_attacks.patch_system(model, update.gradients)
    solved = system.solve()
    expected, expected_rank = reference_solve(system.regressors.numpy(), system.targets.numpy())
    assert solved.rank == expected_rank
    # Every token's input gradient has zero mean over the hidden units (each path to the loss runs through a
    # LayerNorm's centring): the 49 regressors span at most width - 1 dimensions.
    assert solved.rank <= min(NUM_PATCHES, width - 1)
    assert solved.unresolved == NUM_PATCHES - solved.rank
    assert solved.unresolved >= max(0, NUM_PATCHES + 1 - width)
    np.testing.assert_allclose(solved.solution.numpy(), expected, rtol=1e-6, atol=1e-8 * np.abs(expected).max())
    # The null basis spans exactly what the system leaves free: directions whose singular value the solver dropped,
    # below its truncation tolerance (a fixed 1e-6 of the largest entry failed at seeds where one of them fell
    # between the two).
    null = solved.null_basis
    assert bool(((system.regressors.T @ null).norm(dim=0) <= solved.tolerance).all())
    if solved.unresolved:
        torch.testing.assert_close(null.T @ null, torch.eye(null.shape[1], dtype=torch.float64))


def test_solver_truncates_float32_noise_that_float64_pinv_inverts():
    # At width 48 the smallest singular value kept by float64's default pinv tolerance is float32 rounding noise.
    model = demo_model()
    pixel_values, labels = images(1)
    update = privacy.client_gradient(model, pixel_values, labels, jigsaw="off")
    system = privacy_attacks.patch_system(model, update.gradients)
    singular = torch.linalg.svdvals(system.regressors)
    assert singular.shape[0] == 48 and singular[-1] / singular[0] < 1e-6  # the centring's exact zero, as noise
    # float64's default tolerance (what `torch.linalg.pinv` uses) keeps it, and would invert it.
    assert torch.linalg.matrix_rank(system.regressors).item() == 48
    assert system.solve().rank == 47


# ------------------------------------------------------------------------------------------------------------------
# Plain steps leak the whole image, whatever the width


@pytest.mark.parametrize("trained", [False, True], ids=["random-init", "briefly-trained"])
def test_cli_standard_pe_demo_model_gives_the_image_back(tmp_path, trained):
    model = trained_model(**STANDARD_PE) if trained else demo_model(**STANDARD_PE)
    report = run_cli(tmp_path, model, "--attacks", "analytic", "--num_images", "4", "--jigsaw", "auto")
    assert report["step_kinds"] == ["plain"] and not report["jigsaw_applied"]
    assert report["summary"]["analytic"]["psnr"] >= 30
    assert report["summary"]["analytic"]["recovered_fraction_textured"] >= 0.95
    for entry in report["per_image"]:
        assert entry["steps"]["plain"]["analytic"]["psnr"] >= 30
        # Width 48 below 49 tokens: the system keeps a null space, and the report says how large.
        assert entry["steps"]["plain"]["analytic"]["unresolved_dimensions"] >= 2
    assert report["summary"]["by_step"]["plain"]["analytic"]["unresolved_dimensions"] >= 2


@pytest.mark.parametrize("trained", [False, True], ids=["random-init", "briefly-trained"])
def test_cli_mjp_model_attacked_with_jigsaw_off_gives_the_image_back(tmp_path, trained):
    model = trained_model() if trained else demo_model()
    report = run_cli(tmp_path, model, "--attacks", "analytic", "--num_images", "4", "--jigsaw", "off")
    assert report["step_kinds"] == ["plain"]
    assert report["summary"]["analytic"]["psnr"] >= 30
    assert report["summary"]["analytic"]["recovered_fraction_textured"] >= 0.95


def test_analytic_attack_recovers_stock_vit_input():
    vit = demo_model().to_vit()
    pixel_values, labels = images(3)
    report, _ = privacy.evaluate_privacy(
        vit, pixel_values, labels, NORMALIZATION, attacks=("analytic",), progress=False
    )
    assert report["step_kinds"] == ["plain"]
    for entry in report["per_image"]:
        result = entry["steps"]["plain"]["analytic"]
        assert result["psnr"] > 30 and result["recovered_fraction"] == 1.0
        assert entry["steps"]["plain"]["shuffled_positions"] == []
        assert entry["inferred_label"] == entry["label"]


def test_cli_audits_a_stock_vit_folder(tmp_path):
    # A published root export (`to_vit()`, model_type vit): the same audit, a plain step.
    report = run_cli(
        tmp_path, demo_model().to_vit(), "--attacks", "analytic,analytic_prior,multi_round", "--num_images", "2"
    )
    assert report["model_class"] == "ViTForImageClassification"
    assert report["step_kinds"] == ["plain"] and report["summary"]["step_weights"] == {"plain": 1.0}
    assert report["summary"]["headline"]["psnr"] >= 30
    assert "skipped" in report["summary"]["multi_round"]
    assert report["summary"]["exposure"]["1"]["plain_step_probability"] == 1.0


def test_analytic_attack_removes_the_dalr_gradient():
    # The DALR loss adds an input-independent term to the position-embedding gradient; an attacker who knows the
    # weights subtracts it. Left in (weight 1 makes it large), it would wreck the linear system.
    model = demo_model(dalr_loss_weight=1.0)
    pixel_values, labels = images(2)
    report, _ = privacy.evaluate_privacy(
        model, pixel_values, labels, NORMALIZATION, attacks=("analytic",), jigsaw="off", progress=False
    )
    assert report["summary"]["analytic"]["psnr"] > 30


# ------------------------------------------------------------------------------------------------------------------
# The attacker's view follows the model's training


def test_auto_on_a_jigsaw_prob_zero_mjp_model_reports_a_plain_step(tmp_path):
    # The README's baseline: an MJP-class model that never takes a jigsawed step in training.
    for dalr_head in ("none", "nonlinear"):
        report = run_cli(
            tmp_path,
            demo_model(jigsaw_prob=0.0, dalr_head=dalr_head),
            "--attacks",
            "analytic",
            "--num_images",
            "2",
            "--jigsaw",
            "auto",
            name=dalr_head,
        )
        assert report["model_class"] == "MJPViTForImageClassification"
        assert report["step_kinds"] == ["plain"] and not report["jigsaw_applied"]
        assert report["summary"]["step_weights"] == {"plain": 1.0}
        assert report["summary"]["analytic"]["psnr"] >= 30


def test_auto_on_a_default_mjp_model_reports_both_steps_and_the_expected_leak(tmp_path):
    report = run_cli(
        tmp_path,
        demo_model(jigsaw_prob=0.5),
        "--attacks",
        "analytic,analytic_prior",
        "--num_images",
        "3",
        "--jigsaw",
        "auto",
    )
    summary = report["summary"]
    assert report["step_kinds"] == ["jigsawed", "plain"]
    assert summary["step_weights"] == {"jigsawed": 0.5, "plain": 0.5}
    for entry in report["per_image"]:
        assert entry["steps"]["jigsawed"]["shuffled_positions"] and not entry["steps"]["plain"]["shuffled_positions"]
    # The expected figure per step, recomputed from the per-image figures.
    for name in ("analytic", "analytic_prior", "headline"):
        for key in ("psnr", "recovered_fraction_textured"):
            per_kind = {
                kind: np.mean([entry["steps"][kind][name][key] for entry in report["per_image"]])
                for kind in ("jigsawed", "plain")
            }
            assert summary[name][key] == pytest.approx(0.5 * per_kind["jigsawed"] + 0.5 * per_kind["plain"])
    # A plain step gives the image back: half the steps of the default setting leak it whole.
    assert summary["by_step"]["plain"]["headline"]["psnr"] >= 30
    assert summary["by_step"]["jigsawed"]["headline"]["psnr"] < summary["by_step"]["plain"]["headline"]["psnr"]
    for k in ("1", "2", "4", "8"):
        assert summary["exposure"][k]["plain_step_probability"] == pytest.approx(1 - 0.5 ** int(k))


def test_headline_is_the_best_attack_per_image_and_metric():
    model = demo_model()
    pixel_values, labels = images(3)
    report, _ = privacy.evaluate_privacy(
        model,
        pixel_values,
        labels,
        NORMALIZATION,
        attacks=("analytic", "analytic_prior"),
        jigsaw="on",
        progress=False,
    )
    for entry in report["per_image"]:
        step = entry["steps"]["jigsawed"]
        assert step["headline"]["psnr"] == max(step["analytic"]["psnr"], step["analytic_prior"]["psnr"])
        assert step["headline"]["mse"] == min(step["analytic"]["mse"], step["analytic_prior"]["mse"])
        assert step["headline"]["recovered_fraction_textured"] == max(
            step["analytic"]["recovered_fraction_textured"], step["analytic_prior"]["recovered_fraction_textured"]
        )


def test_jigsaw_prob_one_jigsaws_every_training_step_and_every_attacked_step(tmp_path):
    model = demo_model(jigsaw_prob=1.0)
    pixel_values, labels = images(8, split="train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(12):
        out = model(pixel_values, labels=labels)
        assert out.jigsaw_mask is not None and out.jigsaw_mask.any()
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    # Under "auto" the client's every step is jigsawed too.
    generator = torch.Generator().manual_seed(0)
    for index in range(4):
        update = privacy.client_gradient(
            model, pixel_values[index : index + 1], labels[index : index + 1], generator=generator
        )
        assert update.jigsaw_mask is not None and update.jigsaw_mask.any()
    report = run_cli(tmp_path, model.eval(), "--attacks", "analytic", "--num_images", "2")
    assert report["step_kinds"] == ["jigsawed"] and report["summary"]["step_weights"] == {"jigsawed": 1.0}
    assert report["summary"]["analytic"] == report["summary"]["by_step"]["jigsawed"]["analytic"]
    assert report["summary"]["exposure"]["8"]["plain_step_probability"] == 0.0


def test_analytic_attack_cannot_place_patches_shuffled_by_mjp():
    model = demo_model()
    pixel_values, labels = images(4)
    report, _ = privacy.evaluate_privacy(
        model,
        pixel_values,
        labels,
        NORMALIZATION,
        attacks=("analytic",),
        jigsaw="on",
        jigsaw_ratio=0.2,
        progress=False,
    )
    kept, shuffled = [], []
    for entry in report["per_image"]:
        result = entry["steps"]["jigsawed"]["analytic"]
        positions = entry["steps"]["jigsawed"]["shuffled_positions"]
        assert len(positions) > 0 and result["unplaced_positions"] == len(positions)
        patch_psnr = np.array(result["patch_psnr"])
        assert (patch_psnr[positions] < 20).all()
        kept.append(result["psnr_kept_patches"])
        shuffled.append(result["psnr_shuffled_patches"])
    assert np.mean(shuffled) < np.mean(kept) - 10


def test_prior_attacks_beat_the_textbook_attack_on_jigsawed_steps():
    # Demo preset, jigsawed steps at ratio 0.1, a fixed set of 8 test images: the total-variation prior puts more
    # content patches back in place, and a better image, than the textbook least squares; refining it by the
    # shuffled patches' content does better still.
    model = demo_model(jigsaw_ratio=0.1)
    pixel_values, labels = images(8)
    names = ("analytic", "analytic_prior", "analytic_refined")
    report, _ = privacy.evaluate_privacy(
        model, pixel_values, labels, NORMALIZATION, attacks=names, jigsaw="on", progress=False
    )
    jigsawed = report["summary"]["by_step"]["jigsawed"]
    assert all(entry["steps"]["jigsawed"]["shuffled_positions"] for entry in report["per_image"])
    textured = {name: jigsawed[name]["recovered_fraction_textured"] for name in names}
    assert textured["analytic_refined"] > textured["analytic_prior"] > textured["analytic"]
    assert jigsawed["analytic_prior"]["psnr"] > jigsawed["analytic"]["psnr"] + 3


def test_attacker_sees_exactly_the_shuffled_positions():
    model = demo_model()
    pixel_values, labels = images(1)
    update = privacy.client_gradient(
        model, pixel_values, labels, jigsaw="on", jigsaw_ratio=0.3, generator=torch.Generator().manual_seed(1)
    )
    assert update.jigsaw_mask is not None and update.jigsaw_mask.any()
    assert torch.equal(privacy.placed_positions(update.gradients), ~update.jigsaw_mask[0])
    assert privacy.infer_label(update.gradients).item() == labels.item()


def test_client_gradient_is_the_training_step_gradient():
    model = demo_model()
    pixel_values, labels = images(1)
    update = privacy.client_gradient(
        model, pixel_values, labels, jigsaw="on", generator=torch.Generator().manual_seed(0)
    )
    model.zero_grad()
    model.train()
    model(
        pixel_values, labels=labels, jigsaw_mask=update.jigsaw_mask, jigsaw_permutation=update.jigsaw_permutation
    ).loss.backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(update.gradients[name], param.grad, msg=name)


def test_naive_ablation_step_leaks_the_shuffled_input_not_the_image():
    model = demo_model(jigsaw_mode="naive", jigsaw_prob=1.0)
    pixel_values, labels = images(2)
    report, _ = privacy.evaluate_privacy(
        model, pixel_values, labels, NORMALIZATION, attacks=("analytic",), progress=False
    )
    assert report["step_kinds"] == ["jigsawed"]
    for entry in report["per_image"]:
        # Every patch is placed (no unknown embedding), but at the wrong place: little is recovered in place.
        result = entry["steps"]["jigsawed"]["analytic"]
        assert result["unplaced_positions"] == 0
        assert result["recovered_fraction_textured"] < 0.5


def test_jigsaw_views_are_checked():
    vit = demo_model().to_vit()
    pixel_values, labels = images(1)
    with pytest.raises(ValueError, match="needs an MJP-ViT"):
        privacy.client_gradient(vit, pixel_values, labels, jigsaw="on")
    with pytest.raises(ValueError, match="jigsaw='sometimes'"):
        privacy.client_gradient(vit, pixel_values, labels, jigsaw="sometimes")


# ------------------------------------------------------------------------------------------------------------------
# The multi-round attacker


def test_multi_round_attacker_at_jigsaw_prob_half_gives_the_image_back_once_a_round_is_plain():
    model = demo_model(jigsaw_ratio=0.1)
    pixel_values, labels = images(4)
    report, _ = privacy.evaluate_privacy(
        model,
        pixel_values,
        labels,
        NORMALIZATION,
        attacks=("analytic", "multi_round"),
        jigsaw="on",
        multi_round_probs=(0.5,),
        progress=False,
        seed=3,
    )
    counts = ["1", "2", "4", "8"]
    plain_trials = 0
    for entry in report["per_image"]:
        trials = entry["multi_round"]["0.5"]
        for k in counts:
            if trials[k]["plain_rounds"] > 0:
                plain_trials += 1
                assert trials[k]["best_of_rounds"]["psnr"] >= 30
                assert trials[k]["headline"]["psnr"] >= 30
        shares = [trials[k]["headline"]["recovered_fraction_textured"] for k in counts]
        assert shares == sorted(shares)
    assert plain_trials >= 4  # the draw above does include plain rounds
    summary = report["summary"]["multi_round"]["0.5"]
    means = [summary[k]["headline"]["recovered_fraction_textured"] for k in counts]
    assert means == sorted(means)
    # The attacker's own choice, without the ground truth, gains from more rounds.
    assert (
        summary["8"]["best_of_rounds"]["recovered_fraction_textured"]
        > summary["1"]["best_of_rounds"]["recovered_fraction_textured"]
    )


def test_best_of_rounds_reads_the_rounds_from_the_gradient_only():
    model = demo_model(jigsaw_ratio=0.3)
    pixel_values, labels = images(1, start=2)
    generator = torch.Generator().manual_seed(0)
    jigsawed = [
        privacy.client_gradient(model, pixel_values, labels, jigsaw="on", generator=generator) for _ in range(3)
    ]
    plain = privacy.client_gradient(model, pixel_values, labels, jigsaw="off")
    singles = [privacy_attacks.prior_attack(model, u.gradients, NORMALIZATION) for u in [*jigsawed, plain]]
    assert singles[-1].fit_error <= privacy_attacks.CLEAN_FIT_ERROR < min(s.fit_error for s in singles[:-1])
    combined = privacy_attacks.best_of_rounds(singles)
    # The plain round is exact and wins for every patch, wherever it comes in the list.
    torch.testing.assert_close(combined.patches, singles[-1].patches)
    torch.testing.assert_close(privacy_attacks.best_of_rounds(singles[::-1]).patches, singles[-1].patches)
    # Positions shuffled in one round but placed in another are placed by the combination.
    union = torch.stack([s.placed for s in singles[:-1]]).any(0)
    assert torch.equal(privacy_attacks.best_of_rounds(singles[:-1]).placed, union)


def test_multi_round_figure_is_never_below_the_single_step_figure():
    """An attacker holding k >= 1 rounds holds at least one step. On fixed draws (a briefly trained jigsaw_prob 1
    model at ratios 0.3 and 0.5, four images, seed 0) the k-round figure is never below the single-step figure of
    the jigsawed step, on average and per image. It used to be: the k-round attacker scored only each round's
    prior image, never the textbook one, which places more patches at these ratios, and its first round was not
    the audited step."""
    names = ("analytic", "analytic_prior", "analytic_refined", "multi_round")
    for ratio in (0.3, 0.5):
        model = trained_model(jigsaw_prob=1.0, jigsaw_ratio=ratio)
        pixel_values, labels = images(4)
        report, _ = privacy.evaluate_privacy(
            model,
            pixel_values,
            labels,
            NORMALIZATION,
            attacks=names,
            multi_round_counts=(1, 2, 4),
            multi_round_probs=(1.0,),
            progress=False,
        )
        summary = report["summary"]
        single = summary["by_step"]["jigsawed"]["headline"]
        for k in ("1", "2", "4"):
            multi = summary["multi_round"]["1.0"][k]["headline"]
            assert multi["mse"] <= single["mse"] + 1e-15, (ratio, k)
            for key in ("psnr", "ssim", "recovered_fraction", "recovered_fraction_textured"):
                assert multi[key] >= single[key] - 1e-12, (ratio, k, key)
            assert summary["exposure"][k]["multi_round_headline"] == multi
        for entry in report["per_image"]:
            step = entry["steps"]["jigsawed"]["headline"]
            rounds = entry["multi_round_rounds"]["1.0"]
            assert rounds["kinds"] == ["jigsawed"] * 4
            # The first round is the audited step itself.
            assert rounds["figures"][0]["analytic"]["psnr"] == entry["steps"]["jigsawed"]["analytic"]["psnr"]
            for k in ("1", "2", "4"):
                assert entry["multi_round"]["1.0"][k]["headline"]["psnr"] >= step["psnr"]


def test_multi_round_at_jigsaw_prob_half_holds_the_step_of_its_first_round():
    model = demo_model(jigsaw_ratio=0.5, jigsaw_prob=0.5)
    pixel_values, labels = images(4)
    report, _ = privacy.evaluate_privacy(
        model,
        pixel_values,
        labels,
        NORMALIZATION,
        attacks=("analytic", "analytic_prior", "multi_round"),
        multi_round_counts=(1, 2),
        multi_round_probs=(),
        progress=False,
        seed=1,
    )
    assert report["multi_round"]["jigsaw_probs"] == [0.5]
    first_kinds = set()
    for entry in report["per_image"]:
        kind = entry["multi_round_rounds"]["0.5"]["kinds"][0]
        first_kinds.add(kind)
        for k in ("1", "2"):
            assert entry["multi_round"]["0.5"][k]["headline"]["psnr"] >= entry["steps"][kind]["headline"]["psnr"]
    assert first_kinds == {"jigsawed", "plain"}  # the draw does try both kinds


def test_multi_round_runs_only_at_probabilities_the_model_takes(tmp_path):
    # A jigsaw_prob 0 model never takes a jigsawed step: nothing to simulate, the plain figure is the exposure.
    report = run_cli(tmp_path, demo_model(jigsaw_prob=0.0), "--attacks", "analytic,multi_round", "--num_images", "1")
    assert "jigsaw_prob 0" in report["summary"]["multi_round"]["skipped"]
    assert set(report["multi_round"]["not_run"]) == {"0.0", "0.5", "1.0"}
    assert report["per_image"][0]["multi_round"] == {}
    plain = report["summary"]["by_step"]["plain"]["headline"]
    assert report["summary"]["exposure"]["8"]["single_step_bound"] == plain
    # A jigsaw_prob 1 model never takes a plain step: the default 0.5 is not run, its own 1 is.
    report = run_cli(
        tmp_path,
        demo_model(jigsaw_prob=1.0),
        "--attacks",
        "analytic,multi_round",
        "--num_images",
        "1",
        "--multi_round_counts",
        "1,2",
        name="p1",
    )
    assert report["multi_round"]["jigsaw_probs"] == [1.0] and "0.5" in report["multi_round"]["not_run"]
    assert set(report["summary"]["multi_round"]) == {"1.0"}


# ------------------------------------------------------------------------------------------------------------------
# The optimisation attack


def test_optimization_attack_is_bounded_and_lowers_its_objective():
    vit = demo_model().to_vit()
    pixel_values, labels = images(1)
    update = privacy.client_gradient(vit, pixel_values, labels)
    reconstruction, info = privacy.optimization_attack(
        vit,
        update.gradients,
        pixel_bounds=(-1.0, 1.0),
        steps=12,
        restarts=2,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    assert reconstruction.shape == pixel_values.shape
    assert reconstruction.min() >= -1 and reconstruction.max() <= 1
    assert info["steps_run"] == 24 and info["restarts_run"] == 2
    matching = privacy_attacks.GradientMatching(vit, update.gradients)
    assert info["best_matching"] == pytest.approx(matching.value(reconstruction.double()), rel=1e-6)
    assert info["best_matching"] < matching.value(torch.zeros_like(pixel_values))
    # The exact input matches to float32 precision: the objective reads the client's step right.
    assert matching.value(pixel_values) < 1e-6
    _, info = privacy.optimization_attack(vit, update.gradients, steps=1000, max_seconds=0.0, progress=False)
    assert info["steps_run"] <= privacy_attacks.LBFGS_CHUNK


def test_optimization_refinement_never_matches_worse_than_its_start():
    """From the analytic image, which is exact on a plain step, the refinement returns the candidate with the best
    gradient match, the start included: it cannot wreck the image (the old attack returned the iterate of least
    `1 - cos + tv x TV`, and took a 79 dB start to 39 dB)."""
    model = demo_model(**STANDARD_PE)
    pixel_values, labels = images(2)
    for index in range(2):
        update = privacy.client_gradient(model, pixel_values[index : index + 1], labels[index : index + 1])
        start = privacy_attacks.prior_attack(model, update.gradients, NORMALIZATION).pixel_values(model.config)
        refined, info = privacy.optimization_attack(model, update.gradients, init=start, steps=100, progress=False)
        original = privacy._to_hwc(pixel_values[index : index + 1], NORMALIZATION)

        def psnr(image):
            return privacy.reconstruction_metrics(original, privacy._to_hwc(image, NORMALIZATION), (4, 4))["psnr"]

        # Above 60 dB the gap between two images is float32 rounding of the gradient, not a worse reconstruction.
        assert psnr(start) >= 60 and psnr(refined) >= 60
        assert info["best_matching"] <= info["start_matching"]


def test_optimization_calibration_reports_inconclusive_when_the_budget_cannot_invert_from_scratch(tmp_path):
    """'Conclusive' means the generic attack, from scratch and at the budget used, rebuilds the same model's plain
    step at >= 20 dB. Five iterations cannot: inconclusive, although the analytic start would be exact (the audit
    used to calibrate from that start, a bar that could not fail)."""
    model = demo_model(**STANDARD_PE)
    report = run_cli(tmp_path, model, "--attacks", "analytic,optimization", "--num_images", "2", "--steps", "5")
    optimization = report["summary"]["optimization"]
    assert optimization["inconclusive"] and optimization["calibration_psnr"] < 20
    assert report["summary"]["analytic"]["psnr"] >= 30  # the analytic start is exact
    assert report["summary"]["headline"]["attacks"] == ["analytic"]
    assert optimization["budget"]["steps"] == 5
    # A jigsaw_prob 1 model takes no plain step: the calibration runs on one, beside its jigsawed steps; the
    # refinement is reported apart and stays in the headline, never lowering it.
    report = run_cli(
        tmp_path,
        demo_model(jigsaw_prob=1.0),
        "--attacks",
        "analytic_prior,optimization,optimization_refined",
        "--num_images",
        "2",
        "--steps",
        "5",
        name="p1",
    )
    summary = report["summary"]
    assert report["step_kinds"] == ["jigsawed"] and summary["optimization"]["inconclusive"]
    assert all(entry["optimization_calibration"]["psnr"] < 20 for entry in report["per_image"])
    assert summary["headline"]["attacks"] == ["analytic_prior", "optimization_refined"]
    for entry in report["per_image"]:
        step = entry["steps"]["jigsawed"]
        assert step["headline"]["psnr"] == max(step["analytic_prior"]["psnr"], step["optimization_refined"]["psnr"])


def test_optimization_status_is_conclusive_only_at_the_bar():
    plan = privacy._plan(demo_model(**STANDARD_PE), "auto", None, ("optimization",), (), ())
    for psnr, inconclusive in ((19.99, True), (20.0, False), (35.0, False)):
        entries = [{"steps": {"plain": {"optimization": {"psnr": psnr, "recovered_fraction_textured": 0.5}}}}]
        status = privacy._optimization_status(plan, entries, privacy.OptimizationBudget())
        assert status["inconclusive"] is inconclusive and status["calibration_psnr"] == psnr


# ------------------------------------------------------------------------------------------------------------------
# Metrics and the command line


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
    demo_model().save_pretrained(model_dir)
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path",
        str(model_dir),
        "--output_dir",
        str(out),
        "--num_images",
        "2",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--jigsaw_ratio",
        "0.3",
        "--multi_round_counts",
        "1,2",
    ]
    privacy.main(argv)
    report = json.loads((out / "privacy.json").read_text())
    assert (out / "privacy.png").stat().st_size > 0
    summary = report["summary"]
    expected = {"analytic", "analytic_prior", "analytic_refined", "optimization", "headline", "by_step", "exposure"}
    assert expected | {"multi_round"} <= set(summary)
    assert set(privacy.SUMMARY_KEYS) <= set(summary["analytic"])
    assert summary["analytic"]["psnr"] is not None and summary["analytic"]["recovered_fraction_textured"] is not None
    assert set(summary["multi_round"]) == {"0.5", "1.0"} and set(summary["multi_round"]["1.0"]) == {"1", "2"}
    assert report["threat_model"].startswith("honest-but-curious")
    assert len(report["per_image"]) == 2 and report["jigsaw_applied"] and report["uses_unk_position_embedding"]
    with pytest.raises(FileExistsError, match="--overwrite"):
        privacy.main(argv)
    privacy.main(argv + ["--overwrite", "--attacks", "analytic"])
    with pytest.raises(SystemExit):
        privacy.main(argv + ["--overwrite", "--attacks", "analytic,telepathy"])


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--num_images", "-1"),
        ("--num_images", "0"),
        ("--num_images", "two"),
        ("--steps", "0"),
        ("--max_seconds", "0"),
        ("--max_seconds", "nan"),
        ("--restarts", "0"),
        ("--tv_weight", "-0.1"),
        ("--jigsaw_ratio", "1.5"),
        ("--psnr_threshold", "-3"),
        ("--multi_round_counts", "1,0"),
        ("--multi_round_counts", ","),
        ("--multi_round_probs", "0.5,2"),
    ],
)
def test_cli_refuses_out_of_range_numbers_before_any_work(tmp_path, capsys, flag, value):
    # The model folder does not even exist: the flags are checked first (`--num_images -1` used to attack every
    # image of the split).
    argv = ["--model_name_or_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out"), flag, value]
    with pytest.raises(SystemExit):
        privacy.main(argv)
    error = capsys.readouterr().err
    assert f"argument {flag}: " in error and "; pass " in error
    assert not (tmp_path / "out").exists()


def test_cli_says_what_it_will_run_before_starting(tmp_path, capsys):
    report = run_cli(
        tmp_path,
        demo_model(jigsaw_prob=1.0),
        "--attacks",
        "analytic,optimization,multi_round",
        "--num_images",
        "2",
        "--steps",
        "3",
        "--max_seconds",
        "2",
        "--multi_round_counts",
        "1,2",
    )
    printed = capsys.readouterr().out
    plan = printed.index("privacy audit: 2 image(s)")
    assert "one training step of this model takes" in printed
    # Two optimisation runs per image (the jigsawed step and the plain-step calibration), 2 s each, 2 images.
    assert "2 run(s) per image" in printed and "at most 8 s for all images" in printed
    assert "multi-round attacker not run at jigsaw_prob 0.5: the model trains with jigsaw_prob 1" in printed
    assert printed.index("the first image took") > plan
    assert all(entry["seconds"] > 0 for entry in report["per_image"])
    assert report["per_image"][0]["steps"]["jigsawed"]["analytic"]["seconds"] >= 0


def test_evaluate_privacy_leaves_the_thread_controller_to_its_caller(monkeypatch):
    """A library function changes no process-wide state: the thread controller runs only through the `watch` hook,
    which the CLI passes."""
    from mjp_hf import threads

    updates, watched = [], []

    class Counting(threads.AdaptiveThreads):
        def update(self):
            updates.append(1)

    monkeypatch.setattr(threads, "_shared", Counting(reader=lambda: None))
    model = demo_model()
    pixel_values, labels = images(2)
    kwargs = dict(
        attacks=("analytic", "optimization"), optimization=privacy.OptimizationBudget(steps=2), progress=False
    )
    privacy.evaluate_privacy(model, pixel_values, labels, NORMALIZATION, **kwargs)
    assert updates == []

    def watch(iterable):
        watched.append(iterable)
        return threads.adaptive_threads().watch(iterable, "cpu")

    privacy.evaluate_privacy(model, pixel_values, labels, NORMALIZATION, watch=watch, **kwargs)
    assert len(updates) >= 2 and len(watched) >= 3  # the images, and each optimisation run's iterations


def test_privacy_figures_script_writes_the_tables(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "privacy_figures.py"
    spec = importlib.util.spec_from_file_location("privacy_figures", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    argv = [
        "--output_dir",
        str(tmp_path / "out"),
        "--work_dir",
        str(tmp_path / "work"),
        "--train_steps",
        "2",
        "--batch_size",
        "4",
        "--num_images",
        "1",
        "--optimization_steps",
        "2",
        "--optimization_seconds",
        "1",
        "--ratios",
        "0.1",
        "--probs",
        "1.0",
        "--multi_round_counts",
        "1,2",
    ]
    script.main(argv)
    records = json.loads((tmp_path / "out" / "privacy_figures.json").read_text())
    assert set(records) == {"standard-pe", "mjp-ratio0.1-p1.0"}
    p1, standard = records["mjp-ratio0.1-p1.0"]["audit"], records["standard-pe"]["audit"]
    assert p1["step_kinds"] == ["jigsawed"] and standard["step_kinds"] == ["plain"]
    assert standard["summary"]["headline"]["psnr"] >= 30
    # Both are on the default from-scratch list: calibrated (two iterations cannot invert), and refined apart.
    for audit in (p1, standard):
        assert audit["summary"]["optimization"]["inconclusive"] and "optimization_refined" in audit["summary"]
    table = (tmp_path / "out" / "privacy_figures.md").read_text()
    assert "| standard-pe |" in table and "| mjp-ratio0.1-p1.0 (p 1.0) |" in table
    assert ": inconclusive |" in table and "2 L-BFGS iterations or 1 s" in table
    audited = (tmp_path / "work" / "audits" / "standard-pe" / "privacy.json").stat().st_mtime_ns
    # A second run reuses the trained models and the audits; other audit flags redo the audits.
    script.main(argv)
    assert (tmp_path / "work" / "audits" / "standard-pe" / "privacy.json").stat().st_mtime_ns == audited
    script.main([*argv[:-2], "--multi_round_counts", "1"])
    assert (tmp_path / "work" / "audits" / "standard-pe" / "privacy.json").stat().st_mtime_ns == audited
    assert (tmp_path / "work" / "audits" / "mjp-ratio0.1-p1.0" / "privacy.json").stat().st_mtime_ns > audited


def test_exposure_bound_is_below_a_brute_force_best_of_k_rounds():
    """`exposure_lower_bound` against a simulation: images whose plain and jigsawed steps leak given shares, k
    rounds each drawn plain with probability 1 - p, the best round per image by ground truth. The bound is the
    simulated mean when every image leaks the same per kind, and below it when jigsawed rounds vary."""
    rng = np.random.default_rng(0)
    for p, k in ((0.5, 1), (0.5, 8), (0.9, 4), (1.0, 8), (0.0, 2)):
        plain_leak, jigsawed_leak = 1.0, rng.uniform(0, 0.6, size=(4000, k))  # per image and round
        plain_rounds = rng.random((4000, k)) >= p
        simulated = np.where(plain_rounds, plain_leak, jigsawed_leak).max(axis=1).mean()
        constant = np.where(plain_rounds, plain_leak, 0.3).max(axis=1).mean()
        by_step = {
            "plain": {"headline": {"recovered_fraction_textured": plain_leak}},
            "jigsawed": {"headline": {"recovered_fraction_textured": jigsawed_leak[:, 0].mean()}},
        }
        bound = privacy.exposure_lower_bound(by_step, 1 - p**k)["recovered_fraction_textured"]
        assert bound <= simulated + 0.01, (p, k)
        by_step["jigsawed"]["headline"]["recovered_fraction_textured"] = 0.3
        bound = privacy.exposure_lower_bound(by_step, 1 - p**k)["recovered_fraction_textured"]
        assert bound == pytest.approx(constant, abs=0.02), (p, k)
    # One kind of step only: its own figure, whatever the probability says.
    only_plain = {"plain": {"headline": {"recovered_fraction_textured": 0.9}}}
    assert privacy.exposure_lower_bound(only_plain, 1.0) == {"recovered_fraction_textured": 0.9}


def test_a_naive_model_at_jigsaw_prob_half_is_exposed_over_rounds(tmp_path):
    """The naive ablation has no unknown PE, so the multi-round attacker cannot run; its exposure over k rounds is
    still reported, from the single-step figures, and over 8 rounds it is about the plain step's: whole images."""
    report = run_cli(
        tmp_path,
        demo_model(jigsaw_mode="naive", jigsaw_prob=0.5),
        "--attacks",
        "analytic,analytic_prior,multi_round",
        "--num_images",
        "2",
    )
    summary = report["summary"]
    assert "skipped" in summary["multi_round"]
    plain = summary["by_step"]["plain"]["headline"]["recovered_fraction_textured"]
    jigsawed = summary["by_step"]["jigsawed"]["headline"]["recovered_fraction_textured"]
    assert plain >= 0.95 and jigsawed < 0.5
    for k in ("1", "2", "4", "8"):
        exposure = summary["exposure"][k]
        share = exposure["plain_step_probability"]
        assert exposure["single_step_bound"]["recovered_fraction_textured"] == pytest.approx(
            share * plain + (1 - share) * jigsawed
        )
    assert summary["exposure"]["8"]["single_step_bound"]["recovered_fraction_textured"] >= 0.99 * plain
    assert summary["exposure"]["1"]["single_step_bound"]["recovered_fraction_textured"] == pytest.approx(
        summary["headline"]["recovered_fraction_textured"]
    )
