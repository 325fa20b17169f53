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


# --- a checkpoint is durable before it counts ---------------------------------------------------------------------


def test_every_file_of_a_checkpoint_is_synced_before_its_marker_goes_and_before_older_ones_go(
    tmp_path, image_folder, monkeypatch
):
    """docs/TRAINING.md#resume: the callback syncs every file, removes the save-in-progress marker last, and only
    then deletes older checkpoints (so that a power loss after the marker went cannot leave a checkpoint that passes
    for complete with unwritten data, nor delete the last durable one). The order of the syncs, the marker and the
    deletions is recorded in the run itself."""
    from mjp_hf.training import checkpoints

    events = []
    fsync, remove = checkpoints.fsync, checkpoints.remove_checkpoint

    def recorded_fsync(path):
        path = Path(path)
        marker = (path if path.is_dir() else path.parent) / SAVE_IN_PROGRESS_NAME
        events.append(("sync", path, marker.exists()))
        return fsync(path)

    def recorded_remove(folder):
        events.append(("remove", Path(folder), None))
        return remove(folder)

    monkeypatch.setattr(checkpoints, "fsync", recorded_fsync)
    monkeypatch.setattr(checkpoints, "remove_checkpoint", recorded_remove)
    output = tmp_path / "durable"
    _train(output, *_flags(image_folder, "--max_steps", "2", "--save_steps", "1", "--save_total_limit", "1"))
    last = output / "checkpoint-2"
    files = {path for path in last.rglob("*") if path.is_file()}
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json", "run_arguments.json"} <= {f.name for f in files}
    synced_while_marked = {path for kind, path, marked in events if kind == "sync" and marked and path != last}
    assert files <= synced_while_marked, sorted(str(path) for path in files - synced_while_marked)
    folder_synced = [i for i, (kind, path, marked) in enumerate(events) if kind == "sync" and path == last]
    assert folder_synced and not events[folder_synced[-1]][2], "the folder is synced once the marker is gone"
    removed = [i for i, (kind, path, _) in enumerate(events) if kind == "remove" and path.name == "checkpoint-1"]
    assert removed and removed[0] > folder_synced[-1], "checkpoint-1 went before checkpoint-2 was durable"
    assert not (output / "checkpoint-1").exists() and checkpoint_problem(last) is None


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


# --- the resume matrix: every resume point ends with the weights of the uninterrupted run -------------------------

# 32 training images at batch 8: 4 steps an epoch, 2 epochs; a checkpoint every 2 steps, so that checkpoint-2 and
# checkpoint-6 fall in mid-epoch and checkpoint-4 closes the first epoch. At one torch thread (conftest).
MATRIX_COMMON = [
    "--train_dir",
    "IMAGES",
    "--validation_dir",
    "IMAGES",
    "--config_overrides",
    TINY,
    "--max_train_samples",
    "32",
    "--max_eval_samples",
    "12",
    "--num_train_epochs",
    "2",
    "--jigsaw_warmup_epochs",
    "1",
    "--jigsaw_prob",
    "0.5",
    "--learning_rate",
    "0.005",
    "--crop_min_scale",
    "0.5",
    "--save_total_limit",
    "10",
]
MATRIX = {
    # case: (flags, resume points)
    "no-evaluation": (["--eval_strategy", "no", "--save_steps", "2"], (2, 4, 6)),
    "per-epoch-evaluation": (["--eval_strategy", "epoch", "--save_steps", "2"], (2, 4, 6)),
    # The best checkpoint by the lowest eval loss; the checkpoints are every epoch (4, 8), or every 2 steps.
    "best-model-per-epoch": (
        ["--eval_strategy", "epoch", "--save_strategy", "epoch", "--load_best_model_at_end", "true"],
        (4,),
    ),
    "best-model-per-step": (
        ["--eval_strategy", "steps", "--eval_steps", "2", "--save_steps", "2", "--load_best_model_at_end", "true"],
        (2, 6),
    ),
}


def _matrix_flags(image_folder, case):
    flags, _ = MATRIX[case]
    return [str(image_folder) if flag == "IMAGES" else flag for flag in MATRIX_COMMON] + flags


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, image_folder):
    """The uninterrupted run of each case of the matrix, made once when a test first asks for it."""
    runs = {}

    def run_of(case):
        if case not in runs:
            runs[case] = tmp_path_factory.mktemp(case) / "run"
            _train(runs[case], *_matrix_flags(image_folder, case))
        return runs[case]

    return run_of


