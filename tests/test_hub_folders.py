"""The file promises of `mjp_hf.hub` on a local folder, tried hardest: a `hub layout` killed at each of its writes,
two processes writing one folder at once, symbolic links, odd and long names, nested look-alikes of layout files.

Promises (docs/HUB.md): a failure or a kill never leaves a half-written layout where there was none, nor hidden
staging folders; `--overwrite` replaces and deletes only the layout's own files; an output folder that is or holds
the run folder is refused; a folder reached through a symbolic link is written where the link points."""

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_hub import demo_model, demo_processor

from mjp_hf.hub import layout_files, save_publishing_layout
from mjp_hf.hub.cli import main
from mjp_hf.hub.files import layout_file_patterns


# Runs the hub command line with one write made to wait: the `count`-th call of `what` (a model's save_pretrained,
# the card's save, or an os.replace / os.rename of the hub package) first writes `ready`, then waits for `go`.
PAUSABLE_COMMAND = """
import os, sys, time
from pathlib import Path

what, count, ready, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
calls = [0]


def from_the_hub_package():
    frame = sys._getframe(2)
    for _ in range(3):
        if frame is None:
            return False
        if frame.f_globals.get("__name__", "").startswith("mjp_hf.hub"):
            return True
        frame = frame.f_back
    return False


def pausing(original, only_from_hub=False):
    def call(*args, **kwargs):
        if not only_from_hub or from_the_hub_package():
            calls[0] += 1
            if calls[0] == count:
                ready.write_text(str(os.getpid()))
                deadline = time.monotonic() + 300
                while not go.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
        return original(*args, **kwargs)
    return call


if what == "save":
    import transformers
    transformers.PreTrainedModel.save_pretrained = pausing(transformers.PreTrainedModel.save_pretrained)
elif what == "card":
    import huggingface_hub
    huggingface_hub.ModelCard.save = pausing(huggingface_hub.ModelCard.save)
else:
    setattr(os, what, pausing(getattr(os, what), only_from_hub=True))
from mjp_hf.hub.cli import run_command

run_command(sys.argv[5:])
"""


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory):
    """Two finished "runs" (model, image processor) of different weights."""
    runs = []
    for seed in (1, 2):
        folder = tmp_path_factory.mktemp("runs") / f"run-{seed}"
        demo_model(seed=seed).save_pretrained(folder)
        demo_processor().save_pretrained(folder)
        runs.append(folder)
    return runs


def start_paused(warm_python, tmp_path, what, count, *command):
    """The hub command line in a child process of its own, paused at the `count`-th call of `what`."""
    signals = Path(tempfile.mkdtemp(prefix="signals-", dir=tmp_path))
    script, ready, go = tmp_path / "pausable.py", signals / "ready", signals / "go"
    script.write_text(PAUSABLE_COMMAND)
    process = warm_python.popen(
        [script, what, str(count), ready, go, *map(str, command)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preload=["mjp_hf.hub.cli"],
    )
    deadline = time.monotonic() + 180
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"never reached {what} #{count}: {process.communicate()[1][-3000:]}")
        time.sleep(0.01)
    return process, go


def wait_until_blocked_on_the_lock_of(folder: Path, process, timeout: float = 120) -> None:
    """Return once `process` waits for the lock on `folder` (Linux lists waiters in /proc/locks), or has exited."""
    locks = Path("/proc/locks")
    if not locks.exists():  # elsewhere: time enough to reach the lock
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        return
    inode = f":{os.stat(folder).st_ino}"
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        for fields in (line.split() for line in locks.read_text().splitlines()):
            # `2: -> FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF`: a process waiting for a lock.
            waiter = fields[fields.index("->") + 1 :] if "->" in fields else []
            if waiter[:1] == ["FLOCK"] and waiter[3] == str(process.pid) and waiter[4].endswith(inode):
                return
        time.sleep(0.02)


def layout_command(run, output, *extra):
    return ["layout", "--run_dir", str(run), "--output_dir", str(output), "--model_id", "me/x", *extra]


def layout_of(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in layout_files(folder)}


