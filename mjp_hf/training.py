"""Training MJP-ViT with the transformers `Trainer`: the released schedule, per-process jigsaw seeds, loss logging.

The released recipe (Ren et al., CVPR 2023, `main.py` of yhlleo/MJP) trains without the jigsaw for the first
`warmup_epochs` (20 of 300), raises the DALR (dense absolute localization regression) loss weight linearly from 0
over those epochs, then lowers it along a cosine to half its base value; every rank seeds torch with
`seed + rank`, so the ranks draw different jigsaw masks.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedModel, Trainer, TrainerCallback, set_seed
from transformers.utils import SAFE_WEIGHTS_NAME

logger = logging.getLogger(__name__)

# Model outputs that are neither the loss nor logits: left out of what evaluation gathers as predictions.
NON_LOGIT_OUTPUTS = ("classification_loss", "localization_loss", "jigsaw_mask", "hidden_states", "attentions")


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP/FSDP (`.module`) and `torch.compile` (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


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
        raise ValueError(f"mjp_schedule needs epoch >= 0, num_epochs >= 1, warmup_epochs >= 0; got {epoch}, "
                         f"{num_epochs}, {warmup_epochs}.")
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
            logger.info("Epoch %d: jigsaw %s, DALR loss weight %.5g", epoch, "on" if schedule[0] else "off", schedule[1])
        self.current = schedule

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self._apply(state, model)


class PerProcessSeedCallback(TrainerCallback):
    """Seeds every process with `seed + process_index` when training starts, as released, so that each rank draws
    its own jigsaw masks (the jigsaw uses torch's default generator) and augmentations.

    The Trainer seeds every process with the same `seed` when it is built (identical initial weights); this runs
    later, and a resumed run then restores each process's saved RNG state over it."""

    def on_train_begin(self, args, state, control, **kwargs):
        set_seed(args.seed + args.process_index)


class TransformEpochCallback(TrainerCallback):
    """Tells data transforms and collators with a `set_epoch` method (`data.ImageClassificationTransform`,
    `data.MixupCutmixCollator`) which epoch starts, so that their augmentation is keyed to `(seed, epoch, sample
    index)`; on a resume, the epoch the run resumes in.

    Data-loader workers pick up the epoch when they start, at every epoch; persistent workers
    (`--dataloader_persistent_workers`) keep the first epoch's augmentation."""

    def __init__(self, *transforms):
        self.transforms = transforms

    def on_train_begin(self, args, state, control, **kwargs):
        if args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
            logger.warning("Persistent data-loader workers keep the augmentation of the epoch they started in; "
                           "drop --dataloader_persistent_workers for new crops and flips every epoch.")

    def on_epoch_begin(self, args, state, control, **kwargs):
        for transform in self.transforms:
            transform.set_epoch(epoch_index(state))


class MJPTrainer(Trainer):
    """A `Trainer` that logs the two parts of the MJP loss, `classification_loss` and `localization_loss` (already
    weighted), averaged over the steps since the last log and over processes, next to `loss`.

    Label smoothing (`label_smoothing_factor`) applies to the classification loss, and the localization loss is
    still added. Soft targets (float `labels` of shape `(batch, num_labels)`, from `data.MixupCutmixCollator`) get a
    soft cross-entropy. The loss is always a per-batch mean (the Trainer scales it for gradient accumulation), so the DALR
    term keeps its weight whatever the accumulation or number of processes.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A per-batch mean loss: with `num_items_in_batch`, the model's classification loss would be rescaled for
        # accumulation and world size while the DALR term would not.
        self.model_accepts_loss_kwargs = False
        self._loss_parts_sum: torch.Tensor | None = None
        self._loss_parts_count = 0

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # `save_pretrained` writes ViT weights under their transformers-4 names and only `from_pretrained` renames
        # them back; the Trainer's own resume loads the file as is with strict=False and would silently keep the
        # fresh encoder. Load through `from_pretrained` and copy strictly instead.
        target = unwrap_model(model if model is not None else self.model)
        weights = os.path.join(resume_from_checkpoint, SAFE_WEIGHTS_NAME)
        if not isinstance(target, PreTrainedModel) or self.is_fsdp_enabled or not os.path.isfile(weights):
            return super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        logger.info("Loading model from %s.", resume_from_checkpoint)
        restored = type(target).from_pretrained(resume_from_checkpoint, config=target.config)
        target.load_state_dict(restored.state_dict(), strict=True)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        # Soft targets (Mixup/CutMix, already label-smoothed) need a cross-entropy against the distribution: the
        # model's own loss would read float labels as multi-label targets.
        soft_targets = labels is not None and labels.is_floating_point() and labels.ndim == 2
        if soft_targets or (self.label_smoother is not None and labels is not None):
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            if soft_targets:
                log_probs = torch.log_softmax(outputs.logits.float(), dim=-1)
                classification_loss = -(labels.to(log_probs.dtype) * log_probs).sum(-1).mean()
            else:
                classification_loss = self.label_smoother(outputs, labels)
            loss = classification_loss
            if outputs.localization_loss is not None:
                loss = loss + outputs.localization_loss
        else:
            outputs = model(**inputs)
            loss, classification_loss = outputs.loss, outputs.classification_loss
        if loss is None:
            raise ValueError(f"The model returned no loss; the batch must hold `labels` (it holds {sorted(inputs)}).")
        if model.training:
            self._accumulate_loss_parts(classification_loss, outputs.localization_loss)
        return (loss, outputs) if return_outputs else loss

    def _accumulate_loss_parts(self, classification_loss, localization_loss) -> None:
        # Summed on the device; read once per logging step, so training steps never wait on the host.
        zero = classification_loss.new_zeros(())
        parts = torch.stack((classification_loss.detach().float(),
                             (localization_loss.detach().float() if localization_loss is not None else zero)))
        self._loss_parts_sum = parts if self._loss_parts_sum is None else self._loss_parts_sum + parts
        self._loss_parts_count += 1
        self._has_localization_loss = localization_loss is not None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training-loss logs are made by every process together (the Trainer gathers `loss` there too).
        if "loss" in logs and self._loss_parts_sum is not None:
            totals = torch.cat((self._loss_parts_sum, self._loss_parts_sum.new_tensor([self._loss_parts_count])))
            if self.accelerator.num_processes > 1:
                totals = self.accelerator.reduce(totals, reduction="sum")
            classification, localization, count = totals.tolist()
            logs["classification_loss"] = classification / count
            if self._has_localization_loss:
                logs["localization_loss"] = localization / count
                logs["dalr_loss_weight"] = float(unwrap_model(self.model).mjp_embeddings.dalr_loss_weight)
            self._loss_parts_sum, self._loss_parts_count = None, 0
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if ignore_keys is None:
            ignore_keys = list(NON_LOGIT_OUTPUTS)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


def top_k_predictions(logits: torch.Tensor, labels: torch.Tensor | None = None, k: int = 5) -> torch.Tensor:
    """`preprocess_logits_for_metrics`: the `k` best classes per example, best first, computed on the device so that
    evaluation gathers `[N, k]` integers instead of `[N, num_labels]` logits."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.topk(min(k, logits.shape[-1]), dim=-1).indices


def plot_training_curves(log_history: Sequence[Mapping], path, title: str | None = None) -> None:
    """Save a PNG of the classification loss, the (weighted) localization loss and the eval accuracy against the
    optimizer step, from `trainer.state.log_history`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
        return ([step for step, _ in points], [value for _, value in points])

    panels = (
        ("Classification loss", [("classification_loss", "train")]),
        ("Localization loss (weighted DALR)", [("localization_loss", "train")]),
        ("Eval accuracy", [("eval_accuracy", "top-1"), ("eval_top5_accuracy", "top-5")]),
    )
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for axis, (panel_title, keys) in zip(axes, panels):
        for key, label in keys:
            steps, values = series(key)
            if steps:
                axis.plot(steps, values, marker="o" if len(steps) < 30 else None, label=label)
        if not axis.lines:
            axis.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axis.transAxes)
        elif len(axis.lines) > 1:
            axis.legend()
        axis.set_title(panel_title)
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


__all__ = [
    "MJPScheduleCallback",
    "MJPTrainer",
    "NON_LOGIT_OUTPUTS",
    "PerProcessSeedCallback",
    "mjp_schedule",
    "plot_training_curves",
    "top_k_predictions",
    "unwrap_model",
]
