"""Conversion of the authors' released checkpoints (timm layout) into mjp_hf.

Every test builds a checkpoint in the released layout (`{model, max_accuracy, epoch, config}`, `pos_embed.weight`
with the UNK row last, `dlocr.layers.{0,2}`, a pickled yacs-like config) from random tensors, and compares the
converted model with a forward pass written here directly on the timm tensors.
"""

import json
import math
import re
import sys
import types
from contextlib import contextmanager
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub import HfApi, ModelCard

from mjp_hf import MJPViTForImageClassification
from mjp_hf.conversion.original import (
    RELEASED_CARD,
    RELEASED_PARAMETERS,
    ConvertedCheckpoint,
    ReleasedCheckpointError,
    ReleasedShape,
    _read_id2label,
    build_config,
    convert_checkpoint,
    expected_shapes,
    main,
    read_checkpoint,
    released_card,
)


# A small released-layout ViT: width 64 (so hidden_size // 64 = 1 head by default), depth 2, patch 4, 4x4 grid.
TINY = ReleasedShape(
    hidden_size=64,
    num_hidden_layers=2,
    intermediate_size=128,
    patch_size=4,
    num_channels=3,
    grid_size=4,
    num_labels=7,
    qkv_bias=True,
    has_unk=True,
    dalr_head="nonlinear",
)
EXECUTED = {"count": 0}  # incremented by any pickled code that runs


