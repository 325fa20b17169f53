"""DP-SGD (Abadi et al. 2016) with the transformers `Trainer`, through Opacus and the Trainer's public methods.

`DPSGDMixin` goes in front of any `Trainer` subclass (`class MyTrainer(DPSGDMixin, MJPTrainer)`; `DPSGDTrainer` is
the mixin on the plain `Trainer`). Given `dp_sgd=DPSGDSettings(noise_multiplier, max_grad_norm)` it trains with:

* **Poisson sampling** (`get_train_dataloader`): every step takes each of the N training examples independently
  with probability q = B / N (B the per-device batch size, the expected batch), N // B steps an epoch, as Opacus'
  `UniformWithReplacementSampler`. Batch t of epoch e is a function of `(seed, e, t)` alone, so a resumed run draws
  the batches the uninterrupted one drew. An empty batch is a step of noise alone, as in Opacus.
* **per-example gradients** (`train`): Opacus' `GradSampleHooks` attach to the model itself, no wrapper around it,
  so the Trainer, its checkpoints and `save_model` keep handling the plain transformers model; the hooks are removed
  when `train` returns. `grad_sample_mode="hooks"` uses Opacus' per-layer rules (functorch for layers without one,
  e.g. the ViT embeddings that own the [CLS] token and position embeddings); `"functorch"` uses functorch for all.
* **clipping and noise** (`create_optimizer`): the Trainer's optimizer inside Opacus' `DPOptimizer`, which clips
  every example's gradient to `max_grad_norm`, sums, adds N(0, (σ C)^2) and divides by B before each step. The
  noise generator is keyed to `(noise seed, global step)` (`training_step`), so a resume draws the same noise.
* **accounting** (`DPSGDCallback`): Opacus' RDP accountant is stepped by the optimizer at every step (its
  `attach_step_hook`), its history saved in `trainer_state.json` with every checkpoint and restored on a resume;
  `dp_epsilon` (at δ = 1/N unless set) is logged with the loss and added to the final training metrics
  (`privacy_spent()` gives the whole record).

Refused, with the fix named, before training: the Trainer's own clipping (`max_grad_norm` > 0: it would clip the
batch gradient, which is not DP-SGD, and is overwritten anyway), gradient accumulation (the Trainer would stack
several Poisson batches into one step, which the accountant does not describe), several processes (Opacus' DDP
variant is not hosted here), fp16 (the loss scale would enter the per-example norms; bf16 is fine), gradient
checkpointing and `torch_compile` (the hooks see recomputed or compiled modules), models Opacus cannot give
per-example gradients (modules with buffers, e.g. BatchNorm). The Trainer's `grad_norm` log entry, the norm of the
non-private batch gradient, is dropped from the logs.

The guarantee covers what training releases (the weights, and the logged losses only as far as they are computed on
the same batches: they are not privatised, as in Opacus' own examples). The noise is as secret as its seed
(`keyed_generator`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from .defenses import check_clipping, default_delta, history_epsilon, keyed_generator, require_opacus
from .trainer import MJPTrainer


logger = logging.getLogger(__name__)

GRAD_SAMPLE_MODES = ("hooks", "functorch")
# The batch the data loader hands over when Poisson sampling drew no example.
EMPTY_BATCH_KEY = "mjp_empty_poisson_batch"
POISSON_STREAM = "dp_sgd_poisson_sampling"
NOISE_STREAM = "dp_sgd_noise"


@dataclass(frozen=True)
class DPSGDSettings:
    """DP-SGD's parameters: the noise multiplier σ (noise std σ·C per coordinate of the summed clipped gradients),
    the per-example clipping norm C, δ for the reported ε (None: 1 / N, N the training examples), Opacus' way of
    computing per-example gradients (`"hooks"` or `"functorch"`), and the seed of the noise (None: the run's
    `seed`)."""

    noise_multiplier: float
    max_grad_norm: float
    delta: float | None = None
    grad_sample_mode: str = "hooks"
    noise_seed: int | None = None

    def __post_init__(self):
        max_norm, sigma = check_clipping(
            self.max_grad_norm, self.noise_multiplier, torch.Generator(), names=("max_grad_norm", "noise_multiplier")
        )
        object.__setattr__(self, "max_grad_norm", max_norm)
        object.__setattr__(self, "noise_multiplier", sigma)
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"delta={self.delta!r} must be in (0, 1), or None for 1 / N.")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise ValueError(
                f"grad_sample_mode={self.grad_sample_mode!r} is not supported here: choose one of "
                f"{', '.join(GRAD_SAMPLE_MODES)} (Opacus' 'ew' and 'ghost' modes need their own model wrapper or loss)."
            )


class PoissonBatchSampler(Sampler):
    """Batches of Poisson sampling: each of `num_samples` indices is in a batch with probability `sample_rate`,
    independently, `steps` batches an epoch (default `int(1 / sample_rate)`, as Opacus). Batch `t` of the epoch set by
    `set_epoch` is drawn from a generator keyed to `(seed, epoch, t)`, so it does not depend on what was drawn
    before (a resume that skips batches sees the same ones)."""

    def __init__(self, num_samples: int, sample_rate: float, seed: int, steps: int | None = None):
        if num_samples < 1:
            raise ValueError(f"Poisson sampling needs at least one example; the training set has {num_samples}.")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate={sample_rate!r} must be in (0, 1].")
        self.num_samples = num_samples
        self.sample_rate = float(sample_rate)
        self.seed = int(seed)
        self.steps = int(1 / sample_rate) if steps is None else int(steps)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def batch(self, index: int) -> list[int]:
        """Batch `index` of the current epoch."""
        generator = keyed_generator(self.seed, POISSON_STREAM, self.epoch, index)
        chosen = torch.rand(self.num_samples, generator=generator) < self.sample_rate
        return chosen.nonzero().reshape(-1).tolist()

    def __iter__(self):
        for index in range(self.steps):
            yield self.batch(index)


class _EmptyBatchDataset(torch.utils.data.Dataset):
    """The training set, fetching nothing for an empty batch (a `datasets` transform may not take an empty one)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]

    def __getitems__(self, indices):
        if not indices:
            return []
        getitems = getattr(self.dataset, "__getitems__", None)
        return getitems(indices) if getitems is not None else [self.dataset[index] for index in indices]


