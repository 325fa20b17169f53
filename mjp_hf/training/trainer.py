"""`MJPTrainer`: the transformers `Trainer` for MJP-ViT, through its public surface only.

It logs the two parts of the MJP loss, trains on soft targets, stops a diverging run, marks checkpoints complete only
once every file is on disk (with `checkpoints.CheckpointCallback`), checks a checkpoint before resuming from it, loads
every tensor of a resumed or best checkpoint, keeps Hub tokens out of the saved arguments, and keeps evaluation from
moving the training's random state, so that a resumed run ends with the weights of the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, Trainer
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_NAME

from .callbacks import unwrap_model
from .checkpoints import CheckpointCallback, checkpoint_problem, last_complete_checkpoint, start_checkpoint


logger = logging.getLogger(__name__)

# Model outputs that are neither the loss nor logits: left out of what evaluation gathers as predictions.
NON_LOGIT_OUTPUTS = ("classification_loss", "localization_loss", "jigsaw_mask", "hidden_states", "attentions")
# What the Trainer logs after its own (non-strict) load of a resumed or best checkpoint whose keys `save_pretrained`
# renamed; `CheckpointCallback` then loads every tensor itself, so these lines would only mislead.
_PARTIAL_LOAD_MESSAGES = ("There were missing keys in the checkpoint", "There were unexpected keys in the checkpoint")


class TrainingDivergedError(FloatingPointError):
    """The training loss or the weights became non-finite: the run cannot produce a usable model."""


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The batch-mean cross-entropy of `logits` against per-sample class distributions `targets` (computed in float32,
    so that bf16/fp16 logits lose no precision in the log-softmax)."""
    logits = logits.float()
    return torch.nn.functional.cross_entropy(logits, targets.to(logits.dtype))


