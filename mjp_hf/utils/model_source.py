"""What a `--model_name_or_path` names, checked before anything is loaded: the one check of the evaluations
(`mjp_hf.evaluation.common`) and the training example.

A saved ViT or MJP-ViT folder passes when its `config.json` is a JSON object of one of those model types and its
weights can be read: safetensors (every shard an index lists), or a `pytorch_model.bin` that
`torch.load(weights_only=True)` reads. A value that is no folder passes as a Hub id when it is one and the Hub is
online. Every refusal names the value, the flag and the fix, and none advises loading unsafely.
"""

from __future__ import annotations

import json
from pathlib import Path

from .text import listed


MODEL_FLAG = "--model_name_or_path"
# The model types the package reads: MJP-ViT and stock ViT (a ViT or non-distilled DeiT checkpoint).
MODEL_TYPES = ("mjp_vit", "vit")
SAVED_MODEL = (
    "pass the output_dir of a training run or a folder written by `save_pretrained` (config.json and "
    "model.safetensors)"
)
CONVERT_RELEASE = "a released MJP checkpoint (.pth) converts with `python -m mjp_hf.conversion.original`"


def refuse(value, problem: str, fix: str = SAVED_MODEL) -> ValueError:
    return ValueError(f"{MODEL_FLAG} {str(value)!r} {problem}; {fix}.")


def unsafe_pickle(value, names=(), otherwise: str = "") -> ValueError:
    listed_names = f" ({listed(names)})" if names else ""
    return refuse(
        value,
        f"has a pytorch_model.bin that holds more than tensors{listed_names}, which this package does not unpickle",
        "load it where you trust it and save it with `save_pretrained` (safetensors)" + otherwise,
    )


def _check_safetensors(value, files: list[Path], otherwise: str) -> None:
    from safetensors import safe_open

    for file in files:
        if not file.is_file():
            raise refuse(
                value,
                f"lists the weight file {file.name}, which is missing",
                "copy the whole folder again" + otherwise,
            )
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as error:  # SafetensorError, OSError: a damaged or incomplete file
            raise refuse(
                value,
                f"holds a weight file that cannot be read, {file} ({error})",
                "it is damaged or incomplete (an interrupted save or copy?): save or copy the model again" + otherwise,
            ) from None


def _check_pickle(value, file: Path, otherwise: str) -> None:
    """Refuse a `pytorch_model.bin` that `torch.load(weights_only=True)` would refuse, without loading it."""
    import torch.serialization

    find = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if find is None:
        return  # the load refuses it (`mjp_hf.evaluation.common.load_model`, transformers' weights_only load)
    try:
        unsafe = find(str(file))
    except Exception as error:  # not a zip archive: truncated, or not weights at all
        raise refuse(
            value,
            f"has a {file.name} that cannot be read ({type(error).__name__}: {error})",
            "it is truncated or not model weights: save or copy the model again" + otherwise,
        ) from None
    if unsafe:
        raise unsafe_pickle(value, unsafe, otherwise)


def check_model_source(model_name_or_path, *, classifiers_only: bool = True, otherwise: str | None = None) -> str:
    """What `--model_name_or_path` names, checked before anything is loaded: a saved MJP-ViT or ViT folder whose
    weights can be read, or (online) a Hub model id. Raises a `ValueError` or `FileNotFoundError` naming the value,
    the flag and the fix; returns the value for `from_pretrained`.

    `classifiers_only` refuses a folder whose `architectures` hold no image classifier (the evaluations need a head;
    training adds one). `otherwise` is the caller's alternative to a saved model, added to every fix (the training
    example: "leave --model_name_or_path out to train from scratch")."""
    from huggingface_hub import is_offline_mode
    from huggingface_hub.utils import validate_repo_id

    otherwise = f", or {otherwise}" if otherwise else ""
    saved_model = SAVED_MODEL + otherwise
    text = str(model_name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        raise refuse(text, "is a file, not a model folder", f"{SAVED_MODEL}; {CONVERT_RELEASE}{otherwise}")
    if not path.exists():
        try:
            validate_repo_id(text)
            hub_id = not text.startswith((".", "~", "/")) and text.count("/") <= 1
        except Exception:  # HFValidationError: not a Hub id
            hub_id = False
        where = f"no such folder (looked in {Path.cwd()})" if not path.is_absolute() else "no such folder"
        if not hub_id or is_offline_mode():
            reason = " and the Hub is offline (HF_HUB_OFFLINE)" if hub_id else ""
            raise FileNotFoundError(f"{MODEL_FLAG} {text!r}: {where}{reason}; {saved_model}.")
        return text  # a Hub id, for transformers to fetch
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{MODEL_FLAG} {text!r} is not a saved model folder (no config.json); {saved_model}.")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise refuse(text, f"has a config.json that is not readable JSON ({error})", "save the model again") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    architectures = (config.get("architectures") or []) if isinstance(config, dict) else []
    if model_type not in MODEL_TYPES:
        kinds = "image classifiers" if classifiers_only else "models"
        raise refuse(
            text,
            f"is a {model_type!r} model{f' ({listed(architectures)})' if architectures else ''}",
            f"this package reads MJP-ViT and ViT {kinds} (model_type 'mjp_vit' or 'vit': e.g. a ViT or non-distilled "
            f"DeiT checkpoint such as google/vit-base-patch16-224-in21k): {saved_model}",
        )
    if (
        classifiers_only
        and architectures
        and not any(str(name).endswith("ForImageClassification") for name in architectures)
    ):
        raise refuse(
            text,
            f"has no classification head (it holds a {', '.join(architectures)}): it is a bare encoder",
            "the evaluations need an image classifier (ViTForImageClassification or MJPViTForImageClassification)",
        )
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").exists():
        _check_safetensors(text, [path / "model.safetensors"], otherwise)
    elif index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise refuse(text, f"has an unreadable {index.name} ({error})", "save the model again") from None
        _check_safetensors(text, [path / shard for shard in shards], otherwise)
    elif (path / "pytorch_model.bin").is_file():
        _check_pickle(text, path / "pytorch_model.bin", otherwise)
    elif not (path / "pytorch_model.bin.index.json").is_file():
        raise refuse(text, "holds no weights (no model.safetensors)", saved_model)
    return text


__all__ = ["MODEL_FLAG", "MODEL_TYPES", "SAVED_MODEL", "check_model_source", "refuse", "unsafe_pickle"]