class _EmptyBatchCollator:
    """The Trainer's collator, with an empty batch turned into `{EMPTY_BATCH_KEY: tensor(True)}`."""

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, examples):
        if len(examples) == 0:
            return {EMPTY_BATCH_KEY: torch.tensor(True)}
        return self.collate_fn(examples)


class DPSGDCallback(TrainerCallback, ExportableState):
    """Keeps DP-SGD's privacy accounting across checkpoints and clears the per-example gradients after every step.

    `history` is Opacus' RDP accountant history, `[[noise_multiplier, sample_rate, steps], ...]`, stepped by the
    `DPOptimizer` and saved in `trainer_state.json` with every checkpoint (`state`); a resumed run takes it back from
    there when training begins, whether or not `restore_callback_states_from_checkpoint` is set, and refuses a
    checkpoint whose history does not cover its steps (one trained without DP-SGD, say)."""

    def __init__(self):
        self.history: list[list] = []

    @property
    def steps(self) -> int:
        return sum(int(entry[2]) for entry in self.history)

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        """One optimizer step at `(noise_multiplier, sample_rate)`, merged into the last entry when they match (the
        rule of Opacus' `RDPAccountant.step`)."""
        if self.history and self.history[-1][:2] == [noise_multiplier, sample_rate]:
            self.history[-1][2] += 1
        else:
            self.history.append([noise_multiplier, sample_rate, 1])

    def epsilon(self, delta: float) -> float:
        return history_epsilon(self.history, delta)

    def state(self) -> dict:
        return {"args": {}, "attributes": {"history": [list(entry) for entry in self.history]}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[0] if saved else None
        history = [list(entry) for entry in (saved or {}).get("attributes", {}).get("history", [])]
        steps = sum(int(entry[2]) for entry in history)
        if state.global_step == 0:
            self.history = []
        elif saved is None:
            raise ValueError(
                f"The checkpoint resumed from was trained for {state.global_step} steps without DP-SGD (its "
                "trainer_state.json holds no DP-SGD accounting): its weights already carry the training data without "
                "a guarantee, so no ε would be true. Start DP-SGD from the model before that training, or resume "
                "without DP-SGD."
            )
        elif steps != state.global_step:
            raise ValueError(
                f"The checkpoint's DP-SGD accounting covers {steps} steps, but it was saved at step "
                f"{state.global_step}: its trainer_state.json does not belong to its training. Resume from another "
                "checkpoint."
            )
        else:
            self.history = history

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # Opacus keeps each step's per-example gradients on the parameters until zero_grad; the Trainer itself only
        # zeroes the model's gradients.
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)


