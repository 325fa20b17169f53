"""Training MJP-ViT with the transformers `Trainer`: the released schedule, per-process jigsaw seeds, loss logging.

The released recipe (Ren et al., CVPR 2023, `main.py` of yhlleo/MJP) trains without the jigsaw for the first
`warmup_epochs` (20 of 300), raises the DALR (dense absolute localization regression) loss weight linearly from 0
over those epochs, then lowers it along a cosine to half its base value; every rank seeds torch with
`seed + rank`, so the ranks draw different jigsaw masks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel, set_seed
from safetensors import safe_open
from transformers import PreTrainedModel, Trainer, TrainerCallback
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME


logger = logging.getLogger(__name__)

# Model outputs that are neither the loss nor logits: left out of what evaluation gathers as predictions.
NON_LOGIT_OUTPUTS = ("classification_loss", "localization_loss", "jigsaw_mask", "hidden_states", "attentions")
# Written first into a checkpoint folder and removed last, once every file of the checkpoint is on disk: a folder
# that still holds it was interrupted while being saved.
SAVE_IN_PROGRESS_NAME = ".mjp-save-in-progress"
# The run's arguments (every flag of the example script), saved into each checkpoint by `MJPTrainer(run_arguments=)`
# so that a resumed run can be compared with the run it continues.
RUN_ARGUMENTS_NAME = "run_arguments.json"
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class TrainingDivergedError(FloatingPointError):
    """The training loss or the weights became non-finite: the run cannot produce a usable model."""


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
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
        if path.is_dir() and (match := _CHECKPOINT_NAME.match(path.name))
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


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems cannot sync a folder; the files themselves were synced
        pass
    finally:
        os.close(descriptor)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP/FSDP/DeepSpeed and `torch.compile` wrappers, in either order: accelerate's
    `extract_model_from_parallel` peels one compile layer per call, so it is applied until nothing changes."""
    while True:
        inner = extract_model_from_parallel(model, keep_torch_compile=False)
        if inner is model:
            return model
        model = inner


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The batch-mean cross-entropy of `logits` against per-sample class distributions `targets` (computed in float32,
    so that bf16/fp16 logits lose no precision in the log-softmax)."""
    logits = logits.float()
    return torch.nn.functional.cross_entropy(logits, targets.to(logits.dtype))


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


class MJPTrainer(Trainer):
    """A `Trainer` that logs the two parts of the MJP loss, `classification_loss` and `localization_loss` (already
    weighted), averaged over the steps since the last log and over processes, next to `loss`.

    Label smoothing (`label_smoothing_factor`) applies to the classification loss, and the localization loss is
    still added. Soft targets (float `labels` of shape `(batch, num_labels)`, from `mixup.MixupCutmixCollator`) get a
    soft cross-entropy. The loss is always a per-batch mean (the Trainer scales it for gradient accumulation), so the DALR
    term keeps its weight whatever the accumulation or number of processes.
    """

    def __init__(self, *args, run_arguments: Mapping | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_arguments = dict(run_arguments) if run_arguments is not None else None
        # A per-batch mean loss: with `num_items_in_batch`, the model's classification loss would be rescaled for
        # accumulation and world size while the DALR term would not.
        self.model_accepts_loss_kwargs = False
        self._loss_parts_sum: torch.Tensor | None = None
        self._loss_parts_count = 0
        # (global step, metrics) of the last evaluation on `eval_dataset`, while the weights are still those it saw.
        self._last_evaluation: tuple[int, dict] | None = None

    # --- checkpoints: written so that a partial one never passes for complete, loaded strictly ------------------

    def _save_checkpoint(self, model, trial) -> None:
        # Weights that are already NaN must not become the checkpoint a later run resumes from.
        self._check_finite(check_weights=True)
        run_dir = Path(self._get_output_dir(trial=trial))
        folder = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            # The remains of an interrupted save of this very step are written over, file by file.
            folder.mkdir(parents=True, exist_ok=True)
            (folder / SAVE_IN_PROGRESS_NAME).touch()
            _fsync(folder / SAVE_IN_PROGRESS_NAME)
            _fsync(run_dir)
        # The Trainer deletes old checkpoints right after writing the new one; that waits until the new one is
        # complete, so that an interruption always leaves a complete checkpoint behind.
        save_total_limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = save_total_limit
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()  # every process's RNG state is in the folder
        if not self.args.should_save:
            return
        if self.run_arguments is not None:
            (folder / RUN_ARGUMENTS_NAME).write_text(
                json.dumps(self.run_arguments, indent=2, sort_keys=True, default=str), encoding="utf-8"
            )
        for path in folder.rglob("*"):
            if path.is_file() and path.name != SAVE_IN_PROGRESS_NAME:
                _fsync(path)
        (folder / SAVE_IN_PROGRESS_NAME).unlink()
        _fsync(folder)
        rotate_checkpoints(
            output_dir=str(run_dir),
            save_total_limit=save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

    def _save(self, output_dir=None, state_dict=None) -> None:
        # `training_args.bin` pickles the arguments: keep Hub tokens out of it (`training_args.json` masks them too).
        tokens = {name: value for name, value in vars(self.args).items() if name.endswith("_token") and value}
        for name in tokens:
            setattr(self.args, name, None)
        try:
            super()._save(output_dir, state_dict=state_dict)
        finally:
            for name, value in tokens.items():
                setattr(self.args, name, value)

    def _load_weights_strictly(self, folder: str, target: PreTrainedModel) -> None:
        # `save_pretrained` writes ViT weights under their transformers-4 names and only `from_pretrained` renames
        # them back; the Trainer's own loading reads the file as is with strict=False and would silently keep the
        # fresh encoder. Load through `from_pretrained` and copy strictly instead.
        restored, info = type(target).from_pretrained(folder, config=target.config, output_loading_info=True)
        missing = sorted(info["missing_keys"])
        mismatched = sorted(str(key[0] if isinstance(key, tuple) else key) for key in info["mismatched_keys"])
        if missing or mismatched:
            raise ValueError(
                f"{folder} does not hold every weight of the model: missing {_listed(missing)}"
                + (f", of another shape {_listed(mismatched)}" if mismatched else "")
                + ". Loading it would re-initialise them and silently change the model; resume from another "
                "checkpoint (--resume_from_checkpoint) or start afresh."
            )
        target.load_state_dict(restored.state_dict(), strict=True)

    def _loads_by_from_pretrained(self, folder: str, target) -> bool:
        return (
            isinstance(target, PreTrainedModel)
            and not self.is_fsdp_enabled
            and not self.is_deepspeed_enabled
            and os.path.isfile(os.path.join(folder, SAFE_WEIGHTS_NAME))
        )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        problem = checkpoint_problem(resume_from_checkpoint)
        if problem is not None:
            raise ValueError(f"Cannot resume from {resume_from_checkpoint}: {problem}.")
        target = unwrap_model(model if model is not None else self.model)
        if not self._loads_by_from_pretrained(resume_from_checkpoint, target):
            return super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        logger.info("Loading model from %s.", resume_from_checkpoint)
        self._load_weights_strictly(resume_from_checkpoint, target)

    def _load_best_model(self) -> None:
        self._last_evaluation = None
        best = self.state.best_model_checkpoint
        target = unwrap_model(self.model)
        if not self._loads_by_from_pretrained(best, target):
            return super()._load_best_model()
        logger.info(
            "Loading the best model from %s (%s %s).", best, self.args.metric_for_best_model, self.state.best_metric
        )
        self._load_weights_strictly(best, target)

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        if checkpoint is not None and not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
            # The Trainer skips what is missing without a word: the run would restart AdamW's moments or the
            # learning-rate schedule and end elsewhere than the uninterrupted run.
            missing = [
                name for name in (OPTIMIZER_NAME, SCHEDULER_NAME) if not os.path.isfile(os.path.join(checkpoint, name))
            ]
            if missing:
                raise ValueError(
                    f"Cannot resume from {checkpoint}: it has no {' and no '.join(missing)}, so the optimizer state "
                    "and learning-rate schedule would restart and the run would not continue the one it resumes. "
                    "Resume from a complete checkpoint (--resume_from_checkpoint), or start afresh "
                    "(--overwrite_output_dir or a new --output_dir)."
                )
        super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint) -> None:
        if checkpoint is not None:
            name = f"rng_state_{self.args.process_index}.pth" if self.args.world_size > 1 else "rng_state.pth"
            if not os.path.isfile(os.path.join(checkpoint, name)):
                logger.warning(
                    "%s has no %s: the run resumes, but from here on its jigsaw masks, dropout and random "
                    "augmentation draws differ from those of an uninterrupted run, and so will its final weights.",
                    checkpoint,
                    name,
                )
        super()._load_rng_state(checkpoint)

    # --- evaluation ---------------------------------------------------------------------------------------------

    def train(self, *args, **kwargs):
        self._last_evaluation = None
        return super().train(*args, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if eval_dataset is None and metric_key_prefix == "eval":
            self._last_evaluation = (self.state.global_step, dict(metrics))
        return metrics

    def evaluate_final_weights(self) -> dict[str, float]:
        """`evaluate()` of the weights training ended with. When the last training step ended with an evaluation on
        the same data (the last epoch's, say) and no weights were loaded since, its metrics are returned: evaluation
        is deterministic, so a second pass would repeat them at the cost of a pass over the eval set."""
        if self._last_evaluation is not None and self._last_evaluation[0] == self.state.global_step:
            logger.info(
                "The final weights were evaluated at the last step (%d); reusing those metrics.",
                self._last_evaluation[0],
            )
            return dict(self._last_evaluation[1])
        return self.evaluate()

    # --- losses ---------------------------------------------------------------------------------------------------

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
                classification_loss = soft_target_cross_entropy(outputs.logits, labels)
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
        parts = torch.stack(
            (
                classification_loss.detach().float(),
                (localization_loss.detach().float() if localization_loss is not None else zero),
            )
        )
        self._loss_parts_sum = parts if self._loss_parts_sum is None else self._loss_parts_sum + parts
        self._loss_parts_count += 1
        self._has_localization_loss = localization_loss is not None

    def _loss_part_totals(self) -> list[float] | None:
        """`[classification sum, localization sum, steps]` since the last log, summed over processes (a host sync:
        only at logging and saving steps)."""
        if self._loss_parts_sum is None:
            return None
        totals = torch.cat((self._loss_parts_sum, self._loss_parts_sum.new_tensor([self._loss_parts_count])))
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        return totals.tolist()

    def _check_finite(self, totals: list[float] | None = None, check_weights: bool = False) -> None:
        """Stop the run once the loss or the weights are NaN or infinite. The Trainer's logged `loss` hides a NaN
        step (`logging_nan_inf_filter`), so this reads the loss parts summed since the last log."""
        totals = self._loss_part_totals() if totals is None else totals
        problem = None
        if totals is not None and not all(math.isfinite(value) for value in totals[:2]):
            problem = f"the training loss is not finite (classification {totals[0]:.4g}, localization {totals[1]:.4g})"
        elif check_weights:
            finite = torch.stack([parameter.detach().isfinite().all() for parameter in self.model.parameters()])
            if not bool(finite.all()):
                problem = "the model weights are not finite"
        if problem is not None:
            raise TrainingDivergedError(
                f"Training diverged by step {self.state.global_step}: {problem}. The run stops here and saves "
                "neither these weights nor a model card. Lower --learning_rate or --max_grad_norm, check the loss "
                "weights (--dalr_loss_weight), or start again from an earlier checkpoint."
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training-loss logs are made by every process together (the Trainer gathers `loss` there too).
        if "loss" in logs and self._loss_parts_sum is not None:
            totals = self._loss_part_totals()
            self._check_finite(totals)
            classification, localization, count = totals
            logs["classification_loss"] = classification / count
            if self._has_localization_loss:
                logs["localization_loss"] = localization / count
                logs["dalr_loss_weight"] = float(unwrap_model(self.model).base_model.dalr_loss.weight)
            self._loss_parts_sum, self._loss_parts_count = None, 0
        elif "train_loss" in logs:  # the end of training: the steps since the last log, and the final weights
            self._check_finite(check_weights=True)
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if ignore_keys is None:
            ignore_keys = list(NON_LOGIT_OUTPUTS)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)


def _listed(names: Sequence[str], limit: int = 8) -> str:
    return "[" + ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "") + "]"


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
    "RUN_ARGUMENTS_NAME",
    "SAVE_IN_PROGRESS_NAME",
    "TrainingDivergedError",
    "checkpoint_folders",
    "checkpoint_problem",
    "last_complete_checkpoint",
    "mjp_schedule",
    "plot_training_curves",
    "soft_target_cross_entropy",
    "top_k_predictions",
    "unwrap_model",
]
