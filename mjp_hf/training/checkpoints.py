"""Checkpoints of a training run: when one is complete, which files the project writes into one, the rotation that
deletes only those, and loading every tensor a checkpoint holds.

`CheckpointCallback` does this work for `MJPTrainer` through the `Trainer`'s public surface: the Trainer writes a
checkpoint (`save_model` first, where `MJPTrainer` puts the save-in-progress marker), then `on_save` completes it
(every file synced, the marker removed last) and only then rotates old checkpoints; `on_train_begin` loads a resumed
checkpoint strictly, `on_train_end` the best one. See docs/UPSTREAM_ISSUES.md for the Trainer behaviours this
replaces.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel, TrainerCallback
from transformers.trainer import (
    OPTIMIZER_NAME,
    OPTIMIZER_NAME_BIN,
    SCALER_NAME,
    SCHEDULER_NAME,
    TRAINER_STATE_NAME,
    TRAINING_ARGS_NAME,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import (
    CONFIG_NAME,
    IMAGE_PROCESSOR_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from ..utils import listed
from .callbacks import unwrap_model


logger = logging.getLogger(__name__)

# Written first into a checkpoint folder and removed last, once every file of the checkpoint is on disk: a folder
# that still holds it was interrupted while being saved.
SAVE_IN_PROGRESS_NAME = ".mjp-save-in-progress"
# The run's arguments (every flag of the example script), saved into each checkpoint by `MJPTrainer(run_arguments=)`
# so that a resumed run can be compared with the run it continues.
RUN_ARGUMENTS_NAME = "run_arguments.json"
# Only folders named exactly `checkpoint-<step>` as the Trainer writes them (ASCII digits, no leading zero, matched
# whole: `fullmatch`) are the project's: `checkpoint-best`, `checkpoint-old` and the like are the user's, whatever the
# Trainer's own `checkpoint-*` glob would make of them.
CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(0|[1-9][0-9]*)")

# What a model folder written by `save_pretrained` (with its image processor and the Trainer's arguments) holds.
SAVED_MODEL_FILES = frozenset(
    {
        CONFIG_NAME,
        SAFE_WEIGHTS_NAME,
        SAFE_WEIGHTS_INDEX_NAME,
        WEIGHTS_NAME,
        WEIGHTS_INDEX_NAME,
        IMAGE_PROCESSOR_NAME,
        TRAINING_ARGS_NAME,
        TRAINER_STATE_NAME,
        RUN_ARGUMENTS_NAME,
    }
)
# Shards of the weights and per-process RNG states.
SAVED_MODEL_PATTERN = re.compile(
    r"model-[0-9]+-of-[0-9]+\.safetensors|pytorch_model-[0-9]+-of-[0-9]+\.bin|rng_state(_[0-9]+)?\.pth"
)
# What the Trainer adds into a checkpoint: optimizer, scheduler and scaler states, the marker, DeepSpeed's files.
CHECKPOINT_FILES = SAVED_MODEL_FILES | {
    OPTIMIZER_NAME,
    OPTIMIZER_NAME_BIN,
    SCHEDULER_NAME,
    SCALER_NAME,
    SAVE_IN_PROGRESS_NAME,
    "user_content.pt",
    "latest",
    "zero_to_fp32.py",
}
_CHECKPOINT_PATTERN = re.compile(r"rank[0-9]+-of-[0-9]+-optimizer\.pt")
# Sub-folders the Trainer writes into a checkpoint under DeepSpeed and FSDP: all of their content is the Trainer's.
_TRAINER_SUBFOLDER = re.compile(r"global_step[0-9]+|pytorch_model_fsdp_[0-9]+|optimizer_[0-9]+")


@lru_cache(maxsize=1)
def model_code_files() -> frozenset[str]:
    """The model code files `save_pretrained` copies beside the weights (for `trust_remote_code` loading)."""
    from transformers.dynamic_module_utils import get_relative_import_files

    from ..configuration_mjp_vit import MJPViTConfig
    from ..modeling_mjp_vit import MJPViTForImageClassification

    modeling = inspect.getfile(MJPViTForImageClassification)
    paths = (modeling, inspect.getfile(MJPViTConfig), *get_relative_import_files(modeling))
    return frozenset(Path(path).name for path in paths)


def written_by_the_project(path: Path, names: Iterable[str] = CHECKPOINT_FILES) -> bool:
    """Whether `path` is a file of one of `names` (or a shard, RNG state or model code file) that a run writes. A
    symbolic link never is: the user made it, and what it points to is theirs."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    name = path.name
    return (
        name in names
        or name in model_code_files()
        or SAVED_MODEL_PATTERN.fullmatch(name) is not None
        or _CHECKPOINT_PATTERN.fullmatch(name) is not None
    )


