"""The privacy audit under a gradient defence: the attacked update is the defended one the server receives (checked
against an independent computation of each defence), the analytic attack is unchanged by clipping alone, its
recovery falls as the noise grows, every attack runs on every defence for a stock ViT and an MJP model, and the
command line refuses flags of another defence before any work."""

import json
import math

import numpy as np
import pytest
import torch
from test_defenses import assert_gaussian_noise
from test_evaluation_privacy import NORMALIZATION, demo_model, images

from mjp_hf.evaluation import privacy, privacy_attacks
from mjp_hf.training.defenses import OPACUS_CLIP_EPSILON, Defense


SEED = 0
DEFENSES = {
    "none": Defense(),
    "dp_sgd": Defense("dp_sgd", noise_multiplier=1e-5, max_grad_norm=1.0),
    "local_noise": Defense("local_noise", noise_multiplier=1e-5, max_grad_norm=1.0),
    "prune": Defense("prune", prune_ratio=0.5),
}


def model_of(kind: str):
    return demo_model() if kind == "mjp" else demo_model().to_vit()


def plain_update(model, index=0):
    pixel_values, labels = images(index + 1)
    return privacy.client_gradient(model, pixel_values[index:], labels[index:], jigsaw="off")


def defended(update, defense, image_index=0, kind="plain", round_index=0):
    return privacy.defend_update(
        update, defense, seed=SEED, image_index=image_index, kind=kind, round_index=round_index
    )


def flat(gradients: dict) -> torch.Tensor:
    return torch.cat([gradients[name].reshape(-1).double() for name in sorted(gradients)])


# ------------------------------------------------------------------------------------------------------------------
# Each defence as the audit applies it, against an independent computation


@pytest.mark.parametrize("model_kind", ["mjp", "vit"])
@pytest.mark.parametrize("kind", ["dp_sgd", "local_noise"])
def test_clipping_scales_the_whole_update_to_the_clipping_norm(model_kind, kind):
    update = plain_update(model_of(model_kind))
    raw = flat(update.gradients)
    norm = float(raw.norm())
    assert norm > 1.0  # the demo model's batch-1 gradient is larger than C = 0.1 below: the clipping bites
    clipped = flat(defended(update, Defense(kind, noise_multiplier=0.0, max_grad_norm=0.1)).gradients)
    assert float(clipped.norm()) == pytest.approx(0.1, rel=1e-5)
    # Opacus' rule for DP-SGD, Flower's for local noise: one factor for every tensor.
    factor = 0.1 / (norm + OPACUS_CLIP_EPSILON) if kind == "dp_sgd" else 0.1 / norm
    torch.testing.assert_close(clipped, raw * factor, rtol=1e-5, atol=1e-9)
    # A norm above the update's leaves it exactly as it was.
    unclipped = defended(update, Defense(kind, noise_multiplier=0.0, max_grad_norm=1e6)).gradients
    assert all(torch.equal(unclipped[name], update.gradients[name]) for name in update.gradients)


@pytest.mark.parametrize("kind", ["dp_sgd", "local_noise"])
def test_noise_has_std_sigma_c_and_is_drawn_per_image_and_round(kind):
    update = plain_update(model_of("vit"))
    sigma, clip = 0.5, 1e6  # no clipping: the defended update minus the raw one is the noise alone
    defense = Defense(kind, noise_multiplier=sigma, max_grad_norm=clip)
    raw = flat(update.gradients)
    noise = flat(defended(update, defense).gradients) - raw
    # Mean 0 and std σC over the model's entries, within 5 standard errors of each estimate.
    assert noise.numel() > 50_000
    assert_gaussian_noise(noise, sigma * clip)
    # The same image, kind and round draw the same noise; another image, round or kind of step draws another.
    again = flat(defended(update, defense).gradients) - raw
    assert torch.equal(noise, again)
    for other in (
        defended(update, defense, image_index=1),
        defended(update, defense, round_index=1),
        defended(update, defense, kind="jigsawed"),
    ):
        other_noise = flat(other.gradients) - raw
        assert abs(float(torch.corrcoef(torch.stack((noise, other_noise)))[0, 1])) < 0.02
    assert defended(update, defense).noise_std == sigma * clip


