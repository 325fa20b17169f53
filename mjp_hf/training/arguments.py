"""The flags of a training command line (`examples/run_image_classification.py`): which ones a command line gives
(`given_flags`), the range of every numeric one (`FLAG_RANGES`, checked by `check_flag_ranges` before any argument
dataclass is built, on the command line and in a `.json` recipe alike), and which of transformers'
`TrainingArguments` change the weights a run trains (`TRAINING_ARGUMENTS`, compared on a resume)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields
from functools import partial

from ..utils import in_range


_NOT_GIVEN = object()


def given_flags(dataclass_types: Iterable[type], argv: list[str]) -> dict:
    """The flags present on `argv`, parsed by `HfArgumentParser(dataclass_types)` as a run would parse them
    (`--no_name` gives `name=False`, argparse's unambiguous prefixes count), and nothing else: every default is a
    marker that no value can equal, dropped afterwards. Unknown flags and `--help` are left for the real parse."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(list(dataclass_types), add_help=False)
    parser.set_defaults(**{f.name: _NOT_GIVEN for cls in dataclass_types for f in fields(cls) if f.init})
    namespace, _ = parser.parse_known_args(argv)
    return {name: value for name, value in vars(namespace).items() if value is not _NOT_GIVEN}


# --- ranges ---------------------------------------------------------------------------------------------------------


def _whole(minimum: int, maximum: int | None = None) -> Callable:
    return partial(in_range, kind=int, minimum=minimum, maximum=maximum)


def _number(minimum: float | None = None, maximum: float | None = None, **open_ends) -> Callable:
    return partial(in_range, minimum=minimum, maximum=maximum, **open_ends)


def _steps(minimum: float, exclusive_minimum: bool) -> Callable:
    # transformers: a number of steps, or below 1 a fraction of the training steps.
    def accepts(value) -> bool:
        return in_range(value, minimum=minimum, exclusive_minimum=exclusive_minimum) and (
            value < 1 or value == int(value)
        )

    return accepts


_POSITIVE = (_number(0, exclusive_minimum=True), "a number > 0")
_AT_LEAST_ONE = (_whole(1), "a whole number >= 1")
_BETA = (_number(0, 1, exclusive_maximum=True), "a number in [0, 1)")
_PROBABILITY = (_number(0, 1), "a probability in [0, 1]")
_STEPS = (_steps(0, True), "a whole number of steps >= 1, or a fraction in (0, 1) of the training steps")
_SEED = (_whole(0, 2**32 - 1), "a whole number in [0, 2**32 - 1]")
_NO_TRAINING = "to only evaluate a --model_name_or_path, pass --do_train false"

# `{flag: (accepts(value) -> bool, what to pass)}`: the numeric flags of TrainingArguments and of the example's own
# argument dataclasses. A value that is None (an optional flag left out) is not checked.
FLAG_RANGES: dict[str, tuple[Callable, str]] = {
    "per_device_train_batch_size": _AT_LEAST_ONE,
    "per_device_eval_batch_size": _AT_LEAST_ONE,
    "gradient_accumulation_steps": _AT_LEAST_ONE,
    "eval_accumulation_steps": _AT_LEAST_ONE,
    "num_train_epochs": (
        _number(0, exclusive_minimum=True),
        f"a number of epochs > 0 (nothing would be trained; {_NO_TRAINING})",
    ),
    "max_steps": (
        lambda value: value == -1 or in_range(value, int, minimum=1),
        "a whole number of steps >= 1, or -1 (the default) to train for --num_train_epochs (0 would train "
        f"nothing; {_NO_TRAINING})",
    ),
    "learning_rate": (_number(0, exclusive_minimum=True), "a learning rate > 0"),
    "weight_decay": (_number(0), "a weight decay >= 0"),
    "adam_beta1": _BETA,
    "adam_beta2": _BETA,
    "adam_epsilon": _POSITIVE,
    "max_grad_norm": (_number(0), "a norm >= 0 (0 turns clipping off)"),
    "warmup_steps": (
        _steps(0, False),
        "a whole number of steps >= 0, or a fraction in [0, 1) of the training steps",
    ),
    "label_smoothing_factor": _BETA,
    "logging_steps": _STEPS,
    "save_steps": _STEPS,
    "eval_steps": _STEPS,
    "eval_delay": (_number(0), "a number >= 0"),
    "save_total_limit": (_whole(1), "a whole number >= 1 of checkpoints to keep (leave it out to keep all)"),
    "seed": _SEED,
    "data_seed": _SEED,
    "dataloader_num_workers": (_whole(0), "a whole number >= 0 (0 loads in the main process)"),
    "dataloader_prefetch_factor": _AT_LEAST_ONE,
    # The example's data flags.
    "max_train_samples": (_whole(1), "a whole number of examples >= 1 (leave it out to train on all)"),
    "max_eval_samples": (_whole(1), "a whole number of examples >= 1 (leave it out to evaluate on all)"),
    "train_val_split": (_number(0, 1, exclusive_minimum=True, exclusive_maximum=True), "a fraction in (0, 1)"),
    "crop_min_scale": (_number(0, 1, exclusive_minimum=True), "an area fraction in (0, 1] (0.08 as torchvision)"),
    "random_erasing_prob": _PROBABILITY,
    "mixup_switch_prob": _PROBABILITY,
    "mixup_alpha": (_number(0), "a Beta parameter >= 0 (0 turns it off)"),
    "cutmix_alpha": (_number(0), "a Beta parameter >= 0 (0 turns it off)"),
    # The example's MJP schedule (the MJP config fields are checked by the config itself).
    "jigsaw_warmup_epochs": (_whole(0), "a whole number of epochs >= 0"),
    # The gradient defences (`DefenseArguments`).
    "dp_noise_multiplier": (_number(0), "a noise multiplier sigma >= 0 (0 clips without noise)"),
    "dp_max_grad_norm": (_number(0, exclusive_minimum=True), "a clipping norm C > 0"),
    "dp_delta": (_number(0, 1, exclusive_minimum=True, exclusive_maximum=True), "a delta in (0, 1)"),
    "dp_noise_seed": _SEED,
    "local_noise_multiplier": (_number(0), "a noise multiplier sigma >= 0 (0 clips without noise)"),
    "local_max_grad_norm": (_number(0, exclusive_minimum=True), "a clipping norm C > 0"),
    "prune_ratio": (_number(0, 1, exclusive_maximum=True), "a share of each gradient tensor in [0, 1)"),
}


def check_flag_ranges(values: Mapping) -> None:
    """Refuse a numeric flag out of its range (`FLAG_RANGES`), naming the flag, the value and what to pass."""
    for name, (accepts, what) in FLAG_RANGES.items():
        value = values.get(name)
        if value is not None and not accepts(value):
            raise ValueError(f"--{name} {value!r}: pass {what}.")


# --- what a resume compares -----------------------------------------------------------------------------------------

# The TrainingArguments that change the weights a run trains: the optimizer and its schedule, the length of the
# training, the batches and their order, the seeds, the precision. Every other argument (where and how often to log,
# save, evaluate or publish; how fast data loads; devices, compilation and launch settings) may differ between a
# checkpoint's run and its resume.
TRAINING_ARGUMENTS = frozenset(
    {
        "learning_rate",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "max_grad_norm",
        "optim",
        "optim_args",
        "optim_target_modules",
        "lr_scheduler_type",
        "lr_scheduler_kwargs",
        "warmup_steps",
        "num_train_epochs",
        "max_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "auto_find_batch_size",
        "train_sampling_strategy",
        "dataloader_drop_last",
        "ignore_data_skip",
        "seed",
        "data_seed",
        "label_smoothing_factor",
        "neftune_noise_alpha",
        "average_tokens_across_devices",
        "bf16",
        "fp16",
        "tf32",
    }
)


__all__ = ["FLAG_RANGES", "TRAINING_ARGUMENTS", "check_flag_ranges", "given_flags"]
