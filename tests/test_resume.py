"""Checkpoints of examples/run_image_classification.py: a save killed midway never blocks the resume, a checkpoint
missing weights or optimizer state is refused, a resume with other flags is refused or recorded, the best model is
loaded whole, and no Hub token is pickled into the saved arguments."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_example import QUICK, ROOT, TINY, _train

from mjp_hf.training import SAVE_IN_PROGRESS_NAME, checkpoint_problem, last_complete_checkpoint


# 32 of the 36 images in batches of 8: 4 steps an epoch; a checkpoint every 2 steps.
COMMON = [
    "--config_overrides",
    TINY,
    "--max_train_samples",
    "32",
    "--save_steps",
    "2",
    "--save_total_limit",
    "5",
    "--jigsaw_warmup_epochs",
    "0",
    "--jigsaw_prob",
    "1",
    "--lr_scheduler_type",
    "constant",
    "--eval_strategy",
    "no",
]


def _flags(image_folder, *extra):
    return ["--train_dir", str(image_folder), *COMMON, *extra]


def _assert_same_weights(expected_file, actual_file):
    expected, actual = load_file(expected_file), load_file(actual_file)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, image_folder):
    """An uninterrupted 4-step run with checkpoint-2 and checkpoint-4."""
    output = tmp_path_factory.mktemp("finished") / "run"
    _train(output, *_flags(image_folder, "--max_steps", "4"))
    return output


def _resumable_copy(finished_run, tmp_path, name="resumed"):
    """A run folder holding only the finished run's checkpoint-2: what an interruption after step 2 leaves."""
    folder = tmp_path / name
    folder.mkdir()
    shutil.copytree(finished_run / "checkpoint-2", folder / "checkpoint-2")
    return folder


# --- a save interrupted by a kill ---------------------------------------------------------------------------------

KILLER = """
import importlib.util, os, signal, sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("run_image_classification", sys.argv[1])
run = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = run
spec.loader.exec_module(run)
from mjp_hf import MJPViTForImageClassification

save_pretrained = MJPViTForImageClassification.save_pretrained


def save_and_get_killed(self, save_directory, *args, **kwargs):
    result = save_pretrained(self, save_directory, *args, **kwargs)
    if Path(save_directory).name == os.environ["KILL_DURING"]:
        # The process dies while the weights are being written: half of the file is on disk.
        weights = Path(save_directory) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return result


MJPViTForImageClassification.save_pretrained = save_and_get_killed
run.main(sys.argv[2:])
"""


