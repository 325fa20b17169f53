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

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

import datasets
import torch
import transformers
from datasets import ClassLabel, DatasetDict, load_dataset
from transformers import AutoConfig, AutoImageProcessor, HfArgumentParser, TrainingArguments, ViTImageProcessorPil
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import is_torch_bf16_gpu_available

import mjp_hf
from mjp_hf import MJPViTConfig, MJPViTForImageClassification
from mjp_hf.configuration_mjp_vit import MJP_CONFIG_FIELDS
from mjp_hf.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_HUB_ID,
    INSTALL_HINT,
    ImageClassificationTransform,
    MixupCutmixCollator,
    collate_image_classification,
    fashion_mnist_available,
    load_fashion_mnist,
    processor_image_size,
    with_sample_index,
    without_image_decoding,
)
from mjp_hf.metrics import load_accuracy_topk
from mjp_hf.presets import PRESETS, config_from_preset
from mjp_hf.rand_augment import parse_rand_augment
from mjp_hf.threads import AdaptiveThreadsCallback, adaptive_threads
from mjp_hf.training import (
    MJPScheduleCallback,
    MJPTrainer,
    PerProcessSeedCallback,
    TransformEpochCallback,
    plot_training_curves,
    top_k_predictions,
)

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "demo"
RELEASED_JIGSAW_WARMUP_EPOCHS = 20
# What the demo preset trains with unless a flag says otherwise: Fashion-MNIST to >= 85% test accuracy on 2 CPU
# cores within a four-minute budget. At this length the model underfits (train loss ~ test loss), so augmentation only
# slows it down: five epochs without flips reach 85.8%, with flips 84.6% (7 epochs with flips: 86.0%; see
# benchmarks/README.md). The released 20-of-300 jigsaw warmup epochs become 1 of 5.
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
        metadata={"help": "A dataset on the Hub (or a local dataset script/folder). Without it and without "
                          "--train_dir, the embedded default: Fashion-MNIST from the local Debian package."},
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
        default=None, metadata={"help": "RandAugment as a timm spec, e.g. 'rand-m9-mstd0.5-inc1' (DeiT); off by default."}
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
        metadata={"help": "A stock ViT or an MJP-ViT checkpoint (Hub id or folder). Without it an MJP-ViT is built "
                          "from scratch from --preset."},
    )
    preset: str | None = field(
        default=None,
        metadata={"help": f"From-scratch shape: one of {sorted(PRESETS)} (default {DEFAULT_PRESET!r})."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Override config fields: 'key=value,key=value', e.g. 'hidden_dropout_prob=0.1,image_size=32'."},
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
            raise ValueError("--preset builds a model from scratch; drop it, or drop --model_name_or_path/--config_name.")


@dataclass
class MJPArguments:
    """Masked Jigsaw Puzzle settings. Each flag overrides the config field of the same name; flags left out keep the
    preset's or the checkpoint's value."""

    jigsaw_ratio: float | None = field(default=None, metadata={"help": "Fraction of patches shuffled (0.1)."})
    jigsaw_prob: float | None = field(default=None, metadata={"help": "Chance a training step is jigsawed (0.5)."})
    jigsaw_min_block: int | None = field(default=None, metadata={"help": "Smallest block area in patches (8)."})
    jigsaw_max_block: int | None = field(default=None, metadata={"help": "Largest block area (75 on 14x14, scaled)."})
    jigsaw_per_sample: bool | None = field(default=None, metadata={"help": "One mask per sample (released: per batch)."})
    jigsaw_mode: str | None = field(default=None, metadata={"help": "'mjp' or 'naive' (the naive-shuffle ablation)."})
    use_unk_position_embedding: bool | None = field(
        default=None, metadata={"help": "Give shuffled patches the unknown position embedding (True)."}
    )
    dalr_head: str | None = field(default=None, metadata={"help": "'nonlinear', 'linear' or 'none'."})
    dalr_loss_weight: float | None = field(default=None, metadata={"help": "Weight of the DALR loss (0.01)."})
    dalr_normalize_targets: bool | None = field(default=None, metadata={"help": "Regress (row, col) / grid (False)."})
    jigsaw_warmup_epochs: int | None = field(
        default=None,
        metadata={"help": f"Epochs without jigsaw while the DALR weight rises from 0 (released: "
                          f"{RELEASED_JIGSAW_WARMUP_EPOCHS}; the demo preset: {DEMO_DEFAULTS['jigsaw_warmup_epochs']})."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Write into a non-empty --output_dir, deleting its checkpoint-* folders (start afresh)."},
    )

    def config_updates(self) -> dict:
        """The MJP config fields given on the command line."""
        return {name: getattr(self, name) for name in MJP_CONFIG_FIELDS if getattr(self, name, None) is not None}


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, MJPArguments, TrainingArguments)


# ---------------------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------------------


def _explicit_flags(argv: list[str]) -> set[str]:
    """Names of the flags present on a command line (`--name`, `--name=value`, `--no_name`)."""
    names = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            names.add(name)
            if name.startswith("no_"):
                names.add(name[3:])
    return names


def _default_output_dir(model_args: ModelArguments, data_args: DataTrainingArguments) -> str:
    model = model_args.preset or DEFAULT_PRESET
    if model_args.model_name_or_path:
        model = Path(model_args.model_name_or_path.rstrip("/")).name
    data = Path((data_args.dataset_name or data_args.train_dir or "fashion-mnist").rstrip("/")).name
    return str(Path("runs") / f"mjp-{model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}".replace("_", "-"))


def parse_arguments(argv: list[str] | None = None):
    """Parse the flags (or one `.json` file) into the four argument dataclasses, filling in what the user left
    out: the demo preset's training recipe, `--do_train --do_eval`, a fresh output folder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    if len(argv) == 1 and argv[0].endswith(".json"):
        given = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    else:
        namespace, remaining = parser.parse_known_args(argv)
        if remaining:
            parser.error(f"unrecognized arguments: {' '.join(remaining)}")
        explicit = _explicit_flags(argv)
        given = {name: value for name, value in vars(namespace).items() if name in explicit}
    if given.get("bf16") and "use_cpu" not in given and not is_torch_bf16_gpu_available():
        # transformers refuses --bf16 without a bf16 GPU unless told the run is on CPU, where autocast does bf16 too.
        given["use_cpu"] = True
    model_args, data_args, _, _ = parser.parse_dict({**given, "output_dir": given.get("output_dir", "unset")})

    defaults = {}
    if model_args.model_name_or_path is None and model_args.config_name is None:
        if (model_args.preset or DEFAULT_PRESET) == "demo":
            defaults.update(DEMO_DEFAULTS)
    defaults.setdefault("jigsaw_warmup_epochs", RELEASED_JIGSAW_WARMUP_EPOCHS)
    if "optim" not in given and not torch.cuda.is_available():
        # transformers defaults to the fused AdamW, whose CPU kernel is ~20x slower than the foreach one on a small
        # ViT (200 ms against 11 ms a step for the demo preset).
        defaults["optim"] = "adamw_torch"
    if "use_cpu" not in given and int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        # accelerate sets up a multi-process CPU run (gloo) only when told the run is on CPU; otherwise every
        # process under torchrun would train alone, on the same masks.
        defaults["use_cpu"] = True
    if not {"do_train", "do_eval", "do_predict"} & set(given):
        defaults.update(do_train=True, do_eval=True)
    if "output_dir" not in given:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("Distributed runs need an explicit --output_dir (every process must write to the same one).")
        defaults["output_dir"] = _default_output_dir(model_args, data_args)
    model_args, data_args, mjp_args, training_args = parser.parse_dict({**defaults, **given})
    if training_args.fp16 and training_args.device.type == "cpu":
        # accelerate would otherwise train in fp32 without a word.
        raise ValueError("--fp16 needs a GPU (or another fp16 accelerator); this run is on CPU: use --bf16 instead.")
    # Image datasets: the `image` column must reach the transform.
    training_args.remove_unused_columns = False
    return model_args, data_args, mjp_args, training_args


def prepare_output_dir(training_args: TrainingArguments, mjp_args: MJPArguments) -> str | None:
    """Check the output folder before anything is trained; return the checkpoint to resume from, if any.

    A non-empty folder is used only to resume (from `--resume_from_checkpoint` or its last `checkpoint-*`) or when
    `--overwrite_output_dir` is given."""
    output_dir = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    if resume is not None and resume.lower() in ("true", "last"):
        last = get_last_checkpoint(output_dir) if output_dir.is_dir() else None
        if last is None:
            raise ValueError(f"--resume_from_checkpoint {resume}: {output_dir} holds no checkpoint-* folder to resume.")
        return last
    if resume is not None:
        if not Path(resume).is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {resume} is not a checkpoint folder.")
        return resume
    if not output_dir.is_dir() or not any(output_dir.iterdir()):
        return None
    if mjp_args.overwrite_output_dir:
        logger.warning("Overwriting %s (--overwrite_output_dir): its checkpoints are deleted.", output_dir)
        if training_args.process_index == 0:
            for checkpoint in output_dir.glob("checkpoint-*"):
                shutil.rmtree(checkpoint)
        return None
    last = get_last_checkpoint(output_dir)
    if last is not None:
        logger.info("Resuming from %s, the last checkpoint in %s; pass --overwrite_output_dir to start afresh.",
                    last, output_dir)
        return last
    raise ValueError(
        f"Output directory {output_dir} already exists and is not empty (and holds no checkpoint to resume). Pass "
        "a new --output_dir, or --overwrite_output_dir to write into it."
    )


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def load_data(data_args: DataTrainingArguments, model_args: ModelArguments) -> tuple[DatasetDict, str | None]:
    """`(dataset with train and eval splits, Hub id of the dataset for the model card or None)`."""
    if data_args.dataset_name is not None:
        dataset = load_dataset(
            data_args.dataset_name, data_args.dataset_config_name, cache_dir=model_args.cache_dir,
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
        logger.warning("Fashion-MNIST is not in %s (%s); trying the Hub dataset %s.", FASHION_MNIST_DIR, INSTALL_HINT,
                       FASHION_MNIST_HUB_ID)
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
    """Check the columns and labels; return `(train, eval, label names)`."""
    train = dataset["train"]
    for flag, column in (("--image_column_name", data_args.image_column_name),
                         ("--label_column_name", data_args.label_column_name)):
        if column not in train.column_names:
            hint = ""
            if data_args.train_dir is not None and flag == "--label_column_name":
                hint = (" An image folder gets its labels from its sub-folders, and none when there is only one: a "
                        "classifier needs at least 2 classes, one sub-folder each.")
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
    else:
        evaluation = dataset[eval_split]
        if evaluation.features[label_column] != train.features[label_column]:
            evaluation = evaluation.cast_column(label_column, train.features[label_column])
    if data_args.max_train_samples is not None:
        train = train.shuffle(seed=seed).select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples is not None:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation, names


# ---------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------


def _label_maps(names: list[str]) -> dict:
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def _mjp_config_from(config) -> MJPViTConfig:
    """An `MJPViTConfig` of a checkpoint's config: an MJP one as is, a stock ViT one with the MJP defaults added."""
    if config.model_type == MJPViTConfig.model_type:
        return config
    if config.model_type != "vit":
        raise ValueError(
            f"The checkpoint has model_type {config.model_type!r}; this script starts from 'vit' (ViT, non-distilled "
            "DeiT) or 'mjp_vit' checkpoints."
        )
    values = {k: v for k, v in config.to_dict().items()
              if k not in ("model_type", "architectures", "auto_map", "transformers_version")}
    return MJPViTConfig(**values)


def build_model(model_args: ModelArguments, mjp_args: MJPArguments, label_names: list[str]):
    """`(model, image processor)`: from a checkpoint, a config, or a preset, with the MJP flags applied."""
    labels = _label_maps(label_names)
    hub_kwargs = dict(cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token,
                      trust_remote_code=model_args.trust_remote_code)
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
    if source is not None and not model_args.ignore_mismatched_sizes and checkpoint_shape != (
            config.image_size, config.patch_size, config.num_channels, config.hidden_size):
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
            source, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            output_loading_info=True, **hub_kwargs,
        )
        # Only MJP's own weights (and a re-initialised head) may be new: anything else means the checkpoint's keys
        # were not understood and the encoder would silently train from scratch.
        unexpected_new = [key for key in info["missing_keys"] if not any(
            part in key for part in ("unk_position_embedding", "dalr_head", "classifier"))]
        if unexpected_new:
            raise ValueError(f"{source} does not hold these weights of the model: {unexpected_new[:5]}...; is it a ViT "
                             "image classifier or encoder checkpoint?")
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
                name, cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token,
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


def write_run_files(trainer, training_args, model_args, data_args, hub_id, metrics) -> None:
    """The model card, the training curves and the arguments, beside the saved model (main process only)."""
    from mjp_hf.hub import build_model_card

    output_dir = Path(training_args.output_dir)
    (output_dir / "training_args.json").write_text(training_args.to_json_string(), encoding="utf-8")
    plot_training_curves(trainer.state.log_history, output_dir / "training_curves.png", title=output_dir.name)
    model = trainer.model
    hyperparameters = {
        key: getattr(training_args, key)
        for key in ("learning_rate", "per_device_train_batch_size", "num_train_epochs", "max_steps", "weight_decay",
                    "lr_scheduler_type", "warmup_steps", "max_grad_norm", "label_smoothing_factor", "seed")
    }
    hyperparameters["lr_scheduler_type"] = str(getattr(hyperparameters["lr_scheduler_type"], "value",
                                                       hyperparameters["lr_scheduler_type"]))
    hyperparameters["world_size"] = training_args.world_size
    hyperparameters["jigsaw_warmup_epochs"] = next(
        (callback.warmup_epochs for callback in trainer.callback_handler.callbacks
         if isinstance(callback, MJPScheduleCallback)), None)
    card = build_model_card(
        model,
        model_id=training_args.hub_model_id or output_dir.name,
        dataset_name=hub_id,
        metrics=metrics,
        hyperparameters=hyperparameters,
        base_model=model_args.model_name_or_path,
    )
    card.save(output_dir / "README.md")
    return card


def main(argv: list[str] | None = None) -> dict:
    # Started first, so that its first reading of the machine's load spans the data loading.
    threads = adaptive_threads()
    model_args, data_args, mjp_args, training_args = parse_arguments(argv)

    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    for log in (logger, logging.getLogger("mjp_hf")):
        log.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    logger.warning("Process %d of %d, device %s, bf16 %s, fp16 %s", training_args.process_index,
                   training_args.world_size, training_args.device, training_args.bf16, training_args.fp16)

    checkpoint = prepare_output_dir(training_args, mjp_args)
    push_to_hub = training_args.push_to_hub
    # The Trainer would push the MJP folder as is; `mjp_hf.hub` publishes the stock-ViT + MJP layout instead.
    training_args.push_to_hub = False
    transformers.set_seed(training_args.seed)

    dataset, hub_id = load_data(data_args, model_args)
    train_dataset, eval_dataset, label_names = prepare_splits(dataset, data_args, training_args.seed)
    model, image_processor = build_model(model_args, mjp_args, label_names)
    logger.info("MJP-ViT: %s parameters, %dx%d patch grid, jigsaw %s (ratio %s, p %s), DALR %s (weight %s)",
                f"{model.num_parameters():,}", *model.vit.embeddings.grid_size, model.config.jigsaw_mode,
                model.config.jigsaw_ratio, model.config.jigsaw_prob, model.config.dalr_head,
                model.config.dalr_loss_weight)

    transform = partial(ImageClassificationTransform, image_processor, num_channels=model.config.num_channels,
                        image_column=data_args.image_column_name, label_column=data_args.label_column_name)
    # Augmentation keyed to (seed, epoch, sample index): a resumed run sees the very crops and flips it would have.
    train_transform = transform(train=True, crop_scale=(data_args.crop_min_scale, 1.0),
                                horizontal_flip=data_args.random_flip, index_column=SAMPLE_INDEX_COLUMN,
                                seed=training_args.seed, random_erasing=data_args.random_erasing_prob,
                                rand_augment=data_args.rand_augment)
    collator = collate_image_classification
    if data_args.mixup_alpha > 0 or data_args.cutmix_alpha > 0:
        # Mixing makes label-smoothed soft targets itself; the Trainer's smoother then only touches evaluation.
        collator = MixupCutmixCollator(
            len(label_names), mixup_alpha=data_args.mixup_alpha, cutmix_alpha=data_args.cutmix_alpha,
            switch_prob=data_args.mixup_switch_prob, label_smoothing=training_args.label_smoothing_factor,
            index_key=SAMPLE_INDEX_COLUMN, seed=training_args.seed,
        )
    # The transform opens the images itself: the embedded default's PGM bytes need no PIL at all.
    image_column = data_args.image_column_name
    train_dataset = with_sample_index(without_image_decoding(train_dataset, image_column), SAMPLE_INDEX_COLUMN)
    train_dataset = train_dataset.with_transform(train_transform)
    eval_dataset = without_image_decoding(eval_dataset, image_column).with_transform(transform(train=False))

    ks = tuple(k for k in TOP_K if k <= len(label_names))
    warmup_epochs = mjp_args.jigsaw_warmup_epochs
    if training_args.do_train and training_args.max_steps <= 0 and warmup_epochs >= training_args.num_train_epochs:
        logger.warning("--jigsaw_warmup_epochs %d >= --num_train_epochs %s: the jigsaw never runs in this training.",
                       warmup_epochs, training_args.num_train_epochs)
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
            PerProcessSeedCallback(), MJPScheduleCallback(warmup_epochs),
            TransformEpochCallback(*[part for part in (train_transform, collator) if hasattr(part, "set_epoch")]),
            AdaptiveThreadsCallback(threads),
        ],
    )

    metrics = {}
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model()
        trainer.log_metrics("train", train_result.metrics)
        trainer.save_metrics("train", train_result.metrics)
        trainer.save_state()
        metrics.update(train_result.metrics)
    if training_args.do_eval:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)

    if trainer.is_world_process_zero():
        if not training_args.do_train:
            trainer.save_model()
        card = write_run_files(trainer, training_args, model_args, data_args, hub_id, metrics)
        if push_to_hub:
            from mjp_hf.hub import push_mjp_model

            url = push_mjp_model(
                trainer.model, image_processor, training_args.hub_model_id or Path(training_args.output_dir).name,
                card=card, token=training_args.hub_token, private=training_args.hub_private_repo,
                commit_message="Training run of examples/run_image_classification.py",
            )
            logger.info("Pushed to %s", url)
        logger.info("Saved to %s", training_args.output_dir)
    return metrics


if __name__ == "__main__":
    main()
