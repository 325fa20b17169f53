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
    """2 variants, 1 seed, a few steps: every stage really runs (training and the three evaluations as child
    processes, warm ones: the imports are not what is tested); the second run finds everything cached and writes the
    same tables."""
    from warm_python import WarmSubprocess

    study = _study()
    # What the training and the evaluations import beyond mjp_hf (never the evaluation modules `-m` runs).
    preload = ["datasets", "evaluate", "matplotlib.pyplot", "transformers.trainer"]
    monkeypatch.setattr(study, "subprocess", WarmSubprocess(warm_python, preload))
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
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError("the study went on after the signal") from None
    assert process.returncode == (130 if how == "ctrl-c" else 143), stderr[-3000:]
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
