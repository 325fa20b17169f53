"""The output folder of a training run: one run at a time, checked before anything is loaded, then resumed or started
afresh, and nothing in it lost that the project did not write.

`open_run_folder` is the one call a training script makes around its work:

    with open_run_folder(training_args, inputs=..., overwrite=..., run_arguments=...) as resume:
        ...  # load, train (from `resume.checkpoint` when not None), save

On entering, before any file of the folder is read or written, the main process (the one that saves) takes the
folder's lock (`RunLock`, `.mjp-run.lock`): a second run into the same folder stops with an error naming the first;
a lock whose process is gone (killed, the machine rebooted) is taken over with a warning. Then the folder is checked
(not a file, not an input, no README.md of the user's), and a used folder is resumed from its newest complete
checkpoint (or `--resume_from_checkpoint`), refused, or emptied of what earlier runs wrote (`overwrite`). On leaving,
on every path (success, exception, Ctrl-C, SIGTERM), the lock is released; after a failure, the folders the run
created are removed when they hold nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoints import (
    CHECKPOINT_NAME,
    RUN_ARGUMENTS_NAME,
    SAVED_MODEL_FILES,
    SAVED_MODEL_PATTERN,
    checkpoint_problem,
    last_complete_checkpoint,
    model_code_files,
    remove_checkpoint,
    written_by_the_project,
)


try:
    import fcntl
except ImportError:  # not POSIX: no lock (see RunLock)
    fcntl = None

logger = logging.getLogger(__name__)

LOCK_NAME = ".mjp-run.lock"
CARD_NAME = "README.md"
# What a run of examples/run_image_classification.py writes at the top of its output folder besides the checkpoints
# (through the Trainer, `save_pretrained` and the script's own `write_run_files`): the only files `overwrite` deletes.
RUN_FILES = SAVED_MODEL_FILES | {
    "training_args.json",
    "all_results.json",
    "train_results.json",
    "eval_results.json",
    "training_curves.png",
}
# The tag `mjp_hf.hub.build_model_card` puts into the front matter of every card it renders.
_CARD_TAG = "masked-jigsaw-puzzle"


# ---------------------------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------------------------


class OutputFolderInUseError(RuntimeError):
    """Another training run holds the output folder."""


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), to tell it from a later process of the same
    pid; None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return fields[19]  # field 22 of the line, counted after the command name
    except (OSError, IndexError):
        return None


def _running_here(record: Mapping) -> bool:
    """Whether the process that wrote a lock record still runs (only answerable on the host that wrote it)."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid():
        return False
    start = _process_start(pid)
    if start is not None or record.get("process_start") is not None:
        return start is not None and start == record.get("process_start")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(record: Mapping | None) -> str:
    if not record:
        return "another training run (it is starting: its details are not written yet)"
    return (
        f"another training run: pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}, "
        f"running `{record.get('command')}`"
    )


class RunLock:
    """An exclusive lock on a run folder: the file `.mjp-run.lock` in it, held with `fcntl.flock` and holding the
    holder's pid, host, start time and command.

    The kernel releases a `flock` when its process ends, however it ends: a lock file that is there but not held was
    left by a process that is gone (SIGKILL, out of memory, a reboot), and is taken over with a warning. The record
    is checked too: a file system that ignores `flock` still refuses a lock whose process runs on this host. Outside
    POSIX there is no `fcntl`, and the lock only warns that it cannot lock."""

    def __init__(self, folder, flag: str = "--output_dir"):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.flag = flag
        self._descriptor: int | None = None

    @staticmethod
    def _read(descriptor: int) -> dict | None:
        try:
            data = os.pread(descriptor, 1 << 16, 0)
            record = json.loads(data.decode("utf-8")) if data.strip() else None
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) else None

    def _in_use(self, record: Mapping | None) -> OutputFolderInUseError:
        return OutputFolderInUseError(
            f"{self.flag} {self.folder} is in use by {_describe(record)}. Two runs in one folder would write over "
            f"each other's checkpoints and results. Wait for that run to end, or pass another {self.flag}. (If that "
            f"process is no longer running, delete {self.path}.)"
        )

    def acquire(self) -> RunLock:
        """Take the lock, or raise `OutputFolderInUseError` naming the process that holds it."""
        if fcntl is None:
            logger.warning("No fcntl on this platform: %s is not locked against a second run.", self.folder)
            return self
        while True:
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                record = self._read(descriptor)
                os.close(descriptor)
                raise self._in_use(record) from None
            # The holder may have released (and deleted) the file between our open and our lock: then this is a
            # lock on a file no longer in the folder, and the folder's lock is taken afresh.
            try:
                same = os.path.samestat(os.stat(self.path), os.fstat(descriptor))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(descriptor)
        previous = self._read(descriptor)
        if previous is not None and _running_here(previous):
            os.close(descriptor)
            raise self._in_use(previous)
        if previous is not None:
            logger.warning(
                "Took over the lock of %s left by pid %s on %s (`%s`, started %s): that process is gone.",
                self.folder,
                previous.get("pid"),
                previous.get("host"),
                previous.get("command"),
                previous.get("started"),
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "process_start": _process_start(os.getpid()),
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(record).encode("utf-8"), 0)
        os.fsync(descriptor)
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        """Delete the lock file and release the lock (deleted first, so that no run waits on a file about to go)."""
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is None:
            return
        try:
            if os.path.samestat(os.stat(self.path), os.fstat(descriptor)):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(descriptor)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