# ---------------------------------------------------------------------------------------------------------------
# Complete or not
# ---------------------------------------------------------------------------------------------------------------


def checkpoint_problem(folder) -> str | None:
    """Why `folder` is not a complete Trainer checkpoint, or None when it is one.

    Complete means: no save-in-progress marker, a `trainer_state.json` that parses (the Trainer writes it after the
    weights, optimizer, scheduler and RNG states), and model weights whose safetensors header covers the file."""
    folder = Path(folder)
    if not folder.is_dir():
        return "it is not a folder"
    if (folder / SAVE_IN_PROGRESS_NAME).exists():
        return "its save was interrupted (it still holds the save-in-progress marker)"
    state = folder / TRAINER_STATE_NAME
    if not state.is_file():
        return f"it has no {TRAINER_STATE_NAME}, so its save did not finish"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return f"its {TRAINER_STATE_NAME} is truncated or corrupt"
    weights = folder / SAFE_WEIGHTS_NAME
    if weights.is_file():
        try:
            with safe_open(weights, framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own error type for a short or corrupt file
            return f"its {SAFE_WEIGHTS_NAME} is truncated or corrupt ({error})"
    elif not any((folder / name).is_file() for name in (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)):
        return "it holds no model weights"
    return None


def checkpoint_folders(folder) -> list[Path]:
    """The `checkpoint-<step>` folders in `folder`, newest (highest step) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [
        (int(match.group(1)), path)
        for path in folder.iterdir()
        if path.is_dir() and (match := CHECKPOINT_NAME.fullmatch(path.name))
    ]
    return [path for _, path in sorted(found, reverse=True)]


def last_complete_checkpoint(folder) -> tuple[str | None, list[tuple[str, str]]]:
    """`(newest complete checkpoint in folder or None, [(newer incomplete checkpoint, why), ...])`."""
    skipped = []
    for checkpoint in checkpoint_folders(folder):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return str(checkpoint), skipped
        skipped.append((str(checkpoint), problem))
    return None, skipped


def fsync(path: Path) -> None:
    """Flush a file or a folder's entries to the disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems cannot sync a folder; the files themselves were synced
        pass
    finally:
        os.close(descriptor)


def start_checkpoint(folder: Path) -> None:
    """Mark `folder` as being saved, before the Trainer writes any of its files (the remains of an interrupted save of
    the same step are written over, file by file). A link or a file in the folder's place, or a link inside it, is the
    user's: the checkpoint would be written into what it points to, or not at all."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        what = f"a symbolic link to {os.readlink(folder)}" if folder.is_symlink() else "a file"
        raise FileExistsError(
            f"{folder} is {what}, not a checkpoint folder of this run: the checkpoint of this step would be written "
            "into it. Rename or move it, then resume the run."
        )
    # The remains of an interrupted save are written over; a link among them would be written through.
    links = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_symlink())
    if links:
        raise FileExistsError(
            f"{folder} holds a symbolic link: {', '.join(links)}; the checkpoint of this step would be written into "
            "what it points to. Move it, then resume the run."
        )
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / SAVE_IN_PROGRESS_NAME
    marker.touch()
    fsync(marker)
    fsync(folder.parent)


def finish_checkpoint(folder: Path, run_arguments: Mapping | None = None) -> None:
    """Add the run's arguments, sync every file, then remove the save-in-progress marker: from here on the folder
    passes `checkpoint_problem`."""
    if run_arguments is not None:
        (folder / RUN_ARGUMENTS_NAME).write_text(
            json.dumps(run_arguments, indent=2, sort_keys=True, default=str), encoding="utf-8"
        )
    for path in folder.rglob("*"):
        if path.is_file() and path.name != SAVE_IN_PROGRESS_NAME:
            fsync(path)
    (folder / SAVE_IN_PROGRESS_NAME).unlink(missing_ok=True)
    fsync(folder)


# ---------------------------------------------------------------------------------------------------------------
# Deleting: only what the project wrote
# ---------------------------------------------------------------------------------------------------------------


def remove_checkpoint(folder) -> list[Path]:
    """Delete what a run wrote into the checkpoint `folder` (its files by name, the Trainer's DeepSpeed/FSDP
    sub-folders) and the folder once empty; return what stays because the project did not write it. Symbolic links
    are never followed: a linked checkpoint folder, file or sub-folder is left as it is."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return [folder]
    kept = []
    for root, folders, files in os.walk(folder, topdown=False, followlinks=False):
        root = Path(root)
        in_trainer_subfolder = any(_TRAINER_SUBFOLDER.fullmatch(part) for part in root.relative_to(folder).parts)
        for name in files:
            path = root / name
            if path.is_symlink() or not (in_trainer_subfolder or (root == folder and written_by_the_project(path))):
                kept.append(path)
            else:
                path.unlink()
        for name in folders:
            path = root / name
            if path.is_symlink():
                kept.append(path)
            else:
                try:
                    path.rmdir()  # only when empty: what is left in it was listed as kept
                except OSError:
                    pass
    try:
        folder.rmdir()
    except OSError:
        pass
    return sorted(kept)


def _holds_a_checkpoint(folder: Path) -> bool:
    # A folder emptied down to the user's own files is no checkpoint any more, and no longer counts for rotation.
    return any(
        written_by_the_project(path) or (path.is_dir() and _TRAINER_SUBFOLDER.fullmatch(path.name))
        for path in folder.iterdir()
    )


def rotate_checkpoints(output_dir, save_total_limit: int | None, best_model_checkpoint: str | None = None) -> None:
    """Delete the oldest `checkpoint-<step>` folders of `output_dir` beyond `save_total_limit`, keeping the newest
    and the best one as the Trainer's `save_total_limit` promises (with a best checkpoint, `save_total_limit - 1`
    newest ones besides it; with a limit of 1, the newest and the best). Only folders named exactly
    `checkpoint-<step>` (no symbolic links) count, ordered by step, and only the files a run writes are deleted
    from them (`remove_checkpoint`)."""
    if save_total_limit is None or save_total_limit <= 0:
        return
    checkpoints = [
        path
        for path in reversed(checkpoint_folders(output_dir))  # oldest first
        if not path.is_symlink() and _holds_a_checkpoint(path)
    ]
    if len(checkpoints) <= save_total_limit:
        return
    protected = {checkpoints[-1].resolve()}
    if best_model_checkpoint is not None:
        protected.add(Path(best_model_checkpoint).resolve())
    keep = max(save_total_limit, len(protected))
    remaining = len(checkpoints)
    for checkpoint in checkpoints:
        if remaining <= keep:
            break
        if checkpoint.resolve() in protected:
            continue
        _remove_old_checkpoint(checkpoint)
        remaining -= 1


def _remove_old_checkpoint(checkpoint: Path) -> None:
    logger.info("Deleting the older checkpoint %s (save_total_limit).", checkpoint)
    kept = remove_checkpoint(checkpoint)
    if kept:
        logger.warning(
            "Kept %s in %s: the run did not write %s.",
            ", ".join(str(path.relative_to(checkpoint)) for path in kept),
            checkpoint,
            "them" if len(kept) > 1 else "it",
        )


def keep_only_the_best_checkpoint(output_dir, best_model_checkpoint: str) -> None:
    """At the end of a run with `save_total_limit=1` and a best checkpoint: the Trainer's promise is one checkpoint
    left, the best."""
    best = Path(best_model_checkpoint).resolve()
    for checkpoint in checkpoint_folders(output_dir):
        if not checkpoint.is_symlink() and checkpoint.resolve() != best and _holds_a_checkpoint(checkpoint):
            _remove_old_checkpoint(checkpoint)


# ---------------------------------------------------------------------------------------------------------------
# Loading every tensor
# ---------------------------------------------------------------------------------------------------------------


def load_weights_strictly(folder: str, target: PreTrainedModel) -> None:
    """Copy every weight of the checkpoint `folder` into `target`, or raise naming what the folder lacks.

    `save_pretrained` writes ViT weights under their transformers-4 names and only `from_pretrained` renames them
    back; the Trainer's own loading reads the file as is with `strict=False` and silently keeps the fresh encoder.
    This loads through `from_pretrained` and copies strictly instead (in place: the optimizer's parameters stay)."""
    restored, info = type(target).from_pretrained(folder, config=target.config, output_loading_info=True)
    missing = sorted(info["missing_keys"])
    mismatched = sorted(str(key[0] if isinstance(key, tuple) else key) for key in info["mismatched_keys"])
    if missing or mismatched:
        raise ValueError(
            f"{folder} does not hold every weight of the model: missing [{listed(missing, 8)}]"
            + (f", of another shape [{listed(mismatched, 8)}]" if mismatched else "")
            + ". Loading it would re-initialise them and silently change the model; resume from another "
            "checkpoint (--resume_from_checkpoint) or start afresh."
        )
    with torch.no_grad():
        target.load_state_dict(restored.state_dict(), strict=True)


def loads_strictly(trainer, folder: str | None, target) -> bool:
    """Whether `load_weights_strictly` applies: a `PreTrainedModel` with safetensors weights, outside FSDP and
    DeepSpeed (whose own loading is left to the Trainer)."""
    return (
        folder is not None
        and isinstance(target, PreTrainedModel)
        and not trainer.is_fsdp_enabled
        and not trainer.is_deepspeed_enabled
        and os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_NAME))
    )


