"""`python -m mjp_hf.conversion.from_vit`: an MJP model initialised from a stock ViT checkpoint."""

import json
import os
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    ViTModel,
)

from mjp_hf import MJPViTForImageClassification, MJPViTModel
from mjp_hf.conversion.from_vit import NotAViTCheckpointError, main, mjp_from_vit


SHAPE = dict(
    image_size=32,
    patch_size=8,
    num_channels=3,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=96,
)


@pytest.fixture
def vit_folder(tmp_path):
    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog", 2: "bird"}
    vit = ViTForImageClassification(
        ViTConfig(**SHAPE, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    ).eval()
    folder = tmp_path / "vit"
    vit.save_pretrained(folder)  # transformers writes the v4 key names the Hub's ViT checkpoints use
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder, vit


def test_all_vit_weights_kept_and_only_mjp_parts_new(vit_folder, tmp_path, capsys):
    folder, vit = vit_folder
    with safe_open(folder / "model.safetensors", "pt") as handle:
        assert any(".encoder.layer." in key for key in handle.keys())  # the test really uses v4 names

    model = main(
        [
            "--model_name_or_path",
            str(folder),
            "--output_dir",
            str(tmp_path / "mjp"),
            "--jigsaw_ratio",
            "0.25",
            "--jigsaw_per_sample",
            "true",
            "--dalr_head",
            "linear",
        ]
    )
    assert "max |eval difference| to the source ViT" in capsys.readouterr().out
    reloaded = MJPViTForImageClassification.from_pretrained(tmp_path / "mjp").eval()
    config = reloaded.config
    assert (config.jigsaw_ratio, config.jigsaw_per_sample, config.dalr_head) == (0.25, True, "linear")
    assert config.id2label == {0: "cat", 1: "dog", 2: "bird"} and config.layer_norm_eps == vit.config.layer_norm_eps

    vit_state = vit.state_dict()
    for key, value in reloaded.state_dict().items():
        if ".unk_position_embedding" in key or ".dalr_head." in key:
            assert key not in vit_state
            continue
        assert torch.equal(value, vit_state[key]), key
    assert set(vit_state) <= set(reloaded.state_dict())

    # The new parts are initialised like a fresh MJP model's, not left empty.
    unk = reloaded.vit.embeddings.unk_position_embedding
    assert torch.isfinite(unk).all() and 0.005 < unk.std().item() < 0.05
    assert reloaded.vit.dalr_head.regressor[0].weight.abs().sum() > 0

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, vit(x).logits)
    assert json.loads((tmp_path / "mjp" / "preprocessor_config.json").read_text())["size"]["height"] == 32

    # Ready for MJP training: the jigsaw runs and the DALR loss joins the classification loss.
    reloaded.train()
    out = reloaded(x, labels=torch.tensor([0, 2]), jigsaw=True)
    assert out.jigsaw_mask.shape == (2, 16) and out.localization_loss > 0
    out.loss.backward()
    assert reloaded.vit.dalr_head.regressor[0].weight.grad is not None
    assert model.config.jigsaw_ratio == 0.25


def test_encoder_checkpoint_gives_an_mjp_encoder(tmp_path):
    torch.manual_seed(1)
    encoder = ViTModel(ViTConfig(**SHAPE)).eval()
    encoder.save_pretrained(tmp_path / "encoder")
    model = mjp_from_vit(tmp_path / "encoder")
    assert isinstance(model, MJPViTModel) and model.pooler is not None
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x).pooler_output, encoder(x).pooler_output)


def test_distilled_deit_is_refused(tmp_path):
    deit_config = DeiTConfig(**SHAPE, num_labels=3)
    DeiTForImageClassificationWithTeacher(deit_config).save_pretrained(tmp_path / "distilled")
    with pytest.raises(NotAViTCheckpointError, match="distillation token.*non-distilled DeiT"):
        mjp_from_vit(tmp_path / "distilled")
    DeiTForImageClassification(deit_config).save_pretrained(tmp_path / "deit")
    with pytest.raises(SystemExit, match="distillation token"):
        main(["--model_name_or_path", str(tmp_path / "deit"), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_refuses_mjp_checkpoints_bad_settings_and_full_folders(vit_folder, tmp_path):
    folder, _ = vit_folder
    main(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "mjp")])
    with pytest.raises(NotAViTCheckpointError, match="already an MJP-ViT checkpoint"):
        mjp_from_vit(tmp_path / "mjp")
    with pytest.raises(SystemExit, match="not empty"):
        main(["--model_name_or_path", str(folder), "--output_dir", str(tmp_path / "mjp")])
    with pytest.raises(ValueError, match="jigsaw_mode"):
        mjp_from_vit(folder, jigsaw_mode="random")
    with pytest.raises(ValueError, match="Unknown MJP settings"):
        mjp_from_vit(folder, jigsaw_ratios=0.2)