@pytest.mark.parametrize("model_kind", ["mjp", "vit"])
@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_pruning_keeps_the_largest_share_of_every_tensor(model_kind, ratio):
    update = plain_update(model_of(model_kind))
    pruned = defended(update, Defense("prune", prune_ratio=ratio)).gradients
    assert set(pruned) == set(update.gradients)
    for name, gradient in update.gradients.items():
        values, sent = gradient.reshape(-1).numpy(), pruned[name].reshape(-1).numpy()
        kept = sent != 0
        expected_kept = values.size - math.floor(ratio * values.size + 1e-9)
        # Exact zeros of the raw gradient (structural ones) may be among the kept entries: count by position.
        order = np.argsort(-np.abs(values), kind="stable")[:expected_kept]
        assert kept.sum() <= expected_kept and set(np.flatnonzero(kept)) <= set(order)
        np.testing.assert_array_equal(sent[order], values[order])
        if values.size >= 100 and np.count_nonzero(values) == values.size:
            assert kept.mean() == pytest.approx(1 - ratio, abs=1 / values.size)


# ------------------------------------------------------------------------------------------------------------------
# What clipping and noise do to the analytic attack


@pytest.mark.parametrize("model_kind", ["mjp", "vit"])
@pytest.mark.parametrize("kind", ["dp_sgd", "local_noise"])
def test_analytic_attack_without_noise_is_the_undefended_one(model_kind, kind):
    model = model_of(model_kind)
    update = plain_update(model)
    undefended = privacy_attacks.textbook_attack(model, update.gradients)
    # σ 0 and a norm the update never reaches: the very same gradient, the very same reconstruction.
    same = defended(update, Defense(kind, noise_multiplier=0.0, max_grad_norm=1e6))
    assert torch.equal(privacy_attacks.textbook_attack(model, same.gradients).patches, undefended.patches)
    # Clipping alone scales the whole update, the position-embedding rows and dW alike: the least-squares solution is
    # scale-invariant (for the MJP model once the DALR loss's part is subtracted at the scale the update carries it,
    # which the attacker reads from the DALR head's gradient).
    clipped = defended(update, Defense(kind, noise_multiplier=0.0, max_grad_norm=0.1))
    factor = 0.1 / float(flat(update.gradients).norm())
    recovered = privacy_attacks.textbook_attack(model, clipped.gradients)
    # Equal up to the float32 rounding of the scaled gradient, which the system's conditioning amplifies to ~3e-4
    # of the patches' range (measured at C 0.1, 1 and 10): far below the attack's own error (~1e-2 at 42 dB).
    scale = np.abs(undefended.patches.numpy()).max()
    np.testing.assert_allclose(recovered.patches.numpy(), undefended.patches.numpy(), atol=1e-3 * scale)
    if model_kind == "mjp":
        head = {name: g for name, g in update.gradients.items() if name.startswith(privacy_attacks.DALR_HEAD)}
        assert privacy_attacks.dalr_scale(head, clipped.gradients) == pytest.approx(factor, rel=1e-4)
        # Subtracting the DALR part at its unclipped scale would wreck the solve: the rescaling is what keeps it.
        system = privacy_attacks.patch_system(model, clipped.gradients)
        unscaled = privacy_attacks._dalr_gradient(model, system.placed).double()
        regressors = system.regressors + (unscaled * (factor - 1))[system.placed]
        wrong = privacy_attacks.solve_least_squares(regressors, system.targets, system.eps).solution
        assert float((wrong - undefended.patches).abs().max()) > 100 * 1e-3 * scale


def test_noisy_solve_truncates_below_the_noise_as_an_independent_truncated_svd():
    model = model_of("vit")
    noisy = defended(plain_update(model), Defense("local_noise", noise_multiplier=1e-5, max_grad_norm=1.0))
    system = privacy_attacks.patch_system(model, noisy.gradients, noisy.noise_std)
    solved = system.solve()
    matrix = system.regressors.numpy().T  # [D, M]
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    tolerance = max(
        np.finfo(np.float32).eps * s.max() * max(matrix.shape),
        1e-5 * (math.sqrt(matrix.shape[0]) + math.sqrt(matrix.shape[1])),
    )
    rank = int((s > tolerance).sum())
    assert 0 < rank < np.linalg.matrix_rank(matrix) and solved.rank == rank
    expected = vh[:rank].T @ np.diag(1 / s[:rank]) @ u[:, :rank].T @ system.targets.numpy()
    np.testing.assert_allclose(solved.solution.numpy(), expected, rtol=1e-6, atol=1e-9 * np.abs(expected).max())