class CheckpointCallback(TrainerCallback):
    """The checkpoint work of `MJPTrainer` (which adds it to itself): completes every checkpoint the Trainer saves and
    rotates old ones (`on_save`), loads a resumed checkpoint (`on_train_begin`) and the best one
    (`on_train_end`) with every tensor, and keeps only the best at the end of a `save_total_limit=1` run."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        checkpoint, target = trainer.resumed_from, unwrap_model(trainer.model)
        if loads_strictly(trainer, checkpoint, target):
            logger.info("Loading model from %s.", checkpoint)
            load_weights_strictly(checkpoint, target)

    def on_save(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.accelerator.num_processes > 1:
            trainer.accelerator.wait_for_everyone()  # every process's RNG state is in the folder
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not args.should_save or not folder.is_dir():
            return
        finish_checkpoint(folder, trainer.run_arguments)
        rotate_checkpoints(args.output_dir, trainer.checkpoint_limit, state.best_model_checkpoint)

    def on_train_end(self, args, state, control, **kwargs):
        trainer = self.trainer
        best = state.best_model_checkpoint
        if best is None:
            return
        if args.load_best_model_at_end:
            trainer.forget_last_evaluation()  # the weights change
            target = unwrap_model(trainer.model)
            if loads_strictly(trainer, best, target):
                logger.info(
                    "Loading the best model from %s (%s %s).", best, args.metric_for_best_model, state.best_metric
                )
                load_weights_strictly(best, target)
        if args.should_save and trainer.checkpoint_limit == 1:
            keep_only_the_best_checkpoint(args.output_dir, best)


__all__ = [
    "CHECKPOINT_FILES",
    "CheckpointCallback",
    "RUN_ARGUMENTS_NAME",
    "SAVED_MODEL_FILES",
    "SAVE_IN_PROGRESS_NAME",
    "checkpoint_folders",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "load_weights_strictly",
    "model_code_files",
    "remove_checkpoint",
    "rotate_checkpoints",
    "written_by_the_project",
]