def _modules_with_buffers(model: torch.nn.Module, limit: int = 4) -> str:
    """`name (Class: buffer, ...)` for the modules with their own trainable parameters that hold buffers."""
    from opacus.utils.module_utils import trainable_modules

    found = [
        f"{name or type(module).__name__} ({type(module).__name__}: {', '.join(n for n, _ in module.named_buffers())})"
        for name, module in trainable_modules(model)
        if any(True for _ in module.buffers())
    ]
    return "; ".join(found[:limit]) + (f"; ... ({len(found)} in all)" if len(found) > limit else "")


class DPSGDMixin:
    """DP-SGD training for a `Trainer` subclass; put it first: `class T(DPSGDMixin, MJPTrainer)`. Takes
    `dp_sgd=DPSGDSettings(...)`; see the module's docstring for what it changes and refuses."""

    def __init__(self, *args, dp_sgd: DPSGDSettings, **kwargs):
        require_opacus()
        if not isinstance(dp_sgd, DPSGDSettings):
            raise TypeError(f"dp_sgd must be a DPSGDSettings, not {type(dp_sgd).__name__}.")
        super().__init__(*args, **kwargs)
        self.dp_sgd = dp_sgd
        self._check_dp_sgd_setup()
        if not any(isinstance(callback, DPSGDCallback) for callback in self.callback_handler.callbacks):
            self.add_callback(DPSGDCallback())

    # --- what DP-SGD cannot share the run with -------------------------------------------------------------------

    def _check_dp_sgd_setup(self) -> None:
        from opacus.grad_sample import GradSampleHooks

        args = self.args
        problems = []
        if args.max_grad_norm and args.max_grad_norm > 0:
            problems.append(
                f"the Trainer's own clipping of the batch gradient (max_grad_norm={args.max_grad_norm}) is not part of "
                f"DP-SGD, which clips every example's gradient at {self.dp_sgd.max_grad_norm}: set max_grad_norm=0 "
                "(--max_grad_norm 0)"
            )
        if args.gradient_accumulation_steps != 1:
            problems.append(
                f"gradient_accumulation_steps={args.gradient_accumulation_steps} would make one step of several "
                "Poisson batches, which the accountant does not describe: set it to 1 and raise "
                "per_device_train_batch_size instead"
            )
        if args.auto_find_batch_size:
            problems.append(
                "auto_find_batch_size would change the batch, and with it the sampling rate the accounting uses: "
                "turn it off and set per_device_train_batch_size"
            )
        if (
            args.world_size > 1
            or args.n_gpu > 1
            or getattr(self, "is_deepspeed_enabled", False)
            or getattr(self, "is_fsdp_enabled", False)
        ):
            problems.append(
                f"training in {args.world_size} processes on {args.n_gpu} device(s) (or with DeepSpeed/FSDP) needs "
                "Opacus' distributed optimizer and sampler, which this trainer does not host: train in one process "
                "on one device"
            )
        if args.fp16:
            problems.append("fp16 scales the loss, and with it every per-example norm: use bf16 or fp32")
        # transformers 5.24 renamed gradient_checkpointing to activation_checkpointing (the old name mirrors it).
        if getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing:
            problems.append("gradient checkpointing recomputes activations under Opacus' hooks: turn it off")
        if args.torch_compile:
            problems.append("a compiled model hides its layers from Opacus' hooks: turn torch_compile off")
        if self.train_dataset is not None and not hasattr(self.train_dataset, "__len__"):
            problems.append("Poisson sampling needs a training set with a length (not an IterableDataset)")
        if GradSampleHooks.validate(self.model, strict=False):
            problems.append(
                "Opacus cannot compute per-example gradients for this model: it refuses trainable modules that hold "
                "buffers (state per-example clipping does not cover, such as BatchNorm's running statistics), and "
                f"this model has {_modules_with_buffers(self.model)}"
            )
        if problems:
            raise ValueError("DP-SGD cannot run this training: " + "; ".join(problems) + ".")

    # --- sampling, per-example gradients, clipping and noise -----------------------------------------------------

    def _dp_num_samples(self) -> int:
        return len(self.train_dataset)

    def dp_sample_rate(self) -> float:
        """q = B / N: the per-device batch size over the number of training examples."""
        num_samples = self._dp_num_samples()
        batch_size = self.args.per_device_train_batch_size
        if batch_size > num_samples:
            raise ValueError(
                f"per_device_train_batch_size={batch_size} exceeds the {num_samples} training examples: Poisson "
                "sampling needs a rate B / N <= 1. Lower the batch size."
            )
        return batch_size / num_samples

    def dp_delta(self) -> float:
        return self.dp_sgd.delta if self.dp_sgd.delta is not None else default_delta(self._dp_num_samples())

    def get_train_dataloader(self) -> DataLoader:
        # The Trainer's loader tells the dataset after column removal, the collator and the worker settings.
        base = super().get_train_dataloader()
        num_samples = len(base.dataset)
        sampler = PoissonBatchSampler(
            num_samples,
            self.dp_sample_rate(),
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            steps=num_samples // self.args.per_device_train_batch_size,
        )
        loader = DataLoader(
            _EmptyBatchDataset(base.dataset),
            batch_sampler=sampler,
            collate_fn=_EmptyBatchCollator(base.collate_fn),
            num_workers=base.num_workers,
            pin_memory=base.pin_memory,
            worker_init_fn=base.worker_init_fn,
            persistent_workers=base.persistent_workers if base.num_workers > 0 else False,
            prefetch_factor=base.prefetch_factor,
            multiprocessing_context=base.multiprocessing_context,
        )
        return self.accelerator.prepare(loader)

    def create_optimizer(self, model=None):
        from opacus.optimizers import DPOptimizer

        optimizer = super().create_optimizer(model)
        if isinstance(optimizer, DPOptimizer) or isinstance(getattr(optimizer, "optimizer", None), DPOptimizer):
            return optimizer  # a second `train()` call: already wrapped
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=self.dp_sgd.noise_multiplier,
            max_grad_norm=self.dp_sgd.max_grad_norm,
            expected_batch_size=self.args.per_device_train_batch_size,
            loss_reduction="mean",
        )
        self.optimizer.attach_step_hook(self._account_dp_step)
        return self.optimizer

    def _account_dp_step(self, optimizer) -> None:
        if optimizer.accumulated_iterations != 1:  # refused at construction; a guard against a silent miscount
            raise RuntimeError(
                f"A DP-SGD step accumulated {optimizer.accumulated_iterations} batches; the accounting assumes one."
            )
        self.dp_sgd_callback().step(self.dp_sgd.noise_multiplier, self.dp_sample_rate())

    def _dp_optimizer(self):
        from opacus.optimizers import DPOptimizer

        optimizer = self.optimizer
        while not isinstance(optimizer, DPOptimizer):
            optimizer = optimizer.optimizer  # accelerate's AcceleratedOptimizer holds it as `.optimizer`
        return optimizer

    def dp_sgd_callback(self) -> DPSGDCallback:
        found = [callback for callback in self.callback_handler.callbacks if isinstance(callback, DPSGDCallback)]
        if len(found) != 1:
            raise RuntimeError(f"A DP-SGD trainer needs exactly one DPSGDCallback; it has {len(found)}.")
        return found[0]

    def train(self, *args, **kwargs):
        from opacus.grad_sample import GradSampleHooks

        hooks = GradSampleHooks(
            self.model,
            batch_first=True,
            loss_reduction="mean",
            strict=True,
            force_functorch=self.dp_sgd.grad_sample_mode == "functorch",
        )
        try:
            return super().train(*args, **kwargs)
        finally:
            hooks.cleanup()

    def training_step(self, model, inputs, num_items_in_batch=None):
        parameters = [parameter for parameter in self.model.parameters() if parameter.requires_grad]
        noise_seed = self.dp_sgd.noise_seed if self.dp_sgd.noise_seed is not None else self.args.seed
        self._dp_optimizer().generator = keyed_generator(
            noise_seed, NOISE_STREAM, self.state.global_step, device=parameters[0].device
        )
        if EMPTY_BATCH_KEY in inputs:
            # Poisson sampling drew no example: the step is the noise alone (Opacus does the same).
            for parameter in parameters:
                parameter.grad_sample = parameter.new_zeros((0, *parameter.shape))
            return torch.zeros((), device=self.args.device)
        return super().training_step(model, inputs, num_items_in_batch)

    # --- what the run reports -------------------------------------------------------------------------------------

    def privacy_spent(self) -> dict:
        """The DP-SGD record of the run so far: ε at δ, σ, C, q, steps and the accountant."""
        callback = self.dp_sgd_callback()
        delta = self.dp_delta()
        return {
            "dp_epsilon": callback.epsilon(delta),
            "dp_delta": delta,
            "dp_noise_multiplier": self.dp_sgd.noise_multiplier,
            "dp_max_grad_norm": self.dp_sgd.max_grad_norm,
            "dp_sample_rate": self.dp_sample_rate(),
            "dp_steps": callback.steps,
            "dp_accountant": "rdp",
        }

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # The norm of the non-private batch gradient, which DP-SGD never releases.
        logs.pop("grad_norm", None)
        if "loss" in logs or "train_loss" in logs:
            logs["dp_epsilon"] = self.dp_sgd_callback().epsilon(self.dp_delta())
        super().log(logs, start_time)


