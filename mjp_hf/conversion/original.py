"""Convert the authors' released MJP checkpoints (`yhlleo/MJP`, timm ViT layout) to `mjp_hf`.

    python -m mjp_hf.conversion.original --checkpoint best_model.pth --output_dir DIR [--push_to_hub ORG/NAME]

The released `best_model.pth` is a `torch.save` dict `{model, max_accuracy, epoch, config}`: `model` holds timm
`VisionTransformer` keys, except that the position embeddings are an `nn.Embedding` (`pos_embed.weight`, rows
`[CLS, patch 0 .. N-1, UNK]`) and the DALR head is `dlocr.layers.{0,2}` (nonlinear) or `dlocr.layers` (linear);
`config` is a pickled yacs `CfgNode`.

Names: the release calls the DALR head and its loss both `dlocr` (`DenseLocRegress`, `--use-dlocr`,
`--lambda_dlocr`, `TRAIN.USE_DLOCR`, `TRAIN.LAMBDA_DLOCR`, `TRAIN.DLOCR_TYPE`). Here, as in the paper, the head is
the DALR (`config.dalr_head`, `model.vit.dalr_head`, its weight `config.dalr_loss_weight`) and its weighted L1
loss is the localization loss (`localization_loss` in the outputs and the training logs).

The file is read with `torch.load(weights_only=True)`: no code it names is imported or run. Objects of classes the
restricted unpickler does not know (the yacs config) are rebuilt as inert plain dicts of their pickled data, and the
conversion says so; `--trust_pickled_config` loads them with full pickle instead, for files you trust.

The shape comes from the tensors (width, depth, MLP size, patch size, grid, channels, classes, UNK row, DALR head),
checked against the config where the file carries one; the number of attention heads, which no tensor records, is
`hidden_size // 64` (true of every released shape) unless `--num_attention_heads` says otherwise. The output folder
gets the publishing layout of `mjp_hf.hub` (stock ViT at the root, the full MJP model under `mjp/`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import ModelCard

from ..configuration_mjp_vit import MJPViTConfig
from ..hub.card import MODEL_CARDS_DIR, build_model_card, placeholder_repo_id, repo_id_argument
from ..hub.files import check_output_dir, layout_files
from ..hub.layout import push_mjp_model, save_publishing_layout
from ..modeling_mjp_vit import MJPViTForImageClassification


logger = logging.getLogger(__name__)

RELEASED_CARD = MODEL_CARDS_DIR / "mjp-vit-small.md"
RELEASED_PARAMETERS = 22_199_658  # ViT-S/16 MJP as released: DeiT-S (22,050,664) + UNK row + nonlinear DALR
# Where `mjp-vit-small.md` receives the figures recorded in the converted file (filled at conversion time).
CHECKPOINT_RECORD_MARKER = re.compile(r"<!-- checkpoint-record -->.*?<!-- /checkpoint-record -->", re.S)
# The released recipe (train.sh, config.py), for a file whose config cannot be read.
RELEASED_MJP_SETTINGS = dict(
    jigsaw_ratio=0.1, jigsaw_prob=0.5, jigsaw_mode="mjp", dalr_loss_weight=0.01, dalr_normalize_targets=False
)
_MAX_UNKNOWN_GLOBALS = 32


class ReleasedCheckpointError(ValueError):
    """The file is not a released MJP checkpoint this converter understands; the message says what is wrong."""


# ---------------------------------------------------------------------------------------------------------------
# Reading the file without running pickled code
# ---------------------------------------------------------------------------------------------------------------


class _InertPickledObject:
    """Stand-in for a class the restricted unpickler refuses: it becomes a plain `OrderedDict` holding whatever
    items and attributes were pickled (`torch.load(weights_only=True)` may fill and update an `OrderedDict`), and
    nothing of the original class is imported or called."""

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


def _unsupported_global(error: Exception) -> str | None:
    match = re.search(r"Unsupported global: GLOBAL (\S+) was not an allowed global", str(error))
    return match.group(1) if match else None


def read_checkpoint(path: str | Path, *, trust_pickled_config: bool = False) -> tuple[dict, list[str]]:
    """The checkpoint's top-level dict and the names of the pickled classes read as inert dicts.

    `trust_pickled_config=True` uses full pickle (`weights_only=False`): only for files from a trusted source, and
    the classes they name (yacs) must be installed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path} does not exist; pass the released best_model.pth.")
    if trust_pickled_config:
        logger.warning("Reading %s with full pickle (--trust_pickled_config): it may run code it names.", path)
        return torch.load(path, map_location="cpu", weights_only=False), []
    inert: list[str] = []
    while True:
        try:
            with torch.serialization.safe_globals([(_InertPickledObject, name) for name in inert]):
                payload = torch.load(path, map_location="cpu", weights_only=True)
            break
        except Exception as error:  # torch raises UnpicklingError, wrapped or not, depending on the version
            name = _unsupported_global(error)
            if name is None or name in inert or len(inert) >= _MAX_UNKNOWN_GLOBALS:
                raise _unreadable(path, error) from error
            inert.append(name)
    if inert:
        logger.warning(
            "%s holds pickled objects that weights_only loading does not execute (%s); they were read as plain dicts "
            "of their stored values, without running their code. Pass --trust_pickled_config for trusted files.",
            path,
            ", ".join(inert),
        )
    return payload, inert