@pytest.mark.parametrize("ratio", [0.1, 0.5])
def test_pruning_error_is_bounded_by_what_the_attacker_reads_and_solving_above_it_recovers_more(ratio):
    model = demo_model(jigsaw_prob=0.0)
    pixel_values, labels = images(4)
    gains = []
    for index in range(4):
        update = plain_update(model, index)
        pruned = defended(update, Defense("prune", prune_ratio=ratio), image_index=index)
        name = privacy_attacks.POSITION_EMBEDDINGS
        error = (update.gradients[name] - pruned.gradients[name]).double()
        assert 0 < float(error.square().mean().sqrt()) <= pruned.noise_std
        original = privacy._to_hwc(pixel_values[index : index + 1], NORMALIZATION)

        def psnr(noise_std):
            reconstruction = privacy_attacks.textbook_attack(model, pruned.gradients, noise_std=noise_std)
            image = privacy._to_hwc(reconstruction.pixel_values(model.config), NORMALIZATION)
            return privacy.reconstruction_metrics(original, image, (4, 4))["psnr"]

        gains.append(psnr(pruned.noise_std) - psnr(0.0))
    # Inverting the pruning's error as if it were signal costs the attacker: the audit must not.
    assert np.mean(gains) > 3, gains


def test_analytic_recovery_falls_as_the_noise_grows():
    # Four test images, the demo model's plain step (gradient norm ~16, clipped to C = 1): the analytic attack's
    # PSNR falls at every step of σ (measured 42.3, 24.2, 15.0, 8.3 dB) and so does its share of textured patches
    # (1.0, 0.86, 0.10, 0.0).
    model = demo_model()
    pixel_values, labels = images(4)
    psnr, textured = [], []
    for sigma in (0.0, 1e-6, 1e-5, 1e-4):
        report, _ = privacy.evaluate_privacy(
            model,
            pixel_values,
            labels,
            NORMALIZATION,
            attacks=("analytic",),
            jigsaw="off",
            progress=False,
            seed=SEED,
            defense=Defense("dp_sgd", noise_multiplier=sigma, max_grad_norm=1.0),
        )
        psnr.append(report["summary"]["analytic"]["psnr"])
        textured.append(report["summary"]["analytic"]["recovered_fraction_textured"])
    assert psnr[0] > 35 and textured[0] == 1.0  # clipped but noiseless: the image back
    assert all(later < earlier - 3 for earlier, later in zip(psnr, psnr[1:])), psnr
    assert all(later <= earlier for earlier, later in zip(textured, textured[1:])) and textured[-1] < 0.2, textured


def test_noise_of_an_image_does_not_depend_on_the_other_images_or_attacks():
    model = demo_model(jigsaw_prob=0.0)
    pixel_values, labels = images(2)
    defense = Defense("local_noise", noise_multiplier=1e-5, max_grad_norm=1.0)

    def first_image(count, attacks):
        report, _ = privacy.evaluate_privacy(
            model,
            pixel_values[:count],
            labels[:count],
            NORMALIZATION,
            attacks=attacks,
            progress=False,
            defense=defense,
        )
        return report["per_image"][0]["steps"]["plain"]["analytic"]["psnr"]

    assert first_image(1, ("analytic",)) == first_image(2, ("analytic", "analytic_prior"))