class DPSGDTrainer(DPSGDMixin, Trainer):
    """The transformers `Trainer` with DP-SGD (`dp_sgd=DPSGDSettings(...)`)."""


class MJPDPSGDTrainer(DPSGDMixin, MJPTrainer):
    """`MJPTrainer` with DP-SGD (`dp_sgd=DPSGDSettings(...)`): the trainer of `examples/run_image_classification.py`
    under `--dp_noise_multiplier`.

    With noise multiplier 0 (per-example clipping without noise) ε is infinite, which JSON cannot hold (Python
    writes `Infinity`): the log history and `privacy_record` give `null` there, the record with a note."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(logs, start_time)
        entry = self.state.log_history[-1] if self.state.log_history else {}
        if entry.get("dp_epsilon") == math.inf:
            entry["dp_epsilon"] = None

    def privacy_record(self) -> dict:
        """`privacy_spent()` as a run records it (`all_results.json`, the card): JSON values only."""
        record = self.privacy_spent()
        if not math.isfinite(record["dp_epsilon"]):
            record["dp_epsilon"] = None
            record["dp_epsilon_note"] = (
                "noise multiplier 0: every example's gradient is clipped but no noise is added, so there is no "
                "privacy guarantee (epsilon is infinite)"
            )
        return record


__all__ = [
    "DPSGDCallback",
    "DPSGDMixin",
    "DPSGDSettings",
    "DPSGDTrainer",
    "EMPTY_BATCH_KEY",
    "GRAD_SAMPLE_MODES",
    "MJPDPSGDTrainer",
    "PoissonBatchSampler",
]
