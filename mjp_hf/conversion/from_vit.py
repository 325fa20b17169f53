"""Start MJP training from a stock transformers ViT (or a non-distilled DeiT) checkpoint.

    python -m mjp_hf.conversion.from_vit --model_name_or_path ./vit-folder --output_dir ./mjp-vit [--jigsaw_ratio 0.1 ...]

Every ViT weight is kept (patch and position embeddings, encoder, classifier); only the parts MJP adds are new and
initialised as a fresh MJP model would be: the unknown position embedding and the DALR head. In eval mode the result
computes exactly what the source ViT computes, which the command checks before it writes anything.

Distilled DeiT checkpoints (`model_type: deit`, a distillation token and a second head) are refused: MJP-ViT has one
[CLS] token, and dropping the distillation token would silently change what the network computes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoConfig, AutoImageProcessor, ViTConfig
from transformers.utils import logging as transformers_logging

from ..configuration_mjp_vit import MJP_CONFIG_FIELDS, MJPViTConfig, pair
from ..hub.files import CHECKPOINT_FILE_PATTERNS, check_output_dir, staged_folder
from ..modeling_mjp_vit import (
    MJPViTForImageClassification,
    MJPViTModel,
    MJPViTPreTrainedModel,
    is_mjp_only_parameter,
)


class NotAViTCheckpointError(ValueError):
    """The source is not a stock ViT / non-distilled DeiT classifier or encoder."""


def _source_config(model_name_or_path: str, **hub_kwargs) -> ViTConfig:
    config = AutoConfig.from_pretrained(model_name_or_path, **hub_kwargs)
    architectures = list(getattr(config, "architectures", None) or [])
    if config.model_type == "deit" or any("Teacher" in name or "DeiT" in name for name in architectures):
        raise NotAViTCheckpointError(
            f"{model_name_or_path} is a DeiT checkpoint with a distillation token (model_type {config.model_type!r}, "
            f"architectures {architectures}). MJP-ViT has a single [CLS] token; start from a non-distilled DeiT, "
            "whose checkpoints are stock ViTs (e.g. facebook/deit-small-patch16-224, model_type 'vit')."
        )
    if config.model_type == MJPViTConfig.model_type:
        raise NotAViTCheckpointError(
            f"{model_name_or_path} is already an MJP-ViT checkpoint; load it with MJPViTForImageClassification."
        )
    if not isinstance(config, ViTConfig) or config.model_type != "vit":
        raise NotAViTCheckpointError(
            f"{model_name_or_path} has model_type {config.model_type!r}; from_vit starts from a transformers ViT "
            "(model_type 'vit') or a non-distilled DeiT."
        )
    return config


def mjp_config_from_vit(vit_config: ViTConfig, **mjp_settings) -> MJPViTConfig:
    """An `MJPViTConfig` with every field of `vit_config` and the given MJP settings (defaults: the release)."""
    return MJPViTConfig.from_vit_config(vit_config, **mjp_settings)


def mjp_from_vit(model_name_or_path: str | Path, **mjp_settings) -> MJPViTPreTrainedModel:
    """Load a stock ViT checkpoint into the matching MJP class (classifier or encoder), keeping all its weights.

    Raises if any ViT weight is missing from or left unused by the checkpoint: only the unknown position embedding
    and the DALR head may be new.
    """
    vit_config = _source_config(str(model_name_or_path))
    config = mjp_config_from_vit(vit_config, **mjp_settings)
    architectures = list(vit_config.architectures or ["ViTForImageClassification"])
    is_encoder = architectures == ["ViTModel"]
    model_class = MJPViTModel if is_encoder else MJPViTForImageClassification
    kwargs = {}
    if is_encoder:
        kwargs["add_pooling_layer"] = _has_pooler(model_name_or_path)
    # transformers reports the parameters MJP adds as MISSING ("Consider training..."); they are new by design,
    # and every other key is checked below, so the report would only alarm.
    with _quiet_load_report():
        model, info = model_class.from_pretrained(
            model_name_or_path, config=config, output_loading_info=True, **kwargs
        )
    not_new = [key for key in info["missing_keys"] if not is_mjp_only_parameter(key)]
    problems = []
    if not_new:
        problems.append(f"ViT weights missing from the checkpoint: {sorted(not_new)}")
    if info["unexpected_keys"]:
        problems.append(f"checkpoint weights the MJP model does not use: {sorted(info['unexpected_keys'])}")
    if info.get("mismatched_keys"):
        problems.append(f"weights of the wrong shape: {sorted(info['mismatched_keys'])}")
    if problems:
        raise NotAViTCheckpointError(f"{model_name_or_path} does not load as a complete ViT: " + "; ".join(problems))
    return model.eval()


@contextmanager
def _quiet_load_report():
    """Silence transformers' weight-loading report (a warning of `transformers.modeling_utils`) for one load."""
    report_logger = transformers_logging.get_logger("transformers.modeling_utils")
    level = report_logger.level
    report_logger.setLevel(transformers_logging.ERROR)
    try:
        yield
    finally:
        report_logger.setLevel(level)


def _added_parts(model: MJPViTPreTrainedModel) -> str:
    config = model.config
    parts = []
    if config.applies_unk_position_embedding:
        parts.append("the unknown position embedding")
    if config.dalr_head != "none":
        parts.append(f"the {config.dalr_head} DALR head")
    return " and ".join(parts) or "no parameters (no unknown position embedding, no DALR head)"


