#!/usr/bin/env python
"""Train or fine-tune an MJP-ViT image classifier with the transformers `Trainer`.

A drop-in for transformers' `examples/pytorch/image-classification/run_image_classification.py`: the same data,
model and `TrainingArguments` flags (or one `.json` file holding them), plus the Masked Jigsaw Puzzle flags (Ren et
al., CVPR 2023), which override the fields of the same name in the model config:

    --jigsaw_ratio --jigsaw_prob --jigsaw_min_block --jigsaw_max_block --jigsaw_per_sample --jigsaw_mode
    --use_unk_position_embedding --dalr_head --dalr_loss_weight --dalr_normalize_targets
    --jigsaw_warmup_epochs (released schedule: no jigsaw and a rising DALR weight for the first epochs)

`--model_name_or_path` may be a stock ViT checkpoint (fine-tuned with MJP), an MJP-ViT checkpoint (it keeps its own
MJP settings unless flags are passed), or absent: a from-scratch MJP-ViT of `--preset` (tiny/small/base, the DeiT
shapes, or the CPU-sized `demo`, the default) with `--config_overrides "key=value,..."`.

With no arguments at all it trains the demo preset on Fashion-MNIST, read offline from Debian's
`dataset-fashion-mnist` package, in about five minutes on a 2-core CPU, and writes a fresh `runs/...` folder.
A plain-ViT baseline is `--jigsaw_prob 0 --dalr_head none`; the naive-shuffle ablation is `--jigsaw_mode naive`.
See docs/TRAINING.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import datasets
import torch
import transformers
from datasets import ClassLabel, DatasetDict, load_dataset
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from safetensors import safe_open
from transformers import AutoConfig, AutoImageProcessor, HfArgumentParser, TrainingArguments, ViTImageProcessorPil
from transformers.hf_argparser import string_to_bool
from transformers.utils import (
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    is_torch_bf16_gpu_available,
)

from mjp_hf import MJPViTConfig, MJPViTForImageClassification
from mjp_hf.configuration_mjp_vit import MJP_CONFIG_FIELDS, MJPConfigError
from mjp_hf.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_HUB_ID,
    INSTALL_HINT,
    fashion_mnist_available,
    load_fashion_mnist,
    with_sample_index,
    without_image_decoding,
)
from mjp_hf.data.mixup import MixupCutmixCollator
from mjp_hf.data.rand_augment import parse_rand_augment
from mjp_hf.data.transforms import ImageClassificationTransform, collate_image_classification, processor_image_size
from mjp_hf.evaluation.metrics import load_accuracy_topk
from mjp_hf.modeling_mjp_vit import is_mjp_only_parameter
from mjp_hf.training import (
    MJPScheduleCallback,
    MJPTrainer,
    PerProcessSeedCallback,
    TransformEpochCallback,
    open_run_folder,
    plot_training_curves,
    top_k_predictions,
)
from mjp_hf.training.presets import PRESETS, config_from_preset
from mjp_hf.training.run_folder import CARD_NAME, Resume, check_output_location
from mjp_hf.training.threads import AdaptiveThreadsCallback, adaptive_threads


logger = logging.getLogger(__name__)

DEFAULT_PRESET = "demo"
RELEASED_JIGSAW_WARMUP_EPOCHS = 20
# What the demo preset trains with unless a flag says otherwise: Fashion-MNIST to >= 85% test accuracy on 2 CPU
# cores within a four-minute budget (the README gives the measured run). At this length the model underfits, so
# augmentation only slows it down: five epochs without flips (benchmarks/README.md compares the schedules). The
# released 20-of-300 jigsaw warmup epochs become 1 of 5.
DEMO_DEFAULTS = {
    "num_train_epochs": 5,
    "per_device_train_batch_size": 128,
    "per_device_eval_batch_size": 500,
    "learning_rate": 2e-3,
    "weight_decay": 0.05,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.05,
    "max_grad_norm": 5.0,
    "eval_strategy": "epoch",
    "save_strategy": "steps",
    "save_steps": 200,
    "save_total_limit": 2,
    "logging_steps": 50,
    "jigsaw_warmup_epochs": 1,
    "crop_min_scale": 1.0,
    "random_flip": False,
}
SAMPLE_INDEX_COLUMN = "mjp_sample_index"
# Model outputs that the model card publishes as results.
TOP_K = (1, 5)


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on (the flags of transformers' image-classification example)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A dataset on the Hub (or a local dataset script/folder). Without it and without "
            "--train_dir, the embedded default: Fashion-MNIST from the local Debian package."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder of training images (class/x.png)."})
    validation_dir: str | None = field(default=None, metadata={"help": "An imagefolder of validation images."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out for evaluation when there is no eval split."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a random subset of this many examples (debugging, quick runs)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Evaluate on the first this many examples (debugging, quick runs)."}
    )
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column holding the labels."})
    crop_min_scale: float = field(
        default=0.08, metadata={"help": "Smallest area fraction of the training random-resized crop (1 = no crop)."}
    )
    random_flip: bool = field(default=True, metadata={"help": "Random horizontal flips in training."})
    rand_augment: str | None = field(
        default=None,
        metadata={"help": "RandAugment as a timm spec, e.g. 'rand-m9-mstd0.5-inc1' (DeiT); off by default."},
    )
    random_erasing_prob: float = field(
        default=0.0, metadata={"help": "Chance of timm-style random erasing per training image (DeiT: 0.25)."}
    )
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup's Beta parameter, 0 = off (DeiT: 0.8)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix's Beta parameter, 0 = off (DeiT: 1.0)."})
    mixup_switch_prob: float = field(
        default=0.5, metadata={"help": "With both on, the chance that a batch is CutMix rather than Mixup."}
    )

    def __post_init__(self):
        if self.dataset_name is not None and (self.train_dir is not None or self.validation_dir is not None):
            raise ValueError("Pass either --dataset_name or --train_dir/--validation_dir, not both.")
        if self.validation_dir is not None and self.train_dir is None:
            raise ValueError("--validation_dir needs --train_dir too.")
        if not 0 < self.train_val_split < 1:
            raise ValueError(f"--train_val_split={self.train_val_split} must be a fraction in (0, 1).")
        if not 0 < self.crop_min_scale <= 1:
            raise ValueError(f"--crop_min_scale={self.crop_min_scale} must be in (0, 1]; 0.08 as torchvision.")
        if self.rand_augment:
            parse_rand_augment(self.rand_augment)  # a bad spec fails here, before any data is read
        for flag in ("random_erasing_prob", "mixup_switch_prob"):
            if not 0 <= getattr(self, flag) <= 1:
                raise ValueError(f"--{flag}={getattr(self, flag)} is a probability: give a value in [0, 1].")
        for flag in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, flag) < 0:
                raise ValueError(f"--{flag}={getattr(self, flag)} must be >= 0 (0 turns it off).")


@dataclass
class ModelArguments:
    """Which model to start from (the flags of transformers' image-classification example, plus presets)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A stock ViT or an MJP-ViT checkpoint (Hub id or folder). Without it an MJP-ViT is built "
            "from scratch from --preset."
        },
    )
    preset: str | None = field(
        default=None,
        metadata={"help": f"From-scratch shape: one of {sorted(PRESETS)}."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Override config fields: 'key=value,key=value', e.g. 'hidden_dropout_prob=0.1,image_size=32'."
        },
    )
    config_name: str | None = field(default=None, metadata={"help": "A config to build a from-scratch model from."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache downloaded models and data."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    image_processor_name: str | None = field(default=None, metadata={"help": "Image processor name or path."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models and datasets."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow datasets/models with custom code."})
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Re-initialise checkpoint weights whose shape differs (a new label set, image size)."},
    )

    def __post_init__(self):
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"Unknown --preset {self.preset!r}; choose one of {sorted(PRESETS)}.")
        if self.preset is not None and (self.model_name_or_path or self.config_name):
            raise ValueError(
                "--preset builds a model from scratch; drop it, or drop --model_name_or_path/--config_name."
            )


