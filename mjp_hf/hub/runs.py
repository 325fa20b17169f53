"""A training run's output folder (`examples/run_image_classification.py`): its checkpoint, loaded strictly, and
what it recorded (metrics, hyper-parameters), for the card of the published repository."""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import ModelCard
from transformers import TrainerState

from ..modeling_mjp_vit import MJPViTForImageClassification, MJPViTModel
from .card import build_model_card


# `TrainingArguments` fields worth a line in a card, when a run recorded them (training_args.json).
CARD_TRAINING_ARGS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "label_smoothing_factor",
    "optim",
    "seed",
    "bf16",
    "fp16",
)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-run the evaluation that writes it.") from error


def _read_trainer_state(path: Path) -> TrainerState:
    try:
        return TrainerState.load_from_json(str(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-run the training that writes it.") from error
    except TypeError as error:  # fields this transformers version does not know
        raise ValueError(f"{path} is not a `TrainerState` this transformers version reads ({error}).") from error


def read_run_records(run_dir: str | os.PathLike) -> tuple[dict, dict]:
    """`(metrics, hyperparameters)` recorded by a training run's output folder.

    Metrics come from `all_results.json` (or `eval_results.json`). Hyper-parameters come from `training_args.json`
    (a JSON dump of the `TrainingArguments`, selected fields) and `trainer_state.json` (batch size, steps);
    `training_args.bin` is a pickle and is never read.
    """
    run_dir = Path(run_dir)
    metrics = {}
    for name in ("all_results.json", "eval_results.json"):
        if (run_dir / name).is_file():
            metrics = _read_json(run_dir / name)
            break
    hyperparameters = {}
    if (run_dir / "training_args.json").is_file():
        args = _read_json(run_dir / "training_args.json")
        hyperparameters.update(
            {key: args[key] for key in CARD_TRAINING_ARGS if args.get(key) not in (None, -1, 0.0, False)}
        )
        for key in ("num_train_epochs", "learning_rate", "seed"):
            if key in args:
                hyperparameters.setdefault(key, args[key])
    if (run_dir / "trainer_state.json").is_file():
        state = _read_trainer_state(run_dir / "trainer_state.json")
        for key, name in (
            ("train_batch_size", "train_batch_size (per device)"),
            ("global_step", "optimizer steps"),
            ("num_train_epochs", "num_train_epochs"),
        ):
            if getattr(state, key):  # None or 0: the `TrainerState` default, so the run did not record it
                hyperparameters.setdefault(name, getattr(state, key))
    return metrics, hyperparameters


def load_run(run_dir: str | os.PathLike):
    """`(model, image_processor)` of a run folder, the model in eval mode; refused when any tensor is missing,
    unexpected or mis-shaped (weights left at their random initialisation would be published as trained ones)."""
    from transformers import AutoImageProcessor

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no config.json; pass the output folder of a finished training run.")
    config = _read_json(run_dir / "config.json")
    if config.get("model_type") != "mjp_vit":
        raise ValueError(
            f"{run_dir}/config.json has model_type {config.get('model_type')!r}, not 'mjp_vit'; these tools publish "
            "MJP-ViT checkpoints (convert a stock ViT with `python -m mjp_hf.conversion.from_vit`)."
        )
    model_class = (
        MJPViTForImageClassification
        if "MJPViTForImageClassification" in config.get("architectures", ["MJPViTForImageClassification"])
        else MJPViTModel
    )
    # Mis-shaped tensors are reported (then refused below, by name) rather than raised on without their names.
    model, info = model_class.from_pretrained(run_dir, output_loading_info=True, ignore_mismatched_sizes=True)
    problems = [
        f"{what} {sorted(map(str, info[key]))}"
        for key, what in (
            ("missing_keys", "missing tensors"),
            ("unexpected_keys", "unexpected tensors"),
            ("mismatched_keys", "tensors of the wrong shape"),
        )
        if info.get(key)
    ]
    if problems:
        raise ValueError(
            f"{run_dir} does not hold a complete {model_class.__name__} checkpoint: "
            + "; ".join(problems)
            + ". Publish the output folder of a finished run, or re-save the model with `save_pretrained`."
        )
    return model.eval(), AutoImageProcessor.from_pretrained(run_dir)


def card_for_run(run_dir: str | os.PathLike, *, model_id: str, model=None, **card_kwargs) -> ModelCard:
    """The model card of a training run's output folder, filled from its recorded metrics and arguments (`model`:
    the run's model when it is loaded already)."""
    run_dir = Path(run_dir)
    if model is None:
        model, _ = load_run(run_dir)
    metrics, hyperparameters = read_run_records(run_dir)
    # The card the training script wrote knows the dataset and the starting checkpoint.
    if (run_dir / "README.md").is_file():
        written = ModelCard.load(run_dir / "README.md").data
        if card_kwargs.get("dataset_name") is None and written.datasets:
            card_kwargs["dataset_name"] = written.datasets[0]
        if card_kwargs.get("base_model") is None and written.base_model:
            card_kwargs["base_model"] = written.base_model
        if card_kwargs.get("dataset_split") is None and written.eval_results:
            card_kwargs["dataset_split"] = written.eval_results[0].dataset_split
    card_kwargs.setdefault("metrics", metrics)
    card_kwargs.setdefault("hyperparameters", hyperparameters)
    return build_model_card(model, model_id=model_id, **card_kwargs)