@contextlib.contextmanager
def preserved_rng_state(device: torch.device | str | None = None):
    """Leave the random state of Python, NumPy, torch's CPU generator and `device`'s generator as it was found.

    Iterating a `DataLoader` draws a seed from torch's default generator: an evaluation in the middle of training
    would move the random state the training continues with, after the checkpoint of the same step had saved it."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [] if device.type == "cpu" else [device]
    try:
        with torch.random.fork_rng(devices=devices, device_type=None if device.type == "cpu" else device.type):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class _PartialLoadFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_PARTIAL_LOAD_MESSAGES)


class MJPTrainer(Trainer):
    """A `Trainer` that logs the two parts of the MJP loss, `classification_loss` and `localization_loss` (already
    weighted), averaged over the steps since the last log and over processes, next to `loss`.

    Label smoothing (`label_smoothing_factor`) applies to the classification loss, and the localization loss is
    still added. Soft targets (float `labels` of shape `(batch, num_labels)`, from `mixup.MixupCutmixCollator`) get a
    soft cross-entropy. The loss is always a per-batch mean (the Trainer scales it for gradient accumulation), so the
    DALR term keeps its weight whatever the accumulation or number of processes.

    Checkpoints (with `checkpoints.CheckpointCallback`, added here): each is marked in progress before its first file
    and complete after its last, old ones are rotated only then and only among folders named `checkpoint-<step>`
    (deleting only the files a run writes), a resume checks the checkpoint first and loads every tensor of it, as
    `load_best_model_at_end` does, and `run_arguments` (a JSON-able mapping) is saved into each checkpoint.
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
        # During `train()`: the checkpoint it resumes from, and the `save_total_limit` that `CheckpointCallback`
        # rotates to (the Trainer's own rotation is kept off: see `train`).
        self.resumed_from: str | None = None
        self.checkpoint_limit: int | None = None
        self.add_callback(CheckpointCallback(self))

    # --- training -----------------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """`Trainer.train`, after checking the checkpoint to resume from: complete (`checkpoint_problem`), with its
        optimizer and scheduler states (else the run would not continue the one it resumes), warning when its RNG
        state is missing. `True` resumes from the newest complete checkpoint of `output_dir`. A training that runs no
        optimizer step (no batch in the data, zero epochs) raises instead of returning an untrained model."""
        self._last_evaluation = None
        checkpoint = self._checkpoint_to_resume(resume_from_checkpoint)
        # `CheckpointCallback` rotates: the Trainer's own rotation (and its deletion at the end of a
        # `save_total_limit=1` run) globs every `checkpoint-*` folder, the user's `checkpoint-best` too
        # (docs/UPSTREAM_ISSUES.md, issue 1).
        self.resumed_from = checkpoint
        self.checkpoint_limit, self.args.save_total_limit = self.args.save_total_limit, None
        quiet = _PartialLoadFilter()
        trainer_logger = logging.getLogger("transformers.trainer")
        if self._loads_strictly_from(checkpoint):
            trainer_logger.addFilter(quiet)
        try:
            output = super().train(
                resume_from_checkpoint=checkpoint, trial=trial, ignore_keys_for_eval=ignore_keys_for_eval, **kwargs
            )
        finally:
            trainer_logger.removeFilter(quiet)
            self.args.save_total_limit = self.checkpoint_limit
            self.resumed_from = None
        if output.global_step == 0:
            size = len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else "an unknown number of"
            raise ValueError(
                f"The training ran no optimizer step: {size} training examples at per_device_train_batch_size "
                f"{self.args.per_device_train_batch_size}"
                + (" with dataloader_drop_last" if self.args.dataloader_drop_last else "")
                + f", num_train_epochs {self.args.num_train_epochs}, max_steps {self.args.max_steps}. Nothing was "
                "trained; give more training data, a smaller batch or a positive number of epochs or steps."
            )
        return output

    def _loads_strictly_from(self, checkpoint: str | None) -> bool:
        # Strict loading applies to the resumed checkpoint and the best one (written by this run with safetensors).
        return (
            isinstance(unwrap_model(self.model), PreTrainedModel)
            and not self.is_fsdp_enabled
            and not self.is_deepspeed_enabled
            and (checkpoint is None or os.path.isfile(os.path.join(checkpoint, SAFE_WEIGHTS_NAME)))
        )

    def _checkpoint_to_resume(self, resume_from_checkpoint: str | bool | None) -> str | None:
        if resume_from_checkpoint is None or resume_from_checkpoint is False:
            return None
        if resume_from_checkpoint is True:
            checkpoint, skipped = last_complete_checkpoint(self.args.output_dir)
            for folder, problem in skipped:
                logger.warning("Not resuming from %s: %s.", folder, problem)
            if checkpoint is None:
                raise ValueError(f"{self.args.output_dir} holds no complete checkpoint-<step> folder to resume from.")
        else:
            checkpoint = str(resume_from_checkpoint)
        problem = checkpoint_problem(checkpoint)
        if problem is not None:
            raise ValueError(f"Cannot resume from {checkpoint}: {problem}.")
        if not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
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
        name = f"rng_state_{self.args.process_index}.pth" if self.args.world_size > 1 else "rng_state.pth"
        if not os.path.isfile(os.path.join(checkpoint, name)):
            logger.warning(
                "%s has no %s: the run resumes, but from here on its jigsaw masks, dropout and random "
                "augmentation draws differ from those of an uninterrupted run, and so will its final weights.",
                checkpoint,
                name,
            )
        return checkpoint

    # --- saving ---------------------------------------------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """`Trainer.save_model`. When it writes a checkpoint (the Trainer saves the weights first), the weights are
        checked finite and the folder is marked in progress before any file; `CheckpointCallback.on_save` completes
        it. The pickled `training_args.bin` holds no Hub token and the run's own `save_total_limit`."""
        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        if self._is_checkpoint(folder):
            # Weights that are already NaN must not become the checkpoint a later run resumes from.
            self._check_finite(check_weights=True)
            if self.args.should_save:
                start_checkpoint(folder)
        with self._arguments_as_given():
            super().save_model(output_dir, _internal_call=_internal_call)

    def _is_checkpoint(self, folder: Path) -> bool:
        return (
            self.is_in_train
            and folder.name == f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            and os.path.abspath(folder.parent) == os.path.abspath(self.args.output_dir)
        )

    @contextlib.contextmanager
    def _arguments_as_given(self):
        # `training_args.bin` pickles the arguments: keep Hub tokens out of it (`training_args.json` masks them too),
        # and record the save_total_limit the run was given, not the None that keeps the Trainer from rotating.
        tokens = {name: value for name, value in vars(self.args).items() if name.endswith("_token") and value}
        limit = self.args.save_total_limit
        for name in tokens:
            setattr(self.args, name, None)
        if self.is_in_train:
            self.args.save_total_limit = self.checkpoint_limit
        try:
            yield
        finally:
            for name, value in tokens.items():
                setattr(self.args, name, value)
            self.args.save_total_limit = limit

    # --- evaluation ---------------------------------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """`Trainer.evaluate`, leaving the random state as it found it: an evaluation at the end of an epoch would
        otherwise move the state that the epoch's last checkpoint saved before it, and a run resumed from that
        checkpoint would end with other weights (docs/UPSTREAM_ISSUES.md, issue 2)."""
        with preserved_rng_state(self.args.device):
            metrics = super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        if eval_dataset is None and metric_key_prefix == "eval":
            self._last_evaluation = (self.state.global_step, dict(metrics))
        return metrics

    def forget_last_evaluation(self) -> None:
        """The weights changed (the best checkpoint was loaded): the last evaluation no longer describes them."""
        self._last_evaluation = None

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
    "MJPTrainer",
    "NON_LOGIT_OUTPUTS",
    "TrainingDivergedError",
    "plot_training_curves",
    "preserved_rng_state",
    "soft_target_cross_entropy",
    "top_k_predictions",
]