@dataclass
class MJPArguments:
    """Masked Jigsaw Puzzle settings. Each flag overrides the config field of the same name; flags left out keep the
    preset's or the checkpoint's value."""

    jigsaw_ratio: float | None = field(default=None, metadata={"help": "Fraction of patches shuffled (0.1)."})
    jigsaw_prob: float | None = field(default=None, metadata={"help": "Chance a training step is jigsawed (0.5)."})
    jigsaw_min_block: int | None = field(default=None, metadata={"help": "Smallest block area in patches (8)."})
    jigsaw_max_block: int | None = field(default=None, metadata={"help": "Largest block area (75 on 14x14, scaled)."})
    jigsaw_per_sample: bool | None = field(
        default=None, metadata={"help": "One mask per sample (released: per batch)."}
    )
    jigsaw_mode: str | None = field(default=None, metadata={"help": "'mjp' or 'naive' (the naive-shuffle ablation)."})
    use_unk_position_embedding: bool | None = field(
        default=None, metadata={"help": "Give shuffled patches the unknown position embedding (True)."}
    )
    dalr_head: str | None = field(default=None, metadata={"help": "'nonlinear', 'linear' or 'none'."})
    dalr_loss_weight: float | None = field(default=None, metadata={"help": "Weight of the DALR loss (0.01)."})
    dalr_normalize_targets: bool | None = field(default=None, metadata={"help": "Regress (row, col) / grid (False)."})
    jigsaw_warmup_epochs: int | None = field(
        default=None,
        metadata={
            "help": f"Epochs without jigsaw while the DALR weight rises from 0 (released: "
            f"{RELEASED_JIGSAW_WARMUP_EPOCHS}; the demo preset: {DEMO_DEFAULTS['jigsaw_warmup_epochs']})."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in a used --output_dir: deletes the files an earlier run of this script wrote "
            "there (in checkpoint-<step> folders, weights, config, results, card, curves), nothing else."
        },
    )
    allow_changed_flags: bool = field(
        default=False,
        metadata={
            "help": "Resume a checkpoint even though some flags differ from those of the run that wrote it; "
            "the model card then lists the changes."
        },
    )

    def __post_init__(self):
        if self.jigsaw_warmup_epochs is not None and (
            isinstance(self.jigsaw_warmup_epochs, bool) or self.jigsaw_warmup_epochs < 0
        ):
            raise ValueError(
                f"--jigsaw_warmup_epochs {self.jigsaw_warmup_epochs}: pass a whole number of epochs >= 0."
            )
        # The config's own check of each field, at parse time, before any data or model is loaded.
        defaults = MJPViTConfig()
        for name, value in self.config_updates().items():
            try:
                setattr(defaults, name, value)
            except MJPConfigError as error:
                raise ValueError(f"--{name} {value}: {error}") from None

    def config_updates(self) -> dict:
        """The MJP config fields given on the command line."""
        return {name: getattr(self, name) for name in MJP_CONFIG_FIELDS if getattr(self, name, None) is not None}


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, MJPArguments, TrainingArguments)


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------


def _given_flags(argv: list[str]) -> dict:
    """The flags present on a command line, parsed (`--no_name` gives `name=False`): argparse itself, with every
    default suppressed, so that only what the command line sets reaches the namespace."""
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    namespace, _ = parser.parse_known_args(argv)
    return vars(namespace)


