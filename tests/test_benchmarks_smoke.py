"""The benchmark scripts still run: each with `--quick` (toy shapes, seconds), ending in its summary line; and
busy_machine gives each thread setting its own environment."""

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parent.parent


def _run_script(warm_python, name: str, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """`python benchmarks/NAME ARGS` from the repository root, as a warm child (its imports done)."""
    return warm_python.run(
        [ROOT / "benchmarks" / name, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_every_benchmark_runs_and_prints_its_summary(warm_python):
    result = _run_script(warm_python, "smoke.py", timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for summary in (
        "train_step overhead:",
        "inference throughput vs stock HF ViT:",
        "jigsaw_op share of a step",
        "data_loading: today's path ",
        "busy_machine adaptive threads:",
        "main_job_levers time per image vs fp32 eager:",
        "main_job_time: top-1 ",
        "privacy_audit time per image: ",
    ):
        assert summary in result.stdout


def test_busy_machine_gives_each_setting_exactly_its_own_thread_variables(monkeypatch):
    from benchmarks import busy_machine

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("MJP_ADAPTIVE_THREADS", "0")
    monkeypatch.setenv("SOMETHING_ELSE", "kept")
    passive = busy_machine.child_environment(busy_machine.SETTINGS["PASSIVE"])
    assert passive["OMP_WAIT_POLICY"] == "PASSIVE" and passive["SOMETHING_ELSE"] == "kept"
    assert "OMP_NUM_THREADS" not in passive and "MJP_ADAPTIVE_THREADS" not in passive
    adaptive = busy_machine.child_environment(busy_machine.SETTINGS[busy_machine.ADAPTIVE])
    assert not set(busy_machine.THREAD_VARIABLES) & set(adaptive)
    assert busy_machine.parse_extra(["spin 10k=GOMP_SPINCOUNT=10000,OMP_WAIT_POLICY=ACTIVE"]) == {
        "spin 10k": {"GOMP_SPINCOUNT": "10000", "OMP_WAIT_POLICY": "ACTIVE"}
    }
    for bad in ("no-assignment", "x=PATH=/tmp"):
        with pytest.raises(SystemExit, match="--extra"):
            busy_machine.parse_extra([bad])


def test_a_baseline_revision_is_timed_beside_todays_code_with_the_same_pixels(warm_python):
    """`--baseline REV` imports the module as git has it at REV next to today's: the data-loading benchmark then times
    both transforms and checks that they give the same pixels."""
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.fail("the benchmarks' --baseline needs the repository's git history")
    result = _run_script(warm_python, "data_loading.py", "--quick", "--baseline", "HEAD", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    table = [line for line in result.stdout.splitlines() if line.startswith(("| train", "| eval"))]
    assert len(table) == 2 and all(line.rstrip().endswith("| yes         |") for line in table), result.stdout
    assert "; the time of HEAD's: train " in result.stdout and "; same pixels" in result.stdout
    bad = _run_script(warm_python, "data_loading.py", "--quick", "--baseline", "no-such-rev", timeout=120)
    assert bad.returncode != 0 and "--baseline no-such-rev: git cannot show mjp_hf/data/fashion_mnist.py" in bad.stderr


def test_the_data_loading_benchmark_fails_when_a_variant_gives_other_pixels(monkeypatch, capsys):
    """The same-pixels check can fail: today's path made to differ by one float32 step in one pixel."""
    from benchmarks import data_loading

    original = data_loading.today_transforms.ImageClassificationTransform

    class Off(original):
        def __call__(self, batch):
            outputs = super().__call__(batch)
            if isinstance(batch["image"][0], dict):  # today's uint8 arrays, not the PIL variant
                outputs["pixel_values"][0, 0, 0, 0] = torch.nextafter(
                    outputs["pixel_values"][0, 0, 0, 0], torch.tensor(9.0)
                )
            return outputs

    monkeypatch.setattr(data_loading.today_transforms, "ImageClassificationTransform", Off)
    with pytest.raises(SystemExit, match="different pixels"):
        data_loading.main(["--quick"])
    assert "PIXELS DIFFER" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["file", "module"])
def test_a_benchmark_runs_as_a_file_and_as_a_module_of_the_benchmarks_package(warm_python, how, tmp_path):
    """`python benchmarks/X.py` from anywhere and `python -m benchmarks.X` from the repository root; no benchmark
    edits `sys.path`."""
    command = [ROOT / "benchmarks" / "jigsaw_op.py"] if how == "file" else ["-m", "benchmarks.jigsaw_op"]
    cwd = tmp_path if how == "file" else ROOT
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}  # as a user runs it
    result = warm_python.run([*command, "--quick"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "jigsaw_op share of a step" in result.stdout
    for path in (ROOT / "benchmarks").glob("*.py"):
        assert not re.search(r"sys\.path\s*(\.|\[|=)", path.read_text()), path


def test_main_job_time_reads_the_thread_counts_the_run_reports(caplog, monkeypatch):
    """The timing table's thread column comes from the warning `AdaptiveThreadsCallback` logs at the end of a run
    whose count followed the load; a run without it ran at one count."""
    import logging
    from types import SimpleNamespace

    from benchmarks import main_job_time
    from mjp_hf.training.threads import AdaptiveThreadsCallback

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    callback = AdaptiveThreadsCallback(SimpleNamespace(switches=3))
    callback.steps_at = {2: 2212, 1: 133}
    with caplog.at_level(logging.WARNING, logger="mjp_hf.training.threads"):
        callback.on_train_end(None, None, None)
    assert main_job_time.thread_counts(caplog.text) == "2212 at 2, 133 at 1"
    assert main_job_time.thread_counts("no such line").endswith(" throughout")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert main_job_time.thread_counts(caplog.text) == "OMP_NUM_THREADS=2"


BAD_FLAGS = [
    ("data_loading", ["--rounds", "0"]),
    ("data_loading", ["--threads", "0"]),
    ("data_loading", ["--seed", "-1"]),
    ("inference", ["--batch-sizes", "8", "0"]),
    ("inference", ["--demo-batch-sizes", "-8"]),
    ("inference", ["--budget-s", "0"]),
    ("inference", ["--min-rounds", "0"]),
    ("train_step", ["--batch-sizes", "0"]),
    ("train_step", ["--budget-s", "-1"]),
    ("train_step", ["--min-rounds", "0"]),
    ("jigsaw_op", ["--grids", "0"]),
    ("jigsaw_op", ["--batch-sizes", "-1"]),
    ("jigsaw_op", ["--budget-s", "nan"]),
    ("jigsaw_op", ["--step-ms", "0"]),
    ("main_job_levers", ["--rounds", "0"]),
    ("main_job_levers", ["--batch-size", "0"]),
    ("main_job_time", ["--runs", "0"]),
    ("main_job_time", ["--probe-s", "0"]),
    ("busy_machine", ["--rounds", "0"]),
    ("busy_machine", ["--batch-size", "0"]),
    ("busy_machine", ["--warmup", "-1"]),
    ("busy_machine", ["--warmup-s", "-1"]),
    ("busy_machine", ["--steps", "0"]),
    ("busy_machine", ["--min-steps", "0"]),
    ("busy_machine", ["--budget-s", "0"]),
    ("busy_machine", ["--timeout-s", "inf"]),
    ("busy_machine", ["--seed", "-1"]),
]


@pytest.mark.parametrize("script, argv", BAD_FLAGS, ids=[f"{s}{a[0]}" for s, a in BAD_FLAGS])
def test_every_numeric_benchmark_flag_is_range_checked_at_parse_time(script, argv, capsys):
    import importlib

    module = importlib.import_module(f"benchmarks.{script}")
    with pytest.raises(SystemExit) as stopped:
        module.main(argv)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {argv[0]}:" in error and repr(argv[-1]) in error, error


def test_the_round_limits_of_the_inference_benchmark_are_ordered(capsys):
    from benchmarks import inference

    with pytest.raises(SystemExit):
        inference.main(["--min-rounds", "5", "--max-rounds", "2"])
    assert "--max-rounds 2 is below --min-rounds 5" in capsys.readouterr().err
