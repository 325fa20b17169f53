#!/usr/bin/env python
"""Train or fine-tune an MJP-ViT image classifier with the transformers `Trainer`.

transformers' `examples/pytorch/image-classification/run_image_classification.py` with Masked Jigsaw Puzzle training
(Ren et al., CVPR 2023): the same data, model and `TrainingArguments` flags (or a `.json` recipe), plus the MJP flags
(each overrides the model config's field of that name) and the gradient defences (DP-SGD, local noise, pruning).
The model is a stock ViT (fine-tuned with MJP), an MJP-ViT checkpoint, or a from-scratch MJP-ViT of `--preset`.

With no arguments it trains the demo recipe (`examples/configs/demo_fashion_mnist.json`) on Fashion-MNIST, read
offline from Debian's `dataset-fashion-mnist` package, into a fresh `runs/...` folder. A plain-ViT baseline is
`--jigsaw_prob 0 --dalr_head none`; the naive-shuffle ablation is `--jigsaw_mode naive`. See docs/TRAINING.md.
"""

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path

import datasets
import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool
from transformers.utils import is_torch_bf16_gpu_available

from mjp_hf.configuration_mjp_vit import MJP_CONFIG_FIELDS, MJPConfigError, MJPViTConfig
from mjp_hf.data.fashion_mnist import with_sample_index, without_image_decoding
from mjp_hf.data.mixup import MixupCutmixCollator
from mjp_hf.data.rand_augment import parse_rand_augment
from mjp_hf.data.training_data import check_image_folder, load_image_dataset, training_splits
from mjp_hf.data.transforms import ImageClassificationTransform, collate_image_classification
from mjp_hf.evaluation.metrics import load_accuracy_topk
from mjp_hf.hub import push_mjp_model, push_repo_id
from mjp_hf.training.arguments import TRAINING_ARGUMENTS, check_flag_ranges, given_flags
from mjp_hf.training.callbacks import MJPScheduleCallback, PerProcessSeedCallback, TransformEpochCallback
from mjp_hf.training.defense_arguments import DefenseArguments
from mjp_hf.training.model_setup import build_model, planned_mjp_settings, run_kind
from mjp_hf.training.presets import PRESETS
from mjp_hf.training.run_files import run_report, write_run_files
from mjp_hf.training.run_folder import check_output_location, default_output_dir, open_run_folder
from mjp_hf.training.threads import AdaptiveThreadsCallback, adaptive_threads
from mjp_hf.training.trainer import top_k_predictions
from mjp_hf.utils.model_source import check_model_source


logger = logging.getLogger(__name__)

# The main job: what a from-scratch run of the demo preset trains unless a recipe file or a flag says otherwise.
DEMO_RECIPE = Path(__file__).resolve().parent / "configs" / "demo_fashion_mnist.json"
SAMPLE_INDEX_COLUMN = "mjp_sample_index"
TOP_K = (1, 5)  # the accuracies the card publishes