def weights_of(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier weight of the root ViT and of the MJP checkpoint under mjp/."""
    root, mjp = load_file(folder / "model.safetensors"), load_file(folder / "mjp" / "model.safetensors")
    (root_key,) = (key for key in root if key.startswith("classifier.weight"))
    (mjp_key,) = (key for key in mjp if key.startswith("classifier.weight"))
    return root[root_key], mjp[mjp_key]


USER_FILES = {
    "notes.txt": "mine",
    ".gitattributes": "*.safetensors filter=lfs",
    "mjp/extra.json": "{}",
    # Nested look-alikes of layout files: not the layout's paths, so never the layout's to delete.
    "model-v2/notes-of-run.safetensors": "mine",
    "old/pytorch_model.bin": "mine",
    "mjp/sub/config.json": "{}",
}


def add_user_files(folder: Path) -> None:
    for name, text in USER_FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def assert_user_files_kept(folder: Path) -> None:
    for name, text in USER_FILES.items():
        assert (folder / name).read_text() == text, name


# (what, which call, whether the folder already holds a layout: then --overwrite, and a kill mid-swap). Every write
# while the staging folder fills is alike (the card, the root ViT, mjp/): one of each writer stands for them.
KILL_POINTS = [
    ("card", 1, False),
    ("save", 2, False),  # the full MJP checkpoint under mjp/
    ("rename", 1, False),  # the swap of a new folder into place
    ("replace", 1, True),  # the first file moved into the existing folder
    ("replace", 6, True),  # mid-swap: part of the new layout is in, part is not
]


@pytest.mark.parametrize(
    "what, count, existing", KILL_POINTS, ids=[f"{w}{c}{'-overwrite' * e}" for w, c, e in KILL_POINTS]
)
def test_a_layout_killed_at_any_write_leaves_no_debris_and_the_same_command_completes_it(
    warm_python, tmp_path, saved_runs, what, count, existing
):
    old_run, run = saved_runs
    output = tmp_path / "layouts" / "my layout"
    extra = ["--overwrite"] if existing else []
    if existing:
        main(layout_command(old_run, output))
        add_user_files(output)
    process, _ = start_paused(warm_python, tmp_path, what, count, *layout_command(run, output, *extra))
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    if not existing:
        assert not output.exists(), "a killed first write left a partial layout in place"

    main(layout_command(run, output, *extra))  # the same command again
    assert sorted(os.listdir(output.parent)) == ["my layout"], "hidden staging folders were left behind"
    new_root, new_mjp = weights_of(output)
    expected = demo_model(seed=2).classifier.weight
    assert torch.equal(new_root, expected) and torch.equal(new_mjp, expected)
    if existing:
        assert_user_files_kept(output)


# Mid-swap: at the 17th move, after the new mjp/model.safetensors (the 8th file, moved after its earlier one was set
# aside) is in; the files before it are the same in both runs.
STOPS = [(signal.SIGTERM, "save", 2, False), (signal.SIGINT, "save", 2, False), (signal.SIGTERM, "replace", 17, True)]


@pytest.mark.parametrize("sig, what, count, existing", STOPS, ids=["sigterm", "ctrl-c", "sigterm-mid-swap"])
def test_sigterm_and_ctrl_c_stop_at_once_leaving_the_folder_as_it_was(
    warm_python, tmp_path, saved_runs, sig, what, count, existing
):
    old_run, run = saved_runs
    output = tmp_path / "out" / "layout"
    if existing:
        main(layout_command(old_run, output))
        add_user_files(output)
    before = layout_of(output) if existing else None
    process, _ = start_paused(
        warm_python, tmp_path, what, count, *layout_command(run, output, *(["--overwrite"] * existing))
    )
    if existing:
        assert layout_of(output) != before, "the stop must come when part of the new layout is in"
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + sig and "Traceback" not in stderr, stderr[-3000:]
    assert f"stopped by {signal.Signals(sig).name}" in stderr
    if existing:  # the files moved in so far were taken out again, the earlier ones put back
        assert layout_of(output) == before
        assert os.listdir(output.parent) == ["layout"]
    else:
        assert os.listdir(output.parent) == [], "the interrupted command left its staging folder"


def test_a_card_command_killed_while_writing_leaves_no_card_and_no_debris(warm_python, tmp_path, saved_runs):
    _, run = saved_runs
    card = tmp_path / "cards" / "my card.md"
    command = ["card", "--run_dir", str(run), "--model_id", "me/x", "--output", str(card)]
    process, _ = start_paused(warm_python, tmp_path, "link", 1, *command)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert not card.exists()
    main(command)  # the same command again: no "exists", no leftovers
    assert os.listdir(card.parent) == [card.name] and "Masked Jigsaw Puzzle" in card.read_text()


def test_staging_of_other_folders_and_of_live_processes_is_left_alone(warm_python, tmp_path, saved_runs):
    """The clean-up removes only staging folders the hub wrote for this output folder, whose process is gone."""
    _, run = saved_runs
    parent = tmp_path / "layouts"
    parent.mkdir()
    look_alike = parent / ".out.mjp-staging-notmine"  # not named as the hub names them: a user's folder
    look_alike.mkdir()
    (look_alike / "data.txt").write_text("mine")
    paused, go = start_paused(warm_python, tmp_path, "save", 2, *layout_command(run, parent / "out"))
    try:
        (live,) = [path for path in parent.iterdir() if path != look_alike]  # the paused process's staging
        main(layout_command(run, parent / "other"))  # another folder's write never looks at it
        main(layout_command(run, parent / "out"))  # nor does a write of the same folder, while its process lives
        assert live.is_dir() and (look_alike / "data.txt").read_text() == "mine"
    finally:
        go.touch()
        _, stderr = paused.communicate(timeout=120)
    assert paused.returncode != 0 and "was filled by another process meanwhile" in stderr
    assert sorted(os.listdir(parent)) == sorted(["out", "other", look_alike.name])


def test_two_processes_writing_one_new_folder_one_wins_whole_the_other_refuses(warm_python, tmp_path, saved_runs):
    first_run, second_run = saved_runs
    output = tmp_path / "layout"
    paused, go = start_paused(warm_python, tmp_path, "save", 2, *layout_command(first_run, output))
    main(layout_command(second_run, output))  # the other process writes the whole layout meanwhile
    go.touch()
    _, stderr = paused.communicate(timeout=120)
    assert paused.returncode != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert f"{output} was filled by another process meanwhile" in stderr
    root, mjp = weights_of(output)
    expected = demo_model(seed=2).classifier.weight
    assert torch.equal(root, expected) and torch.equal(mjp, expected)
    assert os.listdir(tmp_path).count("layout") == 1 and not [n for n in os.listdir(tmp_path) if "staging" in n]


def test_two_processes_overwriting_one_folder_take_turns(warm_python, tmp_path, saved_runs):
    """The second waits for the first to finish its swap, so the folder ends as one whole layout, not a mix."""
    first_run, second_run = saved_runs
    output = tmp_path / "layout"
    main(layout_command(first_run, output))
    add_user_files(output)
    paused, go = start_paused(warm_python, tmp_path, "replace", 3, *layout_command(first_run, output, "--overwrite"))
    second = warm_python.popen(
        ["-m", "mjp_hf.hub", *layout_command(second_run, output, "--overwrite")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Without turns, it would swap its files in while the first is half-way.
    wait_until_blocked_on_the_lock_of(output, second)
    go.touch()
    assert paused.wait(timeout=120) == 0 and second.wait(timeout=120) == 0, second.communicate()[1][-3000:]
    root, mjp = weights_of(output)
    expected = demo_model(seed=2).classifier.weight
    assert torch.equal(root, expected) and torch.equal(mjp, expected)
    assert_user_files_kept(output)


# --- symbolic links -------------------------------------------------------------------------------------------


def test_an_output_folder_reached_through_a_link_is_written_where_it_points(tmp_path, saved_runs):
    _, run = saved_runs
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    main(layout_command(run, link))
    assert link.is_symlink() and "mjp/model.safetensors" in layout_files(target)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "not-yet")
    main(layout_command(run, dangling))
    assert dangling.is_symlink() and "config.json" in layout_files(tmp_path / "not-yet")


def test_a_link_to_the_run_folder_is_refused_as_the_run_folder(tmp_path, saved_runs):
    _, run = saved_runs
    link = tmp_path / "link-to-run"
    link.symlink_to(run)
    before = {name: (run / name).read_bytes() for name in layout_files(run)}
    with pytest.raises(ValueError, match="is --run_dir"):
        main(layout_command(run, link, "--overwrite"))
    assert {name: (run / name).read_bytes() for name in layout_files(run)} == before


def test_overwrite_never_writes_or_deletes_through_links_inside_the_folder(tmp_path, saved_runs):
    """A linked `mjp/` would make the layout replace another folder's model; a link named like a layout file is
    the folder's own entry: it is replaced, never the file it points to."""
    first_run, run = saved_runs
    output = tmp_path / "layout"
    main(layout_command(first_run, output))
    elsewhere = tmp_path / "my-other-model"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("{}")
    (elsewhere / "pytorch_model.bin").write_bytes(b"mine")
    own = tmp_path / "my-weights.bin"
    own.write_bytes(b"mine too")
    (output / "pytorch_model.bin").symlink_to(own)  # a stale-weights name: the layout deletes this entry
    (output / "README.md").unlink()
    (output / "README.md").symlink_to(own)  # a layout file: the layout replaces this entry
    saved = tmp_path / "saved-mjp"
    (output / "mjp").rename(saved)
    (output / "mjp").symlink_to(elsewhere)
    with pytest.raises(ValueError, match=r"mjp is a symbolic link"):
        main(layout_command(run, output, "--overwrite"))
    assert (elsewhere / "config.json").read_text() == "{}" and (
        elsewhere / "pytorch_model.bin"
    ).read_bytes() == b"mine"
    assert os.path.islink(output / "pytorch_model.bin")  # refused before any change
    (output / "mjp").unlink()
    saved.rename(output / "mjp")
    main(layout_command(run, output, "--overwrite"))
    assert not os.path.lexists(output / "pytorch_model.bin") and own.read_bytes() == b"mine too"
    assert not (output / "README.md").is_symlink() and "## Repository layout" in (output / "README.md").read_text()


# --- names ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["my layout", "modèle ü", "x" * 250, "-starts-with-a-dash"])
def test_any_folder_name_works(tmp_path, saved_runs, name):
    _, run = saved_runs
    main(layout_command(run, tmp_path / name))
    assert "mjp/config.json" in layout_files(tmp_path / name) and os.listdir(tmp_path) == [name]


def test_nested_look_alikes_are_not_layout_files(tmp_path):
    import fnmatch

    patterns = layout_file_patterns()
    for name in USER_FILES:
        assert not any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns), name
    for name in ("model-00001-of-00002.safetensors", "mjp/pytorch_model-00002-of-00002.bin", "widget/bag.png"):
        assert any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns), name


