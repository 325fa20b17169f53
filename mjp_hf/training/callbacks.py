"""The `TrainerCallback`s of MJP training: the released schedule, per-process jigsaw seeds, epoch-keyed augmentation.

The released recipe (Ren et al., CVPR 2023, `main.py` of yhlleo/MJP) trains without the jigsaw for the first
`warmup_epochs` (20 of 300), raises the DALR (dense absolute localization regression) loss weight linearly from 0
over those epochs, then lowers it along a cosine to half its base value; every rank seeds torch with
`seed + rank`, so the ranks draw different jigsaw masks.
"""

from __future__ import annotations

import logging
import math

import torch
from accelerate.utils import extract_model_from_parallel, set_seed
from transformers import TrainerCallback


logger = logging.getLogger(__name__)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP/FSDP/DeepSpeed and `torch.compile` wrappers, in either order: accelerate's
    `extract_model_from_parallel` peels one compile layer per call, so it is applied until nothing changes."""
    while True:
        inner = extract_model_from_parallel(model, keep_torch_compile=False)
        if inner is model:
            return model
        model = inner


def epoch_index(state) -> int:
    """The 0-based epoch a `TrainerState` is in (its `epoch` is fractional in mid-epoch, as on a resume)."""
    return int(math.floor(state.epoch or 0.0))


def mjp_schedule(epoch: int, num_epochs: int, warmup_epochs: int, base_weight: float) -> tuple[bool, float]:
    """`(jigsaw_enabled, dalr_loss_weight)` for a 0-based `epoch`, as released.

    Warmup epochs: no jigsaw, weight `linspace(0, base_weight, warmup_epochs)[epoch]` (epoch 0 has weight 0).
    Afterwards: jigsaw on, weight `w/2 + (w - w/2) * (1 + cos(pi * i / n)) / 2` for the `i`-th of the `n` remaining
    epochs, the per-epoch form of DeiT/BEiT's `cosine_scheduler(w, w / 2, ...)`.
    """
    if epoch < 0 or num_epochs < 1 or warmup_epochs < 0:
        raise ValueError(
            f"mjp_schedule needs epoch >= 0, num_epochs >= 1, warmup_epochs >= 0; got {epoch}, "
            f"{num_epochs}, {warmup_epochs}."
        )
    if epoch < warmup_epochs:
        weight = base_weight * epoch / (warmup_epochs - 1) if warmup_epochs > 1 else 0.0
        return False, weight
    final = base_weight / 2
    remaining = max(num_epochs - warmup_epochs, 1)
    step = min(epoch - warmup_epochs, remaining - 1)
    return True, final + 0.5 * (base_weight - final) * (1 + math.cos(math.pi * step / remaining))


class MJPScheduleCallback(TrainerCallback):
    """Applies `mjp_schedule` at the start of every epoch through `model.set_mjp_schedule` (the config keeps the
    base values). It reads the epoch from the trainer state, so a resumed run continues the same schedule."""

    def __init__(self, warmup_epochs: int = 20, base_weight: float | None = None):
        if warmup_epochs < 0 or int(warmup_epochs) != warmup_epochs:
            raise ValueError(f"jigsaw_warmup_epochs={warmup_epochs!r} must be a whole number of epochs >= 0.")
        self.warmup_epochs = int(warmup_epochs)
        self.base_weight = base_weight
        self.current: tuple[bool, float] | None = None

    def _apply(self, state, model) -> None:
        model = unwrap_model(model)
        base_weight = self.base_weight if self.base_weight is not None else float(model.config.dalr_loss_weight)
        epoch = epoch_index(state)
        num_epochs = max(int(math.ceil(state.num_train_epochs or 1)), 1)
        schedule = mjp_schedule(epoch, num_epochs, self.warmup_epochs, base_weight)
        model.set_mjp_schedule(jigsaw_enabled=schedule[0], dalr_loss_weight=schedule[1])
        if schedule != self.current:
            logger.info(
                "Epoch %d: jigsaw %s, DALR loss weight %.5g", epoch, "on" if schedule[0] else "off", schedule[1]
            )
        self.current = schedule

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args is not None and args.max_steps <= 0 and self.warmup_epochs >= args.num_train_epochs:
            logger.warning(
                "--jigsaw_warmup_epochs %d >= --num_train_epochs %s: the jigsaw never runs in this training.",
                self.warmup_epochs,
                args.num_train_epochs,
            )
        self._apply(state, model)

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)


class PerProcessSeedCallback(TrainerCallback):
    """Seeds every process with `seed + process_index` when training starts, as released, so that each rank draws
    its own jigsaw masks (the jigsaw uses torch's default generator) and augmentations.

    The Trainer seeds every process with the same `seed` when it is built (identical initial weights); this runs
    later, and a resumed run then restores each process's saved RNG state over it."""

    def on_train_begin(self, args, state, control, **kwargs):
        # `device_specific` adds the process index of the state `args.process_index` also reads.
        set_seed(args.seed, device_specific=True)


class TransformEpochCallback(TrainerCallback):
    """Tells data transforms and collators with a `set_epoch` method (`transforms.ImageClassificationTransform`,
    `mixup.MixupCutmixCollator`) which epoch starts, so that their augmentation is keyed to `(seed, epoch, sample
    index)`; on a resume, the epoch the run resumes in.

    Data-loader workers pick up the epoch when they start, at every epoch; persistent workers
    (`--dataloader_persistent_workers`) keep the first epoch's augmentation."""

    def __init__(self, *transforms):
        self.transforms = transforms

    def on_train_begin(self, args, state, control, **kwargs):
        if args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
            logger.warning(
                "Persistent data-loader workers keep the augmentation of the epoch they started in; "
                "drop --dataloader_persistent_workers for new crops and flips every epoch."
            )

    def on_epoch_begin(self, args, state, control, **kwargs):
        for transform in self.transforms:
            transform.set_epoch(epoch_index(state))


__all__ = [
    "MJPScheduleCallback",
    "PerProcessSeedCallback",
    "TransformEpochCallback",
    "epoch_index",
    "mjp_schedule",
    "unwrap_model",
]
