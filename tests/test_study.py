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
    assert "Privacy first (by means): naive shuffle" in lines[1]
    assert "Accuracy first (by means): MJP as released" in lines[0]


# --- the defences: the audit's flags, the grid's cost, the verdicts, the plot, epsilon -----------------------------


def _pairs(flags):
    return {flag: value for flag, value in zip(flags, flags[1:]) if flag.startswith("--")}


def test_each_variant_is_audited_with_the_defence_it_trains_with():
    """The audit's flags of every variant, read back against the variant's own training flags (not through the
    mapping's parser): the attacked gradient is the defended one, with the same sigma, C and ratio."""
    study = _study()
    kinds = {}
    for name, variant in study.VARIANTS.items():
        flags, audit = _pairs(variant.flags), study.audit_flags(variant.flags)
        if "--dp_noise_multiplier" in flags or "--local_noise_multiplier" in flags:
            prefix = "--dp_" if "--dp_noise_multiplier" in flags else "--local_"
            assert audit[:2] == ["--defense", "dp_sgd" if prefix == "--dp_" else "local_noise"], name
            assert float(_pairs(audit)["--noise_multiplier"]) == float(flags[f"{prefix}noise_multiplier"]), name
            assert float(_pairs(audit)["--max_grad_norm"]) == float(flags[f"{prefix}max_grad_norm"]), name
        elif "--prune_ratio" in flags:
            assert audit == ["--defense", "prune", "--prune_ratio", flags["--prune_ratio"]], name
        else:
            assert audit == [], f"{name} trains undefended: the audit gets no defence flag"
        kinds[name] = audit[1] if audit else "none"
    assert kinds["mjp-p1-r0.25-dp-s0.001"] == "dp_sgd" and kinds["mjp"] == "none"
    assert sorted(set(kinds.values())) == ["dp_sgd", "local_noise", "none", "prune"]
    assert {name for name, kind in kinds.items() if kind == "dp_sgd"} == {
        "dp-s0.001",
        "dp-s0.01",
        "dp-s1.0",
        "mjp-p1-r0.25-dp-s0.001",
    }
    # The training's defaults (C 1.0 when not given) and its `--flag=value` form.
    assert study.audit_flags(["--dp_noise_multiplier", "0.5"]) == [
        "--defense",
        "dp_sgd",
        "--noise_multiplier",
        "0.5",
        "--max_grad_norm",
        "1",
    ]
    assert study.audit_flags(["--local_noise_multiplier=0.7", "--local_max_grad_norm=2.5"])[-1] == "2.5"
    # The training's refusals: two defences at once, a setting of a defence that is off.
    with pytest.raises(ValueError, match="two defences"):
        study.audit_flags(["--prune_ratio", "0.5", "--dp_noise_multiplier", "1"])
    with pytest.raises(ValueError, match="defence that is off"):
        study.audit_flags(["--dp_max_grad_norm", "2"])