def _has_pooler(model_name_or_path) -> bool:
    from safetensors import safe_open

    folder = Path(model_name_or_path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    for file in files:
        with safe_open(file, "pt") as handle:
            if any("pooler" in key for key in handle.keys()):
                return True
    return not files  # unknown (e.g. a Hub id): keep the ViTModel default


@torch.no_grad()
def max_eval_difference(mjp_model: MJPViTPreTrainedModel, model_name_or_path, seed: int = 0) -> float:
    """Largest absolute difference between the MJP model and the source ViT on a random batch, in eval mode."""
    from transformers import ViTForImageClassification, ViTModel

    source_class = ViTModel if isinstance(mjp_model, MJPViTModel) else ViTForImageClassification
    source = source_class.from_pretrained(model_name_or_path).eval()
    config = mjp_model.config
    height, width = pair(config.image_size)
    x = torch.randn(2, config.num_channels, height, width, generator=torch.Generator().manual_seed(seed))
    ours, theirs = mjp_model.eval()(x), source(x)
    if isinstance(mjp_model, MJPViTModel):
        return (ours.last_hidden_state - theirs.last_hidden_state).abs().max().item()
    return (ours.logits - theirs.logits).abs().max().item()


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _setting_type(field: dataclasses.Field):
    """argparse `type=` of one MJP setting: parsed as the config field's type and checked by the field's own
    validators, so that a value out of range is refused when the command line is parsed, naming the flag."""
    kind = {bool: _bool, int: int, str: str}.get(type(field.default), float)
    if field.name in ("jigsaw_min_block", "jigsaw_max_block"):
        kind = int

    def parse(value: str):
        try:
            parsed = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {getattr(kind, '__name__', kind)}, got {value!r}") from None
        if isinstance(parsed, float) and not math.isfinite(parsed):
            raise argparse.ArgumentTypeError(f"{value!r} is invalid; pass a finite number")
        for validator in field.metadata.get("validator", []):
            try:
                validator(parsed)
            except ValueError as error:
                raise argparse.ArgumentTypeError(f"{value!r} is invalid; {error}") from None
        return parsed

    return parse


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mjp_hf.conversion.from_vit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="a transformers ViT or non-distilled DeiT folder")
    parser.add_argument("--output_dir", required=True, help="new or empty folder for the MJP checkpoint")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="write into a non-empty --output_dir")
    mjp = parser.add_argument_group("MJP settings (default: the released recipe)")
    for field in dataclasses.fields(MJPViTConfig):
        if field.name not in MJP_CONFIG_FIELDS:
            continue
        choices = typing.get_args(field.type) if typing.get_origin(field.type) is typing.Literal else None
        mjp.add_argument(
            f"--{field.name}",
            type=str if choices else _setting_type(field),
            choices=choices,
            default=None,
            help=f"default {field.default!r}",
        )
    return parser.parse_args(argv)


def main(argv=None) -> MJPViTPreTrainedModel:
    """The command line: a one-line message on success, a one-line error (exit status 1) for a source or a setting
    it cannot use."""
    args = _parse_args(argv)
    try:
        return _convert(args)
    except (NotAViTCheckpointError, ValueError, FileExistsError, NotADirectoryError, IsADirectoryError) as error:
        raise SystemExit(f"python -m mjp_hf.conversion.from_vit: {error}") from error


def _convert(args) -> MJPViTPreTrainedModel:
    source = Path(args.model_name_or_path)
    output_dir = check_output_dir(
        args.output_dir,
        overwrite=args.overwrite_output_dir,
        output_flag="--output_dir",
        overwrite_flag="--overwrite_output_dir",
        inputs={"--model_name_or_path": source} if source.exists() else None,
    )
    settings = {name: getattr(args, name) for name in MJP_CONFIG_FIELDS if getattr(args, name) is not None}
    model = mjp_from_vit(args.model_name_or_path, **settings)
    difference = max_eval_difference(model, args.model_name_or_path)
    if difference > 1e-4:
        raise RuntimeError(f"The MJP model differs from the source ViT by {difference:.3g} in eval mode; not saved.")
    try:
        image_processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    except OSError:
        image_processor = None
        print(f"{args.model_name_or_path} has no image processor; pass --image_processor_name when training.")
    # Written beside the folder and moved in whole: a failure or a kill leaves --output_dir as it was; with
    # --overwrite_output_dir only a checkpoint's own files are replaced (and stale weights of another removed).
    with staged_folder(output_dir, overwrite=args.overwrite_output_dir, patterns=CHECKPOINT_FILE_PATTERNS) as staging:
        model.save_pretrained(staging)
        if image_processor is not None:
            image_processor.save_pretrained(staging)
    new = sum(p.numel() for n, p in model.named_parameters() if is_mjp_only_parameter(n))
    print(
        f"Added {_added_parts(model)} ({new:,} new parameters, every ViT weight kept) and wrote "
        f"{type(model).__name__} to {output_dir}; max |eval difference| to the source ViT {difference:.2e}; MJP "
        "settings in config.json."
    )
    return model


if __name__ == "__main__":
    main()