def released_state_dict(shape: ReleasedShape = TINY, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key, size in expected_shapes(shape).items():
        scale = 1.0 if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key == "norm.weight" else 0.2
        offset = 1.0 if scale == 1.0 else 0.0
        state_dict[key] = offset + scale * torch.randn(size, generator=generator)
    return state_dict


# --- a stand-in for yacs.config.CfgNode, importable only while `fake_yacs()` is active --------------------------


class CfgNode(dict):
    """Pickles like yacs' CfgNode: a dict subclass with attributes in `__dict__`."""

    def __init__(self, init=None):
        super().__init__(init or {})
        self.__dict__["__immutable__"] = False
        self.__dict__["__new_allowed__"] = False

    def __getattr__(self, name):
        if name in self:
            return self[name]
        raise AttributeError(name)

    def __setstate__(self, state):  # runs only if the unpickler trusts the class
        EXECUTED["count"] += 1
        self.__dict__.update(state)


def _boom():
    EXECUTED["count"] += 1
    return "ran"


class Payload:
    """An object whose unpickling calls a function of another module (what a malicious file would do)."""

    def __reduce__(self):
        return (_boom, ())


@contextmanager
def fake_yacs():
    yacs, config, evil = types.ModuleType("yacs"), types.ModuleType("yacs.config"), types.ModuleType("evil_pkg")
    config.CfgNode, evil.boom = CfgNode, _boom
    yacs.config = config
    saved = dict.fromkeys(("CfgNode",), (CfgNode.__module__, CfgNode.__qualname__))
    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    _boom.__module__, _boom.__qualname__ = "evil_pkg", "boom"
    sys.modules.update({"yacs": yacs, "yacs.config": config, "evil_pkg": evil})
    try:
        yield
    finally:
        for name in ("yacs", "yacs.config", "evil_pkg"):
            sys.modules.pop(name, None)
        CfgNode.__module__, CfgNode.__qualname__ = __name__, saved["CfgNode"][1]
        _boom.__module__, _boom.__qualname__ = __name__, "_boom"


def released_config(**overrides) -> CfgNode:
    sections = {
        "DATA": {"IMG_SIZE": TINY.image_size, "DATASET": "imagenet"},
        "MODEL": {"NUM_CLASSES": TINY.num_labels, "TYPE": "vit", "NAME": "vit_s_16", "DROP_PATH_RATE": 0.1},
        "TRAIN": {
            "EPOCHS": 300,
            "WARMUP_EPOCHS": 20,
            "USE_JIGSAW": True,
            "USE_UNK_POS": True,
            "USE_DLOCR": True,
            "LAMBDA_DLOCR": 0.02,
            "DLOCR_TYPE": "nonlinear",
            "MASK_RATIO": 0.2,
            "MASK_TYPE": "mjp",
        },
        "AUG": {"JIGSAW": 0.25, "MIXUP": 0.8},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        sections[section][key] = value
    return CfgNode({name: CfgNode(values) for name, values in sections.items()})


def save_released(path, state_dict=None, *, config=True, extra=None, **config_overrides):
    payload = {
        "model": state_dict if state_dict is not None else released_state_dict(),
        "max_accuracy": 81.25,
        "epoch": 297,
    }
    if extra:
        payload.update(extra)
    with fake_yacs():
        if config:
            payload["config"] = released_config(**config_overrides)
        torch.save(payload, path)
    return path


@pytest.fixture
def checkpoint(tmp_path):
    return save_released(tmp_path / "best_model.pth")


# --- the independent reference: timm's ViT forward on the released tensors ---------------------------------------


def reference_forward(sd, images, heads, unk_mask=None, permutation=None):
    """Logits and DALR predictions of the released model, in plain torch ops on the timm-layout tensors."""
    projection = sd["patch_embed.proj.weight"]
    tokens = F.conv2d(images, projection, sd["patch_embed.proj.bias"], stride=projection.shape[-1])
    tokens = tokens.flatten(2).transpose(1, 2)
    batch, num_patches, width = tokens.shape
    position_ids = torch.arange(num_patches + 1)
    if permutation is not None:
        tokens = tokens[:, permutation]
    if unk_mask is not None:
        position_ids[1:][unk_mask] = num_patches + 1  # the UNK row, last in the table
    x = torch.cat([sd["cls_token"].expand(batch, -1, -1), tokens], 1) + sd["pos_embed.weight"][position_ids]
    head_dim = width // heads
    depth = len({key.split(".")[1] for key in sd if key.startswith("blocks.")})
    for i in range(depth):
        block = lambda name: sd[f"blocks.{i}.{name}"]  # noqa: E731
        h = F.layer_norm(x, (width,), block("norm1.weight"), block("norm1.bias"), eps=1e-6)
        qkv = F.linear(h, block("attn.qkv.weight"), block("attn.qkv.bias"))
        q, k, v = qkv.reshape(batch, -1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        attention = (q @ k.transpose(-2, -1) * head_dim**-0.5).softmax(-1)
        x = x + F.linear(
            (attention @ v).transpose(1, 2).reshape(batch, -1, width),
            block("attn.proj.weight"),
            block("attn.proj.bias"),
        )
        h = F.layer_norm(x, (width,), block("norm2.weight"), block("norm2.bias"), eps=1e-6)
        x = x + F.linear(
            F.gelu(F.linear(h, block("mlp.fc1.weight"), block("mlp.fc1.bias"))),
            block("mlp.fc2.weight"),
            block("mlp.fc2.bias"),
        )
    x = F.layer_norm(x, (width,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    logits = F.linear(x[:, 0], sd["head.weight"], sd["head.bias"])
    patch_table = sd["pos_embed.weight"][1 : num_patches + 1]
    dalr = F.linear(
        F.relu(F.linear(patch_table, sd["dlocr.layers.0.weight"], sd["dlocr.layers.0.bias"])),
        sd["dlocr.layers.2.weight"],
        sd["dlocr.layers.2.bias"],
    )
    return logits, dalr


def images(batch=3, seed=1):
    return torch.randn(batch, 3, TINY.image_size, TINY.image_size, generator=torch.Generator().manual_seed(seed))


# --- tests ----------------------------------------------------------------------------------------------------------


def test_converted_logits_match_reference_forward(checkpoint):
    state_dict = released_state_dict()
    converted = convert_checkpoint(checkpoint)
    model = converted.model
    assert isinstance(model, MJPViTForImageClassification) and not model.training
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
        64,
        2,
        1,
        128,
    )
    assert (config.image_size, config.patch_size, config.num_labels, config.layer_norm_eps) == (16, 4, 7, 1e-6)
    assert config.dalr_head == "nonlinear" and config.use_unk_position_embedding
    assert converted.record == {"max_accuracy": 81.25, "epoch": 297}

    pixels = images()
    expected, _ = reference_forward(state_dict, pixels, heads=1)
    with torch.no_grad():
        logits = model(pixels).logits
        vit_logits = model.to_vit()(pixels).logits
    torch.testing.assert_close(logits, expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(vit_logits, expected, atol=2e-5, rtol=1e-5)


def test_unk_row_and_dalr_head_match_reference_under_jigsaw(checkpoint):
    """The UNK embedding is the table's last row and the DALR head is `dlocr`: check both through a jigsawed
    forward (logits and patch tokens) and the localization loss."""
    state_dict = released_state_dict()
    model = convert_checkpoint(checkpoint).model
    num_patches = TINY.num_patches
    masked = torch.tensor([1, 2, 5, 6, 9])
    unk_mask = torch.zeros(num_patches, dtype=torch.bool)
    unk_mask[masked] = True
    permutation = torch.arange(num_patches)
    permutation[masked] = masked[torch.tensor([3, 0, 4, 1, 2])]

    pixels = images()
    expected_logits, dalr = reference_forward(state_dict, pixels, heads=1, unk_mask=unk_mask, permutation=permutation)
    with torch.no_grad():
        labels = torch.zeros(len(pixels), dtype=torch.long)  # with labels the output holds the DALR loss
        out = model(pixels, labels=labels, jigsaw_mask=unk_mask[None], jigsaw_permutation=permutation[None])
    torch.testing.assert_close(out.logits, expected_logits, atol=2e-5, rtol=1e-5)

    grid = TINY.grid_size
    index = torch.arange(num_patches)
    targets = torch.stack((index // grid, index % grid), -1).float()
    kept = ~unk_mask
    expected_loss = 0.02 * F.l1_loss(dalr[kept], targets[kept])  # LAMBDA_DLOCR of the file's config
    torch.testing.assert_close(out.localization_loss, expected_loss, atol=1e-5, rtol=1e-5)


def test_pickled_config_is_read_as_data_without_running_code(checkpoint):
    EXECUTED["count"] = 0
    payload, inert = read_checkpoint(checkpoint)
    assert inert == ["yacs.config.CfgNode"]
    assert EXECUTED["count"] == 0
    assert payload["config"]["TRAIN"]["MASK_RATIO"] == 0.2 and payload["epoch"] == 297

    config = convert_checkpoint(checkpoint).model.config
    assert config.jigsaw_ratio == 0.2  # TRAIN.MASK_RATIO
    assert config.jigsaw_prob == 0.75  # a step is jigsawed when rand(1) > AUG.JIGSAW = 0.25
    assert config.dalr_loss_weight == 0.02 and config.jigsaw_mode == "mjp"
    assert EXECUTED["count"] == 0


def test_pickled_callables_are_never_called_even_when_importable(tmp_path):
    path = save_released(tmp_path / "evil.pth", extra={"payload": Payload()})
    EXECUTED["count"] = 0
    with fake_yacs():  # the module is importable, weights_only still must not call into it
        payload, inert = read_checkpoint(path)
    assert EXECUTED["count"] == 0
    assert "evil_pkg.boom" in inert and payload["payload"] == {}


def test_trust_pickled_config_uses_full_pickle(checkpoint):
    EXECUTED["count"] = 0
    with fake_yacs():
        payload, inert = read_checkpoint(checkpoint, trust_pickled_config=True)
        assert inert == [] and type(payload["config"]).__name__ == "CfgNode"
        converted = convert_checkpoint(checkpoint, trust_pickled_config=True)
    assert EXECUTED["count"] > 0  # the class's own code ran: that is what the flag opts into
    assert converted.model.config.jigsaw_prob == 0.75


def test_bare_state_dict_without_config_and_heads_override(tmp_path):
    state_dict = released_state_dict(seed=3)
    path = tmp_path / "model_only.pth"
    torch.save(state_dict, path)
    converted = convert_checkpoint(path, num_attention_heads=4)
    config = converted.model.config
    assert config.num_attention_heads == 4 and converted.record == {} and converted.inert_objects == []
    assert (config.jigsaw_ratio, config.jigsaw_prob, config.dalr_loss_weight) == (0.1, 0.5, 0.01)  # as released
    pixels = images(seed=4)
    expected, _ = reference_forward(state_dict, pixels, heads=4)
    with torch.no_grad():
        torch.testing.assert_close(converted.model(pixels).logits, expected, atol=2e-5, rtol=1e-5)


def test_linear_dalr_head_and_no_unk_are_inferred(tmp_path):
    shape = ReleasedShape(**{**TINY.__dict__, "dalr_head": "linear"})
    path = save_released(tmp_path / "linear.pth", released_state_dict(shape), config=False)
    assert convert_checkpoint(path).model.config.dalr_head == "linear"

    state_dict = released_state_dict(TINY)
    table = state_dict.pop("pos_embed.weight")
    state_dict["pos_embed"] = table[:-1].unsqueeze(0)  # an MJP ablation without the UNK row, DALR kept
    path = save_released(tmp_path / "no_unk.pth", state_dict, config=False)
    model = convert_checkpoint(path).model
    assert not model.config.use_unk_position_embedding and model.vit.embeddings.unk_position_embedding is None


def test_released_shape_has_the_released_parameter_count():
    shape = ReleasedShape(
        hidden_size=384,
        num_hidden_layers=12,
        intermediate_size=1536,
        patch_size=16,
        num_channels=3,
        grid_size=14,
        num_labels=1000,
        qkv_bias=True,
        has_unk=True,
        dalr_head="nonlinear",
    )
    assert sum(math.prod(size) for size in expected_shapes(shape).values()) == RELEASED_PARAMETERS
    assert expected_shapes(shape)["pos_embed.weight"] == (198, 384)
    config = build_config(shape)
    assert config.num_attention_heads == 6 and config.image_size == 224
    assert MJPViTForImageClassification(config).num_parameters() == RELEASED_PARAMETERS == 22_199_658


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("blocks.1.mlp.fc2.bias"), "missing keys ['blocks.1.mlp.fc2.bias']"),
        (lambda sd: sd.update({"head.bias": torch.zeros(9)}), "head.bias: expected (7,), got (9,)"),
        (
            lambda sd: sd.update({"blocks.0.attn.qkv.weight": torch.zeros(100, 64)}),
            "blocks.0.attn.qkv.weight: expected (192, 64), got (100, 64)",
        ),
        (lambda sd: sd.update({"dist_token": torch.zeros(1, 1, 64)}), "unexpected keys ['dist_token']"),
        (lambda sd: sd.update({"pos_embed.weight": torch.zeros(17, 64)}), "not a square patch grid"),
        (lambda sd: sd.pop("cls_token"), "no `cls_token`"),
    ],
)
def test_bad_tensors_get_an_error_naming_them(tmp_path, edit, message):
    state_dict = released_state_dict()
    edit(state_dict)
    path = save_released(tmp_path / "bad.pth", state_dict)
    with pytest.raises(ReleasedCheckpointError) as error:
        convert_checkpoint(path)
    assert message in str(error.value)


def test_stock_timm_vit_is_refused_as_non_mjp(tmp_path):
    state_dict = released_state_dict()
    state_dict["pos_embed"] = state_dict.pop("pos_embed.weight")[:-1].unsqueeze(0)
    for key in [key for key in state_dict if key.startswith("dlocr.")]:
        del state_dict[key]
    path = tmp_path / "deit_small.pth"
    torch.save({"model": state_dict}, path)
    with pytest.raises(ReleasedCheckpointError, match="not an MJP checkpoint.*mjp_hf.conversion.from_vit"):
        convert_checkpoint(path)


@pytest.mark.parametrize(
    "overrides, kwargs, message",
    [
        ({"DATA.IMG_SIZE": 224}, {}, "DATA.IMG_SIZE=224 but its tensors give 16"),
        ({"MODEL.NUM_CLASSES": 1000}, {}, "MODEL.NUM_CLASSES=1000 but its tensors give 7"),
        ({"TRAIN.DLOCR_TYPE": "linear"}, {}, "TRAIN.DLOCR_TYPE='linear' but its tensors hold a 'nonlinear'"),
        ({}, {"num_attention_heads": 5}, "5 attention heads do not divide the width 64"),
    ],
)
def test_config_inconsistencies_are_refused(tmp_path, overrides, kwargs, message):
    path = save_released(tmp_path / "bad_config.pth", **overrides)
    with pytest.raises(ReleasedCheckpointError) as error:
        convert_checkpoint(path, **kwargs)
    assert message in str(error.value)


def test_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ReleasedCheckpointError, match="holds no model state dict"):
        convert_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_checkpoint(tmp_path / "missing.pth")


def test_command_line_writes_both_layouts_and_reports_parameters(checkpoint, tmp_path, capsys):
    from transformers import AutoImageProcessor, ViTForImageClassification

    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps([f"class {i}" for i in range(7)]))
    output_dir = tmp_path / "converted"
    converted = main(["--checkpoint", str(checkpoint), "--output_dir", str(output_dir), "--id2label", str(labels)])
    printed = capsys.readouterr().out
    assert f"{converted.model.num_parameters():,} parameters" in printed
    assert "max_accuracy=81.25" in printed

    root = ViTForImageClassification.from_pretrained(output_dir).eval()
    assert root.config.model_type == "vit" and root.config.id2label[3] == "class 3"
    mjp = MJPViTForImageClassification.from_pretrained(output_dir, subfolder="mjp").eval()
    pixels = images(seed=7)
    expected, _ = reference_forward(released_state_dict(), pixels, heads=1)
    with torch.no_grad():
        torch.testing.assert_close(root(pixels).logits, expected, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(mjp(pixels).logits, expected, atol=2e-5, rtol=1e-5)
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert processor.crop_size["height"] == 16 and list(processor.image_mean) == [0.485, 0.456, 0.406]
    card = ModelCard.load(output_dir / "README.md")  # not the ViT-S/16 shape: the generic card
    assert card.data.pipeline_tag == "image-classification" and "mjp" in card.data.tags

    with pytest.raises(SystemExit, match="not empty"):
        main(["--checkpoint", str(checkpoint), "--output_dir", str(output_dir)])


def test_command_line_push_goes_through_the_hub_client(checkpoint, tmp_path):
    uploaded = {}

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = sorted(
            p.relative_to(folder_path).as_posix() for p in folder_path.rglob("*") if p.is_file()
        )
        return mock.Mock(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    with (
        mock.patch.object(HfApi, "create_repo", return_value=mock.Mock(repo_id="me/mjp-tiny")) as create_repo,
        mock.patch.object(HfApi, "upload_folder", upload_folder),
    ):
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--output_dir",
                str(tmp_path / "out"),
                "--push_to_hub",
                "me/mjp-tiny",
                "--hub_private_repo",
            ]
        )
    create_repo.assert_called_once_with("me/mjp-tiny", private=True, exist_ok=True)
    assert uploaded["repo_id"] == "me/mjp-tiny"
    assert "model.safetensors" in uploaded["files"] and "mjp/model.safetensors" in uploaded["files"]
    assert not any(name.endswith((".bin", ".pth", ".pt")) for name in uploaded["files"])


def test_released_card_gets_the_recorded_figures_and_no_others():
    card = ModelCard.load(RELEASED_CARD)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-classification"
    assert {"vision", "image-classification", "mjp"} <= set(card.data.tags)
    assert card.data.eval_results is None  # no figure before a file is converted
    # The only percentage in the committed card is the released jigsaw ratio, which its recipe table sources.
    assert re.findall(r"\d+(?:\.\d+)?\s?%", card.text) == ["10%"]
    assert card.data.widget and all(example["src"].startswith("https://") for example in card.data.widget)

    converted = ConvertedCheckpoint(
        model=None, shape=TINY, record={"max_accuracy": 80.5, "epoch": 299}, inert_objects=[]
    )
    filled = released_card(converted, model_id="me/mjp-vit-small", checkpoint_name="best_model.pth")
    assert "org/mjp-vit-small" not in str(filled) and 'model="me/mjp-vit-small"' in str(filled)
    assert "`max_accuracy = 80.5` at epoch 299" in filled.text
    (result,) = filled.data.eval_results
    assert result.metric_value == 80.5 and "best_model.pth" in result.source_name

    unrecorded = released_card(ConvertedCheckpoint(None, TINY, {}, []), model_id="me/x", checkpoint_name="a.pth")
    assert unrecorded.data.eval_results is None and "records no `max_accuracy`" in unrecorded.text


# --- the released linear head, unreadable files, and an output folder that holds the input ----------------------


def test_released_linear_head_keys_convert(tmp_path):
    """The authors' linear DALR head is a bare nn.Linear: `dlocr.layers.weight` / `.bias`, no layer index."""
    shape = ReleasedShape(**{**TINY.__dict__, "dalr_head": "linear"})
    state_dict = released_state_dict(shape)
    state_dict["dlocr.layers.weight"] = state_dict.pop("dlocr.layers.0.weight")
    state_dict["dlocr.layers.bias"] = state_dict.pop("dlocr.layers.0.bias")
    path = save_released(tmp_path / "linear.pth", state_dict, **{"TRAIN.DLOCR_TYPE": "linear"})
    model = convert_checkpoint(path).model
    assert model.config.dalr_head == "linear"
    regressor = model.vit.dalr_head.regressor
    assert torch.equal(regressor[0].weight, state_dict["dlocr.layers.weight"])
    assert torch.equal(regressor[0].bias, state_dict["dlocr.layers.bias"])


@pytest.mark.parametrize("kind", ["empty", "text", "truncated"])
def test_unreadable_files_get_no_unsafe_loading_hint(checkpoint, tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    content = {
        "empty": b"",
        "text": b"<html>404 Not Found</html>\n",
        "truncated": checkpoint.read_bytes()[: checkpoint.stat().st_size // 2],
    }[kind]
    path.write_bytes(content)
    with pytest.raises(ReleasedCheckpointError) as error:
        convert_checkpoint(path)
    message = str(error.value)
    assert "trust_pickled_config" not in message and "Download the released best_model.pth again" in message
    assert ("the file is empty" if kind == "empty" else "not a readable torch.save file") in message


def test_unsafe_loading_is_suggested_only_where_weights_only_loading_refuses_a_valid_file(checkpoint):
    import pickle

    refusal = pickle.UnpicklingError("Weights only load failed. Unsupported operand 149")
    with (
        mock.patch("torch.load", side_effect=refusal),
        pytest.raises(ReleasedCheckpointError, match="pass --trust_pickled_config"),
    ):
        convert_checkpoint(checkpoint)


def test_output_folder_holding_the_checkpoint_is_refused_before_any_work(checkpoint, tmp_path, monkeypatch):
    folder = checkpoint.parent
    (folder / "notes.txt").write_text("mine")
    before = sorted(path.name for path in folder.iterdir())
    monkeypatch.chdir(folder)
    with (
        mock.patch("mjp_hf.conversion.original.convert_checkpoint") as convert,
        pytest.raises(SystemExit, match=r"--output_dir \. contains --checkpoint best_model\.pth"),
    ):
        main(["--checkpoint", "best_model.pth", "--output_dir", ".", "--overwrite_output_dir", "--model_id", "org/x"])
    convert.assert_not_called()
    with pytest.raises(SystemExit, match=r"contains --checkpoint"):
        main(["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path), "--overwrite_output_dir"])
    assert sorted(path.name for path in folder.iterdir()) == before and checkpoint.stat().st_size > 0


def test_overwrite_output_dir_replaces_only_the_converted_files(checkpoint, tmp_path):
    output_dir = tmp_path / "converted"
    main(["--checkpoint", str(checkpoint), "--output_dir", str(output_dir)])
    (output_dir / ".gitattributes").write_text("*.safetensors filter=lfs")
    (output_dir / "my_eval.py").write_text("print('mine')")
    (output_dir / "mjp" / "results.json").write_text("{}")
    main(["--checkpoint", str(checkpoint), "--output_dir", str(output_dir), "--overwrite_output_dir"])
    assert (output_dir / ".gitattributes").read_text() == "*.safetensors filter=lfs"
    assert (output_dir / "my_eval.py").read_text() == "print('mine')"
    assert (output_dir / "mjp" / "results.json").read_text() == "{}"
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "mjp" / "model.safetensors").is_file()


def test_the_token_is_never_written_or_printed(checkpoint, tmp_path, capsys, caplog):
    import logging

    token = "hf_SECRETtokenNeverWritten0123456789"
    tokens_seen = []

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        tokens_seen.append(self.token)
        return mock.Mock(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

    output_dir = tmp_path / "converted"
    with (
        mock.patch.object(HfApi, "create_repo", return_value=mock.Mock(repo_id="me/mjp-tiny")),
        mock.patch.object(HfApi, "upload_folder", upload_folder),
        caplog.at_level(logging.DEBUG),
    ):
        main(["--checkpoint", str(checkpoint), "--output_dir", str(output_dir), "--push_to_hub", "me/mjp-tiny",
              "--hub_token", token])  # fmt: skip
    assert tokens_seen == [token]
    printed = capsys.readouterr()
    assert token not in printed.out + printed.err + caplog.text
    for path in output_dir.rglob("*"):
        assert path.is_dir() or token.encode() not in path.read_bytes(), path


def test_an_output_folder_of_any_name_gets_a_valid_placeholder_id(checkpoint, tmp_path):
    output_dir = tmp_path / "my converted run, ü"
    main(["--checkpoint", str(checkpoint), "--output_dir", str(output_dir)])
    card = ModelCard.load(output_dir / "README.md")
    assert 'model="org/my-converted-run-u"' in card.text


@pytest.mark.parametrize("form", ["list", "object", "config.json"])
def test_id2label_is_read_from_a_list_an_object_or_a_classifiers_config(tmp_path, form):
    names = [f"class {i}" for i in range(7)]
    data = {
        "list": names,
        "object": {str(i): name for i, name in enumerate(names)},
        "config.json": {"model_type": "vit", "id2label": {str(i): name for i, name in enumerate(names)}},
    }[form]
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(data))
    assert _read_id2label(str(path)) == dict(enumerate(names))
