"""The study's statistics and verdicts (synthetic records), and a tiny real grid that rebuilds the same tables from
its cached runs."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mjp_hf.evaluation.statistics import HELD, NOT_HELD, NOT_SHOWN, Interval, paired_difference, verdict


REPO = Path(__file__).resolve().parents[1]


def _study():
    spec = importlib.util.spec_from_file_location("mjp_study", REPO / "examples" / "mjp_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interval_matches_scipy_t_interval():
    values = [0.81, 0.84, 0.86, 0.79]
    interval = Interval.of(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert interval.mean == pytest.approx(np.mean(values))
    assert (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))
    # One value: a mean without an interval, which never resolves a claim.
    single = Interval.of([0.5, None])
    assert single.n == 1 and not single.resolved and not single.above(0) and not single.below(1)
    assert Interval.of([None, math.nan]) is None


def test_paired_difference_removes_the_shared_seed_spread():
    baseline = {0: 0.60, 1: 0.70, 2: 0.80}
    variant = {0: 0.61, 1: 0.71, 2: 0.815}
    paired = paired_difference(variant, baseline)
    unpaired = Interval.of([variant[s] - np.mean(list(baseline.values())) for s in variant])
    assert paired.mean == pytest.approx(np.mean([0.01, 0.01, 0.015]))
    assert paired.above(0), "the variant is better on every seed"
    assert not unpaired.above(0), "without pairing the seed spread hides it"
    # Seeds only one side has are left out.
    assert paired_difference({**variant, 3: 0.9}, baseline).n == 3


def test_verdict_comes_from_the_intervals():
    assert verdict([True, True], [False, False]) == HELD
    assert verdict([True, False], [False, False]) == NOT_SHOWN
    assert verdict([True, True], [False, True]) == NOT_HELD


def _records(study, accuracies, leaks, errors):
    return {
        variant: {
            seed: {
                "eval_accuracy": acc,
                "leak_per_step": leak,
                "mean_corruption_error": err,
                "exposure_8_rounds": leak,
                "psnr_per_step": 10 + 30 * leak,
            }
            for seed, (acc, leak, err) in enumerate(zip(accuracies[variant], leaks[variant], errors[variant]))
        }
        for variant in accuracies
    }


def test_claims_on_synthetic_seeds():
    study = _study()
    accuracies = {
        "baseline": [0.86, 0.85, 0.87],
        "naive": [0.80, 0.79, 0.815],
        "mjp": [0.862, 0.853, 0.868],
        "mjp-p1-r0.5": [0.80, 0.79, 0.81],
    }
    leaks = {
        "baseline": [1.0, 0.99, 1.0],
        "naive": [0.03, 0.04, 0.02],
        "mjp": [0.6, 0.62, 0.59],
        "mjp-p1-r0.5": [0.1, 0.12, 0.09],
    }
    errors = {
        "baseline": [0.4, 0.41, 0.39],
        "naive": [0.45, 0.46, 0.44],
        "mjp": [0.4, 0.41, 0.39],
        "mjp-p1-r0.5": [0.42, 0.43, 0.41],
    }
    records = _records(study, accuracies, leaks, errors)
    summary = study.summarise(records, list(records))
    verdicts = {c["claim"][0]: c for c in study.claims(summary)}
    assert verdicts["1"]["verdict"] == HELD
    assert verdicts["2"]["verdict"] == HELD
    # MJP as released: accuracy within the 1-point margin, about 39 points fewer patches in place per step.
    settings = {s["variant"]: s["verdict"] for s in verdicts["3"]["settings"]}
    assert settings["mjp"] == HELD
    assert settings["mjp-p1-r0.5"] == NOT_HELD, "6 points of accuracy lost: outside the 1-point margin"
    assert verdicts["3"]["verdict"] == HELD
    lines = study.recommendations(summary, list(records))
    assert "Privacy first: naive shuffle" in lines[1] and "Accuracy first: MJP as released" in lines[0]


def test_claims_need_the_intervals_not_the_means():
    study = _study()
    # MJP's mean accuracy is higher, but one seed is far worse: the interval straddles the margin.
    accuracies = {"baseline": [0.86, 0.85, 0.87], "mjp": [0.90, 0.80, 0.90]}
    leaks = {"baseline": [1.0, 1.0, 1.0], "mjp": [0.2, 0.2, 0.2]}
    errors = {"baseline": [0.4, 0.4, 0.4], "mjp": [0.4, 0.4, 0.4]}
    records = _records(study, accuracies, leaks, errors)
    claim3 = study.claims(study.summarise(records, list(records)))[2]
    assert claim3["settings"][0]["verdict"] == NOT_SHOWN
    assert claim3["verdict"] == NOT_SHOWN


def _privacy_report(plain, jigsawed, plain_probability_8, multi_round=None):
    by_step = {}
    if plain is not None:
        by_step["plain"] = {"headline": {"recovered_fraction_textured": plain, "psnr": 70.0}}
    if jigsawed is not None:
        by_step["jigsawed"] = {"headline": {"recovered_fraction_textured": jigsawed, "psnr": 10.0}}
    exposure = {"plain_step_probability": plain_probability_8}
    if multi_round is not None:
        exposure["multi_round_headline"] = {"recovered_fraction_textured": multi_round}
    headline = {"recovered_fraction_textured": 0.5, "psnr": 40.0}
    return {"summary": {"headline": headline, "by_step": by_step, "exposure": {"8": exposure}}}


def test_exposure_over_rounds_never_falls_below_the_single_step_bound():
    """A model without the unknown PE (naive at p 0.5) has no multi-round figure: its 8-round exposure is the bound
    from its plain and jigsawed steps, ~the plain step's, not the per-step mean. Where the multi-round attacker ran,
    the larger of its figure and the bound counts."""
    study = _study()
    naive = study.privacy_figures(_privacy_report(1.0, 0.04, 1 - 0.5**8))
    assert naive["exposure_8_rounds"] == pytest.approx((1 - 0.5**8) * 1.0 + 0.5**8 * 0.04)
    assert naive["leak_per_step"] == 0.5
    measured_lower = study.privacy_figures(_privacy_report(None, 0.10, 0.0, multi_round=0.08))
    assert measured_lower["exposure_8_rounds"] == pytest.approx(0.10)
    measured_higher = study.privacy_figures(_privacy_report(None, 0.44, 0.0, multi_round=0.89))
    assert measured_higher["exposure_8_rounds"] == pytest.approx(0.89)
    vit = study.privacy_figures(_privacy_report(1.0, None, 1.0))
    assert vit["exposure_8_rounds"] == 1.0 and vit["leak_jigsawed_step"] is None


def test_seeds_for_gives_one_variant_its_own_seeds():
    study = _study()
    args = study.parse_args(["--variants", "baseline", "mjp", "--seeds", "0", "1", "2", "--seeds_for", "mjp=0,1"])
    assert args.variant_seeds == {"baseline": [0, 1, 2], "mjp": [0, 1]}
    assert study.seed_listing(args.variant_seeds) == "baseline 0, 1, 2; mjp 0, 1"
    assert study.seed_listing({"baseline": [0, 1], "mjp": [0, 1]}) == "0, 1"
    with pytest.raises(SystemExit, match="'naive' is not among --variants"):
        study.parse_args(["--variants", "baseline", "--seeds_for", "naive=0"])
    with pytest.raises(SystemExit, match="whole-number seeds"):
        study.parse_args(["--variants", "mjp", "--seeds_for", "mjp=zero"])


def test_a_tiny_grid_rebuilds_the_same_tables_from_its_cached_runs(tmp_path):
    """2 variants, 1 seed, a few steps: every stage really runs (training and the three evaluations as
    subprocesses); the second run finds everything cached and writes the same tables."""
    study = _study()
    output, work = tmp_path / "study", tmp_path / "work"
    argv = [
        "--output_dir",
        str(output),
        "--work_dir",
        str(work),
        "--variants",
        "baseline",
        "mjp-p1-r0.25",
        "--seeds",
        "0",
        "--parallel",
        "2",
        "--max_steps",
        "3",
        "--max_eval_samples",
        "64",
        "--robustness_samples",
        "16",
        "--corruptions",
        "gaussian_noise",
        "--severities",
        "1",
        "--privacy_images",
        "1",
        "--privacy_args",
        "--attacks analytic,analytic_prior --multi_round_counts 1,2 --multi_round_probs 1",
        "--train_args",
        "--max_train_samples 256 --per_device_train_batch_size 16",
    ]
    records = study.main(argv)
    readme, results = (output / "README.md").read_text(), (output / "results.json").read_text()
    assert (output / "pareto.png").is_file()
    assert (output / "per_seed" / "mjp-p1-r0.25-seed0" / "privacy" / "privacy.json").is_file()
    baseline, mjp = records["baseline"][0], records["mjp-p1-r0.25"][0]
    # The baseline trains no jigsaw: its audit attacks plain steps only, and every jigsawed figure is absent.
    assert baseline["leak_jigsawed_step"] is None and mjp["leak_jigsawed_step"] is not None
    assert mjp["leak_per_step"] == mjp["leak_jigsawed_step"], "jigsaw_prob 1: every step is jigsawed"
    assert "| ViT (standard PE) | 1 |" in readme and "not shown at this budget" in readme
    logs = sorted(path.name for path in work.glob("*.log"))

    with pytest.raises(FileExistsError, match="--overwrite"):
        study.main(argv)
    study.main([*argv, "--overwrite"])
    assert sorted(path.name for path in work.glob("*.log")) == logs
    assert (output / "README.md").read_text() == readme
    assert (output / "results.json").read_text() == results