def test_a_folder_that_is_a_file_or_holds_a_folder_where_a_layout_file_goes_is_refused_before_any_change(
    tmp_path, saved_runs
):
    _, run = saved_runs
    (tmp_path / "file").write_text("mine")
    with pytest.raises(NotADirectoryError, match="--output_dir .* is not a folder"):
        main(layout_command(run, tmp_path / "file"))
    output = tmp_path / "layout"
    main(layout_command(run, output))
    (output / "config.json").unlink()
    (output / "config.json").mkdir()  # a user's folder where the layout writes a file
    (output / "config.json" / "mine.txt").write_text("mine")
    before = sorted(layout_files(output))
    with pytest.raises(IsADirectoryError, match="config.json is a folder"):
        main(layout_command(run, output, "--overwrite"))
    assert sorted(layout_files(output)) == before and (output / "config.json" / "mine.txt").read_text() == "mine"
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".")]


def test_save_publishing_layout_failing_mid_swap_restores_the_earlier_layout(tmp_path):
    """A move into the folder fails half-way (a full disk, a permission): the earlier layout is put back."""
    from unittest import mock

    output = save_publishing_layout(demo_model(seed=1), demo_processor(), tmp_path / "layout", widget_images={})
    add_user_files(output)
    before = {name: (output / name).read_bytes() for name in layout_files(output)}
    real_replace, moved_in = os.replace, []

    def failing_replace(source, target):
        if str(target).startswith(f"{output}{os.sep}") and not str(source).startswith(f"{output}{os.sep}"):
            moved_in.append(target)  # a new file moved into the layout folder
            if len(moved_in) == 3:
                raise OSError(28, "No space left on device")
        return real_replace(source, target)

    with mock.patch("os.replace", failing_replace), pytest.raises(OSError, match="No space left"):
        save_publishing_layout(demo_model(seed=2), demo_processor(), output, overwrite=True, widget_images={})
    assert {name: (output / name).read_bytes() for name in layout_files(output)} == before
    assert len(moved_in) > 3  # the three moved in, then the earlier files moved back
    assert os.listdir(tmp_path) == ["layout"]