def test_the_audit_reads_each_variants_flags_as_its_defence(tmp_path, tiny_kwargs, capsys):
    """Once the privacy audit takes `--defense` (issue 23, in progress beside this study): the flags the study passes
    parse, in the audit's own parser, to the very defence the variant trains with."""
    from mjp_hf import MJPViTConfig, MJPViTForImageClassification
    from mjp_hf.evaluation import privacy

    study = _study()
    MJPViTForImageClassification(MJPViTConfig(**tiny_kwargs)).save_pretrained(tmp_path / "model")
    common = ["--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(tmp_path / "out")]
    try:
        privacy.parse_arguments([*common, "--defense", "none"])
    except SystemExit:
        error = capsys.readouterr().err
        assert "unrecognized arguments: --defense none" in error, error
        pytest.skip("the privacy audit has no --defense flag yet")
    for name, variant in study.VARIANTS.items():
        args = privacy.parse_arguments([*common, *study.audit_flags(variant.flags)])
        assert args.defense == study.defense_of(variant.flags), name


def test_the_evaluations_of_a_defence_variant_attack_its_defended_gradient(tmp_path, capsys):
    study = _study()
    args = study.parse_args(["--work_dir", str(tmp_path), "--privacy_args", "--attacks analytic"])
    defended = study.evaluation_jobs("dp-s0.01", tmp_path / "m", tmp_path / "e", 0, args)
    assert list(defended) == ["privacy"], "defence variants get the privacy audit only (the grid's cut)"
    module, flags = defended["privacy"]
    assert module == "privacy" and flags[-6:] == study.audit_flags(study.VARIANTS["dp-s0.01"].flags)
    assert flags[-8:-6] == ["--attacks", "analytic"]
    plain = study.evaluation_jobs("baseline", tmp_path / "m", tmp_path / "e", 0, args)
    assert sorted(plain) == ["position", "privacy", "robustness"] and "--defense" not in plain["privacy"][1]
    # A defence in --train_args beside a variant's own is refused before any work, naming both.
    with pytest.raises(SystemExit):
        study.parse_args(["--variants", "dp-s0.01", "--train_args", "--prune_ratio 0.5"])
    assert "--train_args '--prune_ratio 0.5' with variant 'dp-s0.01'" in capsys.readouterr().err


def test_a_privacy_report_counts_only_when_it_attacked_the_defended_gradient():
    study = _study()
    dp = study.defense_of(study.VARIANTS["dp-s0.01"].flags)
    recorded = {"name": "dp_sgd", "noise_multiplier": 0.01, "max_grad_norm": 1.0, "prune_ratio": None}
    assert study.audited_defense_matches({"defense": recorded}, dp)
    assert not study.audited_defense_matches({"defense": {**recorded, "noise_multiplier": 1.0}}, dp)
    assert not study.audited_defense_matches({"defense": {**recorded, "name": "local_noise"}}, dp)
    assert not study.audited_defense_matches({}, dp), "a report without a defence attacked the undefended gradient"
    none = study.defense_of(study.VARIANTS["baseline"].flags)
    assert study.audited_defense_matches({}, none) and not study.audited_defense_matches({"defense": recorded}, none)
    prune = study.defense_of(study.VARIANTS["prune-0.9"].flags)
    assert study.audited_defense_matches({"defense": {"name": "prune", "prune_ratio": 0.9}}, prune)


class _FakeAudits:
    """Stands in for the study's `Children`: each privacy evaluation writes a report that records `defense`."""

    def __init__(self, defense):
        self.defense, self.commands = defense, []

    def raise_if_stopped(self):
        pass  # never stopped

    def run(self, command, **kwargs):
        self.commands.append(command)
        out = Path(command[command.index("--output_dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "privacy.json").write_text(__import__("json").dumps({"defense": self.defense}))
        return 0


def test_a_stale_or_undefended_audit_of_a_defence_variant_is_never_taken(tmp_path, monkeypatch):
    """A cached audit that attacked another gradient is audited again; an audit that ignores the defence flags stops
    the study naming the flags, rather than report the undefended leak as the defence's."""
    study = _study()
    monkeypatch.setattr(study, "log", lambda message: None)
    args = study.parse_args(["--work_dir", str(tmp_path)])
    defended = {"name": "dp_sgd", "noise_multiplier": 0.01, "max_grad_norm": 1.0, "prune_ratio": None}
    good = _FakeAudits(defended)
    reports, worked = study.evaluate("dp-s0.01", 0, tmp_path / "m", tmp_path / "e", args, good)
    assert worked and reports["privacy"]["defense"] == defended and len(good.commands) == 1
    assert good.commands[0][-7:] == [*study.audit_flags(study.VARIANTS["dp-s0.01"].flags), "--overwrite"]
    # Cached and right: not run again.
    assert study.evaluate("dp-s0.01", 0, tmp_path / "m", tmp_path / "e", args, good)[1] is False
    # Cached but made without the defence (as an audit from before --defense would have): audited again.
    (tmp_path / "e" / "privacy" / "privacy.json").write_text("{}")
    again = _FakeAudits(defended)
    assert study.evaluate("dp-s0.01", 0, tmp_path / "m", tmp_path / "e", args, again)[1] is True
    assert len(again.commands) == 1
    # An audit that attacks the undefended gradient whatever it is told: refused.
    with pytest.raises(RuntimeError, match="--defense dp_sgd --noise_multiplier 0.01 --max_grad_norm 1"):
        study.evaluate("dp-s0.01", 1, tmp_path / "m1", tmp_path / "e1", args, _FakeAudits(None))


def test_the_cost_estimate_schedules_the_runs_and_the_default_grid_fits_three_hours():
    study = _study()
    costs, ratio = study.COSTS, study.STEP_COST_RATIO
    evaluations = costs["robustness_seconds"] + costs["position_seconds"] + costs["privacy_seconds"]
    # The estimated split of a plain run adds up to the measured run.
    assert costs["train_step_seconds"] + costs["train_other_seconds"] + evaluations == costs["plain_run_seconds"]
    plain = costs["plain_run_seconds"]
    dp = costs["train_other_seconds"] + ratio["dp_sgd"] * costs["train_step_seconds"] + costs["privacy_seconds"]
    grid = {"baseline": [0, 1], "dp-s1.0": [0]}
    # Seed by seed: baseline-0 and dp-0 start together, baseline-1 follows baseline-0 on its worker.
    two = study.estimate_wall_seconds(grid, parallel=2)
    assert two["per_run_seconds"] == {"baseline": pytest.approx(plain), "dp-s1.0": pytest.approx(dp)}
    assert two["wall_seconds"] == pytest.approx(max(2 * plain, dp))
    assert two["process_seconds"] == pytest.approx(2 * plain + dp)
    assert study.estimate_wall_seconds(grid, parallel=1)["wall_seconds"] == pytest.approx(2 * plain + dp)
    # More runs at once than cores: no faster than one per core.
    assert study.estimate_wall_seconds(grid, parallel=8)["wall_seconds"] == pytest.approx(two["wall_seconds"])
    short = study.estimate_wall_seconds({"dp-s1.0": [0]}, 2, max_steps=study.MAIN_JOB_STEPS // 10)
    assert short["wall_seconds"] == pytest.approx(dp - 0.9 * ratio["dp_sgd"] * costs["train_step_seconds"])

    default = study.parse_args([])
    assert set(default.variant_seeds) == set(study.VARIANTS)
    estimate = study.estimate_wall_seconds(default.variant_seeds, 2)
    assert estimate["wall_seconds"] <= study.STUDY_BUDGET_SECONDS == 3 * 3600
    # The line can be crossed: the same grid without its cuts (every variant on 3 seeds) does not fit.
    uncut = {variant: [0, 1, 2] for variant in study.VARIANTS}
    assert study.estimate_wall_seconds(uncut, 2)["wall_seconds"] > study.STUDY_BUDGET_SECONDS
    # The cuts: defence variants on 2 seeds, except DP-SGD at the combination's sigma and the combination.
    cut = {variant for variant, seeds in default.variant_seeds.items() if seeds == [0, 1]}
    assert cut == {"dp-s0.01", "dp-s1.0", "local-s0.001", "local-s0.01", "prune-0.5", "prune-0.9"}
    assert default.variant_seeds["dp-s0.001"] == default.variant_seeds["mjp-p1-r0.25-dp-s0.001"] == [0, 1, 2]
    assert study.parse_args(["--seeds_for", "dp-s1.0=0,1,2"]).variant_seeds["dp-s1.0"] == [0, 1, 2]
    assert study.parse_args(["--seeds", "0"]).variant_seeds["dp-s1.0"] == [0]


def test_what_is_left_of_the_grid_counts_the_finished_runs_out_at_their_measured_cost(tmp_path):
    study = _study()
    evaluations = {"position": 5.0, "robustness": 15.0, "privacy": 10.0}
    study._write_record(tmp_path, "baseline-seed0", {"train_seconds": 100.0, "eval_seconds": evaluations})
    study._write_record(tmp_path, "baseline-seed1", {"train_seconds": 90.0, "eval_seconds": {"privacy": 10.0}})
    study._write_record(tmp_path, "dp-s1.0-seed0", {"train_seconds": 500.0, "eval_seconds": {"privacy": 50.0}})
    study._write_record(tmp_path, "dp-s1.0-seed1", {"train_seconds": 480.0})  # trained, not yet audited
    grid = {"baseline": [0, 1], "dp-s1.0": [0, 1]}
    finished = study.finished_runs(tmp_path, grid)
    assert finished == {("baseline", 0): 130.0, ("dp-s1.0", 0): 550.0}
    measured = study.measured_run_seconds(finished)
    left = study.estimate_wall_seconds(grid, 2, measured=measured, finished=set(finished))
    assert left["wall_seconds"] == 550.0 and left["process_seconds"] == 680.0
    assert study.estimate_wall_seconds(grid, 1, measured=measured, finished=set(finished))["wall_seconds"] == 680.0
    # Nothing finished: the whole grid at COSTS.
    assert study.finished_runs(tmp_path / "empty", grid) == {}


def test_estimate_only_prints_the_grid_and_does_nothing_else(tmp_path, capsys):
    study = _study()
    output, work = tmp_path / "out", tmp_path / "work"
    assert (
        study.main(["--estimate_only", "--parallel", "2", "--output_dir", str(output), "--work_dir", str(work)]) == {}
    )
    printed = capsys.readouterr().out
    wall = study.estimate_wall_seconds(study.parse_args([]).variant_seeds, 2)["wall_seconds"]
    assert f"Estimated from an empty --work_dir at --parallel 2: {wall / 3600:.2f} h of wall time" in printed
    assert "| ViT + DP-SGD (sigma 1.0, C 1) | 0, 1 | privacy | 1.8 | 11.9 |" in printed
    assert not output.exists() and not work.exists()


def _grid_records(figures, seeds=(0, 1, 2), spread=(0.0, 0.004, -0.003)):
    """Records from per-variant (accuracy, leak per step, exposure over 8 rounds[, epsilon]) means, each seed moved by
    the same accuracy shift (so pairs are tight) and a small leak wobble."""
    records = {}
    for variant, (acc, leak, exposure, *epsilon) in figures.items():
        records[variant] = {
            seed: {
                "eval_accuracy": acc + spread[index],
                "leak_per_step": min(1.0, max(0.0, leak + (0.01 * index if leak else 0.0))),
                "exposure_8_rounds": min(1.0, max(0.0, exposure + (0.01 * index if exposure else 0.0))),
                "psnr_per_step": 20.0,
                "mean_corruption_error": 0.4,
                "dp_epsilon": epsilon[0] if epsilon else None,
            }
            for index, seed in enumerate(seeds)
        }
    return records


def test_mjp_can_win_a_need_and_dp_sgd_another():
    """Per step, MJP as released (p 0.5) leaks least of the variants within 1 point of the ViT; over 8 rounds its plain
    steps expose nearly everything, and DP-SGD at sigma 0.001 wins. DP-SGD at sigma 1.0 leaks less still but costs 6
    points of accuracy: it is out."""
    study = _study()
    records = _grid_records(
        {
            "baseline": (0.856, 1.0, 1.0),
            "mjp": (0.853, 0.05, 0.99),
            "dp-s0.001": (0.850, 0.20, 0.20, 40.9),
            "dp-s1.0": (0.79, 0.0, 0.0, 0.88),
        }
    )
    # Within a point by its mean (-0.9), not by its paired interval (one seed 3 points down): it leaks least, and is out.
    records["mjp-p1-r0.5"] = {
        seed: {**run, "eval_accuracy": run["eval_accuracy"] + shift, "leak_per_step": 0.01, "exposure_8_rounds": 0.01}
        for (seed, run), shift in zip(records["baseline"].items(), (-0.002, -0.030, 0.005))
    }
    variants = list(records)
    assert study.within_accuracy(records, variants) == ["baseline", "mjp", "dp-s0.001"]
    per_step, rounds = study.defence_verdicts(records, variants)["least_leak"]
    assert (per_step["winner"], rounds["winner"]) == ("mjp", "dp-s0.001")
    assert per_step["verdict"] == "MJP as released (p 0.5, ratio 0.1)"
    lines = study.recommendations(study.summarise(records, variants), variants, records)
    step_line = next(line for line in lines if line.startswith("- The least leak per step within"))
    round_line = next(line for line in lines if line.startswith("- The least leak over 8 rounds within"))
    assert "MJP as released" in step_line and "MJP is not the answer" not in step_line
    assert "ViT + DP-SGD (sigma 0.001" in round_line and round_line.endswith("MJP is not the answer for this need.")
    assert (
        "cost: accuracy -0.60 [" in round_line
        and f"training {study.STEP_COST_RATIO['dp_sgd']:g}x" in round_line
        and "epsilon 40.90" in round_line
    )
    assert "Privacy first (by means): ViT + DP-SGD (sigma 1.0" in lines[1]
    # Epsilon 40.9 is over the guarantee's line (`CLAIM_MARGINS["epsilon"]`): the guarantee goes to sigma 1.0.
    guarantee = next(line for line in lines if line.startswith("- A stated guarantee"))
    assert "ViT + DP-SGD (sigma 1.0" in guarantee and "epsilon at most 10 " in guarantee
    del records["dp-s1.0"]
    variants = list(records)
    lines = study.recommendations(study.summarise(records, variants), variants, records)
    guarantee = next(line for line in lines if line.startswith("- A stated guarantee"))
    assert guarantee.endswith("no DP-SGD setting of this grid reaches it.")


def test_with_only_the_vit_shown_within_a_point_no_defence_wins_and_the_means_are_named():
    """The ViT is no defence: when the intervals show no other variant within 1 point, the need is not answered (the
    ViT is not named its winner), and the closest call by means is named as such."""
    study = _study()
    records = _grid_records({"baseline": (0.856, 1.0, 1.0), "dp-s0.001": (0.850, 0.09, 0.09, 1.29e9)})
    for seed, shift in enumerate((0.0, -0.012, 0.004)):  # mean -0.87 points, interval below -1
        records["dp-s0.001"][seed]["eval_accuracy"] += shift
    per_step, _ = study.defence_verdicts(records, list(records))["least_leak"]
    assert per_step["winner"] is None and per_step["verdict"] == NOT_SHOWN
    assert (
        "no defence is shown within the margin; by means alone (not shown), dp-s0.001 leaks least"
        in (per_step["evidence"])
    )
    lines = study.recommendations(study.summarise(records, list(records)), list(records), records)
    step_line = next(line for line in lines if line.startswith("- The least leak per step within"))
    assert "ViT (standard PE):" not in step_line and NOT_SHOWN in step_line
    table = "\n".join(study.markdown_tables(study.summarise(records, list(records)), records, list(records)))
    assert "| 1.29e+09 |" in table  # epsilon of ~1e9 in 3 significant digits, not 1290000000.00


def test_the_least_leak_needs_the_intervals_to_separate_the_variants():
    study = _study()
    figures = {"baseline": (0.856, 1.0, 1.0), "mjp-p1-r0.1": (0.853, 0.30, 0.90), "prune-0.9": (0.852, 0.31, 0.31)}
    records = _grid_records(figures)
    for seed, leak in enumerate([0.25, 0.36, 0.32]):  # mean 0.31, paired differences -0.05, +0.05, 0: straddles 0
        records["prune-0.9"][seed]["leak_per_step"] = leak
    per_step = study.least_leak_within_accuracy(records, list(records), "leak_per_step")
    assert per_step["winner"] is None and per_step["verdict"] == NOT_SHOWN
    assert "lowest mean mjp-p1-r0.1, not separated from prune-0.9" in per_step["evidence"]
    for seed, leak in enumerate([0.40, 0.42, 0.41]):  # 10 points more on every seed
        records["prune-0.9"][seed]["leak_per_step"] = leak
    assert study.least_leak_within_accuracy(records, list(records), "leak_per_step")["winner"] == "mjp-p1-r0.1"
    # With nobody within the accuracy margin but the ViT, nothing answers: the ViT is no defence.
    figures = {"baseline": (0.856, 1.0, 1.0), "dp-s0.01": (0.80, 0.0, 0.0, 6.79)}
    records = _grid_records(figures)
    answer = study.least_leak_within_accuracy(records, list(records), "leak_per_step")
    assert answer["winner"] is None and answer["evidence"] == (
        "no defence is shown within the margin; none is within it by its mean either"
    )


@pytest.mark.parametrize(
    "combination, accuracy_shifts, expected",
    [
        ((0.840, 0.05, 0.05, 40.9), (0, 0, 0), HELD),  # 20+ points below both halves, accuracy within a point of each
        ((0.840, 0.24, 0.24, 40.9), (0, 0, 0), NOT_HELD),  # no leak gained on DP-SGD alone
        ((0.820, 0.05, 0.05, 40.9), (0, 0, 0), NOT_HELD),  # leaks less, but 2+ points of accuracy lost on each half
        # Leaks less, and about a point of accuracy lost with an interval that straddles the margin: not shown.
        ((0.836, 0.05, 0.05, 40.9), (0.01, -0.01, 0), NOT_SHOWN),
    ],
)
def test_mjp_with_dp_sgd_is_better_than_either_alone_only_when_the_intervals_say_so(
    combination, accuracy_shifts, expected
):
    study = _study()
    records = _grid_records(
        {
            "baseline": (0.856, 1.0, 1.0),
            "mjp-p1-r0.25": (0.844, 0.26, 0.36),
            "dp-s0.001": (0.846, 0.25, 0.25, 40.9),
            "mjp-p1-r0.25-dp-s0.001": combination,
        }
    )
    for seed, shift in enumerate(accuracy_shifts):
        records["mjp-p1-r0.25-dp-s0.001"][seed]["eval_accuracy"] += shift
    answer = study.combination_verdict(records)
    assert answer["verdict"] == expected, answer["evidence"]
    assert [part["part"] for part in answer["parts"]] == ["mjp-p1-r0.25", "dp-s0.001"]
    # One seed shared with a half: no interval, no verdict either way.
    records["dp-s0.001"] = {0: records["dp-s0.001"][0]}
    assert study.combination_verdict(records)["verdict"] in (NOT_SHOWN, NOT_HELD)
    assert study.combination_verdict(records)["parts"][1]["verdict"] == NOT_SHOWN


def test_the_readme_checks_the_combinations_sigma_against_the_measured_accuracies():
    study = _study()
    figures = {
        "baseline": (0.856, 1.0, 1.0),
        "mjp-p1-r0.25": (0.844, 0.26, 0.36),
        "dp-s0.001": (0.846, 0.25, 0.25, 40.9),
        "dp-s0.01": (0.80, 0.1, 0.1, 6.79),
        "mjp-p1-r0.25-dp-s0.001": (0.84, 0.05, 0.05, 40.9),
    }
    records = _grid_records(figures)
    assert study.combination_sigma_check(records, list(records)).endswith("(sigma 0.001, C 1), as chosen.")
    records = _grid_records({**figures, "dp-s0.001": (0.75, 0.25, 0.25, 40.9)})
    assert "the nearest is ViT + DP-SGD (sigma 0.01, C 1), not" in study.combination_sigma_check(
        records, list(records)
    )
    del records["mjp-p1-r0.25-dp-s0.001"]
    assert study.combination_sigma_check(records, list(records)) is None, "no combination run, nothing to check"


def test_the_pareto_plot_draws_every_variant_and_the_readme_shows_epsilon(tmp_path):
    """Every variant of the default grid on both panels (leak per step, exposure over 8 rounds); the README's table
    shows each DP-SGD run's recorded epsilon with its interval, the verdicts, the grid's estimate and its cuts."""
    study = _study()
    figures = {
        variant: (0.85 - 0.005 * index, 0.9 - 0.05 * index, 0.95 - 0.05 * index)
        for index, variant in enumerate(study.VARIANTS)
    }
    for variant in study.VARIANTS:
        if "dp-s" in variant:
            figures[variant] = (
                *figures[variant],
                {"0.001": 40.9, "0.01": 6.79, "1.0": 0.88}[variant.split("dp-s")[1]],
            )
    records = _grid_records(figures)
    variants = list(records)
    summary = study.summarise(records, variants)
    drawn = study.plot_pareto(summary, variants, tmp_path / "pareto.png")
    assert drawn == {"leak_per_step": variants, "exposure_8_rounds": variants}
    assert (tmp_path / "pareto.png").stat().st_size > 0
    # A variant without a figure is not drawn, and the check above would see it.
    del summary["variants"]["prune-0.9"]["exposure_8_rounds"]
    assert "prune-0.9" not in study.plot_pareto(summary, variants, tmp_path / "p.png")["exposure_8_rounds"]

    args = study.parse_args(["--output_dir", str(tmp_path / "out"), "--work_dir", str(tmp_path / "work")])
    shape = dict(image_size=28, patch_size=4, hidden_size=48, num_hidden_layers=4)
    study.write_outputs(records, variants, args, "python examples/mjp_study.py", {"wall": 0, "process": 0}, shape)
    readme = (tmp_path / "out" / "README.md").read_text()
    header = next(line for line in readme.splitlines() if line.startswith("| model | seeds |"))
    column = header.split(" | ").index("DP-SGD epsilon (delta 1/N)")
    lines = readme.splitlines()
    table = lines[lines.index(header) + 2 : lines.index("", lines.index(header))]
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table}
    assert len(rows) == len(variants)
    assert rows["ViT + DP-SGD (sigma 0.01, C 1)"][column] == "6.79 [6.79, 6.79]"
    assert rows["MJP p 1, ratio 0.25 + DP-SGD (sigma 0.001, C 1)"][column] == "40.90 [40.90, 40.90]"
    assert rows["ViT (standard PE)"][column] == "-"
    assert "## MJP, DP-SGD, local noise, pruning, or both?" in readme and "are audited for privacy only" in readme
    assert "Estimated from an empty --work_dir at --parallel 1:" in readme
    results = __import__("json").loads((tmp_path / "out" / "results.json").read_text())
    assert results["summary"]["variants"]["dp-s1.0"]["dp_epsilon"]["mean"] == pytest.approx(0.88)
    assert results["defence_verdicts"]["combination"]["parts"]


def test_a_run_records_its_epsilon_and_skips_the_evaluations_it_does_not_get():
    study = _study()
    report = _privacy_report(0.0, None, 1.0)
    metrics = study.collect_metrics({"eval_accuracy": 0.8, "dp_epsilon": 6.79}, {"privacy": report})
    assert metrics["dp_epsilon"] == 6.79 and metrics["eval_accuracy"] == 0.8
    assert metrics["mean_corruption_error"] is None and metrics["probe_mae_2d"] is None
    assert study.collect_metrics({"eval_accuracy": 0.8}, {"privacy": report})["dp_epsilon"] is None


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


def test_seeds_for_gives_one_variant_its_own_seeds(capsys):
    study = _study()
    args = study.parse_args(["--variants", "baseline", "mjp", "--seeds", "0", "1", "2", "--seeds_for", "mjp=0,1"])
    assert args.variant_seeds == {"baseline": [0, 1, 2], "mjp": [0, 1]}
    assert study.seed_listing(args.variant_seeds) == "baseline 0, 1, 2; mjp 0, 1"
    assert study.seed_listing({"baseline": [0, 1], "mjp": [0, 1]}) == "0, 1"
    with pytest.raises(SystemExit, match="'naive' is not among --variants"):
        study.parse_args(["--variants", "baseline", "--seeds_for", "naive=0"])
    with pytest.raises(SystemExit):
        study.parse_args(["--variants", "mjp", "--seeds_for", "mjp=zero"])
    assert "argument --seeds_for: 'mjp=zero': expected a whole number" in capsys.readouterr().err


def test_an_interrupted_training_resumes_from_its_checkpoint_and_one_without_starts_over(tmp_path):
    """The study's part of "an interrupted training resumes": it never passes --overwrite_output_dir to a run folder
    that holds a checkpoint (the training script then resumes from it), and passes it to one that holds none (all
    its files are the study's own run, killed before its first checkpoint)."""
    study = _study()
    args = study.parse_args(["--variants", "mjp", "--seeds", "0"])
    run_dir = tmp_path / "mjp-seed0"
    assert "--overwrite_output_dir" not in study.training_command("mjp", 0, run_dir, args)  # a new run
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    assert "--overwrite_output_dir" in study.training_command("mjp", 0, run_dir, args)
    (run_dir / "checkpoint-40").mkdir()
    assert "--overwrite_output_dir" not in study.training_command("mjp", 0, run_dir, args)


def test_a_tiny_grid_rebuilds_the_same_tables_from_its_cached_runs(tmp_path, warm_python, monkeypatch):
    """3 variants, 1 seed, a few steps: every stage really runs (training and the evaluations as child processes,
    warm ones: the imports are not what is tested); the second run finds everything cached and writes the same
    tables. The DP-SGD variant trains with DP-SGD and records its epsilon; its audit gets no defence flags here, since
    the audit's `--defense` flags are not part of this test (the mapping is tested above)."""
    from warm_python import WarmSubprocess

    study = _study()
    # What the training and the evaluations import beyond mjp_hf (never the evaluation modules `-m` runs).
    preload = ["datasets", "evaluate", "matplotlib.pyplot", "transformers.trainer"]
    monkeypatch.setattr(study, "subprocess", WarmSubprocess(warm_python, preload))
    asked, audit_flags = [], study.audit_flags

    def without_defence_flags(flags):
        asked.append(audit_flags(flags))
        return []

    monkeypatch.setattr(study, "audit_flags", without_defence_flags)
    # ... so the DP-SGD run's report records no defence, which the study would refuse (tested above).
    monkeypatch.setattr(study, "audited_defense_matches", lambda report, defense: True)
    output, work = tmp_path / "study", tmp_path / "work"
    argv = [
        "--output_dir",
        str(output),
        "--work_dir",
        str(work),
        "--variants",
        "baseline",
        "mjp-p1-r0.25",
        "dp-s1.0",
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
    # The DP-SGD run: its recorded epsilon in the records and the table, its audit asked for with its defence, and
    # no robustness or position evaluation.
    dp = records["dp-s1.0"][0]
    epsilon = __import__("json").loads((work / "dp-s1.0-seed0" / "all_results.json").read_text())["dp_epsilon"]
    assert dp["dp_epsilon"] == epsilon > 0 and baseline["dp_epsilon"] is None
    assert f"| ViT + DP-SGD (sigma 1.0, C 1) | 1 | {100 * dp['eval_accuracy']:.1f} | {epsilon:.2f} |" in readme
    assert ["--defense", "dp_sgd", "--noise_multiplier", "1", "--max_grad_norm", "1"] in asked
    assert sorted(path.name for path in (output / "per_seed" / "dp-s1.0-seed0").iterdir()) == ["privacy"]
    assert dp["mean_corruption_error"] is None and dp["leak_per_step"] is not None
    logs = {path.name: path.read_text() for path in work.glob("*.log")}  # appended to by a training that runs

    with pytest.raises(FileExistsError, match="--overwrite"):
        study.main(argv)
    study.main([*argv, "--overwrite"])
    assert {path.name: path.read_text() for path in work.glob("*.log")} == logs, "a cached stage ran again"
    assert (output / "README.md").read_text() == readme
    assert (output / "results.json").read_text() == results


# --- stopping the study: Ctrl-C, SIGTERM, a second study on the same work folder ---------------------------------

STUDY_RUNNER = """
import importlib.util, sys

spec = importlib.util.spec_from_file_location("mjp_study", sys.argv[1])
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)
study.TRAIN_SCRIPT = sys.argv[2]  # the stub below stands in for examples/run_image_classification.py
study.main(sys.argv[3:])
"""

# A training that writes part of a finished run's files (as a run killed after saving its weights would leave
# them), records that it started, then works until it is stopped; with STUB_MODE=fail it only records and fails.
STUB_TRAINING = """
import os, sys, time
from pathlib import Path

args = sys.argv[1:]
output_dir = Path(args[args.index("--output_dir") + 1])
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(f"{output_dir.name} {os.getpid()}\\n")
if os.environ["STUB_MODE"] == "fail":
    sys.exit(3)
output_dir.mkdir(parents=True, exist_ok=True)
(output_dir / "model.safetensors").write_bytes(b"cut short")
(output_dir / "all_results.json").write_text("{}")
time.sleep(300)
"""


def _start_study(warm_python, tmp_path, work, mode, *extra):
    """The study in a process of its own (a warm child: its imports are done), whose trainings are the stub."""
    import os
    import subprocess
    import sys

    runner, stub, log = tmp_path / "runner.py", tmp_path / "stub_training.py", tmp_path / f"started-{mode}.log"
    runner.write_text(STUDY_RUNNER)
    stub.write_text(STUB_TRAINING)
    log.touch()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "STUB_LOG": str(log), "STUB_MODE": mode}
    argv = ["--output_dir", str(tmp_path / "study"), "--work_dir", str(work), "--max_steps", "1", *extra]
    process = warm_python.popen(
        [sys.executable, str(runner), str(REPO / "examples" / "mjp_study.py"), str(stub), *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command: Ctrl-C reaches the group
    )
    return process, log


def _started(log, count, process, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text().splitlines()
        if len(lines) >= count:
            return [line.split() for line in lines]
        assert process.poll() is None, process.communicate()
        time.sleep(0.1)
    raise AssertionError(f"no stub training started within {timeout} s")


def _alive(pid: int) -> bool:
    import os
    import time

    for _ in range(50):  # the stopped child may take a moment to go
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_study_stops_its_runs_starts_nothing_and_does_not_cache_the_cut_run(warm_python, tmp_path, how):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM (to the study alone, as a job
    scheduler sends it) while a training runs: the training is stopped, no further run starts, the study exits
    non-zero with a one-line message, and the next study trains that run again rather than take its files as done."""
    import os
    import signal
    import subprocess

    work = tmp_path / "work"
    jobs = ["--variants", "baseline", "mjp", "--seeds", "0", "1", "--parallel", "1"]
    process, log = _start_study(warm_python, tmp_path, work, "hang", *jobs)
    ((name, pid),) = _started(log, 1, process)
    if how == "ctrl-c":
        os.killpg(process.pid, signal.SIGINT)
    else:
        os.kill(process.pid, signal.SIGTERM)
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError("the study went on after the signal") from None
    assert process.returncode == (130 if how == "ctrl-c" else 143), stderr[-3000:]
    announced = [line for line in stdout.splitlines() if ": training (" in line]
    assert len(announced) == 1 and name in announced[0], f"runs queued behind the stop said they started: {announced}"
    assert "Traceback" not in stderr and "stopped" in stderr.splitlines()[-1], stderr[-3000:]
    assert not _alive(int(pid)), "the training the study started outlived it"
    assert len(log.read_text().splitlines()) == 1, "a run started after the signal"

    again, log = _start_study(warm_python, tmp_path, work, "fail", *jobs)
    _, stderr = again.communicate(timeout=300)
    assert again.returncode != 0 and "training failed" in stderr
    assert log.read_text().split()[0] == name, "the run cut short was taken as finished"


def test_a_second_study_on_the_same_work_folder_is_refused(warm_python, tmp_path):
    import os
    import signal

    work = tmp_path / "work"
    first, log = _start_study(warm_python, tmp_path, work, "hang", "--variants", "baseline", "--seeds", "0")
    _started(log, 1, first)
    try:
        second, _ = _start_study(warm_python, tmp_path, work, "fail", "--variants", "baseline", "--seeds", "0")
        _, stderr = second.communicate(timeout=120)
        assert second.returncode != 0 and "Traceback" not in stderr
        assert f"another study is running in --work_dir {work}" in stderr
        assert len(log.read_text().splitlines()) == 1
    finally:
        os.kill(first.pid, signal.SIGTERM)
        first.communicate(timeout=60)


class _FailingOnce(_FakeAudits):
    """An audit that fails on its first run, after writing to its log, and succeeds on the next."""

    def __init__(self, defense):
        super().__init__(defense)
        self.attempt = 0

    def run(self, command, **kwargs):
        self.attempt += 1
        kwargs["stdout"].write(f"attempt {self.attempt}\n")
        kwargs["stdout"].flush()
        return 1 if self.attempt == 1 else super().run(command, **kwargs)


def test_a_failed_evaluations_log_survives_its_rerun(tmp_path, monkeypatch):
    """The log of a failed evaluation is what a user reads to find why: running the study again appends to it."""
    study = _study()
    monkeypatch.setattr(study, "log", lambda message: None)
    args = study.parse_args(["--work_dir", str(tmp_path), "--variants", "baseline"])
    monkeypatch.setattr(
        study,
        "evaluation_jobs",
        lambda *a: {"privacy": ("privacy", ["--output_dir", str(tmp_path / "e" / "privacy")])},
    )
    audits = _FailingOnce(None)
    with pytest.raises(RuntimeError, match="baseline-seed0.privacy.log"):
        study.evaluate("baseline", 0, tmp_path / "m", tmp_path / "e", args, audits)
    study.evaluate("baseline", 0, tmp_path / "m", tmp_path / "e", args, audits)
    assert (tmp_path / "baseline-seed0.privacy.log").read_text() == "attempt 1\nattempt 2\n"


def test_the_cuts_the_readme_states_are_the_ones_the_run_made():
    """The default grid names its 2-seed variants; with `--seeds_for` restoring them all, the README says every variant
    ran on all of --seeds and does not repeat the default's cut."""
    study = _study()
    default = study.parse_args([])
    cut = [variant for variant, seeds in default.variant_seeds.items() if len(seeds) < 3]
    text = study.grid_cuts(default.variant_seeds, default.seeds)
    assert text.count("ran on fewer seeds than --seeds") == 1 and all(variant in text for variant in cut)
    restored = study.parse_args([arg for variant in cut for arg in ("--seeds_for", f"{variant}=0,1,2")])
    text = study.grid_cuts(restored.variant_seeds, restored.seeds)
    assert (
        "fewer seeds" not in text
        and f"Every variant ran on all of --seeds (`--seeds_for` restored {', '.join(cut)})" in text
    )