def test_multi_round_attacker_draws_every_round_its_own_noise():
    model = demo_model(jigsaw_prob=0.5)
    pixel_values, labels = images(1)
    attacker = privacy._Attacker(model, NORMALIZATION, 20.0, None, None, None, None, False)
    for defense, rounds_differ in ((DEFENSES["local_noise"], True), (DEFENSES["prune"], False)):
        defend = privacy.ClientDefense(defense, SEED, 0)
        audited = defend(plain_update(model), "plain")
        source = privacy.RoundSource(
            model,
            pixel_values,
            labels,
            jigsaw_ratio=None,
            generator=torch.Generator().manual_seed(0),
            normalization=NORMALIZATION,
            audited={"plain": attacker.attack(audited, "plain", privacy.ANALYTIC_ATTACKS)},
            defend=defend,
        )
        first, second = source.step(0, "plain"), source.step(1, "plain")
        assert first.update is audited
        expected_second = defend(plain_update(model), "plain", 1)
        assert all(torch.equal(second.update.gradients[n], expected_second.gradients[n]) for n in audited.gradients)
        same = all(torch.equal(first.update.gradients[n], second.update.gradients[n]) for n in audited.gradients)
        assert same != rounds_differ
        jigsawed = source.step(1, "jigsawed")
        assert jigsawed.update.noise_std == 1e-5 if rounds_differ else jigsawed.update.noise_std > 0


# ------------------------------------------------------------------------------------------------------------------
# Every attack on every defence, for a stock ViT and an MJP model


@pytest.mark.parametrize("model_kind", ["mjp", "vit"])
@pytest.mark.parametrize("name", list(DEFENSES))
def test_every_attack_runs_on_every_defence(model_kind, name):
    model = model_of(model_kind)
    pixel_values, labels = images(1)
    report, pictures = privacy.evaluate_privacy(
        model,
        pixel_values,
        labels,
        NORMALIZATION,
        optimization=privacy.OptimizationBudget(steps=2, max_seconds=2.0),
        multi_round_counts=(1, 2),
        progress=False,
        defense=DEFENSES[name],
    )
    assert report["defense"]["name"] == name
    kinds = ["jigsawed", "plain"] if model_kind == "mjp" else ["plain"]
    assert report["step_kinds"] == kinds
    for kind in kinds:
        step = report["per_image"][0]["steps"][kind]
        for attack in privacy.SINGLE_STEP_ATTACKS:
            assert all(math.isfinite(step[attack][key]) for key in ("mse", "psnr", "ssim", "recovered_fraction"))
            assert np.isfinite(pictures[f"{kind} {attack}"][0]).all()
    if model_kind == "mjp":
        for by_count in report["summary"]["multi_round"].values():
            assert all(math.isfinite(figures["headline"]["psnr"]) for figures in by_count.values())
    # Under a defence the optimisation's calibration is the undefended plain step, whatever the defence did.
    calibration = report["per_image"][0].get("optimization_calibration")
    assert (calibration is not None) == (name != "none")


@pytest.mark.parametrize("model_kind", ["mjp", "vit"])
def test_analytic_attacks_stay_finite_on_a_gradient_pruned_to_almost_nothing(model_kind):
    model = model_of(model_kind)
    update = defended(plain_update(model), Defense("prune", prune_ratio=0.9999))
    gradients = update.gradients
    assert int((gradients[privacy_attacks.POSITION_EMBEDDINGS] != 0).sum()) == 1  # one entry of one row is left
    for attack in (privacy_attacks.textbook_attack, privacy_attacks.prior_attack, privacy_attacks.refined_attack):
        assert torch.isfinite(attack(model, gradients).patches).all(), attack.__name__
    # Nothing left at all (a gradient of zeros): no division by zero, the fill everywhere.
    zeros = {name: torch.zeros_like(gradient) for name, gradient in gradients.items()}
    reconstruction = privacy_attacks.textbook_attack(model, zeros)
    assert torch.isfinite(reconstruction.patches).all() and not reconstruction.placed.any()


def test_metrics_of_a_nan_reconstruction_score_it_as_mid_grey():
    rng = np.random.default_rng(0)
    original = rng.random((8, 8, 3))
    broken = original.copy()
    broken[:4, :4] = np.nan
    grey = original.copy()
    grey[:4, :4] = 0.5
    metrics = privacy.reconstruction_metrics(original, broken, (4, 4))
    assert metrics["psnr"] < privacy.PSNR_CAP and metrics["recovered_fraction"] == 0.75
    assert metrics == privacy.reconstruction_metrics(original, grey, (4, 4))
    nothing = privacy.reconstruction_metrics(original, np.full_like(original, np.nan), (4, 4))
    assert math.isfinite(nothing["psnr"]) and nothing["psnr"] < 20 and nothing["recovered_fraction"] == 0.0


# ------------------------------------------------------------------------------------------------------------------
# The command line


