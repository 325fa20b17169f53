"""The model a training run starts from (`examples/run_image_classification.py`): a from-scratch MJP-ViT of a preset
or a config, or a stock ViT or MJP-ViT checkpoint fine-tuned with MJP; the data's labels and the MJP flags applied,
checked against the checkpoint; and the image processor that feeds it. The errors name the example's flags."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from transformers import AutoConfig, AutoImageProcessor, ViTImageProcessorPil

from ..configuration_mjp_vit import MJP_CONFIG_FIELDS, MJPViTConfig, pair
from ..data.transforms import processor_image_size
from ..modeling_mjp_vit import MJPViTForImageClassification, is_mjp_only_parameter
from ..utils import listed
from .presets import PRESETS, config_from_preset


logger = logging.getLogger(__name__)


def label_maps(names: Sequence[str]) -> dict:
    """The config fields of a label set: `num_labels`, `id2label` and `label2id`."""
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }


def mjp_config_from(config) -> MJPViTConfig:
    """An `MJPViTConfig` of a checkpoint's config: an MJP one as is, a stock ViT one with the MJP defaults added."""
    if config.model_type == MJPViTConfig.model_type:
        return config
    if config.model_type != "vit":
        raise ValueError(
            f"The checkpoint has model_type {config.model_type!r}; this script starts from 'vit' (ViT, non-distilled "
            "DeiT) or 'mjp_vit' checkpoints."
        )
    return MJPViTConfig.from_vit_config(config)


def _shape(config) -> tuple:
    return (config.image_size, config.patch_size, config.num_channels, config.hidden_size)


def model_config(
    label_names: Sequence[str],
    *,
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    preset: str = "demo",
    config_overrides: str | None = None,
    mjp_updates: Mapping | None = None,
    ignore_mismatched_sizes: bool = False,
    **hub_kwargs,
) -> MJPViTConfig:
    """The config of the model to train: a checkpoint's (`model_name_or_path`), a config's (`config_name`) or a
    preset's, with `label_names`, then `config_overrides` ("key=value,...") and the MJP flags (`mjp_updates`).

    A checkpoint whose labels differ from the data's, or whose shape the overrides change, is refused unless
    `ignore_mismatched_sizes` (which re-initialises what no longer fits)."""
    labels = label_maps(label_names)
    source = model_name_or_path
    if source is None and config_name is None:
        config = config_from_preset(preset, **labels)
    elif source is None:
        config = mjp_config_from(AutoConfig.from_pretrained(config_name, **hub_kwargs))
        config.update(labels)
    else:
        config = mjp_config_from(AutoConfig.from_pretrained(source, **hub_kwargs))
        checkpoint_labels = [config.id2label[i] for i in range(config.num_labels)]
        if checkpoint_labels != list(label_names):
            if not ignore_mismatched_sizes:
                raise ValueError(
                    f"{source} classifies {config.num_labels} labels ({listed(checkpoint_labels)}) but the data has "
                    f"{len(label_names)} ({listed(label_names)}). Pass --ignore_mismatched_sizes to train a new "
                    "classifier head for these labels."
                )
            config.update(labels)
    checkpoint_shape = _shape(config)
    if config_overrides:
        config.update_from_string(config_overrides)
    if source is not None and not ignore_mismatched_sizes and checkpoint_shape != _shape(config):
        raise ValueError(
            f"--config_overrides {config_overrides!r} changes the shape of {source} (image_size, patch_size, "
            "num_channels, hidden_size); pass --ignore_mismatched_sizes to re-initialise the weights that no longer "
            "fit."
        )
    for name, value in (mjp_updates or {}).items():
        setattr(config, name, value)
    config.validate()
    return config


def planned_mjp_settings(
    *,
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    preset: str = "demo",
    config_overrides: str | None = None,
    mjp_updates: Mapping | None = None,
) -> dict:
    """The MJP settings a run will train with, known before anything is loaded or downloaded (for its folder's name):
    a local MJP-ViT checkpoint's or config's, else the preset's (from scratch), else the MJP defaults (a stock ViT,
    or a Hub model, whose own settings are read when it loads); then `config_overrides` and the MJP flags."""
    settings = {name: getattr(MJPViTConfig(), name) for name in MJP_CONFIG_FIELDS}
    source = model_name_or_path or config_name
    if source is None:
        settings.update({name: value for name, value in PRESETS.get(preset, {}).items() if name in settings})
    else:
        try:
            saved = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = None  # a Hub id, or a folder that `check_model_source` refuses
        if isinstance(saved, dict) and saved.get("model_type") == MJPViTConfig.model_type:
            settings.update({name: saved[name] for name in MJP_CONFIG_FIELDS if name in saved})
    for item in (config_overrides or "").split(","):
        name, _, value = item.partition("=")
        if name.strip() in settings and value:
            settings[name.strip()] = value.strip()
    settings.update(mjp_updates or {})
    return settings