def _interrupted_after(output, flags, step):
    """Run until `step` is saved and the next training step starts, then stop as a Ctrl-C would."""
    from mjp_hf.training import MJPTrainer

    training_step = MJPTrainer.training_step

    def interrupt(self, *args, **kwargs):
        if self.state.global_step == step:
            raise KeyboardInterrupt
        return training_step(self, *args, **kwargs)

    MJPTrainer.training_step = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            _train(output, *flags)
    finally:
        del MJPTrainer.training_step  # inherited from Trainer again


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_a_resume_from_any_checkpoint_ends_with_the_weights_of_the_uninterrupted_run(
    tmp_path, image_folder, uninterrupted, case
):
    """Interrupted after each checkpoint (in mid-epoch, at an epoch's end right before its evaluation, with the best
    model loaded at the end) and resumed in the same folder, a run ends with exactly the uninterrupted run's
    weights, and its log holds every step once."""
    flags = _matrix_flags(image_folder, case)
    full = uninterrupted(case)
    state = json.loads((full / "trainer_state.json").read_text())
    if "best-model" in case:
        # A best checkpoint before every resume point would make the final weights independent of the resume.
        assert int(Path(state["best_model_checkpoint"]).name.split("-")[1]) > max(MATRIX[case][1]), state
    for step in MATRIX[case][1]:
        output = tmp_path / f"after-{step}"
        _interrupted_after(output, flags, step)
        assert (
            not (output / "model.safetensors").exists() and checkpoint_problem(output / f"checkpoint-{step}") is None
        )
        _train(output, *flags)  # finds checkpoint-<step> and resumes from it
        resumed = json.loads((output / "trainer_state.json").read_text())
        assert [e["step"] for e in resumed["log_history"] if "loss" in e] == list(range(1, 9)), step
        assert resumed["best_model_checkpoint"] == (
            None if state["best_model_checkpoint"] is None else str(output / Path(state["best_model_checkpoint"]).name)
        )
        expected, actual = load_file(full / "model.safetensors"), load_file(output / "model.safetensors")
        assert expected.keys() == actual.keys()
        different = [key for key in expected if not torch.equal(expected[key], actual[key])]
        assert not different, f"resumed after step {step}: {len(different)} tensors differ, e.g. {different[:3]}"


def test_evaluating_during_training_does_not_change_the_trained_weights(uninterrupted):
    """An evaluation draws from no random state the training uses: a run with per-epoch evaluation trains the very
    weights of one without (the epoch-end resume above depends on it)."""
    without, with_evaluation = uninterrupted("no-evaluation"), uninterrupted("per-epoch-evaluation")
    history = json.loads((with_evaluation / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "eval_loss" in entry] == [4, 8]
    _assert_same_weights(without / "model.safetensors", with_evaluation / "model.safetensors")


# --- an interruption at each write of a checkpoint ------------------------------------------------------------------


def _raise_after(target, name, when):
    """`target.name` wrapped to raise KeyboardInterrupt after the original returns, when `when(*args)` holds."""
    original = getattr(target, name)

    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            raise KeyboardInterrupt
        return result

    return wrapped


def _checkpoint_4(folder) -> bool:
    return Path(folder).name == "checkpoint-4"


def _write_targets():
    import transformers

    from mjp_hf import MJPViTForImageClassification
    from mjp_hf.training import checkpoints

    return {
        # After the weights, the optimizer and scheduler, the RNG state, the trainer state, and the run's flags
        # (every file written, only the marker left to remove).
        "weights": (
            MJPViTForImageClassification,
            "save_pretrained",
            lambda self, folder, *a, **k: _checkpoint_4(folder),
        ),
        "optimizer": (
            transformers.Trainer,
            "_save_optimizer_and_scheduler",
            lambda self, folder: _checkpoint_4(folder),
        ),
        "rng-state": (transformers.Trainer, "_save_rng_state", lambda self, folder: _checkpoint_4(folder)),
        "trainer-state": (
            transformers.TrainerState,
            "save_to_json",
            lambda self, path: _checkpoint_4(Path(path).parent),
        ),
        "run-arguments": (
            checkpoints,
            "fsync",
            lambda path: Path(path).name == "run_arguments.json" and _checkpoint_4(Path(path).parent),
        ),
    }


WRITES = ("weights", "optimizer", "rng-state", "trainer-state", "run-arguments")


@pytest.mark.parametrize("write", WRITES)
def test_an_interruption_at_any_write_of_a_checkpoint_loses_nothing_but_that_checkpoint(
    tmp_path, image_folder, finished_run, monkeypatch, caplog, write
):
    """With --save_total_limit 1, a save of checkpoint-4 interrupted after any of its files keeps checkpoint-2 whole
    (old checkpoints go only once the new one is complete), marks checkpoint-4 incomplete, and the rerun resumes from
    checkpoint-2 to the weights of the uninterrupted run."""
    target, name, when = _write_targets()[write]
    output = tmp_path / "interrupted"
    flags = _flags(image_folder, "--max_steps", "4", "--save_total_limit", "1")
    with monkeypatch.context() as patch:
        patch.setattr(target, name, _raise_after(target, name, when))
        with pytest.raises(KeyboardInterrupt):
            _train(output, *flags)
    assert checkpoint_problem(output / "checkpoint-2") is None, (
        "the older checkpoint went before the new one was whole"
    )
    assert "interrupted" in checkpoint_problem(output / "checkpoint-4")
    with caplog.at_level(logging.WARNING):
        _train(output, *flags)
    assert any(
        "Resuming from" in r.getMessage() and "checkpoint-2 at step 2" in r.getMessage() for r in caplog.records
    )
    _assert_same_weights(finished_run / "model.safetensors", output / "model.safetensors")
    assert sorted(path.name for path in output.glob("checkpoint-*")) == ["checkpoint-4"]