def _is_torch_save_file(path: Path) -> bool:
    """Whether the bytes are whole `torch.save` output: a complete zip archive (torch >= 1.6) or a legacy pickle,
    which starts with the pickle protocol opcode."""
    with path.open("rb") as handle:
        if zipfile.is_zipfile(handle):
            return True
        handle.seek(0)
        return handle.read(1) == b"\x80"


def _unreadable(path: Path, error: Exception) -> ReleasedCheckpointError:
    # Full pickle reads more than weights_only loading only when the file is a valid checkpoint whose pickle uses
    # something the restricted unpickler refuses; for a file that is empty, cut short or not a checkpoint at all, it
    # would fail as well (or run whatever the bytes say), so it is not suggested there.
    if "Weights only load failed" in str(error) and _is_torch_save_file(path):
        return ReleasedCheckpointError(
            f"{path} cannot be read with torch.load(weights_only=True): {error}. If the file comes from a source you "
            "trust, pass --trust_pickled_config to load it with full pickle."
        )
    if path.stat().st_size == 0:
        reason = "the file is empty"
    else:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = (
            "it is not a readable torch.save file: truncated (an interrupted download or copy), corrupt, or another "
            f"format ({type(error).__name__}{': ' + detail[:200] if detail else ''})"
        )
    return ReleasedCheckpointError(
        f"--checkpoint {path} cannot be converted: {reason}. Download the released best_model.pth again and check its "
        "size."
    )


def _flatten(config, prefix: str = "") -> dict:
    if not isinstance(config, Mapping):
        return {}
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# ---------------------------------------------------------------------------------------------------------------
# Shape inference and key mapping
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleasedShape:
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    patch_size: int
    num_channels: int
    grid_size: int
    num_labels: int
    qkv_bias: bool
    has_unk: bool
    dalr_head: str

    @property
    def image_size(self) -> int:
        return self.grid_size * self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


def _require(state_dict: Mapping, key: str, ndim: int) -> torch.Tensor:
    if key not in state_dict:
        raise ReleasedCheckpointError(f"The checkpoint's model has no `{key}`, which every released MJP ViT has.")
    tensor = state_dict[key]
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != ndim:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ReleasedCheckpointError(f"`{key}` should be a {ndim}-D tensor, got {shape}.")
    return tensor