def run_kind(mjp_settings: Mapping) -> str:
    """What a run trains, for its folder's name: 'naive' (the naive-shuffle ablation), 'vit' (no jigsaw and no DALR
    head: the plain-ViT baseline) or 'mjp'."""
    if str(mjp_settings["jigsaw_mode"]) == "naive":
        return "naive"
    no_jigsaw = float(mjp_settings["jigsaw_prob"]) == 0 or float(mjp_settings["jigsaw_ratio"]) == 0
    return "vit" if no_jigsaw and str(mjp_settings["dalr_head"]) == "none" else "mjp"


def model_from_config(
    config: MJPViTConfig,
    model_name_or_path: str | None = None,
    *,
    ignore_mismatched_sizes: bool = False,
    **hub_kwargs,
) -> MJPViTForImageClassification:
    """An `MJPViTForImageClassification` of `config`: from scratch, or with the weights of `model_name_or_path`
    (a stock ViT or MJP-ViT checkpoint). Only MJP's own weights and a re-initialised head may be new: anything else
    means the checkpoint's keys were not understood, and the encoder would silently train from scratch."""
    if model_name_or_path is None:
        model = MJPViTForImageClassification(config)
    else:
        model, info = MJPViTForImageClassification.from_pretrained(
            model_name_or_path,
            config=config,
            ignore_mismatched_sizes=ignore_mismatched_sizes,
            output_loading_info=True,
            **hub_kwargs,
        )
        unexpected_new = [
            key for key in info["missing_keys"] if not (is_mjp_only_parameter(key) or "classifier" in key)
        ]
        if unexpected_new:
            raise ValueError(
                f"{model_name_or_path} does not hold these weights of the model: {listed(unexpected_new, 5)}; is it "
                "a ViT image classifier or encoder checkpoint?"
            )
        if info["missing_keys"]:
            logger.info("Newly initialised: %s", sorted(info["missing_keys"]))
    logger.info(
        "MJP-ViT: %s parameters, %dx%d patch grid, jigsaw %s (ratio %s, p %s), DALR %s (weight %s)",
        f"{model.num_parameters():,}",
        *model.vit.embeddings.grid_size,
        config.jigsaw_mode,
        config.jigsaw_ratio,
        config.jigsaw_prob,
        config.dalr_head,
        config.dalr_loss_weight,
    )
    return model


def load_image_processor(
    config: MJPViTConfig,
    name: str | None = None,
    *,
    required: bool = False,
    cache_dir=None,
    revision="main",
    token=None,
):
    """The image processor of `name` (a Hub id or folder), or a ViT processor at the model's size when there is no
    name, or (unless `required`: an explicit --image_processor_name) when the checkpoint has none. One whose output
    size is not the model's is refused, naming the fixes."""
    size = {"height": pair(config.image_size)[0], "width": pair(config.image_size)[1]}
    if name is None:
        image_processor = ViTImageProcessorPil(size=size)
    else:
        try:
            image_processor = AutoImageProcessor.from_pretrained(
                name, cache_dir=cache_dir, revision=revision, token=token, backend="pil"
            )
        except OSError:
            if required:
                raise
            logger.warning("%s has no image processor; using a ViT processor at %d px.", name, size["height"])
            image_processor = ViTImageProcessorPil(size=size)
    height, width = processor_image_size(image_processor)
    expected = pair(config.image_size)
    if (height, width) != tuple(expected):
        raise ValueError(
            f"The image processor resizes to {height}x{width} but the model takes {expected[0]}x{expected[1]} images. "
            "Pass --image_processor_name with a processor of the model's size, or change the model's size with "
            f"--config_overrides image_size={height} (with --ignore_mismatched_sizes for a checkpoint)."
        )
    return image_processor


def build_model(
    label_names: Sequence[str],
    *,
    model_name_or_path: str | None = None,
    config_name: str | None = None,
    preset: str = "demo",
    config_overrides: str | None = None,
    mjp_updates: Mapping | None = None,
    ignore_mismatched_sizes: bool = False,
    image_processor_name: str | None = None,
    cache_dir: str | None = None,
    revision: str = "main",
    token: str | None = None,
    trust_remote_code: bool = False,
):
    """`(model, image processor)` of a training run: the config (`model_config`), the model with the checkpoint's
    weights when there is one (`model_from_config`), and the image processor of `image_processor_name`, else of the
    checkpoint, else a ViT processor at the model's size (`load_image_processor`)."""
    hub = dict(cache_dir=cache_dir, revision=revision, token=token)
    config = model_config(
        label_names,
        model_name_or_path=model_name_or_path,
        config_name=config_name,
        preset=preset,
        config_overrides=config_overrides,
        mjp_updates=mjp_updates,
        ignore_mismatched_sizes=ignore_mismatched_sizes,
        trust_remote_code=trust_remote_code,
        **hub,
    )
    model = model_from_config(
        config,
        model_name_or_path,
        ignore_mismatched_sizes=ignore_mismatched_sizes,
        trust_remote_code=trust_remote_code,
        **hub,
    )
    processor = load_image_processor(
        config, image_processor_name or model_name_or_path, required=image_processor_name is not None, **hub
    )
    return model, processor


__all__ = [
    "build_model",
    "model_from_config",
    "label_maps",
    "load_image_processor",
    "mjp_config_from",
    "model_config",
    "planned_mjp_settings",
    "run_kind",
]
