"""The files of the publishing layout, and how a folder of such files is written without losing anything.

A folder is filled in a hidden *staging* folder beside it (on the same file system), then moved into place: a new
folder by one rename; an existing one (`overwrite`) file by file under a lock on the folder, replacing and deleting
only the paths the writer names (`layout_file_patterns`), and putting the earlier files back if a move fails. A
staging folder whose process was killed is removed by the next write beside it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path


try:
    import fcntl
except ImportError:  # Windows: no advisory locks; two writers of one folder are not kept apart there
    fcntl = None


MJP_SUBFOLDER = "mjp"
WIDGET_FOLDER = "widget"
# The code modules `save_pretrained` copies beside MJP weights (`mjp_hf/configuration_mjp_vit.py` and its imports).
LAYOUT_CODE_FILES = ("configuration_mjp_vit.py", "jigsaw.py", "modeling_mjp_vit.py")
LAYOUT_FILES = ("README.md", "config.json", "preprocessor_config.json", *LAYOUT_CODE_FILES)
# The names transformers gives a checkpoint's weights, in any format (shards numbered with five digits): a layout
# holds one checkpoint, so weights of an earlier one under these names would be a second, stale copy of the model.
_SHARD = "-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]"
WEIGHT_FILE_PATTERNS = (
    "model.safetensors",
    "model.safetensors.index.json",
    f"model{_SHARD}.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    f"pytorch_model{_SHARD}.bin",
)
# What one saved MJP checkpoint folder holds (`save_pretrained` of the model and of its image processor).
CHECKPOINT_FILE_PATTERNS = ("config.json", "preprocessor_config.json", *LAYOUT_CODE_FILES, *WEIGHT_FILE_PATTERNS)
# Test images shown by the widget of a Fashion-MNIST model, stored in the repository under `WIDGET_FOLDER/`.
FASHION_MNIST_WIDGET = ("Sneaker", "Trouser", "Bag")


def widget_file_name(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "example"
    return f"{slug}.png"


def layout_file_patterns(widget_titles: Sequence[str] = ()) -> list[str]:
    """Every path (fnmatch pattern, POSIX, relative to the layout folder) the publishing layout may write: what an
    overwrite or a push may replace or delete. No pattern matches a `/`, so nothing in a folder of the user's is
    ever matched. Anything else (`.gitattributes`, a licence, a user's notes or scripts) is never touched. Widget
    images are named by their titles: the Fashion-MNIST ones and `widget_titles`."""
    names = [*LAYOUT_FILES, *WEIGHT_FILE_PATTERNS]
    titles = dict.fromkeys([*FASHION_MNIST_WIDGET, *widget_titles])
    return [
        *names,
        *(f"{MJP_SUBFOLDER}/{name}" for name in names),
        *(f"{WIDGET_FOLDER}/{widget_file_name(title)}" for title in titles),
    ]


def layout_files(folder: str | os.PathLike) -> list[str]:
    """The relative paths (POSIX) of every file of a folder, sorted: what an upload of it sends. Links to files
    count as files; a linked folder is not entered."""
    folder = Path(folder)
    found = []
    for parent, _, files in os.walk(folder):
        found += [(Path(parent) / name).relative_to(folder).as_posix() for name in files]
    return sorted(found)


def check_output_dir(
    output_dir: str | os.PathLike,
    *,
    overwrite: bool,
    inputs: Mapping[str, str | os.PathLike] | None = None,
    output_flag: str = "output_dir",
    overwrite_flag: str = "overwrite=True",
) -> Path:
    """Refuse an output folder that would lose what it holds, before any work starts; return it as a `Path`.

    Refused: a path that is a file; a non-empty folder unless `overwrite` (which then replaces only the writer's
    own files); and a folder that is, or contains, one of `inputs` (`{flag: path}`), links resolved, whatever
    `overwrite` says: the output would replace the very files it is made from.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"{output_flag} {output_dir} exists and is not a folder; pass a folder path.")
    resolved = output_dir.resolve()
    for flag, path in (inputs or {}).items():
        source = Path(path).resolve()
        if source == resolved or resolved in source.parents:
            raise ValueError(
                f"{output_flag} {output_dir} {'is' if source == resolved else 'contains'} {flag} {path}: writing "
                f"there could replace the input itself. Pass a new folder outside it as {output_flag}."
            )
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output_flag} {output_dir} is not empty; pass an empty or new folder, or {overwrite_flag} to replace "
            "the layout's own files in it (other files stay)."
        )
    return output_dir


# --- staging folders ------------------------------------------------------------------------------------------

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
# `.<target name, cut>.mjp-staging-<host>-<pid>-<random>`: whose it is, so that only a dead process's is removed.
_STAGING_NAME = re.compile(r"\.mjp-staging-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[a-z0-9_]{8}$")


def _staging_prefix(target: Path) -> str:
    # At most 64 bytes of the name: the staging folder's own name stays within the file system's 255 bytes.
    return "." + target.name.encode("utf-8")[:64].decode("utf-8", "ignore")