def test_incomplete_vit_checkpoint_is_refused(vit_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, _ = vit_folder
    weights = load_file(folder / "model.safetensors")
    dropped = next(key for key in weights if key.endswith("layernorm_before.weight"))
    del weights[dropped]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NotAViTCheckpointError, match="ViT weights missing from the checkpoint.*layernorm_before"):
        mjp_from_vit(folder)


# --- what the command says ----------------------------------------------------------------------------------------


def _run_from_vit(warm_python, *args, cwd):
    """`python -m mjp_hf.conversion.from_vit ARGS` in a process of its own (a warm child: its imports done)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return warm_python.run(
        ["-m", "mjp_hf.conversion.from_vit", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_command_says_what_it_added_in_one_line_and_refuses_an_mjp_folder_in_one_line(
    warm_python, vit_folder, tmp_path
):
    folder, _ = vit_folder
    done = _run_from_vit(warm_python, "--model_name_or_path", folder, "--output_dir", tmp_path / "mjp", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "Added the unknown position embedding and the nonlinear DALR head ("
    )
    assert "max |eval difference| to the source ViT 0.00e+00" in lines[0]
    # transformers' load report would list the very parameters the command creates as MISSING.
    assert "MISSING" not in done.stdout + done.stderr and "Consider training" not in done.stdout + done.stderr

    again = _run_from_vit(
        warm_python, "--model_name_or_path", tmp_path / "mjp", "--output_dir", tmp_path / "again", cwd=tmp_path
    )
    assert again.returncode != 0 and "Traceback" not in again.stderr
    errors = [line for line in again.stderr.splitlines() if line.strip() and "Loading weights" not in line]
    assert errors == [
        f"python -m mjp_hf.conversion.from_vit: {tmp_path / 'mjp'} is already an MJP-ViT checkpoint; load it "
        "with MJPViTForImageClassification."
    ]
    assert not (tmp_path / "again").exists()


def test_output_folder_may_not_be_the_source(vit_folder):
    folder, _ = vit_folder
    before = (folder / "model.safetensors").read_bytes()
    with pytest.raises(SystemExit, match=r"--output_dir .* is --model_name_or_path"):
        main(["--model_name_or_path", str(folder), "--output_dir", str(folder), "--overwrite_output_dir"])
    assert (folder / "model.safetensors").read_bytes() == before


def test_an_output_folder_holding_or_reaching_the_source_by_a_link_or_dots_is_refused(
    vit_folder, tmp_path, monkeypatch
):
    """docs/HUB.md: a folder that is, or contains, the input (links resolved) is refused before any work starts."""
    folder, _ = vit_folder
    (tmp_path / "vit link").symlink_to(folder, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    for output in (str(tmp_path), ".", "vit link", "vit/../vit", "vit link/.."):
        with pytest.raises(SystemExit, match=r"--output_dir .* (is|contains) --model_name_or_path"):
            main(["--model_name_or_path", "vit", "--output_dir", output, "--overwrite_output_dir"])
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vit", "vit link"]


def test_overwrite_replaces_only_a_checkpoints_files_and_a_failed_write_changes_nothing(vit_folder, tmp_path):
    from unittest import mock

    folder, _ = vit_folder
    output = tmp_path / "mjp init ü"
    main(["--model_name_or_path", str(folder), "--output_dir", str(output)])
    mine = {"notes.md": "mine", "old/model.safetensors": "mine", "model-v2/a-of-b.safetensors": "mine"}
    for name, text in mine.items():
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_text(text)
    (output / "pytorch_model.bin").write_bytes(b"stale weights of an earlier checkpoint")
    main(["--model_name_or_path", str(folder), "--output_dir", str(output), "--overwrite_output_dir",
          "--jigsaw_ratio", "0.25"])  # fmt: skip
    assert all((output / name).read_text() == text for name, text in mine.items())
    assert not (output / "pytorch_model.bin").exists(), "stale weights of an earlier checkpoint stayed"
    assert json.loads((output / "config.json").read_text())["jigsaw_ratio"] == 0.25

    # The image processor's save fails after the model's: the folder keeps the earlier checkpoint, whole.
    before = {path: path.read_bytes() for path in output.rglob("*") if path.is_file()}
    failing = mock.patch(
        "transformers.image_processing_base.ImageProcessingMixin.save_pretrained",
        side_effect=OSError(28, "No space left on device"),
    )
    with failing, pytest.raises(OSError, match="No space left"):
        main(["--model_name_or_path", str(folder), "--output_dir", str(output), "--overwrite_output_dir",
              "--jigsaw_ratio", "0.5"])  # fmt: skip
    assert {path: path.read_bytes() for path in output.rglob("*") if path.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == sorted(["vit", output.name]), "a staging folder was left behind"