def _index_linear_head(state_dict: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The released linear DALR head is a bare `nn.Linear` (`dlocr.layers.weight` / `.bias`), the nonlinear one an
    `nn.Sequential` (`dlocr.layers.{0,2}.*`); name the linear one as the first layer of a sequential."""
    if "dlocr.layers.weight" not in state_dict:
        return state_dict
    return {
        (
            "dlocr.layers.0." + key.rsplit(".", 1)[1] if key in ("dlocr.layers.weight", "dlocr.layers.bias") else key
        ): value
        for key, value in state_dict.items()
    }


def infer_shape(state_dict: Mapping[str, torch.Tensor]) -> ReleasedShape:
    """Read the architecture off the tensors of a released state dict."""
    has_table = "pos_embed.weight" in state_dict
    has_dlocr = any(key.startswith("dlocr.") for key in state_dict)
    if not has_table and not has_dlocr:
        timm_like = "pos_embed" in state_dict and "patch_embed.proj.weight" in state_dict
        raise ReleasedCheckpointError(
            "This is not an MJP checkpoint: it has neither the position-embedding table `pos_embed.weight` (with the "
            "UNK row) nor the DALR head `dlocr.*`"
            + (
                ". It looks like a stock timm ViT/DeiT; build an MJP model from a transformers ViT/DeiT with "
                "`python -m mjp_hf.conversion.from_vit` instead."
                if timm_like
                else f" (its keys start with {sorted({key.split('.')[0] for key in state_dict})[:8]})."
            )
        )
    cls_token = _require(state_dict, "cls_token", 3)
    hidden_size = cls_token.shape[-1]
    projection = _require(state_dict, "patch_embed.proj.weight", 4)
    if projection.shape[-1] != projection.shape[-2]:
        raise ReleasedCheckpointError(f"`patch_embed.proj.weight` has non-square patches {tuple(projection.shape)}.")
    patch_size, num_channels = projection.shape[-1], projection.shape[1]
    if has_table:
        table = _require(state_dict, "pos_embed.weight", 2)
        num_patches, has_unk = table.shape[0] - 2, True  # rows: CLS, patches, UNK
    else:
        table = _require(state_dict, "pos_embed", 3)
        num_patches, has_unk = table.shape[1] - 1, False
    grid_size = math.isqrt(max(num_patches, 0))
    if num_patches <= 0 or grid_size**2 != num_patches:
        raise ReleasedCheckpointError(
            f"The position embeddings have {tuple(table.shape)}: {num_patches} patch rows"
            + (" (after the CLS and UNK rows)" if has_table else "")
            + ", which is not a square patch grid."
        )
    depth = 0
    while f"blocks.{depth}.norm1.weight" in state_dict:
        depth += 1
    if depth == 0:
        raise ReleasedCheckpointError("The checkpoint's model has no transformer blocks (`blocks.0.norm1.weight`).")
    intermediate_size = _require(state_dict, "blocks.0.mlp.fc1.weight", 2).shape[0]
    num_labels = _require(state_dict, "head.weight", 2).shape[0]
    if "dlocr.layers.2.weight" in state_dict:
        dalr_head = "nonlinear"
    elif "dlocr.layers.0.weight" in state_dict:
        dalr_head = "linear"
    else:
        dalr_head = "none"
    return ReleasedShape(
        hidden_size=hidden_size,
        num_hidden_layers=depth,
        intermediate_size=intermediate_size,
        patch_size=patch_size,
        num_channels=num_channels,
        grid_size=grid_size,
        num_labels=num_labels,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        has_unk=has_unk,
        dalr_head=dalr_head,
    )


def expected_shapes(shape: ReleasedShape) -> dict[str, tuple[int, ...]]:
    """Every key of a released state dict of this shape, with its tensor shape."""
    d, n = shape.hidden_size, shape.num_patches
    shapes = {
        "cls_token": (1, 1, d),
        "patch_embed.proj.weight": (d, shape.num_channels, shape.patch_size, shape.patch_size),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
        "head.weight": (shape.num_labels, d),
        "head.bias": (shape.num_labels,),
    }
    shapes.update({"pos_embed.weight": (n + 2, d)} if shape.has_unk else {"pos_embed": (1, n + 1, d)})
    for i in range(shape.num_hidden_layers):
        block = f"blocks.{i}."
        shapes.update(
            {
                block + "norm1.weight": (d,),
                block + "norm1.bias": (d,),
                block + "attn.qkv.weight": (3 * d, d),
                block + "attn.proj.weight": (d, d),
                block + "attn.proj.bias": (d,),
                block + "norm2.weight": (d,),
                block + "norm2.bias": (d,),
                block + "mlp.fc1.weight": (shape.intermediate_size, d),
                block + "mlp.fc1.bias": (shape.intermediate_size,),
                block + "mlp.fc2.weight": (d, shape.intermediate_size),
                block + "mlp.fc2.bias": (d,),
            }
        )
        if shape.qkv_bias:
            shapes[block + "attn.qkv.bias"] = (3 * d,)
    if shape.dalr_head == "nonlinear":
        shapes.update(
            {
                "dlocr.layers.0.weight": (d, d),
                "dlocr.layers.0.bias": (d,),
                "dlocr.layers.2.weight": (2, d),
                "dlocr.layers.2.bias": (2,),
            }
        )
    elif shape.dalr_head == "linear":
        shapes.update({"dlocr.layers.0.weight": (2, d), "dlocr.layers.0.bias": (2,)})
    return shapes


def check_state_dict(state_dict: Mapping[str, torch.Tensor], shape: ReleasedShape) -> None:
    """Raise `ReleasedCheckpointError` naming every missing, unexpected or mis-shaped key."""
    expected = expected_shapes(shape)
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong = [
        f"{key}: expected {expected[key]}, got {tuple(state_dict[key].shape)}"
        for key in expected
        if key in state_dict and tuple(state_dict[key].shape) != expected[key]
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if wrong:
        problems.append("wrong shapes [" + "; ".join(wrong) + "]")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if problems:
        raise ReleasedCheckpointError(
            f"The checkpoint does not match a released MJP ViT of the shape its tensors imply (width "
            f"{shape.hidden_size}, depth {shape.num_hidden_layers}, patch {shape.patch_size}, grid "
            f"{shape.grid_size}x{shape.grid_size}, {shape.num_labels} classes): " + "; ".join(problems) + "."
        )


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], shape: ReleasedShape) -> dict[str, torch.Tensor]:
    """The released (timm) tensors under `MJPViTForImageClassification`'s parameter names."""
    d = shape.hidden_size
    embeddings = "vit.embeddings."
    converted = {
        embeddings + "cls_token": state_dict["cls_token"],
        embeddings + "patch_embeddings.projection.weight": state_dict["patch_embed.proj.weight"],
        embeddings + "patch_embeddings.projection.bias": state_dict["patch_embed.proj.bias"],
        "vit.layernorm.weight": state_dict["norm.weight"],
        "vit.layernorm.bias": state_dict["norm.bias"],
        "classifier.weight": state_dict["head.weight"],
        "classifier.bias": state_dict["head.bias"],
    }
    if shape.has_unk:
        table = state_dict["pos_embed.weight"]
        converted[embeddings + "position_embeddings"] = table[:-1].unsqueeze(0)
        converted[embeddings + "unk_position_embedding"] = table[-1:].unsqueeze(0)
    else:
        converted[embeddings + "position_embeddings"] = state_dict["pos_embed"]
    for key, value in state_dict.items():
        if key.startswith("dlocr.layers."):
            converted["vit.dalr_head.regressor." + key[len("dlocr.layers.") :]] = value
    for i in range(shape.num_hidden_layers):
        old, new = f"blocks.{i}.", f"vit.layers.{i}."
        # timm fuses the projections as rows [query; key; value].
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            converted[f"{new}attention.{name}.weight"] = state_dict[old + "attn.qkv.weight"][j * d : (j + 1) * d]
            if shape.qkv_bias:
                converted[f"{new}attention.{name}.bias"] = state_dict[old + "attn.qkv.bias"][j * d : (j + 1) * d]
        for old_name, new_name in (
            ("attn.proj", "attention.o_proj"),
            ("norm1", "layernorm_before"),
            ("norm2", "layernorm_after"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            converted[f"{new}{new_name}.weight"] = state_dict[f"{old}{old_name}.weight"]
            converted[f"{new}{new_name}.bias"] = state_dict[f"{old}{old_name}.bias"]
    return {key: value.detach().clone().contiguous() for key, value in converted.items()}


def _settings_from_released_config(flat: Mapping, shape: ReleasedShape) -> dict:
    """MJP settings recorded in the released yacs config, checked against the tensors."""
    if not flat:
        return dict(RELEASED_MJP_SETTINGS)
    for key, actual in (("DATA.IMG_SIZE", shape.image_size), ("MODEL.NUM_CLASSES", shape.num_labels)):
        if key in flat and flat[key] != actual:
            raise ReleasedCheckpointError(
                f"The checkpoint's config says {key}={flat[key]!r} but its tensors give {actual}; the file mixes two "
                "models, convert a checkpoint whose config belongs to its weights."
            )
    settings = dict(RELEASED_MJP_SETTINGS)
    ratio = flat.get("TRAIN.MASK_RATIO")
    if isinstance(ratio, (int, float)) and ratio > 0:  # the released code falls back to 0.1 for ratio <= 0
        settings["jigsaw_ratio"] = float(ratio)
    if isinstance(flat.get("AUG.JIGSAW"), (int, float)):
        settings["jigsaw_prob"] = 1.0 - float(flat["AUG.JIGSAW"])  # a step is jigsawed when rand(1) > AUG.JIGSAW
    if flat.get("TRAIN.MASK_TYPE") == "pps":
        settings["jigsaw_mode"] = "naive"
    if isinstance(flat.get("TRAIN.LAMBDA_DLOCR"), (int, float)) and flat.get("TRAIN.USE_DLOCR", True):
        settings["dalr_loss_weight"] = float(flat["TRAIN.LAMBDA_DLOCR"])
    released_head = flat.get("TRAIN.DLOCR_TYPE")
    if flat.get("TRAIN.USE_DLOCR") and released_head in ("linear", "nonlinear") and released_head != shape.dalr_head:
        raise ReleasedCheckpointError(
            f"The checkpoint's config says TRAIN.DLOCR_TYPE={released_head!r} but its tensors hold a "
            f"{shape.dalr_head!r} DALR head."
        )
    return settings


def build_config(
    shape: ReleasedShape,
    *,
    released_config: Mapping | None = None,
    num_attention_heads: int | None = None,
    id2label: Mapping[int, str] | None = None,
) -> MJPViTConfig:
    heads = shape.hidden_size // 64 if num_attention_heads is None else num_attention_heads
    if heads < 1 or shape.hidden_size % heads:
        raise ReleasedCheckpointError(
            f"{heads} attention heads do not divide the width {shape.hidden_size}; pass --num_attention_heads with a "
            "divisor of it (the released ViT-S/16 has 6)."
        )
    if id2label is not None and len(id2label) != shape.num_labels:
        raise ValueError(f"--id2label has {len(id2label)} labels but the classifier has {shape.num_labels} outputs.")
    labels = {"id2label": dict(id2label), "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    settings = _settings_from_released_config(_flatten(released_config or {}), shape)
    return MJPViTConfig(
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=heads,
        intermediate_size=shape.intermediate_size,
        hidden_act="gelu",  # timm's exact GELU
        layer_norm_eps=1e-6,
        qkv_bias=shape.qkv_bias,
        image_size=shape.image_size,
        patch_size=shape.patch_size,
        num_channels=shape.num_channels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=shape.num_labels,
        use_unk_position_embedding=shape.has_unk,
        dalr_head=shape.dalr_head,
        **labels,
        **settings,
    )


@dataclass
class ConvertedCheckpoint:
    model: MJPViTForImageClassification
    shape: ReleasedShape
    record: dict  # max_accuracy / epoch as stored in the file
    inert_objects: list[str]

    @property
    def is_released_vit_small(self) -> bool:
        s = self.shape
        return (s.hidden_size, s.num_hidden_layers, s.patch_size, s.image_size, s.num_labels) == (
            384,
            12,
            16,
            224,
            1000,
        )


def convert_checkpoint(
    path: str | Path,
    *,
    num_attention_heads: int | None = None,
    trust_pickled_config: bool = False,
    id2label: Mapping[int, str] | None = None,
) -> ConvertedCheckpoint:
    """Read a released checkpoint and return the equivalent `MJPViTForImageClassification` (in eval mode)."""
    payload, inert = read_checkpoint(path, trust_pickled_config=trust_pickled_config)
    if isinstance(payload, Mapping) and isinstance(payload.get("model"), Mapping):
        state_dict, released_config = payload["model"], payload.get("config")
        record = {key: payload[key] for key in ("max_accuracy", "epoch") if isinstance(payload.get(key), (int, float))}
    elif isinstance(payload, Mapping) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state_dict, released_config, record = payload, None, {}  # a bare state dict, e.g. `ckpt["model"]` saved alone
    else:
        found = sorted(payload)[:10] if isinstance(payload, Mapping) else type(payload).__name__
        raise ReleasedCheckpointError(
            f"{path} holds no model state dict: expected a dict with a `model` entry (as the released best_model.pth) "
            f"or a state dict, found {found}."
        )
    state_dict = _index_linear_head(state_dict)
    shape = infer_shape(state_dict)
    check_state_dict(state_dict, shape)
    config = build_config(
        shape,
        released_config=released_config if isinstance(released_config, Mapping) else None,
        num_attention_heads=num_attention_heads,
        id2label=id2label,
    )
    model = MJPViTForImageClassification(config)
    model.load_state_dict(convert_state_dict(state_dict, shape), strict=True)
    return ConvertedCheckpoint(model=model.eval(), shape=shape, record=record, inert_objects=inert)


# ---------------------------------------------------------------------------------------------------------------
# Card and command line
# ---------------------------------------------------------------------------------------------------------------


def _checkpoint_record_text(converted: ConvertedCheckpoint, checkpoint_name: str) -> str:
    record = converted.record
    if "max_accuracy" not in record:
        return f"The converted file (`{checkpoint_name}`) records no `max_accuracy`, so this card reports no accuracy."
    epoch = f" at epoch {record['epoch']}" if "epoch" in record else ""
    return (
        f"The converted file (`{checkpoint_name}`) records `max_accuracy = {record['max_accuracy']}`{epoch}: the best "
        "top-1 accuracy (%) of the authors' own validation run (ImageNet-1k val, resize 256, center crop 224, clean "
        "images), as computed by the released `main.py`. It was copied from the file by `mjp_hf.conversion.original`, "
        "not re-measured here."
    )


def released_card(converted: ConvertedCheckpoint, *, model_id: str, checkpoint_name: str) -> ModelCard:
    """`model_cards/mjp-vit-small.md` with the repository id and the figures the file records filled in."""
    card = ModelCard.load(RELEASED_CARD)
    text = str(card).replace("org/mjp-vit-small", model_id)
    text = CHECKPOINT_RECORD_MARKER.sub(
        lambda _: (
            "<!-- checkpoint-record -->\n"
            + _checkpoint_record_text(converted, checkpoint_name)
            + "\n<!-- /checkpoint-record -->"
        ),
        text,
    )
    card = ModelCard(text)
    if "max_accuracy" in converted.record:
        from huggingface_hub import EvalResult

        card.data.eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type="imagenet-1k",
                dataset_name="ImageNet-1k",
                dataset_split="validation",
                metric_type="accuracy",
                metric_name="Top-1 accuracy, % (authors' run, recorded in the checkpoint)",
                metric_value=float(converted.record["max_accuracy"]),
                source_name=f"max_accuracy field of the released {checkpoint_name}",
                source_url="https://github.com/yhlleo/MJP",
            )
        ]
        card.data.model_name = model_id.split("/")[-1]
    return card


def released_image_processor(image_size: int = 224):
    """The released evaluation transform as a stock image processor: bicubic resize of the shorter side to
    `image_size * 256 / 224`, center crop to `image_size`, ImageNet mean/std (`data/build.py` of the release)."""
    from transformers import DeiTImageProcessorPil
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return DeiTImageProcessorPil(
        size={"shortest_edge": round(image_size * 256 / 224)},
        crop_size={"height": image_size, "width": image_size},
        resample=3,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
    )


def _read_id2label(path: str | None) -> dict[int, str] | None:
    if path is None:
        return None
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if isinstance(data, Mapping) and "id2label" in data:
        data = data["id2label"]  # the config.json of any transformers classifier
    if isinstance(data, list):
        return dict(enumerate(map(str, data)))
    if isinstance(data, Mapping):
        return {int(key): str(value) for key, value in data.items()}
    raise ValueError(f"--id2label {path}: expected a JSON list of names, an id->name object or a config.json.")


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{number} is invalid; pass a whole number >= 1")
    return number


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mjp_hf.conversion.original", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the released best_model.pth (or a state dict file)")
    parser.add_argument("--output_dir", required=True, help="new or empty folder for the converted layout")
    parser.add_argument(
        "--push_to_hub",
        metavar="REPO_ID",
        type=repo_id_argument,
        default=None,
        help="also push the layout to this repo",
    )
    parser.add_argument("--hub_token", default=None)
    parser.add_argument("--hub_private_repo", action="store_true")
    parser.add_argument("--num_attention_heads", type=_positive_int, default=None, help="default: hidden_size // 64")
    parser.add_argument(
        "--id2label", default=None, help="class names: a JSON list, an id->name object, or a classifier's config.json"
    )
    parser.add_argument(
        "--model_id",
        type=repo_id_argument,
        default=None,
        help="repo id named in the card (default: --push_to_hub or org/<output folder name>)",
    )
    parser.add_argument(
        "--trust_pickled_config",
        action="store_true",
        help="load the file with full pickle (runs code it names): only for trusted files",
    )
    parser.add_argument("--overwrite_output_dir", action="store_true", help="replace a non-empty --output_dir")
    return parser.parse_args(argv)


def main(argv=None) -> ConvertedCheckpoint:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    # Before any work: a non-empty folder needs --overwrite_output_dir (which replaces only the layout's own files),
    # and the folder may not hold the checkpoint it is converted from.
    try:
        output_dir = check_output_dir(
            args.output_dir,
            overwrite=args.overwrite_output_dir,
            inputs={"--checkpoint": args.checkpoint},
            output_flag="--output_dir",
            overwrite_flag="--overwrite_output_dir",
        )
    except (OSError, ValueError) as error:
        raise SystemExit(str(error)) from error
    converted = convert_checkpoint(
        args.checkpoint,
        num_attention_heads=args.num_attention_heads,
        trust_pickled_config=args.trust_pickled_config,
        id2label=_read_id2label(args.id2label),
    )
    model = converted.model
    if args.id2label is None and model.config.num_labels == 1000:
        logger.warning(
            "No --id2label: the classes are named LABEL_0..LABEL_999. Pass the config.json of any "
            "ImageNet-1k transformers classifier (same class order) to name them."
        )
    model_id = args.model_id or args.push_to_hub or placeholder_repo_id(output_dir.resolve().name, namespace="org")
    checkpoint_name = Path(args.checkpoint).name
    if converted.is_released_vit_small:
        card = released_card(converted, model_id=model_id, checkpoint_name=checkpoint_name)
    else:
        card = build_model_card(
            model,
            model_id=model_id,
            metrics={},
            summary=f"`{model_id}` is a released MJP checkpoint "
            f"(`{checkpoint_name}`) converted with `mjp_hf.conversion.original`.",
            training_text="Trained by the MJP authors with their released code; see the paper for the recipe.",
        )
    image_processor = released_image_processor(model.config.image_size)
    folder = save_publishing_layout(model, image_processor, output_dir, card=card, overwrite=args.overwrite_output_dir)
    s = converted.shape
    print(
        f"Converted {args.checkpoint}: width {s.hidden_size}, depth {s.num_hidden_layers}, heads "
        f"{model.config.num_attention_heads}, patch {s.patch_size}, {s.image_size}x{s.image_size} "
        f"({s.grid_size}x{s.grid_size} grid), {s.num_labels} classes, UNK={s.has_unk}, DALR={s.dalr_head}; "
        f"{model.num_parameters():,} parameters ({model.to_vit().num_parameters():,} in the stock ViT at the root)."
    )
    if converted.record:
        print("Recorded in the file: " + ", ".join(f"{key}={value}" for key, value in converted.record.items()))
    print(f"Wrote {folder}: " + ", ".join(layout_files(folder)))
    if args.push_to_hub:
        url = push_mjp_model(
            model,
            image_processor,
            args.push_to_hub,
            card=card,
            token=args.hub_token,
            private=args.hub_private_repo or None,
        )
        print(f"Pushed to {args.push_to_hub}: {url}")
    return converted


if __name__ == "__main__":
    main()
