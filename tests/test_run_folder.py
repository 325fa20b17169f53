"""The output folder of a training run (`mjp_hf.training.run_folder`, `mjp_hf.training.checkpoints`, through
examples/run_image_classification.py): one run at a time, nothing deleted that the project did not write (rotation,
--overwrite_output_dir, failures), odd names, symbolic links, relative paths, two processes at once, kills."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_example import QUICK, ROOT, TINY, _train

from mjp_hf.training import MJPTrainer, checkpoint_folders, checkpoint_problem
from mjp_hf.training.checkpoints import SAVE_IN_PROGRESS_NAME, remove_checkpoint, rotate_checkpoints
from mjp_hf.training.run_folder import LOCK_NAME, OutputFolderInUseError, RunLock, remove_run_files


def _quick(image_folder, *extra):
    return ["--train_dir", str(image_folder), "--config_overrides", TINY, "--max_train_samples", "16", *extra]


def _interrupted_after(step, output, *flags):
    """Run until `step` is saved and the next training step starts, then stop as a Ctrl-C would."""
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


def _user_files(folder: Path, outside: Path) -> dict[Path, str]:
    """What a user keeps in and beside an output folder, named like the run's files where that can mislead:
    `checkpoint-best`, `checkpoint-old` holding a `model.safetensors`, a `checkpoint-100` link to a folder outside,
    odd names the Trainer's `checkpoint-*` glob matches."""
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "precious.txt").write_text("outside")
    (outside / "config.json").write_text("{}")
    files = {
        folder / "checkpoint-best" / "notes.txt": "best",
        folder / "checkpoint-old" / "model.safetensors": "not weights",
        folder / "checkpoint-old" / "trainer_state.json": "{}",
        folder / "checkpoint-05" / "notes.txt": "leading zero",
        folder / "checkpoint-\u0665" / "notes.txt": "an Arabic-Indic five",
        folder / "checkpoint-7\n" / "notes.txt": "a newline",
        folder / "nested" / "checkpoint-3" / "config.json": "{}",
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (folder / "checkpoint-100").symlink_to(outside, target_is_directory=True)
    return {**files, outside / "precious.txt": "outside", outside / "config.json": "{}"}


def _assert_intact(files: dict[Path, str]) -> None:
    for path, text in files.items():
        assert path.is_file() and path.read_text() == text, path


# --- rotation and --overwrite_output_dir delete only the run's own checkpoints ------------------------------------


SCENARIOS = {
    # The reproduction: start afresh in a folder with the user's checkpoint-best, keep one checkpoint.
    "overwrite-limit-1": ["--overwrite_output_dir", "--save_total_limit", "1"],
    # The demo recipe's default limit (2): no --save_total_limit given.
    "default-limit": ["--overwrite_output_dir"],
    # The best checkpoint kept, the others deleted at the end of the run.
    "best-limit-1": [
        "--overwrite_output_dir",
        "--save_total_limit",
        "1",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "1",
        "--load_best_model_at_end",
        "true",
        "--validation_dir",
        "IMAGES",
    ],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rotation_deletes_only_the_runs_own_checkpoints(tmp_path, image_folder, scenario):
    output = tmp_path / "od"
    files = _user_files(output, tmp_path / "elsewhere")
    flags = [str(image_folder) if flag == "IMAGES" else flag for flag in SCENARIOS[scenario]]
    _train(output, *_quick(image_folder, "--max_steps", "4", "--save_steps", "1", *flags))
    _assert_intact(files)
    steps = sorted(int(path.name.split("-")[1]) for path in checkpoint_folders(output) if not path.is_symlink())
    state = json.loads((output / "trainer_state.json").read_text())
    if scenario == "best-limit-1":
        assert steps == [int(Path(state["best_model_checkpoint"]).name.split("-")[1])]
    else:
        assert steps == ([4] if "limit-1" in scenario else [3, 4])
    assert not (output / LOCK_NAME).exists()


def test_a_plain_resume_rotates_only_the_runs_own_checkpoints(tmp_path, image_folder):
    output = tmp_path / "od"
    flags = _quick(image_folder, "--max_steps", "4", "--save_steps", "1", "--save_total_limit", "1")
    _interrupted_after(2, output, *flags)
    files = _user_files(output, tmp_path / "elsewhere")
    (output / "checkpoint-2" / "my_analysis.txt").write_text("mine")  # inside a run's checkpoint
    _train(output, *flags)
    _assert_intact({**files, output / "checkpoint-2" / "my_analysis.txt": "mine"})
    # Emptied of the run's files, checkpoint-2 keeps the user's and no longer counts as a checkpoint.
    assert [path.name for path in (output / "checkpoint-2").iterdir()] == ["my_analysis.txt"]
    assert checkpoint_problem(output / "checkpoint-4") is None and not (output / "checkpoint-3").exists()


def test_overwrite_deletes_no_linked_file_and_follows_no_link(tmp_path, image_folder):
    output = tmp_path / "od"
    _train(output, *_quick(image_folder, "--max_steps", "1", "--save_steps", "1"))
    files = _user_files(output, tmp_path / "elsewhere")
    mine = tmp_path / "my_config.json"
    mine.write_text('{"mine": true}')
    (output / "config.json").unlink()
    (output / "config.json").symlink_to(mine)  # named like the run's config, made by the user
    kept = remove_run_files(output)
    _assert_intact({**files, mine: '{"mine": true}'})
    assert (output / "config.json").is_symlink() and output / "config.json" in kept
    assert not (output / "model.safetensors").exists() and not (output / "checkpoint-1").exists()


@pytest.mark.parametrize("name", ["config.json", "train_results.json", "modeling_mjp_vit.py", "all_results.json"])
def test_a_link_named_like_a_file_the_run_writes_stops_the_run_before_it_writes_through_it(
    tmp_path, image_folder, name
):
    """A link the user put where the run writes one of its files (config, results, model code) would make the run
    write into the file it points to: the run stops before any work, with --overwrite_output_dir and on a resume,
    and the linked file stays as it was."""
    output = tmp_path / "od"
    flags = _quick(image_folder, "--max_steps", "1", "--save_steps", "1")
    _train(output, *flags)
    mine = tmp_path / f"my {name}"
    mine.write_text("mine")
    (output / name).unlink()
    (output / name).symlink_to(mine)
    before = sorted(path.name for path in output.iterdir())
    for extra in (["--overwrite_output_dir"], ["--max_steps", "2"]):  # start afresh; resume from checkpoint-1
        with pytest.raises(FileExistsError, match=rf"{name} is a symbolic link to .*my {name}.*Move it"):
            _train(output, *flags, *extra)
        assert mine.read_text() == "mine" and (output / name).is_symlink()
        assert sorted(path.name for path in output.iterdir()) == before


def test_odd_names_never_count_as_checkpoints(tmp_path):
    output = tmp_path / "od"
    files = _user_files(output, tmp_path / "elsewhere")
    for step in (1, 2, 3):
        folder = output / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        (folder / "model.safetensors").write_text("")
    rotate_checkpoints(output, 1, best_model_checkpoint=str(output / "checkpoint-1"))
    _assert_intact(files)
    assert sorted(path.name for path in output.iterdir() if path.name.startswith("checkpoint-") and path.is_dir()) == [
        "checkpoint-05",
        "checkpoint-1",
        "checkpoint-100",
        "checkpoint-3",
        "checkpoint-7\n",
        "checkpoint-best",
        "checkpoint-old",
        "checkpoint-\u0665",
    ]
    assert remove_checkpoint(output / "checkpoint-100") == [output / "checkpoint-100"]  # a link: left alone
    _assert_intact(files)


def test_a_link_in_place_of_a_checkpoint_is_never_written_into(tmp_path, image_folder):
    output = tmp_path / "od"
    output.mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (output / "checkpoint-2").symlink_to(outside, target_is_directory=True)
    with pytest.raises(FileExistsError, match=r"checkpoint-2 is a symbolic link to .*elsewhere.*Rename or move it"):
        _train(output, *_quick(image_folder, "--max_steps", "3", "--save_steps", "1", "--overwrite_output_dir"))
    assert sorted(path.name for path in outside.iterdir()) == ["config.json"]
    assert checkpoint_problem(output / "checkpoint-1") is None  # resumable once the link is moved


def test_a_file_in_place_of_a_checkpoint_is_kept_and_stops_the_run_before_its_step_is_written(tmp_path, image_folder):
    """docs/TRAINING.md#resume: a file named like a checkpoint the run is about to write stops the run before it
    writes there; --overwrite_output_dir does not delete it (it is no checkpoint folder) and nothing else of it goes."""
    output = tmp_path / "od"
    output.mkdir()
    (output / "checkpoint-2").write_text("my notes, named like a checkpoint")
    with pytest.raises(FileExistsError, match=r"checkpoint-2 is a file, not a checkpoint folder.*Rename or move it"):
        _train(output, *_quick(image_folder, "--max_steps", "3", "--save_steps", "1", "--overwrite_output_dir"))
    assert (output / "checkpoint-2").read_text() == "my notes, named like a checkpoint"
    assert checkpoint_problem(output / "checkpoint-1") is None  # resumable once the file is moved
    assert not (output / LOCK_NAME).exists()


def test_links_inside_checkpoint_folders_are_never_written_through_nor_deleted_with_their_targets(
    tmp_path, image_folder
):
    """A link inside the remains of an interrupted checkpoint the run is about to write again stops the run before
    it writes through it; a link inside an old checkpoint survives rotation, and so does what it points to."""
    output = tmp_path / "od"
    flags = _quick(image_folder, "--max_steps", "2", "--save_steps", "1", "--save_total_limit", "1")
    _interrupted_after(1, output, *flags)
    mine, notes = tmp_path / "my config.json", tmp_path / "my notes.txt"
    mine.write_text("mine")
    notes.write_text("notes")
    (output / "checkpoint-1" / "notes.txt").symlink_to(notes)
    (output / "checkpoint-2").mkdir()  # the remains of an interrupted save: no marker, no trainer state
    (output / "checkpoint-2" / "config.json").symlink_to(mine)
    with pytest.raises(FileExistsError, match=r"checkpoint-2 holds a symbolic link: config\.json.*Move it"):
        _train(output, *flags)
    assert mine.read_text() == "mine" and (output / "checkpoint-2" / "config.json").is_symlink()
    assert not (output / LOCK_NAME).exists()
    (output / "checkpoint-2" / "config.json").unlink()
    _train(output, *flags)
    assert checkpoint_problem(output / "checkpoint-2") is None and mine.read_text() == "mine"
    # checkpoint-1 rotated out: the run's files gone, the link (and its target) kept.
    assert [path.name for path in (output / "checkpoint-1").iterdir()] == ["notes.txt"]
    assert (output / "checkpoint-1" / "notes.txt").is_symlink() and notes.read_text() == "notes"


# --- failures leave no empty folder behind ------------------------------------------------------------------------


def test_a_failed_run_removes_the_folders_it_created_and_nothing_else(tmp_path, image_folder):
    bad = ["--train_dir", str(image_folder), "--label_column_name", "class"]  # fails after the folder is taken
    created = tmp_path / "new" / "deeper" / "run"
    with pytest.raises(ValueError, match="--label_column_name"):
        _train(created, *bad)
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(ValueError, match="--label_column_name"):
        _train(existing / "run", *bad)
    assert existing.is_dir() and not any(existing.iterdir())
    empty = tmp_path / "empty_output"
    empty.mkdir()
    with pytest.raises(ValueError, match="--label_column_name"):
        _train(empty, *bad)
    assert empty.is_dir(), "a folder the user made is never removed"
    assert list(empty.iterdir()) == [], "the lock goes on an exception too"


# --- one run at a time --------------------------------------------------------------------------------------------

HOLDER = """
import importlib.util, os, sys, time
from pathlib import Path

spec = importlib.util.spec_from_file_location("run_image_classification", sys.argv[1])
run = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = run
spec.loader.exec_module(run)
from mjp_hf.training import MJPTrainer

train = MJPTrainer.train


def train_when_told(self, *args, **kwargs):
    # The folder is held and the data loaded: say so, and wait until the test lets the training start.
    Path(os.environ["READY"]).write_text(str(os.getpid()))
    deadline = time.monotonic() + 300
    while not Path(os.environ["GO"]).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never told to go")
        time.sleep(0.05)
    return train(self, *args, **kwargs)


MJPTrainer.train = train_when_told
run.main(sys.argv[2:])
"""


def _start_holder(tmp_path, output, flags):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    ready, go = tmp_path / "ready", tmp_path / "go"
    process = subprocess.Popen(
        [sys.executable, str(script), str(ROOT / "examples/run_image_classification.py")]
        + ["--output_dir", str(output), *QUICK, *flags],
        env={**os.environ, "READY": str(ready), "GO": str(go), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the holding run did not start: {process.communicate()[0][-3000:]}")
        time.sleep(0.1)
    return process, go


def test_a_second_run_is_refused_while_the_first_holds_the_folder_and_a_killed_runs_lock_is_taken_over(
    tmp_path, image_folder, caplog
):
    output = tmp_path / "shared"
    flags = _quick(image_folder, "--max_steps", "2", "--save_steps", "1")
    first, go = _start_holder(tmp_path, output, flags)
    try:
        lock = (output / LOCK_NAME).read_text()
        record = json.loads(lock)
        assert record["pid"] == first.pid and "holder.py" in record["command"]
        before = sorted(path.name for path in output.iterdir())
        for extra in ([], ["--overwrite_output_dir"], ["--resume_from_checkpoint", "last"]):
            with pytest.raises(
                OutputFolderInUseError, match=rf"is in use by another training run: pid {first.pid} on "
            ):
                _train(output, *flags, *extra)
        # Nothing of the holder's was read over or deleted, its lock included.
        assert sorted(path.name for path in output.iterdir()) == before and (output / LOCK_NAME).read_text() == lock
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert (output / LOCK_NAME).exists(), "a killed run cannot remove its lock: the next run must cope"
    with caplog.at_level(logging.WARNING):
        _train(output, *flags, "--overwrite_output_dir")
    assert any(
        f"left by pid {first.pid}" in record.getMessage() and "that process is gone" in record.getMessage()
        for record in caplog.records
    )
    assert not (output / LOCK_NAME).exists() and checkpoint_problem(output / "checkpoint-2") is None


def test_two_runs_started_together_one_trains_the_other_is_told(tmp_path, image_folder):
    """Two processes into one folder: while the first holds it (loaded, about to train), the second (this process)
    is refused before it reads or writes anything; the first then trains to the end and releases the folder."""
    output = tmp_path / "shared"
    flags = _quick(image_folder, "--max_steps", "1", "--save_strategy", "no")
    first, go = _start_holder(tmp_path, output, flags)
    try:
        with pytest.raises(OutputFolderInUseError, match=rf"in use by another training run: pid {first.pid} "):
            _train(output, *flags)
    finally:
        go.touch()
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out[-3000:]
    assert f"Saved the run to {output}" in out and not (output / LOCK_NAME).exists()


def test_sigterm_releases_the_lock_and_removes_the_empty_folder_the_run_created(tmp_path, image_folder):
    output = tmp_path / "new" / "run"
    process, _ = _start_holder(tmp_path, output, _quick(image_folder, "--max_steps", "1"))
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert not (tmp_path / "new").exists()


def test_the_lock_refuses_a_second_holder_and_takes_over_only_from_a_gone_process(tmp_path, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    with RunLock(folder):
        with pytest.raises(OutputFolderInUseError, match=rf"pid {os.getpid()} .*Wait for that run to end"):
            RunLock(folder).acquire()
    assert not (folder / LOCK_NAME).exists()
    # A record left by a process that has ended, and no flock: taken over with a warning.
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = {"pid": int(ended.stdout), "host": socket.gethostname(), "started": "then", "command": "python x.py"}
    (folder / LOCK_NAME).write_text(json.dumps(gone))
    with caplog.at_level(logging.WARNING), RunLock(folder):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"left by pid {gone['pid']}" in caplog.text
    # A record of a process that runs on this host, on a file system that ignores flock (no flock held here): refused.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from mjp_hf.training.run_folder import _process_start

        deadline = time.monotonic() + 10
        while _process_start(sleeper.pid) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = {**gone, "pid": sleeper.pid, "process_start": _process_start(sleeper.pid)}
        (folder / LOCK_NAME).write_text(json.dumps(alive))
        with pytest.raises(OutputFolderInUseError, match=rf"pid {sleeper.pid}"):
            RunLock(folder).acquire()
        # The same pid with another start time is a later process: the lock's own process is gone.
        (folder / LOCK_NAME).write_text(json.dumps({**alive, "process_start": "1"}))
        RunLock(folder).acquire().release()
    finally:
        sleeper.kill()
        sleeper.wait()


# --- odd places and names -----------------------------------------------------------------------------------------


def test_odd_relative_and_linked_output_paths(tmp_path, image_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    odd = Path("my runs") / "\u00e9t\u00e9 #1"  # relative, a space, non-ASCII, a '#'
    flags = _quick(image_folder, "--max_steps", "3", "--save_steps", "1")
    _interrupted_after(2, odd, *flags)
    assert checkpoint_problem(tmp_path / odd / "checkpoint-2") is None
    assert not (tmp_path / odd / LOCK_NAME).exists()
    # The same folder through a link and a trailing slash: one folder, resumed (and locked) as one.
    (tmp_path / "link").symlink_to(tmp_path / odd, target_is_directory=True)
    _train("link/", *flags)
    assert json.loads((tmp_path / odd / "trainer_state.json").read_text())["global_step"] == 3
    # An output folder that is the training data through a link, or a relative path, is refused.
    images = tmp_path / "images"
    shutil.copytree(image_folder, images)
    (tmp_path / "images_link").symlink_to(images, target_is_directory=True)
    for output in ("images_link", "images/../images", "images/cat/.."):
        with pytest.raises(ValueError, match=r"--output_dir .* (is|holds|is inside) the input --train_dir"):
            _train(output, "--train_dir", str(images), "--overwrite_output_dir")
    assert sorted(path.name for path in images.iterdir()) == ["cat", "dog", "owl"]


def test_resume_from_checkpoint_takes_a_relative_path_another_folder_or_last(tmp_path, image_folder, monkeypatch):
    first = tmp_path / "first"
    flags = _quick(image_folder, "--max_steps", "3", "--save_steps", "1", "--save_total_limit", "5")
    _train(first, *flags)
    monkeypatch.chdir(tmp_path)
    # A relative path to a checkpoint of another folder: the new folder continues it.
    _train(tmp_path / "second", *flags, "--resume_from_checkpoint", "first/checkpoint-1")
    history = json.loads((tmp_path / "second" / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 3]
    assert sorted(path.name for path in first.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    # An incomplete checkpoint named explicitly is refused; "last" skips it for the newest complete one.
    (first / "checkpoint-3" / SAVE_IN_PROGRESS_NAME).touch()
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint first/checkpoint-3: cannot resume .*interrupted"):
        _train(tmp_path / "third", *flags, "--resume_from_checkpoint", "first/checkpoint-3")
    assert not (tmp_path / "third").exists()
    (first / "model.safetensors").unlink()
    _train(first, *flags, "--resume_from_checkpoint", "last")
    state = json.loads((first / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and checkpoint_problem(first / "checkpoint-3") is None
    assert (first / "model.safetensors").is_file()
