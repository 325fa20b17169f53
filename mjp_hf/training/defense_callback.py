"""Local noise or gradient pruning in training: `GradientDefenseCallback` applies a `Defense` to the gradient the
optimizer is about to use, at every optimizer step (DP-SGD, which needs per-example gradients, is `dp_sgd`).

Where it sits in the Trainer's step (transformers 5.20 to 5.24): backward over the accumulated micro-batches; the
Trainer's own clipping to `max_grad_norm` (when > 0) and its `grad_norm` log entry (the norm before that clipping);
then `on_pre_optimizer_step`, where this callback clips to the defence's C and adds its noise, or prunes; then the
optimizer step. So the Trainer's clipping comes first: local noise is never shrunk by it, and a pruned gradient's norm
stays within `max_grad_norm`. Under fp16 the gradients are already unscaled there (the Trainer's norm computation
unscales them).

The noise generator is keyed to `(seed, kind, global step)`: a resumed run adds the noise the uninterrupted one
did, and every process of a multi-process run adds the same noise to the same averaged gradient.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from .defenses import Defense, keyed_generator


TRAINING_KINDS = ("local_noise", "prune")


class GradientDefenseCallback(TrainerCallback):
    """Applies `defense` (kind `local_noise` or `prune`) to the model's gradients before every optimizer step, as
    one update: local noise clips the global norm over all parameters with a gradient. `seed` keys the noise (None:
    the run's `seed`)."""

    def __init__(self, defense: Defense, seed: int | None = None):
        if not isinstance(defense, Defense) or defense.kind not in TRAINING_KINDS:
            kind = getattr(defense, "kind", type(defense).__name__)
            hint = (
                " (DP-SGD clips every example: train with mjp_hf.training.dp_sgd.DPSGDMixin)"
                if kind == "dp_sgd"
                else ""
            )
            raise ValueError(
                f"GradientDefenseCallback applies a Defense of kind {' or '.join(TRAINING_KINDS)}, not {kind!r}{hint}."
            )
        self.defense = defense
        self.seed = seed

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        inner = optimizer
        while inner is not None and type(inner).__name__ != "DPOptimizer":
            inner = getattr(inner, "optimizer", None)
        if inner is not None:
            raise ValueError(
                f"{self.defense.describe()} would be applied to the non-private batch gradient and then overwritten "
                "by DP-SGD's own clipping and noise: use one or the other."
            )

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.grad is not None]
        if not named:
            return
        generator = None
        if self.defense.kind == "local_noise":
            seed = self.seed if self.seed is not None else args.seed
            generator = keyed_generator(seed, self.defense.kind, state.global_step, device=named[0][1].grad.device)
        defended = self.defense.apply({name: parameter.grad for name, parameter in named}, generator=generator)
        with torch.no_grad():
            for name, parameter in named:
                parameter.grad.copy_(defended[name])


__all__ = ["GradientDefenseCallback", "TRAINING_KINDS"]