def test_cli_records_the_defence_and_names_it_up_front(tmp_path, capsys, monkeypatch):
    import matplotlib.figure

    titles = []
    original_suptitle = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(
        matplotlib.figure.Figure,
        "suptitle",
        lambda self, text, **kwargs: titles.append(text) or original_suptitle(self, text, **kwargs),
    )
    model_dir, out = tmp_path / "model", tmp_path / "out"
    demo_model().save_pretrained(model_dir)
    argv = ["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--device", "cpu", "--num_images", "2"]
    argv += ["--attacks", "analytic,analytic_prior,multi_round", "--multi_round_counts", "1,2"]
    privacy.main([*argv, "--defense", "local_noise", "--noise_multiplier", "1e-5", "--max_grad_norm", "2"])
    report = json.loads((out / "privacy.json").read_text())
    assert report["defense"] == {
        "name": "local_noise",
        "noise_multiplier": 1e-5,
        "max_grad_norm": 2.0,
        "prune_ratio": None,
        "description": "local noise (σ 1e-05, C 2)",
    }
    assert report["summary"]["analytic"]["psnr"] is not None
    assert report["summary"]["analytic"]["recovered_fraction_textured"] is not None
    printed = capsys.readouterr().out
    assert printed.index("defence: local noise (σ 1e-05, C 2)") < printed.index("privacy (local noise")
    assert titles and "local noise (σ 1e-05, C 2)" in titles[-1]
    # The default: no defence, recorded as such, C defaulting to 1 under DP-SGD.
    privacy.main([*argv, "--overwrite"])
    assert json.loads((out / "privacy.json").read_text())["defense"] == {
        "name": "none",
        "noise_multiplier": None,
        "max_grad_norm": None,
        "prune_ratio": None,
        "description": "no defence",
    }
    assert "no defence" in titles[-1]
    args = privacy.parse_arguments([*argv, "--defense", "dp_sgd", "--noise_multiplier", "0"])
    assert args.defense == Defense("dp_sgd", noise_multiplier=0.0, max_grad_norm=1.0)


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    demo_model().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "flags, names",
    [
        (
            ["--defense", "dp_sgd", "--noise_multiplier", "1", "--prune_ratio", "0.5"],
            ["--prune_ratio 0.5 does not apply to --defense dp_sgd: pass --defense prune, or drop --prune_ratio"],
        ),
        (
            ["--noise_multiplier", "1"],
            ["--noise_multiplier 1 does not apply to --defense none: pass --defense dp_sgd or local_noise"],
        ),
        (
            ["--defense", "prune", "--prune_ratio", "0.5", "--max_grad_norm", "2"],
            ["--max_grad_norm 2 does not apply to --defense prune", "or drop --max_grad_norm"],
        ),
        (["--defense", "local_noise", "--max_grad_norm", "2"], ["--defense local_noise needs --noise_multiplier"]),
        (["--defense", "prune"], ["--defense prune needs --prune_ratio"]),
        (["--defense", "dp_sgd", "--noise_multiplier", "-1"], ["argument --noise_multiplier", "'-1'"]),
        (["--defense", "dp_sgd", "--noise_multiplier", "nan"], ["argument --noise_multiplier", "'nan'"]),
        (["--defense", "dp_sgd", "--noise_multiplier", "1", "--max_grad_norm", "0"], ["argument --max_grad_norm"]),
        (["--defense", "prune", "--prune_ratio", "1"], ["argument --prune_ratio", "'1'", "[0, 1)"]),
        (["--defense", "prune", "--prune_ratio", "-0.1"], ["argument --prune_ratio", "'-0.1'"]),
        (["--defense", "central"], ["argument --defense", "'central'"]),
    ],
)
def test_cli_refuses_bad_defence_flags_before_any_work(model_folder, tmp_path, capsys, flags, names):
    # Refused when the flags are parsed: no model loaded, no output folder made.
    argv = ["--model_name_or_path", str(model_folder), "--output_dir", str(tmp_path / "out"), *flags]
    with pytest.raises(SystemExit):
        privacy.main(argv)
    error = capsys.readouterr().err
    assert all(name in error for name in names) and "unrecognized arguments" not in error, error
    assert not (tmp_path / "out").exists()