@contextlib.contextmanager
def _exceptions_on_sigterm() -> Iterator[None]:
    """SIGTERM (a scheduler's or torchrun's stop) raises SystemExit, as Ctrl-C raises KeyboardInterrupt, so that
    the run's `finally` blocks release its lock; the previous handler comes back afterwards. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        # None: a handler set outside Python, which cannot be put back; the default is the nearest.
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------------------------
# What is in the folder
# ---------------------------------------------------------------------------------------------------------------


def is_run_card(path) -> bool:
    """A model card a training run wrote (its front matter carries the MJP tag that `build_model_card` adds)."""
    path = Path(path)
    if path.is_symlink():
        return False
    try:
        head = path.read_text(encoding="utf-8")[:4000]
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith("---") and _CARD_TAG in head


def _contents(folder: Path) -> list[Path]:
    """What the folder holds, but for the lock of the run that looks at it."""
    return sorted(path for path in folder.iterdir() if path.name != LOCK_NAME)


def remove_run_files(output_dir) -> list[Path]:
    """Delete what earlier runs wrote into `output_dir` (its `checkpoint-<step>` folders' files, weights, config,
    code, results, card, curves); return what stays because no run wrote it. Symbolic links are never followed."""
    kept = []
    for path in _contents(Path(output_dir)):
        if CHECKPOINT_NAME.fullmatch(path.name) and path.is_dir() and not path.is_symlink():
            kept += remove_checkpoint(path)
        elif written_by_the_project(path, RUN_FILES) or (path.name == CARD_NAME and is_run_card(path)):
            path.unlink()
        else:
            kept.append(path)
    return kept


def _refuse_linked_run_files(output_dir: Path) -> None:
    """A symbolic link named like a file the run writes at the folder's top is the user's: the run would write into
    what it points to (`save_pretrained` and `save_metrics` open the path), so it stops before any work."""
    for path in _contents(output_dir):
        name = path.name
        if path.is_symlink() and (
            name in RUN_FILES or name in model_code_files() or SAVED_MODEL_PATTERN.fullmatch(name)
        ):
            raise FileExistsError(
                f"{path} is a symbolic link to {os.readlink(path)}, named like a file this run writes: the run would "
                "write into what it points to. Move it, or pass another --output_dir."
            )


def check_output_location(
    output_dir, inputs: Mapping[str, str | None] | None = None, data_inputs: Mapping[str, str | None] | None = None
) -> None:
    """Refuse an output folder that is a file, that is or holds one of the `inputs` (`{flag: path}`), or that lies
    inside one of the `data_inputs` (the run's files would mix with the data). Reads no file."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output_dir {output_dir} is a file, not a folder: pass a folder to write into.")
    resolved = output_dir.resolve()
    data_inputs = dict(data_inputs or {})
    for flag, value in {**(inputs or {}), **data_inputs}.items():
        if not value or not Path(value).exists():
            continue
        source = Path(value).resolve()
        if source == resolved or resolved in source.parents:
            raise ValueError(
                f"--output_dir {output_dir} {'is' if source == resolved else 'holds'} the input {flag} {value}: the "
                "run would write over or beside it. Pass an --output_dir outside the inputs."
            )
        if flag in data_inputs and source in resolved.parents:
            raise ValueError(
                f"--output_dir {output_dir} is inside the input {flag} {value}: the run's files would mix "
                "with the data. Pass an --output_dir outside it."
            )


# ---------------------------------------------------------------------------------------------------------------
# Resuming
# ---------------------------------------------------------------------------------------------------------------


def changed_flags(
    recorded: Mapping, current: Mapping, checkpoint_config: Mapping, config_fields=()
) -> list[tuple[str, object, object]]:
    """`[(flag, value in the checkpoint's run, value now), ...]` for the flags of `current` that differ from
    `recorded`. Both are `{group: {flag: value}}`; `current` holds only the flags that change what is trained (the
    caller's choice: see `mjp_hf.training.arguments.TRAINING_ARGUMENTS`), and a flag the checkpoint's run did not
    record is not compared. A flag of the "mjp" group among `config_fields` is compared with the checkpoint's config,
    which holds the value its run trained with (None: the flag was left out, keeping the config's value)."""
    changes = []
    for group, values in current.items():
        before = recorded.get(group, {})
        for name, value in values.items():
            if name not in before:
                continue
            if group == "mjp" and name in config_fields:
                if value is not None and name in checkpoint_config and checkpoint_config[name] != value:
                    changes.append((name, checkpoint_config[name], value))
            elif before[name] != value:
                changes.append((name, before[name], value))
    return changes


def default_output_dir(kind: str, model: str, data: str, stamp: str | None = None) -> str:
    """`runs/<kind>-<model>-<data>-<date>-<time>`, underscores made dashes: a fresh folder for every run."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{f'{kind}-{model}-{data}'.replace('_', '-')}-{stamp}")


@dataclass
class Resume:
    """The checkpoint a run continues, its step, and the flags it changed (allowed by --allow_changed_flags)."""

    checkpoint: str
    step: int
    changes: list = field(default_factory=list)


def _newest_complete(output_dir: Path) -> str | None:
    checkpoint, skipped = last_complete_checkpoint(output_dir)
    for folder, problem in skipped:
        logger.warning("Not resuming from %s: %s.", folder, problem)
    return checkpoint


def _choose(
    output_dir: Path,
    resume_from_checkpoint: str | None,
    overwrite: bool,
    allow_changed_flags: bool,
    run_arguments: Mapping | None,
    config_fields,
    removes: bool,
) -> Resume | None:
    card = output_dir / CARD_NAME
    if (card.exists() or card.is_symlink()) and not is_run_card(card):
        raise ValueError(
            f"{card} is not a model card this script wrote, and the run would replace it with one: move "
            "it, or pass another --output_dir."
        )
    _refuse_linked_run_files(output_dir)
    resume = resume_from_checkpoint
    if resume is not None and str(resume).lower() in ("true", "last"):
        checkpoint = _newest_complete(output_dir)
        if checkpoint is None:
            raise ValueError(
                f"--resume_from_checkpoint {resume}: {output_dir} holds no complete checkpoint-* folder to resume."
            )
        reason = "the newest complete checkpoint there"
    elif resume is not None:
        problem = checkpoint_problem(resume)
        if problem is not None:
            raise ValueError(f"--resume_from_checkpoint {resume}: cannot resume from it: {problem}.")
        checkpoint, reason = str(resume), "--resume_from_checkpoint"
    elif not _contents(output_dir):
        return None
    elif overwrite:
        if removes:
            kept = remove_run_files(output_dir)
            logger.warning(
                "--overwrite_output_dir: deleted the files earlier runs wrote in %s%s.",
                output_dir,
                f"; kept what they did not write: {', '.join(str(p.relative_to(output_dir)) for p in kept)}"
                if kept
                else "",
            )
        return None
    else:
        checkpoint = _newest_complete(output_dir)
        if checkpoint is None:
            raise ValueError(
                f"Output directory {output_dir} already exists and is not empty (and holds no complete checkpoint to "
                "resume). Pass a new --output_dir, or --overwrite_output_dir to start afresh there (it deletes only "
                "the files an earlier run of this script wrote)."
            )
        reason = "the newest complete checkpoint there; pass --overwrite_output_dir to start afresh"
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    found = Resume(checkpoint, int(state.get("global_step", 0)))
    logger.warning("Resuming from %s at step %d (%s).", checkpoint, found.step, reason)
    if run_arguments is None:
        return found
    recorded = Path(checkpoint) / RUN_ARGUMENTS_NAME
    if not recorded.is_file():
        logger.warning(
            "%s does not record the flags of its run (an older version wrote it): this run cannot check "
            "that its flags are the same.",
            checkpoint,
        )
        return found
    config_file = Path(checkpoint) / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    found.changes = changed_flags(
        json.loads(recorded.read_text(encoding="utf-8")), run_arguments, config, config_fields
    )
    if found.changes:
        listed = "; ".join(f"--{name} {old!r} there, {new!r} now" for name, old, new in found.changes)
        if not allow_changed_flags:
            raise ValueError(
                f"{checkpoint} was written by a run with other flags: {listed}. Resuming would mix two recipes (and "
                "the restored optimizer and scheduler keep the checkpoint's learning rate and weight decay). Rerun "
                "with the checkpoint's flags, start afresh (--overwrite_output_dir or a new --output_dir), or pass "
                "--allow_changed_flags to resume anyway: the model card then lists the changes."
            )
        logger.warning("Resuming with changed flags (--allow_changed_flags): %s.", listed)
    return found


# ---------------------------------------------------------------------------------------------------------------
# The one call
# ---------------------------------------------------------------------------------------------------------------


def _make_folder(folder: Path) -> list[Path]:
    """`mkdir -p folder`; returns the folders this call created, outermost first."""
    missing, path = [], folder.absolute()
    while not path.exists() and not path.is_symlink() and path != path.parent:
        missing.append(path)
        path = path.parent
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
            created.append(path)
        except FileExistsError:  # another process made it in between
            pass
    return created


def _remove_if_empty(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            path.rmdir()  # refuses a folder that holds anything
        except OSError:
            return
        logger.info("Removed %s, which this failed run created and left empty.", path)


@contextlib.contextmanager
def open_run_folder(
    training_args,
    *,
    inputs: Mapping[str, str | None] | None = None,
    data_inputs: Mapping[str, str | None] | None = None,
    overwrite: bool = False,
    allow_changed_flags: bool = False,
    run_arguments: Mapping | None = None,
    config_fields=(),
) -> Iterator[Resume | None]:
    """Hold `training_args.output_dir` for one run; yield the `Resume` it continues, or None for a fresh start.

    `inputs` and `data_inputs` (`{flag: path}`) are what the run reads: the folder must not be, hold or (for data)
    lie inside one. A folder that holds anything is resumed (from `training_args.resume_from_checkpoint`, a path or
    "true"/"last", or its newest complete `checkpoint-<step>`), refused (no complete checkpoint), or, with
    `overwrite`, emptied of what earlier runs wrote (`remove_run_files`). `run_arguments` (`{group: {flag: value}}`)
    of the flags that change what is trained is compared with the checkpoint's `run_arguments.json` (`config_fields`
    of the "mjp" group with its config): a change is refused unless `allow_changed_flags`, and listed in
    `Resume.changes`.

    In a distributed run the main process (`should_save`) goes first and alone takes the lock; the others then read
    the folder as it left it. The lock holder turns SIGTERM into `SystemExit` for the duration, so that the lock is
    released however the run ends."""
    output_dir = Path(training_args.output_dir)
    holds_the_lock = training_args.should_save
    lock, created, failed = None, [], True
    try:
        with _exceptions_on_sigterm() if holds_the_lock else contextlib.nullcontext():
            with training_args.main_process_first(local=False, desc="checking the output folder"):
                check_output_location(output_dir, inputs, data_inputs)
                try:
                    if holds_the_lock:
                        created = _make_folder(output_dir)
                        lock = RunLock(output_dir).acquire()
                    else:
                        output_dir.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise PermissionError(
                        f"--output_dir {output_dir} is not writable ({error.strerror or error}); pass a folder you "
                        "can write to."
                    ) from error
                resume = _choose(
                    output_dir,
                    training_args.resume_from_checkpoint,
                    overwrite,
                    allow_changed_flags,
                    run_arguments,
                    config_fields,
                    removes=holds_the_lock,
                )
            yield resume
        failed = False
    finally:
        if lock is not None:
            lock.release()
        if failed:
            _remove_if_empty(created)


__all__ = [
    "CARD_NAME",
    "LOCK_NAME",
    "OutputFolderInUseError",
    "RUN_FILES",
    "Resume",
    "RunLock",
    "changed_flags",
    "check_output_location",
    "default_output_dir",
    "is_run_card",
    "open_run_folder",
    "remove_run_files",
]