def run_kind(model_args: ModelArguments, mjp_args: MJPArguments) -> str:
    """What a run trains, for its folder name: 'vit' (no jigsaw and no DALR head: the plain-ViT baseline), 'naive'
    (the naive-shuffle ablation) or 'mjp'. Flags left out keep the value of the local checkpoint or config started
    from, else of the preset, else the MJP defaults."""
    values = {name: getattr(MJPViTConfig(), name) for name in MJP_CONFIG_FIELDS}
    source = model_args.model_name_or_path or model_args.config_name
    config_file = Path(source) / "config.json" if source else None
    if config_file is not None and config_file.is_file():
        saved = json.loads(config_file.read_text(encoding="utf-8"))
        if saved.get("model_type") == MJPViTConfig.model_type:
            values.update({name: saved[name] for name in MJP_CONFIG_FIELDS if name in saved})
    elif source is None:
        values.update({k: v for k, v in PRESETS[model_args.preset or DEFAULT_PRESET].items() if k in values})
    for item in (model_args.config_overrides or "").split(","):
        name, _, value = item.partition("=")
        if name.strip() in values and value:
            values[name.strip()] = value.strip()
    values.update(mjp_args.config_updates())
    if str(values["jigsaw_mode"]) == "naive":
        return "naive"
    no_jigsaw = float(values["jigsaw_prob"]) == 0 or float(values["jigsaw_ratio"]) == 0
    return "vit" if no_jigsaw and str(values["dalr_head"]) == "none" else "mjp"


def _default_output_dir(
    model_args: ModelArguments, data_args: DataTrainingArguments, mjp_args: MJPArguments, stamp: str | None = None
) -> str:
    model = model_args.preset or DEFAULT_PRESET
    if model_args.model_name_or_path:
        model = Path(model_args.model_name_or_path.rstrip("/")).name
    data = Path((data_args.dataset_name or data_args.train_dir or "fashion-mnist").rstrip("/")).name
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    name = f"{run_kind(model_args, mjp_args)}-{model}-{data}".replace("_", "-")
    return str(Path("runs") / f"{name}-{stamp}")


def run_defaults(
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    mjp_args: MJPArguments,
    given: dict,
    stamp: str | None = None,
) -> dict:
    """The values a run uses for the flags it was not given: the demo preset's recipe, the CPU's optimizer and
    data loading, training and evaluation on, a fresh output folder. `--help` shows them too."""
    defaults = {}
    if model_args.model_name_or_path is None and model_args.config_name is None:
        if (model_args.preset or DEFAULT_PRESET) == "demo":
            defaults.update(DEMO_DEFAULTS)
    defaults.setdefault("jigsaw_warmup_epochs", RELEASED_JIGSAW_WARMUP_EPOCHS)
    on_cpu = given.get("use_cpu") or not torch.cuda.is_available()
    if "optim" not in given and not torch.cuda.is_available():
        # transformers defaults to the fused AdamW, whose CPU kernel is much slower than the foreach one on a small
        # ViT such as the demo preset.
        defaults["optim"] = "adamw_torch"
    # Pinned memory only speeds up copies to an accelerator; without one, torch warns for every data loader.
    defaults["dataloader_pin_memory"] = not on_cpu and torch.accelerator.is_available()
    if "use_cpu" not in given and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # accelerate sets up a multi-process CPU run (gloo) only when told the run is on CPU; otherwise every
        # process under torchrun would train alone, on the same masks.
        defaults["use_cpu"] = True
    # Each of --do_train and --do_eval means what it says; naming one leaves the other on.
    defaults.update(do_train=True, do_eval=True)
    if "do_eval" in given and not string_to_bool(str(given["do_eval"])):
        # transformers turns --do_eval back on for any evaluation strategy but "no".
        defaults["eval_strategy"] = "no"
    defaults["output_dir"] = _default_output_dir(model_args, data_args, mjp_args, stamp)
    return defaults


def build_parser() -> HfArgumentParser:
    """The flags of the four argument dataclasses; `--help` shows the values a run without flags uses."""
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    shown = run_defaults(ModelArguments(), DataTrainingArguments(), MJPArguments(), {}, stamp="<date>-<time>")
    shown["preset"] = DEFAULT_PRESET
    for action in parser._actions:
        if action.dest in shown and not action.option_strings[0].startswith("--no_"):
            value = shown[action.dest]
            action.default = value
            if action.dest in DEMO_DEFAULTS:
                action.help = (action.help or "") + " (the demo preset's recipe when no model is given)"
    return parser