def test_a_run_killed_while_saving_resumes_from_the_newest_complete_checkpoint(
    tmp_path, image_folder, finished_run, caplog
):
    output = tmp_path / "killed"
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    flags = ["--output_dir", str(output), *QUICK, *_flags(image_folder, "--max_steps", "4")]
    # One thread, as in this test process, so that the steps before the kill compute the very same numbers.
    process = subprocess.run(
        [sys.executable, str(killer), str(ROOT / "examples/run_image_classification.py"), *flags],
        env={**os.environ, "KILL_DURING": "checkpoint-4", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == -signal.SIGKILL, process.stdout[-2000:] + process.stderr[-2000:]
    partial = output / "checkpoint-4"
    assert (partial / SAVE_IN_PROGRESS_NAME).exists() and not (partial / "trainer_state.json").exists()
    assert checkpoint_problem(partial) is not None and checkpoint_problem(output / "checkpoint-2") is None

    with caplog.at_level(logging.WARNING):
        _train(output, *_flags(image_folder, "--max_steps", "4"))
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert any("Not resuming from" in m and "checkpoint-4" in m and "interrupted" in m for m in warnings), warnings
    assert any("Resuming from" in m and "checkpoint-2 at step 2" in m for m in warnings), warnings
    # The resumed run ends with the weights of the uninterrupted one, and its checkpoint-4 is now complete.
    _assert_same_weights(finished_run / "model.safetensors", output / "model.safetensors")
    assert checkpoint_problem(output / "checkpoint-4") is None


def test_a_partial_checkpoint_never_passes_for_complete(tmp_path, finished_run):
    complete = finished_run / "checkpoint-2"
    assert checkpoint_problem(complete) is None
    cases = {
        "marker": lambda folder: (folder / SAVE_IN_PROGRESS_NAME).touch(),
        "no_state": lambda folder: (folder / "trainer_state.json").unlink(),
        "short_state": lambda folder: (folder / "trainer_state.json").write_text('{"global_step": 2, "log_hi'),
        "short_weights": lambda folder: (folder / "model.safetensors").write_bytes(
            (folder / "model.safetensors").read_bytes()[:-100]
        ),
        "no_weights": lambda folder: (folder / "model.safetensors").unlink(),
    }
    expected = {
        "marker": "interrupted",
        "no_state": "no trainer_state.json",
        "short_state": "truncated",
        "short_weights": "model.safetensors is truncated",
        "no_weights": "no model weights",
    }
    for name, damage in cases.items():
        run_dir = tmp_path / name
        shutil.copytree(complete, run_dir / "checkpoint-2")
        shutil.copytree(complete, run_dir / "checkpoint-4")
        damage(run_dir / "checkpoint-4")
        assert expected[name] in checkpoint_problem(run_dir / "checkpoint-4"), name
        newest, skipped = last_complete_checkpoint(run_dir)
        assert newest == str(run_dir / "checkpoint-2") and [path for path, _ in skipped] == [
            str(run_dir / "checkpoint-4")
        ], name


# --- missing state ------------------------------------------------------------------------------------------------


def test_a_checkpoint_missing_weights_is_refused(tmp_path, image_folder, finished_run):
    folder = _resumable_copy(finished_run, tmp_path)
    weights = folder / "checkpoint-2" / "model.safetensors"
    tensors = load_file(weights)
    dropped = sorted(key for key in tensors if "encoder.layer.0.attention" in key)[:2]
    assert dropped
    save_file({key: value for key, value in tensors.items() if key not in dropped}, weights, metadata={"format": "pt"})
    with pytest.raises(
        ValueError,
        match=r"does not hold every weight of the model: missing \[.*attention.*"
        r"re-initialise",
    ):
        _train(folder, *_flags(image_folder, "--max_steps", "4"))
    assert not (folder / "model.safetensors").exists()


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt"])
def test_a_checkpoint_missing_optimizer_or_scheduler_state_is_refused(tmp_path, image_folder, finished_run, missing):
    folder = _resumable_copy(finished_run, tmp_path)
    (folder / "checkpoint-2" / missing).unlink()
    with pytest.raises(
        ValueError,
        match=rf"has no {missing}, so the optimizer state and learning-rate schedule would "
        "restart",
    ):
        _train(folder, *_flags(image_folder, "--max_steps", "4"))
    assert not (folder / "model.safetensors").exists()


def test_a_checkpoint_missing_its_rng_state_resumes_with_a_loud_warning(tmp_path, image_folder, finished_run, caplog):
    folder = _resumable_copy(finished_run, tmp_path)
    (folder / "checkpoint-2" / "rng_state.pth").unlink()
    with caplog.at_level(logging.WARNING):
        _train(folder, *_flags(image_folder, "--max_steps", "4"))
    assert any(
        record.levelno == logging.WARNING
        and "has no rng_state.pth" in record.getMessage()
        and "differ from those of an uninterrupted run" in record.getMessage()
        for record in caplog.records
    )


# --- changed flags ------------------------------------------------------------------------------------------------


def test_a_resume_with_changed_flags_is_refused_or_recorded(tmp_path, image_folder, finished_run, caplog):
    folder = _resumable_copy(finished_run, tmp_path)
    changed = _flags(image_folder, "--max_steps", "4", "--learning_rate", "0.01", "--jigsaw_ratio", "0.3")
    with pytest.raises(
        ValueError,
        match=r"other flags: --jigsaw_ratio 0.1 there, 0.3 now; --learning_rate 0.002 "
        r"there, 0.01 now\. .*--allow_changed_flags",
    ):
        _train(folder, *changed)
    assert not (folder / "model.safetensors").exists()

    with caplog.at_level(logging.WARNING):
        _train(folder, *changed, "--allow_changed_flags")
    messages = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert any("Resuming from" in m and "checkpoint-2 at step 2" in m for m in messages), messages
    card = (folder / "README.md").read_text()
    assert "0.002 up to step 2, then 0.01" in card and "0.1 up to step 2, then 0.3" in card
    assert "resumed at step 2 with changed flags" in card


def test_a_resume_with_the_same_flags_says_so_and_continues(tmp_path, image_folder, finished_run, caplog):
    folder = _resumable_copy(finished_run, tmp_path)
    # Flags that do not change the trained weights may differ.
    with caplog.at_level(logging.WARNING):
        _train(
            folder,
            *_flags(image_folder, "--max_steps", "4", "--logging_steps", "2", "--per_device_eval_batch_size", "4"),
        )
    assert any("Resuming from" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    _assert_same_weights(finished_run / "model.safetensors", folder / "model.safetensors")


# --- the best model -----------------------------------------------------------------------------------------------


def test_load_best_model_at_end_loads_every_tensor_of_the_best_checkpoint(tmp_path, image_folder):
    output = tmp_path / "best"
    # The highest eval loss is "best" here, so that the best checkpoint is an early one, not the last weights.
    _train(
        output,
        "--train_dir",
        str(image_folder),
        "--config_overrides",
        TINY,
        "--max_train_samples",
        "32",
        "--max_steps",
        "6",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--save_steps",
        "2",
        "--load_best_model_at_end",
        "true",
        "--metric_for_best_model",
        "loss",
        "--greater_is_better",
        "true",
        "--learning_rate",
        "0.01",
    )
    state = json.loads((output / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"])
    assert best.name != "checkpoint-6", "the test needs a best checkpoint other than the last"
    _assert_same_weights(output / best.name / "model.safetensors", output / "model.safetensors")


# --- tokens -------------------------------------------------------------------------------------------------------


def test_the_hub_token_is_not_saved_with_the_arguments(tmp_path, image_folder):
    token = "hf_secretTokenForTheTest123"
    output = tmp_path / "token"
    _train(output, *_flags(image_folder, "--max_steps", "2", "--hub_token", token))
    saved = [output / "training_args.bin", output / "checkpoint-2" / "training_args.bin"]
    assert all(path.is_file() for path in saved)
    for path in output.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    for path in saved:
        arguments = torch.load(path, weights_only=False)  # the test's own file: unpickling it is safe here
        assert arguments.hub_token != token


@pytest.mark.parametrize(
    "interruption", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["disk-full", "ctrl-c"]
)
def test_a_save_that_fails_midway_leaves_a_resumable_run(
    tmp_path, image_folder, finished_run, monkeypatch, interruption
):
    from mjp_hf.training import MJPTrainer

    save_rng_state = MJPTrainer._save_rng_state

    def fail_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise interruption  # the weights and optimizer state are on disk, the rest is not
        return save_rng_state(self, output_dir)

    output = tmp_path / "interrupted"
    with monkeypatch.context() as patch:
        patch.setattr(MJPTrainer, "_save_rng_state", fail_at_step_4)
        with pytest.raises(type(interruption)):
            _train(output, *_flags(image_folder, "--max_steps", "4"))
    assert "interrupted" in checkpoint_problem(output / "checkpoint-4")
    _train(output, *_flags(image_folder, "--max_steps", "4"))
    _assert_same_weights(finished_run / "model.safetensors", output / "model.safetensors")