def _new_staging(target: Path) -> Path:
    prefix = f"{_staging_prefix(target)}.mjp-staging-{_HOST}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_staging(target: Path) -> None:
    """Remove the staging folders that processes since gone (killed mid-write) left beside `target`: only folders
    named by this module, for this target name, by a process of this machine that no longer runs."""
    prefix = _staging_prefix(target)
    for entry in target.parent.iterdir():
        match = _STAGING_NAME.search(entry.name)
        if (
            match
            and entry.name[: match.start()] == prefix
            and match["host"] == _HOST
            and not _alive(int(match["pid"]))
            and entry.is_dir()
            and not entry.is_symlink()
        ):
            shutil.rmtree(entry, ignore_errors=True)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on `folder` for the block: two writers of one folder take turns."""
    if fcntl is None:
        yield
        return
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


@contextmanager
def staged_folder(output_dir: str | os.PathLike, *, overwrite: bool, patterns: Sequence[str]) -> Iterator[Path]:
    """Yield an empty staging folder beside `output_dir` to fill; when the block ends normally, move its files into
    `output_dir` (a link to a folder is followed): a new or empty folder receives them whole, a folder that another
    process filled meanwhile is refused unless `overwrite`, and with `overwrite` the same-named files are replaced
    and files matching `patterns` that the new set lacks are removed. Nothing else in the folder is touched."""
    target = Path(os.path.realpath(output_dir))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = _new_staging(target)
    try:
        yield staging
        if not os.path.lexists(target):
            try:
                os.rename(staging, target)  # atomic: the folder appears whole or not at all
                return
            except OSError as error:  # created meanwhile
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
        with _locked(target):
            if not overwrite and any(target.iterdir()):
                raise FileExistsError(
                    f"{output_dir} was filled by another process meanwhile; nothing of this one was written there. "
                    "Pass a new folder, or overwrite it."
                )
            replace_files(staging, target, patterns)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_file(path: str | os.PathLike, data: bytes, *, overwrite: bool, flag: str, overwrite_flag: str) -> Path:
    """Write `data` to `path` whole or not at all; without `overwrite` an existing file is never replaced, even one
    another process creates meanwhile."""
    path = Path(path)
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder; pass a file path, e.g. {path / 'model_card.md'}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = _new_staging(target)
    try:
        staged = staging / "file"
        staged.write_bytes(data)
        if overwrite:
            os.replace(staged, target)
        else:
            try:
                os.link(staged, target)  # fails if the name exists, atomically
            except FileExistsError:
                raise FileExistsError(f"{flag} {path} exists; pass {overwrite_flag} to replace it.") from None
            except OSError as error:  # a file system without hard links: check, then move
                if error.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                if os.path.lexists(target):
                    raise FileExistsError(f"{flag} {path} exists; pass {overwrite_flag} to replace it.") from None
                os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


# --- moving staged files into an existing folder ----------------------------------------------------------------


def _check_replaceable(target: Path, names: Sequence[str]) -> None:
    """Refuse, before any change, a folder where moving `names` in would write through a link or clobber a folder."""
    for name in names:
        path = target
        for part in Path(name).parts[:-1]:
            path = path / part
            if path.is_symlink():
                raise ValueError(
                    f"{path} is a symbolic link: writing the layout's {part}/ files there would replace the files it "
                    f"points to. Remove the link (or move it away), or pass a new folder."
                )
            if os.path.lexists(path) and not path.is_dir():
                raise NotADirectoryError(f"{path} is a file where the layout writes the folder {part}/; move it away.")
        final = target / name
        if final.is_dir() and not final.is_symlink():
            raise IsADirectoryError(f"{final} is a folder where the layout writes a file; move it away.")


def replace_files(staging: Path, target: Path, patterns: Sequence[str]) -> None:
    """Move every file of `staging` into `target`, replacing same-named ones, and remove the files of `target` that
    match `patterns` but not the new set. On any failure (or interruption) the earlier files are put back."""
    new = layout_files(staging)
    stale = [name for name in layout_files(target) if name not in new and any(fnmatchcase(name, p) for p in patterns)]
    _check_replaceable(target, new + stale)
    backup = _new_staging(target)
    moved: list[tuple[str, bool]] = []  # (name, whether an earlier file was set aside in `backup`)
    created: list[Path] = []
    try:
        for name in [*new, *stale]:
            destination = target / name
            for parent in reversed(destination.relative_to(target).parents[:-1]):
                if not (target / parent).is_dir():
                    (target / parent).mkdir()
                    created.append(target / parent)
            earlier = os.path.lexists(destination)
            if earlier:
                (backup / name).parent.mkdir(parents=True, exist_ok=True)
                os.replace(destination, backup / name)
            moved.append((name, earlier))
            if name in new:
                os.replace(staging / name, destination)
    except BaseException:
        _put_back(target, backup, moved, created)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)


def _put_back(target: Path, backup: Path, moved: list[tuple[str, bool]], created: list[Path]) -> None:
    for name, earlier in reversed(moved):
        destination = target / name
        if earlier:
            os.replace(backup / name, destination)
        elif os.path.lexists(destination):
            destination.unlink()
    for folder in reversed(created):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