@dataclass
class ModelArguments:
    """Which model to start from (the flags of transformers' image-classification example, plus presets)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "A stock ViT or MJP-ViT checkpoint (Hub id, folder); without it, --preset."}
    )
    preset: str | None = field(default=None, metadata={"help": f"From-scratch shape: one of {sorted(PRESETS)}."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "Config fields to override: 'key=value,...', e.g. 'hidden_dropout_prob=0.1'."}
    )
    config_name: str | None = field(default=None, metadata={"help": "A config to build a from-scratch model from."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache downloaded models and data."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    image_processor_name: str | None = field(default=None, metadata={"help": "Image processor name or path."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models and datasets."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow datasets/models with custom code."})
    ignore_mismatched_sizes: bool = field(default=False, metadata={"help": "Re-initialise weights that do not fit."})

    def __post_init__(self):
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"Unknown --preset {self.preset!r}; choose one of {sorted(PRESETS)}.")
        if self.preset is not None and (self.model_name_or_path or self.config_name):
            raise ValueError("--preset builds a model from scratch: drop it or --model_name_or_path/--config_name.")


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on (the flags of transformers' image-classification example), and the
    training augmentation (off unless named, but for the crop and flip)."""

    dataset_name: str | None = field(default=None, metadata={"help": "A dataset (default: Fashion-MNIST, embedded)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "An imagefolder of training images (class/x.png)."})
    validation_dir: str | None = field(default=None, metadata={"help": "An imagefolder of validation images."})
    train_val_split: float = field(default=0.15, metadata={"help": "Share of train held out if no eval split."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on a random subset of this many."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Evaluate on the first this many."})
    image_column_name: str = field(default="image", metadata={"help": "The column holding the images."})
    label_column_name: str = field(default="label", metadata={"help": "The column holding the labels."})
    crop_min_scale: float = field(default=0.08, metadata={"help": "Smallest area of the random crop (1: none)."})
    random_flip: bool = field(default=True, metadata={"help": "Random horizontal flips in training."})
    rand_augment: str | None = field(default=None, metadata={"help": "A timm spec (DeiT: rand-m9-mstd0.5-inc1)."})
    random_erasing_prob: float = field(default=0.0, metadata={"help": "Random erasing per image (DeiT: 0.25)."})
    mixup_alpha: float = field(default=0.0, metadata={"help": "Mixup's Beta parameter, 0: off (DeiT: 0.8)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix's Beta parameter, 0: off (DeiT: 1.0)."})
    mixup_switch_prob: float = field(default=0.5, metadata={"help": "With both on, the chance of CutMix for a batch."})

    def __post_init__(self):
        if self.dataset_name is not None and (self.train_dir is not None or self.validation_dir is not None):
            raise ValueError("Pass either --dataset_name or --train_dir/--validation_dir, not both.")
        if self.validation_dir is not None and self.train_dir is None:
            raise ValueError("--validation_dir needs --train_dir too.")
        if self.rand_augment:
            parse_rand_augment(self.rand_augment)  # a bad spec fails here, before any data is read


@dataclass
class MJPArguments:
    """Masked Jigsaw Puzzle settings: each flag overrides the `MJPViTConfig` field of the same name (its docstring
    gives the meaning and the released default); one left out keeps the preset's or the checkpoint's value. The
    warm-up defaults to the released 20 epochs."""

    jigsaw_ratio: float | None = field(default=None, metadata={"help": "Share of the patches shuffled."})
    jigsaw_prob: float | None = field(default=None, metadata={"help": "Chance that a training step is jigsawed."})
    jigsaw_min_block: int | None = field(default=None, metadata={"help": "Smallest block area, in patches."})
    jigsaw_max_block: int | None = field(default=None, metadata={"help": "Largest block area, in patches."})
    jigsaw_per_sample: bool | None = field(default=None, metadata={"help": "One mask per sample, not per batch."})
    jigsaw_mode: str | None = field(default=None, metadata={"help": "'mjp' or 'naive' (the naive-shuffle ablation)."})
    use_unk_position_embedding: bool | None = field(default=None, metadata={"help": "The unknown PE for shuffles."})
    dalr_head: str | None = field(default=None, metadata={"help": "'nonlinear', 'linear' or 'none'."})
    dalr_loss_weight: float | None = field(default=None, metadata={"help": "Weight of the DALR loss."})
    dalr_normalize_targets: bool | None = field(default=None, metadata={"help": "Regress (row, col) / grid size."})
    jigsaw_warmup_epochs: int = field(default=20, metadata={"help": "Epochs of no jigsaw, DALR weight rising."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start afresh: delete what runs wrote there."})
    allow_changed_flags: bool = field(default=False, metadata={"help": "Resume with other training flags (carded)."})

    def __post_init__(self):
        for name, value in self.config_updates().items():  # the config's own checks, before anything loads
            try:
                setattr(MJPViTConfig(), name, value)
            except MJPConfigError as error:
                raise ValueError(f"--{name} {value}: {error}") from None

    def config_updates(self) -> dict:
        """The MJP config fields given on the command line."""
        return {name: getattr(self, name) for name in MJP_FLAGS if getattr(self, name) is not None}


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, MJPArguments, DefenseArguments, TrainingArguments)
MJP_FLAGS = tuple(name for name in MJP_CONFIG_FIELDS if name in MJPArguments.__dataclass_fields__)
# The flags that change the weights a run trains: a resume with other values is refused (or, with
# --allow_changed_flags, listed on the card). Where and how often a run logs, saves, evaluates or publishes may change.
TRAINING_FLAGS = {
    "model": ("model_name_or_path", "config_name", "preset", "config_overrides", "model_revision")
    + ("image_processor_name", "ignore_mismatched_sizes"),
    "data": ("dataset_name", "dataset_config_name", "train_dir", "validation_dir", "train_val_split")
    + ("max_train_samples", "image_column_name", "label_column_name", "crop_min_scale", "random_flip")
    + ("rand_augment", "random_erasing_prob", "mixup_alpha", "cutmix_alpha", "mixup_switch_prob"),
    "mjp": (*MJP_FLAGS, "jigsaw_warmup_epochs"),
    "defense": tuple(f.name for f in fields(DefenseArguments)),
    "training": tuple(sorted(TRAINING_ARGUMENTS)),
}
HELP = (
    "Each value comes from the first of: a flag given; a .json recipe given first; the defaults shown, which are "
    f"this command line's: for a from-scratch run of the demo preset (no --model_name_or_path, --config_name or "
    f"other --preset) the demo recipe, {DEMO_RECIPE.relative_to(DEMO_RECIPE.parents[2])}."
)


def run_defaults(given: dict) -> dict:
    """The values a run uses for the flags it is not `given`: the demo recipe for a from-scratch run of the demo
    preset, the CPU's optimizer and data loading, training and evaluation on, a fresh output folder."""
    demo = given.get("preset", "demo") == "demo" and not (given.get("model_name_or_path") or given.get("config_name"))
    defaults = json.loads(DEMO_RECIPE.read_text(encoding="utf-8")) if demo else {}
    if not torch.cuda.is_available():
        # transformers' default fused AdamW is much slower on CPU than the foreach one, on a small ViT such as demo.
        defaults["optim"] = "adamw_torch"
        # accelerate sets up a multi-process CPU run (gloo) only when told the run is on CPU.
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            defaults["use_cpu"] = True
    if given.get("bf16") and not is_torch_bf16_gpu_available():
        defaults["use_cpu"] = True  # transformers refuses --bf16 on CPU unless told; autocast does bf16 there too
    on_cpu = given.get("use_cpu", defaults.get("use_cpu")) or not torch.cuda.is_available()
    # Pinned memory only speeds up copies to an accelerator; without one, torch warns for every data loader.
    defaults["dataloader_pin_memory"] = not on_cpu and torch.accelerator.is_available()
    defaults.update(do_train=True, do_eval=True)  # each of --do_train and --do_eval means what it says
    if "do_eval" in given and not string_to_bool(str(given["do_eval"])):
        defaults["eval_strategy"] = "no"  # transformers turns --do_eval back on for any other strategy
    if given.get("dp_noise_multiplier") is not None:
        defaults["max_grad_norm"] = 0.0  # DP-SGD clips every example's gradient instead
    source = given.get("model_name_or_path")
    settings = planned_mjp_settings(
        model_name_or_path=source,
        config_name=given.get("config_name"),
        preset=given.get("preset") or "demo",
        config_overrides=given.get("config_overrides"),
        mjp_updates={name: given[name] for name in MJP_FLAGS if given.get(name) is not None},
    )
    model = Path(source.rstrip("/")).name if source else given.get("preset") or "demo"
    data = Path((given.get("dataset_name") or given.get("train_dir") or "fashion-mnist").rstrip("/")).name
    defaults["output_dir"] = default_output_dir(run_kind(settings), model, data)
    return defaults


def parse_arguments(argv: list[str] | None = None):
    """The five argument dataclasses of a command line: its flags, after a `.json` recipe when one comes first (alone,
    as upstream, or with flags after it), over the run's defaults (`run_defaults`, which `--help` shows)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = (
        json.loads(Path(argv.pop(0)).read_text(encoding="utf-8")) if argv[:1] and argv[0].endswith(".json") else {}
    )
    given = {**recipe, **given_flags(ARGUMENT_CLASSES, argv)}
    parser = HfArgumentParser(ARGUMENT_CLASSES, description=HELP)
    parser.set_defaults(**{**run_defaults(given), **recipe})
    values = vars(parser.parse_args(argv))  # --help stops here, showing this command line's defaults
    check_flag_ranges(values)
    if "output_dir" not in given and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("Distributed runs need an explicit --output_dir (every process must write to the same one).")
    if "do_eval" in given and not string_to_bool(str(given["do_eval"])) and given.get("eval_strategy", "no") != "no":
        raise ValueError(f"--do_eval false contradicts --eval_strategy {given['eval_strategy']}: drop one of them.")
    model_args, data_args, mjp_args, defense_args, training_args = parser.parse_dict(values)
    if not training_args.do_train and not training_args.do_eval:
        raise ValueError("--do_train false and --do_eval false: this run would do nothing.")
    if not training_args.do_train and model_args.model_name_or_path is None:
        raise ValueError(
            "--do_train false without --model_name_or_path would evaluate a randomly initialised model; pass the "
            "trained model to evaluate with --model_name_or_path, or drop --do_train false."
        )
    if training_args.fp16 and training_args.device.type == "cpu":  # accelerate would train in fp32 without a word
        raise ValueError("--fp16 needs a GPU (or another fp16 accelerator); this run is on CPU: use --bf16 instead.")
    if training_args.push_to_hub:
        push_repo_id(training_args.hub_model_id, training_args.output_dir)  # a folder name that is no repo id
    defense_args.check_run(
        training_args, given, mixes_examples=data_args.mixup_alpha > 0 or data_args.cutmix_alpha > 0
    )
    training_args.remove_unused_columns = False  # image datasets: the image column must reach the transform
    return model_args, data_args, mjp_args, defense_args, training_args


def main(argv: list[str] | None = None) -> dict:
    threads = adaptive_threads()  # first, so that its first reading of the machine's load spans the data loading
    model_args, data_args, mjp_args, defense_args, training_args = parse_arguments(argv)

    # Setup logging
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
        f"Process {training_args.process_index} of {training_args.world_size}, device {training_args.device}, "
        f"bf16 {training_args.bf16}, fp16 {training_args.fp16}"
    )
    # `mjp_hf.hub` publishes the stock-ViT + MJP layout at the end, not the Trainer (which would push the MJP folder
    # as is): the Trainer needs no token then, and none reaches the arguments the run saves.
    push_to_hub, hub_token = training_args.push_to_hub, training_args.hub_token
    training_args.push_to_hub, training_args.hub_token = False, None
    # Every flag of the run by group, as JSON values, without tokens (`to_dict` masks the Hub token): saved into
    # each checkpoint by `MJPTrainer`, the flags that change the training compared on a resume.
    groups = zip(("model", "data", "mjp", "defense"), (model_args, data_args, mjp_args, defense_args))
    arguments = {name: asdict(group) for name, group in groups} | {"training": training_args.to_dict()}
    arguments["model"].pop("token")
    arguments = json.loads(json.dumps(arguments, default=str))

    # The paths the run reads and writes, checked before any folder is made or anything is loaded.
    inputs = {
        f"--{name}": getattr(model_args, name)
        for name in ("model_name_or_path", "config_name", "image_processor_name")
    }
    data_inputs = {f"--{name}": getattr(data_args, name) for name in ("train_dir", "validation_dir", "dataset_name")}
    check_output_location(training_args.output_dir, inputs, data_inputs)
    for flag, folder in (("--train_dir", data_args.train_dir), ("--validation_dir", data_args.validation_dir)):
        if folder is not None:
            check_image_folder(flag, folder)
    if model_args.model_name_or_path:
        otherwise = "leave --model_name_or_path out to train from scratch (--preset)"
        check_model_source(model_args.model_name_or_path, classifiers_only=False, otherwise=otherwise)

    # Detecting last checkpoint: one run at a time holds the output folder, which is resumed from its newest complete
    # checkpoint, refused, or started afresh (`open_run_folder` holds the whole policy).
    with open_run_folder(
        training_args,
        inputs=inputs,
        data_inputs=data_inputs,
        overwrite=mjp_args.overwrite_output_dir,
        allow_changed_flags=mjp_args.allow_changed_flags,
        run_arguments={
            group: {name: arguments[group][name] for name in names} for group, names in TRAINING_FLAGS.items()
        },
        config_fields=MJP_CONFIG_FIELDS,
    ) as resume:
        # Set seed before initializing model.
        transformers.set_seed(training_args.seed)

        # Initialize our dataset and prepare it for the 'image-classification' task.
        dataset, hub_id = load_image_dataset(
            dataset_name=data_args.dataset_name,
            dataset_config_name=data_args.dataset_config_name,
            train_dir=data_args.train_dir,
            validation_dir=data_args.validation_dir,
            cache_dir=model_args.cache_dir,
            token=model_args.token,
        )
        splits = training_splits(
            dataset,
            image_column=data_args.image_column_name,
            label_column=data_args.label_column_name,
            train_val_split=data_args.train_val_split,
            max_train_samples=data_args.max_train_samples,
            max_eval_samples=data_args.max_eval_samples,
            seed=training_args.seed,
            from_image_folder=data_args.train_dir is not None,
        )
        if training_args.do_train and training_args.dataloader_drop_last:
            splits.check_full_batch(training_args.per_device_train_batch_size, training_args.world_size)

        # Load pretrained model and image processor; the labels (id2label, label2id) are the data's.
        model, image_processor = build_model(
            splits.label_names,
            model_name_or_path=model_args.model_name_or_path,
            config_name=model_args.config_name,
            preset=model_args.preset or "demo",
            config_overrides=model_args.config_overrides,
            mjp_updates=mjp_args.config_updates(),
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            image_processor_name=model_args.image_processor_name,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.token,
            trust_remote_code=model_args.trust_remote_code,
        )

        # Define transforms: augmentation keyed to (seed, epoch, sample index), so a resumed run sees the very crops.
        transform = partial(
            ImageClassificationTransform,
            image_processor,
            num_channels=model.config.num_channels,
            image_column=data_args.image_column_name,
            label_column=data_args.label_column_name,
        )
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
                len(splits.label_names),
                mixup_alpha=data_args.mixup_alpha,
                cutmix_alpha=data_args.cutmix_alpha,
                switch_prob=data_args.mixup_switch_prob,
                label_smoothing=training_args.label_smoothing_factor,
                index_key=SAMPLE_INDEX_COLUMN,
                seed=training_args.seed,
            )
        # Set the transforms: they open the images themselves (the embedded default's uint8 arrays need no PIL).
        image_column = data_args.image_column_name
        train_dataset = with_sample_index(without_image_decoding(splits.train, image_column), SAMPLE_INDEX_COLUMN)
        train_dataset = train_dataset.with_transform(train_transform)
        eval_dataset = without_image_decoding(splits.eval, image_column).with_transform(transform(train=False))

        # Initialize our trainer: with DP-SGD (Opacus) its own class, with local noise or pruning a callback.
        ks, metric = tuple(k for k in TOP_K if k <= len(splits.label_names)), load_accuracy_topk()
        trainer_class, defense_kwargs = defense_args.trainer_class()
        trainer = trainer_class(
            model=model,
            args=training_args,
            train_dataset=train_dataset if training_args.do_train else None,
            eval_dataset=eval_dataset if training_args.do_eval else None,
            compute_metrics=lambda p: metric.compute(predictions=p.predictions, references=p.label_ids, k=ks),
            preprocess_logits_for_metrics=partial(top_k_predictions, k=max(ks)),
            processing_class=image_processor,
            data_collator=collator,
            callbacks=[
                PerProcessSeedCallback(),
                MJPScheduleCallback(mjp_args.jigsaw_warmup_epochs),
                TransformEpochCallback(*[part for part in (train_transform, collator) if hasattr(part, "set_epoch")]),
                AdaptiveThreadsCallback(threads),
                *defense_args.callbacks(),
            ],
            run_arguments=arguments,
            **defense_kwargs,
        )

        # Training
        metrics = {}
        if training_args.do_train:
            train_result = trainer.train(resume_from_checkpoint=resume.checkpoint if resume else None)
            trainer.save_model()
            trainer.log_metrics("train", train_result.metrics)
            # The defence and, for DP-SGD, ε (JSON null with a note at noise multiplier 0, never Infinity).
            metrics.update(train_result.metrics, **defense_args.record(trainer))
            trainer.save_metrics("train", metrics)
            trainer.save_state()

        # Evaluation (the last epoch's, when it was at the last step)
        if training_args.do_eval:
            eval_metrics = trainer.evaluate_final_weights()
            trainer.log_metrics("eval", eval_metrics)
            trainer.save_metrics("eval", eval_metrics)
            metrics.update(eval_metrics)

        # Write model card and (optionally) push to hub
        if trainer.is_world_process_zero():
            if not training_args.do_train:
                trainer.save_model()
            card = write_run_files(
                trainer,
                metrics=metrics,
                dataset_name=hub_id,
                eval_split=splits.eval_split,
                base_model=model_args.model_name_or_path,
                resume=resume,
                defense=defense_args.defense(),
            )
            if push_to_hub:
                url = push_mjp_model(
                    trainer.model,
                    image_processor,
                    push_repo_id(training_args.hub_model_id, training_args.output_dir),
                    card=card,
                    token=hub_token,
                    private=training_args.hub_private_repo,
                    commit_message="Training run of examples/run_image_classification.py",
                )
                print(f"Pushed to {url}", flush=True)
            report = run_report(
                training_args.output_dir, metrics, training_args.do_eval, splits.eval_split, len(eval_dataset)
            )
            print(report, flush=True)
    return metrics


if __name__ == "__main__":
    main()