def _whole(low: int, high: int | None = None, also: tuple = ()):
    def accepts(value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            return False
        return int(value) in also or (low <= value and (high is None or value <= high))

    return accepts


def _number(low: float, high: float | None = None, low_open: bool = False, high_open: bool = False):
    def accepts(value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        above = value > low if low_open else value >= low
        below = high is None or (value < high if high_open else value <= high)
        return above and below

    return accepts


def _steps(value) -> bool:
    # transformers: a number of steps, or below 1 a fraction of the training steps.
    return _number(0, low_open=True)(value) and (value < 1 or value == int(value))


_STEPS = "a whole number of steps >= 1, or a fraction in (0, 1) of the training steps"
# The numeric flags of the four argument classes with their ranges, checked before any dataclass is built.
NUMERIC_FLAGS = {
    "per_device_train_batch_size": (_whole(1), "a whole number >= 1"),
    "per_device_eval_batch_size": (_whole(1), "a whole number >= 1"),
    "gradient_accumulation_steps": (_whole(1), "a whole number >= 1"),
    "eval_accumulation_steps": (_whole(1), "a whole number >= 1"),
    "num_train_epochs": (
        _number(0, low_open=True),
        "a number of epochs > 0 (nothing would be trained; to only evaluate a --model_name_or_path, pass "
        "--do_train false)",
    ),
    "max_steps": (
        _whole(1, also=(-1,)),
        "a whole number of steps >= 1, or -1 (the default) to train for --num_train_epochs (0 would train "
        "nothing; to only evaluate a --model_name_or_path, pass --do_train false)",
    ),
    "learning_rate": (_number(0, low_open=True), "a learning rate > 0"),
    "weight_decay": (_number(0), "a weight decay >= 0"),
    "adam_beta1": (_number(0, 1, high_open=True), "a number in [0, 1)"),
    "adam_beta2": (_number(0, 1, high_open=True), "a number in [0, 1)"),
    "adam_epsilon": (_number(0, low_open=True), "a number > 0"),
    "max_grad_norm": (_number(0), "a norm >= 0 (0 turns clipping off)"),
    "warmup_steps": (
        lambda value: _number(0)(value) and (value < 1 or value == int(value)),
        "a whole number of steps >= 0, or a fraction in [0, 1) of the training steps",
    ),
    "label_smoothing_factor": (_number(0, 1, high_open=True), "a number in [0, 1)"),
    "logging_steps": (_steps, _STEPS),
    "save_steps": (_steps, _STEPS),
    "eval_steps": (_steps, _STEPS),
    "eval_delay": (_number(0), "a number >= 0"),
    "save_total_limit": (_whole(1), "a whole number >= 1 of checkpoints to keep (leave it out to keep all)"),
    "seed": (_whole(0, 2**32 - 1), "a whole number in [0, 2**32 - 1]"),
    "data_seed": (_whole(0, 2**32 - 1), "a whole number in [0, 2**32 - 1]"),
    "dataloader_num_workers": (_whole(0), "a whole number >= 0 (0 loads in the main process)"),
    "dataloader_prefetch_factor": (_whole(1), "a whole number >= 1"),
    "max_train_samples": (_whole(1), "a whole number of examples >= 1 (leave it out to train on all)"),
    "max_eval_samples": (_whole(1), "a whole number of examples >= 1 (leave it out to evaluate on all)"),
}


def check_numbers(given: dict) -> None:
    """Refuse a numeric flag out of its range (`NUMERIC_FLAGS`), naming the flag, the value and what to pass."""
    for name, (accepts, what) in NUMERIC_FLAGS.items():
        value = given.get(name)
        if value is not None and not accepts(value):
            raise ValueError(f"--{name} {value!r}: pass {what}.")


def parse_arguments(argv: list[str] | None = None):
    """Parse the flags (or one `.json` file) into the four argument dataclasses, filling in what the user left
    out (`run_defaults`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if len(argv) == 1 and argv[0].endswith(".json"):
        given = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    else:
        _, remaining = parser.parse_known_args(argv)  # --help (showing the run's defaults) and unknown flags
        if remaining:
            parser.error(f"unrecognized arguments: {' '.join(remaining)}")
        given = _given_flags(argv)
    check_numbers(given)
    if given.get("bf16") and "use_cpu" not in given and not is_torch_bf16_gpu_available():
        # transformers refuses --bf16 without a bf16 GPU unless told the run is on CPU, where autocast does bf16 too.
        given["use_cpu"] = True
    model_args, data_args, mjp_args, _ = parser.parse_dict({**given, "output_dir": given.get("output_dir", "unset")})
    defaults = run_defaults(model_args, data_args, mjp_args, given)
    if "output_dir" not in given and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("Distributed runs need an explicit --output_dir (every process must write to the same one).")
    if "do_eval" in given and not string_to_bool(str(given["do_eval"])) and given.get("eval_strategy", "no") != "no":
        raise ValueError(f"--do_eval false contradicts --eval_strategy {given['eval_strategy']}: drop one of them.")
    model_args, data_args, mjp_args, training_args = parser.parse_dict({**defaults, **given})
    if not training_args.do_train and not training_args.do_eval:
        raise ValueError("--do_train false and --do_eval false: this run would do nothing.")
    if not training_args.do_train and model_args.model_name_or_path is None:
        raise ValueError(
            "--do_train false without --model_name_or_path would evaluate a randomly initialised model; pass the "
            "trained model to evaluate with --model_name_or_path, or drop --do_train false."
        )
    if training_args.fp16 and training_args.device.type == "cpu":
        # accelerate would otherwise train in fp32 without a word.
        raise ValueError("--fp16 needs a GPU (or another fp16 accelerator); this run is on CPU: use --bf16 instead.")
    # Image datasets: the `image` column must reach the transform.
    training_args.remove_unused_columns = False
    return model_args, data_args, mjp_args, training_args


def _local_inputs(model_args: ModelArguments, data_args: DataTrainingArguments) -> tuple[dict, dict]:
    """`({flag: path} of the model inputs, {flag: path} of the data inputs)` that the run reads."""
    model = {
        "--model_name_or_path": model_args.model_name_or_path,
        "--config_name": model_args.config_name,
        "--image_processor_name": model_args.image_processor_name,
    }
    data = {
        "--train_dir": data_args.train_dir,
        "--validation_dir": data_args.validation_dir,
        "--dataset_name": data_args.dataset_name,
    }
    return model, data


def _first_image(folder: Path) -> Path | None:
    """An image file in `folder` or below (linked class folders included), or None."""
    extensions = {extension.lower() for extension in ImageFolder.EXTENSIONS}
    seen = set()
    for root, folders, files in os.walk(folder, followlinks=True):
        if os.path.realpath(root) in seen:  # a link back up the tree
            folders.clear()
            continue
        seen.add(os.path.realpath(root))
        for name in files:
            if Path(name).suffix.lower() in extensions:
                return Path(root) / name
    return None


def _check_weights(value: str, folder: Path) -> None:
    """The weights `from_pretrained` would read in a model folder are there and whole."""
    safetensors = [folder / SAFE_WEIGHTS_NAME]
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if not safetensors[0].is_file() and index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, UnicodeDecodeError) as error:
            raise ValueError(
                f"--model_name_or_path {value}: its {SAFE_WEIGHTS_INDEX_NAME} is not a valid index ({error}); save "
                "the model again, or pass another checkpoint."
            ) from error
        safetensors = [folder / shard for shard in shards]
    elif not safetensors[0].is_file():
        if (folder / WEIGHTS_INDEX_NAME).is_file():
            return  # sharded PyTorch weights: transformers reads them with torch.load(weights_only=True)
        if (folder / WEIGHTS_NAME).is_file():
            # A damaged archive would fail inside torch.load, whose message advises loading unsafely.
            if not zipfile.is_zipfile(folder / WEIGHTS_NAME):
                raise ValueError(
                    f"--model_name_or_path {value}: its {WEIGHTS_NAME} is not a PyTorch zip archive (truncated, or "
                    "not model weights); save the model again (save_pretrained writes safetensors), or pass another "
                    "checkpoint."
                )
            return
        raise ValueError(
            f"--model_name_or_path {value} holds no model weights ({SAFE_WEIGHTS_NAME}); pass the folder "
            "save_pretrained wrote, or leave --model_name_or_path out to train from scratch (--preset)."
        )
    for path in safetensors:
        try:
            with safe_open(path, framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own error type for a short or corrupt file
            reason = "is missing" if not path.is_file() else f"is truncated or corrupt ({error})"
            raise ValueError(
                f"--model_name_or_path {value}: its weights file {path} {reason}; save or download the model "
                "again, or pass another checkpoint."
            ) from error


def _check_model_source(value: str) -> None:
    """A local --model_name_or_path is a folder of a ViT or MJP-ViT model whose weights are whole; a value that
    looks like a local path but is not there is refused (else it would be taken for a Hub id)."""
    path = Path(value).expanduser()
    if not path.exists():
        if value.startswith(("/", "./", "../", "~", ".\\")) or value.count("/") > 1:
            raise FileNotFoundError(
                f"--model_name_or_path {value} does not exist; pass the folder of a saved model, or a Hub id (org/name)."
            )
        return  # a Hub id: transformers reads it
    if not path.is_dir():
        raise ValueError(
            f"--model_name_or_path {value} is a file; pass the folder of a saved model (its {CONFIG_NAME} and "
            f"{SAFE_WEIGHTS_NAME}, as save_pretrained writes them). A checkpoint of the authors' release converts "
            f"with `python -m mjp_hf.conversion.original --checkpoint {value} --output_dir DIR`."
        )
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise ValueError(
            f"--model_name_or_path {value} holds no {CONFIG_NAME}; pass the folder save_pretrained wrote (a ViT or "
            "MJP-ViT checkpoint), or leave --model_name_or_path out to train from scratch (--preset)."
        )
    try:
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(
            f"--model_name_or_path {value}: its {CONFIG_NAME} is not a JSON object ({error}); save the model again, "
            "or pass another checkpoint."
        ) from error
    if model_type not in ("vit", MJPViTConfig.model_type):
        raise ValueError(
            f"--model_name_or_path {value} holds a {model_type!r} model; this script trains ViT ('vit': a ViT or "
            "non-distilled DeiT checkpoint, e.g. google/vit-base-patch16-224-in21k) and MJP-ViT ('mjp_vit') "
            "checkpoints. Pass one of those, or leave --model_name_or_path out to train from scratch (--preset)."
        )
    _check_weights(value, path)


def check_inputs(model_args: ModelArguments, data_args: DataTrainingArguments, output_dir: str) -> tuple[dict, dict]:
    """Refuse, before the output folder is created or anything is loaded, paths the run could not use: an output
    folder that is a file or is, holds or lies in an input (`mjp_hf.training.run_folder.check_output_location`),
    image folders that are missing or hold no image, and a local --model_name_or_path that is no ViT/MJP-ViT model
    folder with whole weights. Returns the inputs, for `open_run_folder`."""
    inputs, data_inputs = _local_inputs(model_args, data_args)
    check_output_location(output_dir, inputs, data_inputs)
    for flag in ("--train_dir", "--validation_dir"):
        value = data_inputs[flag]
        if value is None:
            continue
        if not Path(value).is_dir():
            raise FileNotFoundError(
                f"{flag} {value} is not a folder; pass an image folder (one sub-folder per class)."
            )
        if _first_image(Path(value)) is None:
            extensions = ", ".join(sorted({".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".webp"}))
            raise ValueError(
                f"{flag} {value} holds no images ({extensions}, ...); pass an image folder with one sub-folder of "
                "images per class"
                + (
                    ", or leave --validation_dir out to evaluate on --train_val_split of the training images."
                    if flag == "--validation_dir"
                    else "."
                )
            )
    if model_args.model_name_or_path:
        _check_model_source(model_args.model_name_or_path)
    return inputs, data_inputs


def run_arguments(model_args, data_args, mjp_args, training_args) -> dict:
    """Every flag of the run, as JSON values, without tokens (saved into each checkpoint by `MJPTrainer`)."""
    values = {
        "model": asdict(model_args),
        "data": asdict(data_args),
        "mjp": asdict(mjp_args),
        "training": training_args.to_dict(),
    }  # `to_dict` masks the Hub token
    values["model"].pop("token", None)
    return json.loads(json.dumps(values, default=str))


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def load_data(data_args: DataTrainingArguments, model_args: ModelArguments) -> tuple[DatasetDict, str | None]:
    """`(dataset with train and eval splits, Hub id of the dataset for the model card or None)`."""
    if data_args.dataset_name is not None:
        dataset = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
        hub_id = data_args.dataset_name
    elif data_args.train_dir is not None:
        data_files = {"train": os.path.join(data_args.train_dir, "**")}
        if data_args.validation_dir is not None:
            data_files["validation"] = os.path.join(data_args.validation_dir, "**")
        dataset = load_dataset("imagefolder", data_files=data_files, cache_dir=model_args.cache_dir)
        hub_id = None
    elif fashion_mnist_available():
        logger.info("No dataset given: Fashion-MNIST from %s.", FASHION_MNIST_DIR)
        dataset = load_fashion_mnist()
        hub_id = FASHION_MNIST_HUB_ID
    else:
        logger.warning(
            "Fashion-MNIST is not in %s (%s); trying the Hub dataset %s.",
            FASHION_MNIST_DIR,
            INSTALL_HINT,
            FASHION_MNIST_HUB_ID,
        )
        try:
            dataset = load_dataset(FASHION_MNIST_HUB_ID, cache_dir=model_args.cache_dir)
        except Exception as error:
            raise RuntimeError(
                f"No dataset given, Fashion-MNIST is missing from {FASHION_MNIST_DIR} and the Hub dataset "
                f"{FASHION_MNIST_HUB_ID} could not be loaded ({error}). Either {INSTALL_HINT}, go online, or pass "
                "--dataset_name / --train_dir."
            ) from error
        hub_id = FASHION_MNIST_HUB_ID
    if not isinstance(dataset, DatasetDict) or "train" not in dataset:
        raise ValueError(f"The dataset has no 'train' split (splits: {list(getattr(dataset, 'keys', list)())}).")
    return dataset, hub_id


def prepare_splits(dataset: DatasetDict, data_args: DataTrainingArguments, seed: int) -> tuple:
    """Check the columns and labels; return `(train, eval, label names, what the eval split is)`."""
    train = dataset["train"]
    for flag, column in (
        ("--image_column_name", data_args.image_column_name),
        ("--label_column_name", data_args.label_column_name),
    ):
        if column not in train.column_names:
            hint = ""
            if data_args.train_dir is not None and flag == "--label_column_name":
                hint = (
                    " An image folder gets its labels from its sub-folders, and none when there is only one: a "
                    "classifier needs at least 2 classes, one sub-folder each."
                )
            raise ValueError(
                f"The training data has no column {column!r} (its columns: {train.column_names}); name the right one "
                f"with {flag}.{hint}"
            )
    label_column = data_args.label_column_name
    if not isinstance(train.features[label_column], ClassLabel):
        dataset = dataset.class_encode_column(label_column)
        train = dataset["train"]
    names = list(train.features[label_column].names)
    if len(names) < 2:
        raise ValueError(
            f"The label column {label_column!r} has {len(names)} class ({names}); a classifier needs at least 2. Check "
            "--label_column_name, or the folder layout of --train_dir (one sub-folder per class)."
        )
    eval_split = next((name for name in ("validation", "test") if name in dataset), None)
    if eval_split is None:
        split = train.train_test_split(test_size=data_args.train_val_split, seed=seed, stratify_by_column=label_column)
        train, evaluation = split["train"], split["test"]
        eval_split = f"held-out {data_args.train_val_split:.0%} of the training"
    else:
        evaluation = dataset[eval_split]
        if evaluation.features[label_column] != train.features[label_column]:
            evaluation = evaluation.cast_column(label_column, train.features[label_column])
    if data_args.max_train_samples is not None:
        train = train.shuffle(seed=seed).select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation, names, eval_split


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def _label_maps(names: list[str]) -> dict:
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }


def _mjp_config_from(config) -> MJPViTConfig:
    """An `MJPViTConfig` of a checkpoint's config: an MJP one as is, a stock ViT one with the MJP defaults added."""
    if config.model_type == MJPViTConfig.model_type:
        return config
    if config.model_type != "vit":
        raise ValueError(
            f"The checkpoint has model_type {config.model_type!r}; this script starts from 'vit' (ViT, non-distilled "
            "DeiT) or 'mjp_vit' checkpoints."
        )
    return MJPViTConfig.from_vit_config(config)


def build_model(model_args: ModelArguments, mjp_args: MJPArguments, label_names: list[str]):
    """`(model, image processor)`: from a checkpoint, a config, or a preset, with the MJP flags applied."""
    labels = _label_maps(label_names)
    hub_kwargs = dict(
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code,
    )
    source = model_args.model_name_or_path
    if source is None:
        if model_args.config_name is not None:
            config = _mjp_config_from(AutoConfig.from_pretrained(model_args.config_name, **hub_kwargs))
            config.update(labels)
        else:
            config = config_from_preset(model_args.preset or DEFAULT_PRESET, **labels)
    else:
        config = _mjp_config_from(AutoConfig.from_pretrained(source, **hub_kwargs))
        checkpoint_labels = [config.id2label[i] for i in range(config.num_labels)]
        if checkpoint_labels != label_names:
            if not model_args.ignore_mismatched_sizes:
                raise ValueError(
                    f"{source} classifies {config.num_labels} labels ({_short(checkpoint_labels)}) but the data has "
                    f"{len(label_names)} ({_short(label_names)}). Pass --ignore_mismatched_sizes to train a new "
                    "classifier head for these labels."
                )
            config.update(labels)
    checkpoint_shape = (config.image_size, config.patch_size, config.num_channels, config.hidden_size)
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    if (
        source is not None
        and not model_args.ignore_mismatched_sizes
        and checkpoint_shape != (config.image_size, config.patch_size, config.num_channels, config.hidden_size)
    ):
        raise ValueError(
            f"--config_overrides {model_args.config_overrides!r} changes the shape of {source} (image_size, "
            "patch_size, num_channels, hidden_size); pass --ignore_mismatched_sizes to re-initialise the weights "
            "that no longer fit."
        )
    for name, value in mjp_args.config_updates().items():
        setattr(config, name, value)
    config.check_mjp_fields()

    if source is None:
        model = MJPViTForImageClassification(config)
    else:
        model, info = MJPViTForImageClassification.from_pretrained(
            source,
            config=config,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            output_loading_info=True,
            **hub_kwargs,
        )
        # Only MJP's own weights (and a re-initialised head) may be new: anything else means the checkpoint's keys
        # were not understood and the encoder would silently train from scratch.
        unexpected_new = [
            key for key in info["missing_keys"] if not (is_mjp_only_parameter(key) or "classifier" in key)
        ]
        if unexpected_new:
            raise ValueError(
                f"{source} does not hold these weights of the model: {unexpected_new[:5]}...; is it a ViT "
                "image classifier or encoder checkpoint?"
            )
        if info["missing_keys"]:
            logger.info("Newly initialised: %s", sorted(info["missing_keys"]))

    image_processor = _image_processor(model_args, config)
    return model, image_processor


def _short(names: list, limit: int = 4) -> str:
    return ", ".join(map(str, names[:limit])) + (", ..." if len(names) > limit else "")


def _image_processor(model_args: ModelArguments, config: MJPViTConfig):
    name = model_args.image_processor_name or model_args.model_name_or_path
    if name is None:
        image_processor = ViTImageProcessorPil(size={"height": config.image_size, "width": config.image_size})
    else:
        try:
            image_processor = AutoImageProcessor.from_pretrained(
                name,
                cache_dir=model_args.cache_dir,
                revision=model_args.model_revision,
                token=model_args.token,
                backend="pil",
            )
        except OSError:
            if model_args.image_processor_name is not None:
                raise
            logger.warning("%s has no image processor; using a ViT processor at %d px.", name, config.image_size)
            image_processor = ViTImageProcessorPil(size={"height": config.image_size, "width": config.image_size})
    height, width = processor_image_size(image_processor)
    expected = tuple(config.image_size) if isinstance(config.image_size, (list, tuple)) else (config.image_size,) * 2
    if (height, width) != expected:
        raise ValueError(
            f"The image processor resizes to {height}x{width} but the model takes {expected[0]}x{expected[1]} images. "
            "Pass --image_processor_name with a processor of the model's size, or change the model's size with "
            f"--config_overrides image_size={height} (with --ignore_mismatched_sizes for a checkpoint)."
        )
    return image_processor


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------


def _compute_metrics(metric, ks, eval_prediction):
    return metric.compute(predictions=eval_prediction.predictions, references=eval_prediction.label_ids, k=ks)


def write_run_files(
    trainer,
    training_args,
    model_args,
    data_args,
    hub_id,
    metrics,
    resume: Resume | None = None,
    eval_split: str | None = None,
):
    """The run folder's model card (describing the folder as it is), the training curves and the arguments, beside
    the saved model (main process only). Returns the card of the publishing layout, for a push."""
    from mjp_hf.hub import build_model_card

    output_dir = Path(training_args.output_dir)
    (output_dir / "training_args.json").write_text(training_args.to_json_string(), encoding="utf-8")
    plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", title=output_dir.name)
    model = trainer.model
    hyperparameters, training_text = None, None
    if training_args.do_train:
        hyperparameters = {
            key: getattr(training_args, key)
            for key in (
                "learning_rate",
                "per_device_train_batch_size",
                "num_train_epochs",
                "max_steps",
                "weight_decay",
                "lr_scheduler_type",
                "warmup_steps",
                "max_grad_norm",
                "label_smoothing_factor",
                "seed",
            )
        }
        hyperparameters["lr_scheduler_type"] = str(
            getattr(hyperparameters["lr_scheduler_type"], "value", hyperparameters["lr_scheduler_type"])
        )
        hyperparameters["world_size"] = training_args.world_size
        hyperparameters["jigsaw_warmup_epochs"] = next(
            (
                callback.warmup_epochs
                for callback in trainer.callback_handler.callbacks
                if isinstance(callback, MJPScheduleCallback)
            ),
            None,
        )
        if resume is not None and resume.changes:
            # The card states the recipe as it ran: the checkpoint's value up to the resume, then the new one.
            for name, old, new in resume.changes:
                hyperparameters[name] = f"{old} up to step {resume.step}, then {new}"
            training_text = (
                f"Trained with `mjp_hf` (`examples/run_image_classification.py`), resumed at step {resume.step} "
                f"with changed flags ({', '.join(name for name, _, _ in resume.changes)}; see the table). The "
                "optimizer and learning-rate scheduler states restored at the resume keep the checkpoint's learning "
                "rate and weight decay, so a change to those did not apply as given."
            )
    else:
        training_text = (
            f"Not trained by this run: these are the weights of `{model_args.model_name_or_path}`, evaluated by "
            "`examples/run_image_classification.py`."
        )
    card_kwargs = dict(
        model_id=training_args.hub_model_id or output_dir.name,
        dataset_name=hub_id,
        # A held-out share of the training split has no split name of its own.
        dataset_split=eval_split if eval_split in ("validation", "test") else None,
        metrics=metrics,
        hyperparameters=hyperparameters,
        base_model=model_args.model_name_or_path,
        training_text=training_text,
    )
    build_model_card(model, run_dir=training_args.output_dir, **card_kwargs).save(output_dir / CARD_NAME)
    return build_model_card(model, **card_kwargs)


def report(output_dir: str, metrics: dict, evaluated: bool, eval_split: str, eval_size: int) -> None:
    """What the user sees at the end of a run at any log level: where it went, its results, what to run next."""
    lines = [f"Saved the run to {output_dir}"]
    if "eval_accuracy" in metrics:
        scores = ", ".join(
            f"{name} {metrics[key]:.2%}"
            for key, name in (("eval_accuracy", "top-1"), ("eval_top5_accuracy", "top-5"))
            if key in metrics
        )
        lines.append(f"Evaluated on the {eval_split} split ({eval_size:,} images): {scores}")
    elif evaluated:
        lines.append(f"No accuracy from the {eval_split} split ({eval_size:,} images): no full evaluation batch.")
    else:
        lines.append("Not evaluated (--do_eval false).")
    lines += [
        "Next:",
        f"  python -m mjp_hf.hub layout --run_dir {output_dir} --output_dir {output_dir}-hub --model_id ORG/NAME"
        "   # the Hub layout, locally",
        f"  python -m mjp_hf.hub push --run_dir {output_dir} --hub_model_id ORG/NAME",
        *(
            f"  python -m mjp_hf.evaluation.{name} --model_name_or_path {output_dir} --output_dir {output_dir}-{name}"
            for name in ("privacy", "robustness", "position")
        ),
    ]
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> dict:
    # Started first, so that its first reading of the machine's load spans the data loading.
    threads = adaptive_threads()
    model_args, data_args, mjp_args, training_args = parse_arguments(argv)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    for log in (logger, logging.getLogger("mjp_hf")):
        log.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.info(
        "Process %d of %d, device %s, bf16 %s, fp16 %s",
        training_args.process_index,
        training_args.world_size,
        training_args.device,
        training_args.bf16,
        training_args.fp16,
    )

    inputs, data_inputs = check_inputs(model_args, data_args, training_args.output_dir)
    # One run at a time in the output folder, held until the run ends: resumed, refused, or started afresh.
    with open_run_folder(
        training_args,
        inputs=inputs,
        data_inputs=data_inputs,
        overwrite=mjp_args.overwrite_output_dir,
        allow_changed_flags=mjp_args.allow_changed_flags,
        run_arguments=run_arguments(model_args, data_args, mjp_args, training_args),
        config_fields=MJP_CONFIG_FIELDS,
    ) as resume:
        return train_and_evaluate(model_args, data_args, mjp_args, training_args, resume, threads)


def train_and_evaluate(model_args, data_args, mjp_args, training_args, resume: Resume | None, threads) -> dict:
    """Load the data and the model, train (continuing `resume`), evaluate, and write the run folder."""
    push_to_hub, hub_token = training_args.push_to_hub, training_args.hub_token
    # The Trainer would push the MJP folder as is; `mjp_hf.hub` publishes the stock-ViT + MJP layout instead. It
    # needs no token then, and none reaches the arguments it saves.
    training_args.push_to_hub, training_args.hub_token = False, None
    transformers.set_seed(training_args.seed)

    dataset, hub_id = load_data(data_args, model_args)
    train_dataset, eval_dataset, label_names, eval_split = prepare_splits(dataset, data_args, training_args.seed)
    batch = training_args.per_device_train_batch_size * training_args.world_size
    if training_args.do_train and training_args.dataloader_drop_last and len(train_dataset) < batch:
        raise ValueError(
            f"{len(train_dataset)} training examples make no full batch of {batch} (--per_device_train_batch_size "
            f"{training_args.per_device_train_batch_size} x {training_args.world_size} processes) with "
            "--dataloader_drop_last: nothing would be trained. Pass a smaller batch, more examples "
            "(--max_train_samples), or drop --dataloader_drop_last."
        )
    model, image_processor = build_model(model_args, mjp_args, label_names)
    logger.info(
        "MJP-ViT: %s parameters, %dx%d patch grid, jigsaw %s (ratio %s, p %s), DALR %s (weight %s)",
        f"{model.num_parameters():,}",
        *model.vit.embeddings.grid_size,
        model.config.jigsaw_mode,
        model.config.jigsaw_ratio,
        model.config.jigsaw_prob,
        model.config.dalr_head,
        model.config.dalr_loss_weight,
    )

    transform = partial(
        ImageClassificationTransform,
        image_processor,
        num_channels=model.config.num_channels,
        image_column=data_args.image_column_name,
        label_column=data_args.label_column_name,
    )
    # Augmentation keyed to (seed, epoch, sample index): a resumed run sees the very crops and flips it would have.
    train_transform = transform(
        train=True,
        crop_scale=(data_args.crop_min_scale, 1.0),
        horizontal_flip=data_args.random_flip,
        index_column=SAMPLE_INDEX_COLUMN,
        seed=training_args.seed,
        random_erasing=data_args.random_erasing_prob,
        rand_augment=data_args.rand_augment,
    )
    collator = collate_image_classification
    if data_args.mixup_alpha > 0 or data_args.cutmix_alpha > 0:
        # Mixing makes label-smoothed soft targets itself; the Trainer's smoother then only touches evaluation.
        collator = MixupCutmixCollator(
            len(label_names),
            mixup_alpha=data_args.mixup_alpha,
            cutmix_alpha=data_args.cutmix_alpha,
            switch_prob=data_args.mixup_switch_prob,
            label_smoothing=training_args.label_smoothing_factor,
            index_key=SAMPLE_INDEX_COLUMN,
            seed=training_args.seed,
        )
    # The transform opens the images itself: the embedded default's uint8 arrays need no PIL at all.
    image_column = data_args.image_column_name
    train_dataset = with_sample_index(without_image_decoding(train_dataset, image_column), SAMPLE_INDEX_COLUMN)
    train_dataset = train_dataset.with_transform(train_transform)
    eval_dataset = without_image_decoding(eval_dataset, image_column).with_transform(transform(train=False))

    ks = tuple(k for k in TOP_K if k <= len(label_names))
    warmup_epochs = mjp_args.jigsaw_warmup_epochs
    if training_args.do_train and training_args.max_steps <= 0 and warmup_epochs >= training_args.num_train_epochs:
        logger.warning(
            "--jigsaw_warmup_epochs %d >= --num_train_epochs %s: the jigsaw never runs in this training.",
            warmup_epochs,
            training_args.num_train_epochs,
        )
    trainer = MJPTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset if training_args.do_train else None,
        eval_dataset=eval_dataset if training_args.do_eval else None,
        compute_metrics=partial(_compute_metrics, load_accuracy_topk(), ks),
        preprocess_logits_for_metrics=partial(top_k_predictions, k=max(ks)),
        processing_class=image_processor,
        data_collator=collator,
        callbacks=[
            PerProcessSeedCallback(),
            MJPScheduleCallback(warmup_epochs),
            TransformEpochCallback(*[part for part in (train_transform, collator) if hasattr(part, "set_epoch")]),
            AdaptiveThreadsCallback(threads),
        ],
        run_arguments=run_arguments(model_args, data_args, mjp_args, training_args),
    )

    metrics = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=resume.checkpoint if resume else None)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        metrics.update(train_result.metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate_final_weights()  # the last epoch's evaluation, when it was at the last step
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    if trainer.is_world_process_zero():
        if not training_args.do_train:
            trainer.save_model()
        card = write_run_files(trainer, training_args, model_args, data_args, hub_id, metrics, resume, eval_split)
        if push_to_hub:
            from mjp_hf.hub import push_mjp_model

            url = push_mjp_model(
                trainer.model,
                image_processor,
                training_args.hub_model_id or Path(training_args.output_dir).name,
                card=card,
                token=hub_token,
                private=training_args.hub_private_repo,
                commit_message="Training run of examples/run_image_classification.py",
            )
            print(f"Pushed to {url}", flush=True)
        report(training_args.output_dir, metrics, training_args.do_eval, eval_split, len(eval_dataset))
    return metrics


if __name__ == "__main__":
    main()
