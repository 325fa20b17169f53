"""The command-line flags of a gradient defence in training (`DefenseArguments`, an argument dataclass for
`HfArgumentParser`): DP-SGD through Opacus (`dp_sgd`), or local noise or pruning of every step's gradient
(`defense_callback`). They build one `defenses.Defense`, and are refused at parse time, flag by flag, when they cannot
work: a setting of a defence that is off, two defences at once, and what DP-SGD cannot share a run with."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .defenses import Defense


# The flags that set a defence's details, each with the flag that turns that defence on.
_NEEDS = {
    "dp_max_grad_norm": "dp_noise_multiplier",
    "dp_delta": "dp_noise_multiplier",
    "dp_grad_sample_mode": "dp_noise_multiplier",
    "dp_noise_seed": "dp_noise_multiplier",
    "local_max_grad_norm": "local_noise_multiplier",
}
_SWITCHES = ("dp_noise_multiplier", "local_noise_multiplier", "prune_ratio")
DEFAULT_MAX_GRAD_NORM = 1.0


def _or_default(max_grad_norm: float | None) -> float:
    return DEFAULT_MAX_GRAD_NORM if max_grad_norm is None else max_grad_norm


@dataclass
class DefenseArguments:
    """A gradient defence in training, one at most (none by default). Under local noise or pruning the model
    trained is the defended one, as a federated client defending its updates would train it; that is what measures
    the defence's accuracy cost.

    Defaults: `dp_max_grad_norm` and `local_max_grad_norm` 1.0, `dp_delta` 1/N (N the training examples),
    `dp_grad_sample_mode` "hooks" (Opacus' per-layer rules), `dp_noise_seed` the run's `--seed`. Under DP-SGD the
    Trainer's own clipping (`--max_grad_norm`) is off."""

    dp_noise_multiplier: float | None = field(
        default=None,
        metadata={
            "help": "Train with DP-SGD (Opacus): every example's gradient clipped to --dp_max_grad_norm C, Gaussian "
            "noise of std sigma*C added to their sum, Poisson sampling; epsilon is recorded. This is sigma (0: clipping "
            "without noise, no guarantee)."
        },
    )
    dp_max_grad_norm: float | None = field(
        default=None, metadata={"help": "DP-SGD's per-example clipping norm C (default: see DefenseArguments)."}
    )
    dp_delta: float | None = field(
        default=None, metadata={"help": "The delta of the recorded epsilon (default: 1/N)."}
    )
    dp_grad_sample_mode: Literal["hooks", "functorch"] | None = field(
        default=None, metadata={"help": "How Opacus computes per-example gradients (default: hooks)."}
    )
    dp_noise_seed: int | None = field(
        default=None, metadata={"help": "Seed of DP-SGD's noise; keep it secret (default: --seed)."}
    )
    local_noise_multiplier: float | None = field(
        default=None,
        metadata={
            "help": "Train with local noise: each step's gradient clipped to --local_max_grad_norm C, then Gaussian "
            "noise of std sigma*C added (Flower's LocalDpMod). This is sigma."
        },
    )
    local_max_grad_norm: float | None = field(
        default=None, metadata={"help": "Local noise's clipping norm C (default: see DefenseArguments)."}
    )
    prune_ratio: float | None = field(
        default=None,
        metadata={"help": "Train with gradient pruning: this share of each gradient tensor zeroed at every step."},
    )

    def __post_init__(self):
        for flag, switch in _NEEDS.items():
            if getattr(self, flag) is not None and getattr(self, switch) is None:
                raise ValueError(
                    f"--{flag} {getattr(self, flag)} sets a defence that is off: pass --{switch} too, or drop --{flag}."
                )
        on = [flag for flag in _SWITCHES if getattr(self, flag) is not None]
        if len(on) > 1:
            raise ValueError(f"--{on[0]} and --{on[1]} are two defences; a run trains with one: drop one of them.")
        self.defense()  # the defence's own checks

    def defense(self) -> Defense:
        """The `Defense` these flags turn on (`Defense()`, kind "none", without any)."""
        if self.dp_noise_multiplier is not None:
            return Defense("dp_sgd", self.dp_noise_multiplier, _or_default(self.dp_max_grad_norm))
        if self.local_noise_multiplier is not None:
            return Defense("local_noise", self.local_noise_multiplier, _or_default(self.local_max_grad_norm))
        if self.prune_ratio is not None:
            return Defense("prune", prune_ratio=self.prune_ratio)
        return Defense()

    def dp_sgd_settings(self):
        """The `DPSGDSettings` of a DP-SGD run, or None."""
        if self.dp_noise_multiplier is None:
            return None
        from .dp_sgd import DPSGDSettings

        return DPSGDSettings(
            self.dp_noise_multiplier,
            _or_default(self.dp_max_grad_norm),
            delta=self.dp_delta,
            grad_sample_mode=self.dp_grad_sample_mode or "hooks",
            noise_seed=self.dp_noise_seed,
        )

    def trainer_class(self) -> tuple[type, dict]:
        """`(trainer class, its extra keyword arguments)`: `MJPDPSGDTrainer` with the `DPSGDSettings` under DP-SGD,
        else `MJPTrainer`."""
        if self.dp_noise_multiplier is not None:
            from .dp_sgd import MJPDPSGDTrainer

            return MJPDPSGDTrainer, {"dp_sgd": self.dp_sgd_settings()}
        from .trainer import MJPTrainer

        return MJPTrainer, {}

    def callbacks(self) -> list:
        """The callback that defends every step's gradient under local noise or pruning (none otherwise)."""
        if self.local_noise_multiplier is None and self.prune_ratio is None:
            return []
        from .defense_callback import GradientDefenseCallback

        return [GradientDefenseCallback(self.defense())]

    def record(self, trainer) -> dict:
        """What a trained run records of its defence (`all_results.json`, the card): `{"defense": {...}}` and, under
        DP-SGD, the trainer's `privacy_record()` (ε, δ, σ, C, sample rate, steps); nothing without a defence."""
        defense = self.defense()
        if defense.kind == "none":
            return {}
        return {"defense": defense.to_dict(), **(trainer.privacy_record() if defense.kind == "dp_sgd" else {})}

    def check_run(self, training_args, given: Mapping, mixes_examples: bool) -> None:
        """Refuse, at parse time, what the defence cannot share the run with: no training at all, and under DP-SGD
        the Trainer's own clipping when the command line sets it (`given`), gradient accumulation, and Mixup/CutMix
        (`mixes_examples`). The trainer refuses the rest before training (`DPSGDMixin`)."""
        flag = next((flag for flag in _SWITCHES if getattr(self, flag) is not None), None)
        if flag is None:
            return
        if not training_args.do_train:
            raise ValueError(f"--{flag} is a defence in training; this run does not train (--do_train false).")
        if flag != "dp_noise_multiplier":
            return
        if given.get("max_grad_norm"):
            raise ValueError(
                f"--max_grad_norm {given['max_grad_norm']} clips the batch gradient, which is not part of DP-SGD "
                "(it clips every example's gradient at --dp_max_grad_norm): drop --max_grad_norm, which is 0 under "
                "DP-SGD."
            )
        if training_args.gradient_accumulation_steps != 1:
            raise ValueError(
                f"--gradient_accumulation_steps {training_args.gradient_accumulation_steps} would make one DP-SGD "
                "step of several Poisson batches, which the privacy accounting does not describe: drop it and raise "
                "--per_device_train_batch_size instead."
            )
        if mixes_examples:
            raise ValueError(
                "--mixup_alpha/--cutmix_alpha mix the examples of a batch, so one example's gradient would carry "
                "others' and per-example clipping would no longer bound its influence: drop them under DP-SGD."
            )


__all__ = ["DefenseArguments"]
