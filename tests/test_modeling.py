"""MJP-ViT as a transformers model: the jigsaw in the forward, the UNK embedding, DALR, and ViT compatibility."""

import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import tiny_config_kwargs
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
    pipeline,
)

from mjp_hf import MJPViTConfig, MJPViTForImageClassification, MJPViTModel
from mjp_hf.jigsaw import permute_patch_pixels


def tiny_model(**overrides):
    torch.manual_seed(0)
    return MJPViTForImageClassification(MJPViTConfig(**tiny_config_kwargs(**overrides)))


def pixels(batch=4, seed=0, size=28, channels=3):
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def block_of(num_patches, positions):
    mask = torch.zeros(1, num_patches, dtype=torch.bool)
    mask[0, positions] = True
    return mask


def cycle_within(num_patches, positions):
    """A gather permutation `[1, num_patches]` that fills each listed position from the one before it in the list
    (the first from the last); every other position keeps its token."""
    permutation = torch.arange(num_patches)[None].clone()
    permutation[0, positions] = torch.tensor(positions).roll(1)
    return permutation


# --- the jigsaw inside the forward -------------------------------------------------------------------------------


def test_eval_mode_runs_no_jigsaw_and_training_mode_does():
    model = tiny_model(jigsaw_prob=1.0, jigsaw_ratio=0.3)
    model.eval()
    assert model(pixels()).jigsaw_mask is None
    model.train()
    mask = model(pixels()).jigsaw_mask
    assert mask.shape == (1, 49) and mask.dtype == torch.bool and mask.sum() > 0
    assert model(pixels(), jigsaw=False).jigsaw_mask is None


def test_forced_jigsaw_runs_in_eval_mode():
    model = tiny_model(jigsaw_prob=0.0, jigsaw_ratio=0.3).eval()
    assert model(pixels(), jigsaw=True).jigsaw_mask.sum() > 0


def test_jigsaw_prob_decides_per_step():
    model = tiny_model(jigsaw_prob=0.5, jigsaw_ratio=0.3).train()
    jigsawed = [bool(model(pixels(batch=1)).jigsaw_mask.any()) for _ in range(60)]
    assert 10 < sum(jigsawed) < 50
    model = tiny_model(jigsaw_prob=0.0, jigsaw_ratio=0.3).train()
    assert not any(model(pixels(batch=1)).jigsaw_mask.any() for _ in range(10))


def test_schedule_switch_turns_the_jigsaw_off_in_training():
    model = tiny_model(jigsaw_prob=1.0, jigsaw_ratio=0.3).train()
    model.set_mjp_schedule(jigsaw_enabled=False)
    assert not model(pixels()).jigsaw_mask.any()
    model.set_mjp_schedule(jigsaw_enabled=True)
    assert model(pixels()).jigsaw_mask.any()


def test_unknown_embedding_exactly_at_shuffled_positions_and_tokens_permuted():
    model = tiny_model().eval()
    embeddings = model.vit.embeddings
    x = pixels(batch=2)
    mask = block_of(49, [3, 4, 10, 11, 12])
    permutation = cycle_within(49, [3, 4, 10, 11, 12])

    returned_mask, returned_permutation = embeddings.jigsaw(x, True, mask, permutation)
    assert torch.equal(returned_mask, mask) and torch.equal(returned_permutation, permutation)
    out = embeddings.embed(x, mask, permutation)
    tokens = embeddings.patch_embeddings(x)
    pe = embeddings.position_embeddings[0]
    unk = embeddings.unk_position_embedding[0, 0]
    # CLS keeps its own token and position embedding.
    torch.testing.assert_close(out[:, 0], embeddings.cls_token[0, 0] + pe[0].expand(2, -1))
    for position in range(49):
        source = permutation[0, position].item()
        expected_pe = unk if mask[0, position] else pe[1 + position]
        torch.testing.assert_close(out[:, 1 + position], tokens[:, source] + expected_pe)


def test_token_shuffle_equals_shuffling_pixel_patches():
    # The reason the jigsaw may run on tokens: permuting whole pixel patches before the stride-p patch embedding.
    model = tiny_model().eval()
    embeddings = model.vit.embeddings
    x = pixels(batch=2)
    mask = block_of(49, [0, 1, 7, 8, 30])
    permutation = cycle_within(49, [0, 1, 7, 8, 30])
    out = embeddings.embed(x, mask, permutation)

    patches = x.reshape(2, 3, 7, 4, 7, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 49, 3, 4, 4)
    shuffled = patches[:, permutation[0]].reshape(2, 7, 7, 3, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(2, 3, 28, 28)
    pe = torch.where(mask[..., None], embeddings.unk_position_embedding, embeddings.position_embeddings[:, 1:])
    expected = embeddings.patch_embeddings(shuffled) + pe
    torch.testing.assert_close(out[:, 1:], expected)


def test_per_batch_and_per_sample_masks():
    x = pixels(batch=6)
    batch_mask = tiny_model(jigsaw_ratio=0.3).train()(x, jigsaw=True).jigsaw_mask
    assert batch_mask.shape == (1, 49)
    sample_mask = tiny_model(jigsaw_ratio=0.3, jigsaw_per_sample=True).train()(x, jigsaw=True).jigsaw_mask
    assert sample_mask.shape == (6, 49)
    assert len({tuple(row.tolist()) for row in sample_mask}) > 1


def test_per_sample_hidden_states_permute_each_sample_by_its_own_mask():
    model = tiny_model(jigsaw_ratio=0.3, jigsaw_per_sample=True).eval()
    x = pixels(batch=3)
    out = model(x, jigsaw=True, output_hidden_states=True)
    clean = model(x, jigsaw=False, output_hidden_states=True)
    first_layer_input, clean_input = out.hidden_states[0], clean.hidden_states[0]
    for sample in range(3):
        kept = ~out.jigsaw_mask[sample]
        torch.testing.assert_close(first_layer_input[sample, 1:][kept], clean_input[sample, 1:][kept])


def test_seeded_draws_are_reproducible():
    model = tiny_model(jigsaw_ratio=0.3).train()
    x = pixels()
    model.vit.embeddings.jigsaw_generator = torch.Generator().manual_seed(5)
    first = model(x, output_hidden_states=True)
    model.vit.embeddings.jigsaw_generator = torch.Generator().manual_seed(5)
    second = model(x, output_hidden_states=True)
    assert torch.equal(first.jigsaw_mask, second.jigsaw_mask)
    torch.testing.assert_close(first.hidden_states[0], second.hidden_states[0])
    torch.manual_seed(11)
    model.vit.embeddings.jigsaw_generator = None
    third = model(x).jigsaw_mask
    torch.manual_seed(11)
    assert torch.equal(model(x).jigsaw_mask, third)


def test_with_the_unknown_embedding_the_permutation_does_not_reach_the_logits():
    # docs/METHOD.md, permutation invariance: shuffled tokens share one PE, so attention cannot tell where they went.
    model = tiny_model().eval()
    x = pixels(batch=2)
    mask = block_of(49, [20, 21, 22, 27, 28])
    identity = torch.arange(49)[None]
    swapped = identity.clone()
    swapped[0, [20, 21, 22, 27, 28]] = torch.tensor([28, 20, 27, 21, 22])
    a = model(x, jigsaw_mask=mask, jigsaw_permutation=identity, output_hidden_states=True)
    b = model(x, jigsaw_mask=mask, jigsaw_permutation=swapped, output_hidden_states=True)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a.hidden_states[0], b.hidden_states[0])


def test_naive_mode_shuffles_every_patch_and_permutes_pixels():
    model = tiny_model(jigsaw_mode="naive").eval()
    embeddings = model.vit.embeddings
    assert embeddings.unk_position_embedding is None
    x = pixels(batch=2)
    torch.manual_seed(3)
    mask, permutation = embeddings.jigsaw(x, jigsaw=True)
    out = embeddings.embed(x, mask, permutation)
    assert mask.shape == (1, 49) and mask.all()
    # Recover the draws with the same seed: the patch order first, then the shared pixel permutation.
    torch.manual_seed(3)
    embeddings.jigsaw(x, jigsaw=True)
    pixel_permutation = torch.randperm(16)
    tokens = embeddings.patch_embeddings(permute_patch_pixels(x, (4, 4), pixel_permutation))
    expected = tokens.gather(1, permutation[..., None].expand(2, -1, 32)) + embeddings.position_embeddings[:, 1:]
    torch.testing.assert_close(out[:, 1:], expected)


def test_without_unknown_embedding_shuffled_tokens_keep_the_slot_pe():
    model = tiny_model(use_unk_position_embedding=False).eval()
    embeddings = model.vit.embeddings
    assert embeddings.unk_position_embedding is None
    x = pixels(batch=1)
    mask = block_of(49, [5, 6])
    permutation = cycle_within(49, [5, 6])
    out = embeddings.embed(x, mask, permutation)
    tokens = embeddings.patch_embeddings(x)
    torch.testing.assert_close(out[:, 1 + 5], tokens[:, 6] + embeddings.position_embeddings[:, 1 + 5])


def test_unknown_embedding_gets_gradient_only_from_jigsawed_steps():
    model = tiny_model(jigsaw_ratio=0.3).train()
    labels = torch.tensor([0, 1, 2, 3])
    model(pixels(), labels=labels, jigsaw=True).loss.backward()
    assert model.vit.embeddings.unk_position_embedding.grad.abs().sum() > 0
    model.zero_grad()
    model(pixels(), labels=labels, jigsaw=False).loss.backward()
    assert (
        model.vit.embeddings.unk_position_embedding.grad is None
        or not model.vit.embeddings.unk_position_embedding.grad.any()
    )


# --- DALR ---------------------------------------------------------------------------------------------------------


def test_dalr_targets_are_raw_row_col_or_normalised():
    targets = tiny_model().vit.dalr_loss.targets()
    assert targets.shape == (49, 2)
    assert targets[0].tolist() == [0, 0] and targets[8].tolist() == [1, 1] and targets[48].tolist() == [6, 6]
    assert targets[13].tolist() == [1, 6]  # k = row * 7 + col
    normalised = tiny_model(dalr_normalize_targets=True).vit.dalr_loss.targets()
    torch.testing.assert_close(normalised, targets / 7)


def test_dalr_targets_and_weight_survive_loading_and_moving(tmp_path):
    """The targets are built on the fly and the weight is a buffer set at init, not saved: loading (meta-device
    init) must rebuild both."""
    model = tiny_model(dalr_normalize_targets=True, dalr_loss_weight=0.25)
    model.save_pretrained(tmp_path)
    loaded = MJPViTForImageClassification.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.vit.dalr_loss.targets(), model.vit.dalr_loss.targets())
    assert float(loaded.vit.dalr_loss.weight) == 0.25
    assert not any("dalr_loss" in key or "target" in key for key in load_file(tmp_path / "model.safetensors"))
    halved = loaded.to(torch.bfloat16).vit.dalr_loss.targets()
    assert halved.dtype == torch.float32 and halved[8].tolist() == pytest.approx([1 / 7, 1 / 7])


def _reference_dalr_loss(model, kept_positions):
    prediction = model.vit.dalr_head(model.vit.embeddings.position_embeddings[0, 1:])
    rows, cols = torch.arange(49) // 7, torch.arange(49) % 7
    target = torch.stack((rows, cols), -1).float()
    return (
        torch.nn.functional.l1_loss(prediction[kept_positions], target[kept_positions]) * model.config.dalr_loss_weight
    )


def test_dalr_loss_is_the_weighted_mean_l1_over_kept_positions():
    model = tiny_model(dalr_loss_weight=0.5).eval()
    x, labels = pixels(), torch.tensor([0, 1, 2, 3])
    clean = model(x, labels=labels)
    torch.testing.assert_close(clean.localization_loss, _reference_dalr_loss(model, torch.arange(49)))
    masked = [3, 4, 10, 11]
    out = model(x, labels=labels, jigsaw_mask=block_of(49, masked))
    kept = torch.tensor([p for p in range(49) if p not in masked])
    torch.testing.assert_close(out.localization_loss, _reference_dalr_loss(model, kept))


def test_dalr_loss_with_per_sample_masks_counts_every_kept_pair():
    model = tiny_model().eval()
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[0, :10] = True
    out = model(pixels(batch=2), labels=torch.tensor([0, 1]), jigsaw_mask=mask)
    # Sample 1 keeps all 49 positions, sample 0 keeps 39: positions 10.. count twice.
    reference = (
        _reference_dalr_loss(model, torch.arange(10, 49)) * 39 * 2
        + _reference_dalr_loss(model, torch.arange(49)) * 49 * 2
    )
    torch.testing.assert_close(out.localization_loss, reference / (88 * 2))


def test_dalr_reads_position_embeddings_not_the_image():
    model = tiny_model().train()
    out = model(pixels(), jigsaw=False)
    out.localization_loss.backward()
    embeddings = model.vit.embeddings
    assert embeddings.position_embeddings.grad.abs().sum() > 0
    assert embeddings.patch_embeddings.projection.weight.grad is None
    assert torch.equal(
        model(pixels(seed=1), jigsaw=False).localization_loss, model(pixels(seed=2), jigsaw=False).localization_loss
    )


def test_loss_is_classification_plus_localization_for_every_problem_type():
    x = pixels()
    cases = {
        "single_label_classification": torch.tensor([0, 1, 2, 3]),
        "multi_label_classification": torch.randint(0, 2, (4, 5)).float(),
    }
    for problem_type, labels in cases.items():
        out = tiny_model(problem_type=problem_type).train()(x, labels=labels)
        torch.testing.assert_close(out.loss, out.classification_loss + out.localization_loss)
    regression = tiny_model(num_labels=1)(x, labels=torch.randn(4))
    assert regression.classification_loss is not None
    torch.testing.assert_close(regression.loss, regression.classification_loss + regression.localization_loss)


def test_schedule_weight_scales_the_loss_and_config_keeps_the_base():
    model = tiny_model(dalr_loss_weight=0.01).train()
    x = pixels()
    base = model(x, jigsaw=False).localization_loss
    model.set_mjp_schedule(dalr_loss_weight=0.005)
    torch.testing.assert_close(model(x, jigsaw=False).localization_loss, base / 2)
    assert model.config.dalr_loss_weight == 0.01


@pytest.mark.parametrize("head, keys", [("linear", 2), ("nonlinear", 4)])
def test_dalr_head_variants(head, keys):
    model = tiny_model(dalr_head=head)
    names = [name for name in model.state_dict() if "dalr_head" in name]
    assert len(names) == keys
    none = tiny_model(dalr_head="none")
    assert none.vit.dalr_head is None and none.vit.dalr_loss is None
    out = none(pixels(), labels=torch.tensor([0, 1, 2, 3]))
    assert out.localization_loss is None and torch.equal(out.loss, out.classification_loss)


# --- a plain ViT at inference -------------------------------------------------------------------------------------


def _stock_copy(model):
    vit = ViTForImageClassification(ViTConfig(**tiny_config_kwargs())).eval()
    missing, unexpected = vit.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    assert all("unk_position_embedding" in key or "dalr_head" in key for key in unexpected)
    return vit


def test_eval_logits_equal_a_stock_vit_with_the_same_weights():
    model = tiny_model().eval()
    x = pixels()
    assert torch.equal(model(x).logits, _stock_copy(model)(x).logits)


def test_to_vit_returns_exactly_that_model(tmp_path):
    model = tiny_model().eval()
    vit = model.to_vit()
    assert type(vit) is ViTForImageClassification and vit.config.model_type == "vit"
    assert not any(hasattr(vit.config, field) for field in ("jigsaw_ratio", "dalr_head"))
    x = pixels()
    assert torch.equal(vit(x).logits, model(x).logits)
    vit.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "vit"
    reloaded = ViTForImageClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(x).logits, model(x).logits)
    # The export owns its weights.
    with torch.no_grad():
        vit.classifier.weight.zero_()
    assert model.classifier.weight.abs().sum() > 0
    base = MJPViTModel(MJPViTConfig(**tiny_config_kwargs())).eval()
    torch.testing.assert_close(base.to_vit()(x).pooler_output, base(x).pooler_output)


def test_attention_backends_and_outputs():
    x = pixels()
    eager = tiny_model(attn_implementation="eager").eval()
    sdpa = tiny_model(attn_implementation="sdpa").eval()
    out = eager(x, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (4, 2, 50, 50)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(sdpa(x).logits, out.logits, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_trains():
    model = tiny_model(jigsaw_ratio=0.3).train()
    # transformers 5.24 names it activation checkpointing; 5.20, the lowest release setup.py allows, has only this.
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert model.is_gradient_checkpointing and all(layer.gradient_checkpointing for layer in model.vit.layers)
    x, labels = pixels(), torch.tensor([0, 1, 2, 3])
    mask, permutation = model.vit.embeddings.jigsaw(x, jigsaw=True)
    out = model(x, labels=labels, jigsaw_mask=mask, jigsaw_permutation=permutation)
    out.loss.backward()
    checkpointed = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad()
    for layer in model.vit.layers:
        layer.gradient_checkpointing = False
    model(x, labels=labels, jigsaw_mask=mask, jigsaw_permutation=permutation).loss.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(checkpointed[name], parameter.grad, msg=name)
    assert model.vit.layers[0].attention.q_proj.weight.grad.abs().sum() > 0


def test_interpolate_pos_encoding_with_and_without_jigsaw():
    model = tiny_model(jigsaw_ratio=0.3).eval()
    x = pixels(size=36)  # a 9x9 grid
    out = model(x, labels=torch.tensor([0, 1, 2, 3]), interpolate_pos_encoding=True, jigsaw=True)
    assert out.logits.shape == (4, 5) and out.jigsaw_mask.shape == (1, 81)
    assert torch.isfinite(out.localization_loss)
    clean = model(x, interpolate_pos_encoding=True)
    torch.testing.assert_close(clean.logits, _stock_copy(model)(x, interpolate_pos_encoding=True).logits)


def test_bfloat16_forward_and_backward():
    model = tiny_model(jigsaw_ratio=0.3).to(torch.bfloat16).train()
    out = model(pixels(), labels=torch.tensor([0, 1, 2, 3]), jigsaw=True)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()


# --- saving, loading, Auto classes --------------------------------------------------------------------------------


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(jigsaw_ratio=0.2, dalr_head="linear").eval()
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {
        "model.safetensors",
        "config.json",
        "modeling_mjp_vit.py",
        "configuration_mjp_vit.py",
        "jigsaw.py",
    } <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    reloaded = MJPViTForImageClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.jigsaw_ratio == 0.2 and reloaded.config.dalr_head == "linear"
    x = pixels()
    assert torch.equal(reloaded(x).logits, model(x).logits)
    y = torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(reloaded(x, labels=y).localization_loss, model(x, labels=y).localization_loss)
    torch.testing.assert_close(
        reloaded.vit.embeddings.unk_position_embedding, model.vit.embeddings.unk_position_embedding
    )


def test_auto_classes_and_auto_map(tmp_path):
    model = tiny_model().eval()
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_mjp_vit.MJPViTConfig"
    assert auto_map["AutoModelForImageClassification"] == "modeling_mjp_vit.MJPViTForImageClassification"
    assert auto_map["AutoModel"] == "modeling_mjp_vit.MJPViTModel"
    assert type(AutoConfig.from_pretrained(tmp_path)) is MJPViTConfig
    assert type(AutoModelForImageClassification.from_pretrained(tmp_path)) is MJPViTForImageClassification
    assert type(AutoModel.from_pretrained(tmp_path)) is MJPViTModel
    # A backbone's folder offers no classifier to load.
    MJPViTModel(MJPViTConfig(**tiny_config_kwargs())).save_pretrained(tmp_path / "base")
    base_map = json.loads((tmp_path / "base" / "config.json").read_text())["auto_map"]
    assert base_map == {
        "AutoConfig": "configuration_mjp_vit.MJPViTConfig",
        "AutoModel": "modeling_mjp_vit.MJPViTModel",
    }


def test_pipeline_classifies_images(tmp_path):
    model = tiny_model(id2label={i: f"class_{i}" for i in range(5)}, label2id={f"class_{i}": i for i in range(5)})
    model.save_pretrained(tmp_path)
    ViTImageProcessorPil(size={"height": 28, "width": 28}).save_pretrained(tmp_path)
    classifier = pipeline("image-classification", model=str(tmp_path))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    predictions = classifier(image, top_k=3)
    assert len(predictions) == 3 and predictions[0]["label"].startswith("class_")
    assert predictions[0]["score"] >= predictions[1]["score"]


BLOCK_MJP_HF = textwrap.dedent(
    """
    import sys
    class _Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == "mjp_hf" or name.startswith("mjp_hf."):
                raise ImportError("mjp_hf is blocked in this process")
    sys.meta_path.insert(0, _Refuse())
    """
)


def test_trust_remote_code_loads_without_the_package(tmp_path):
    model = tiny_model().eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    x = pixels(batch=2)
    expected = model(x).logits
    torch.save(x, tmp_path / "x.pt")
    script = BLOCK_MJP_HF + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModel, AutoModelForImageClassification
        try:
            import mjp_hf
            raise SystemExit("mjp_hf should not be importable here")
        except ImportError:
            pass
        try:
            AutoModelForImageClassification.from_pretrained({str(folder)!r})
            raise SystemExit("loading without trust_remote_code should fail")
        except ValueError:
            pass
        model = AutoModelForImageClassification.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert type(model).__name__ == "MJPViTForImageClassification", type(model)
        assert type(base).__name__ == "MJPViTModel", type(base)
        x = torch.load({str(tmp_path / "x.pt")!r}, weights_only=True)
        import json
        print("LOGITS=" + json.dumps(model(x).logits.tolist()))
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH="")
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if "LOGITS=" in line)
    logits = torch.tensor(json.loads(line.split("LOGITS=", 1)[1]))
    torch.testing.assert_close(logits, expected)


# --- stock ViT checkpoints ----------------------------------------------------------------------------------------


def _stock_vit():
    torch.manual_seed(1)
    return ViTForImageClassification(ViTConfig(**tiny_config_kwargs())).eval()


def _assert_loads_every_vit_weight(folder, vit):
    model, info = MJPViTForImageClassification.from_pretrained(folder, output_loading_info=True)
    new = {"vit.embeddings.unk_position_embedding"} | {k for k in model.state_dict() if ".dalr_head." in k}
    assert set(info["missing_keys"]) == new
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.model_type == "mjp_vit"
    model.eval()
    x = pixels()
    assert torch.equal(model(x).logits, vit(x).logits)


def test_loads_a_stock_vit_checkpoint_saved_with_v4_key_names(tmp_path):
    vit = _stock_vit()
    vit.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any("encoder.layer.0.attention.attention.query" in key for key in keys)  # the Hub's layout
    _assert_loads_every_vit_weight(tmp_path, vit)


def test_loads_a_stock_vit_checkpoint_with_v5_key_names(tmp_path):
    vit = _stock_vit()
    vit.config.save_pretrained(tmp_path)
    save_file(
        {k: v.contiguous() for k, v in vit.state_dict().items()},
        tmp_path / "model.safetensors",
        metadata={"format": "pt"},
    )
    assert "vit.layers.0.attention.q_proj.weight" in vit.state_dict()
    _assert_loads_every_vit_weight(tmp_path, vit)


# --- bad input ----------------------------------------------------------------------------------------------------


def test_wrong_channel_count_names_both_counts_and_the_fix():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"1 channels but the model expects 3.*convert"):
        model(pixels(channels=1))


def test_wrong_image_size_points_to_interpolate_pos_encoding():
    with pytest.raises(ValueError, match=r"\(32\*32\).*\(28\*28\).*interpolate_pos_encoding=True"):
        tiny_model()(pixels(size=32))


def test_bad_jigsaw_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"jigsaw_mask must have shape .*49"):
        model(pixels(), jigsaw_mask=torch.zeros(1, 48, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        model(pixels(), jigsaw_mask=torch.zeros(1, 49))
    with pytest.raises(ValueError, match="jigsaw=False contradicts"):
        model(pixels(), jigsaw=False, jigsaw_mask=torch.zeros(1, 49, dtype=torch.bool))


def test_grids_smaller_than_one_block_still_jigsaw():
    model = tiny_model(image_size=8, patch_size=4, jigsaw_ratio=0.5).train()  # a 2x2 grid, min block 8 > 4 patches
    masks = torch.cat([model(pixels(size=8), jigsaw=True).jigsaw_mask for _ in range(20)])
    assert masks.shape == (20, 4) and masks.any()
    assert (masks.sum(1) <= 2).all()


def test_saved_keys_of_the_mjp_parts_are_not_renamed(tmp_path):
    from safetensors import safe_open

    tiny_model().save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "vit.embeddings.unk_position_embedding" in keys
    assert {k for k in keys if "dalr_head" in k} == {
        f"vit.embeddings.dalr_head.regressor.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }


# --- the DALR loss only where it is used; inputs that cannot be a batch ------------------------------------------


def test_inference_outputs_hold_no_loss_and_training_outputs_do():
    model = tiny_model().eval()
    x, labels = pixels(), torch.tensor([0, 1, 2, 3])
    inference = model(x)
    assert inference.localization_loss is None and inference.loss is None
    assert model(x, jigsaw=True).localization_loss is None  # evaluation under shuffling needs no loss either
    with_labels = model(x, labels=labels)
    torch.testing.assert_close(with_labels.loss, with_labels.classification_loss + with_labels.localization_loss)
    assert with_labels.localization_loss > 0
    model.train()
    assert model(x).localization_loss > 0


def test_batched_pipeline_on_a_saved_mjp_folder(tmp_path):
    labels = {i: f"class_{i}" for i in range(5)}
    model = tiny_model(id2label=labels, label2id={name: i for i, name in labels.items()}).eval()
    model.save_pretrained(tmp_path)
    processor = ViTImageProcessorPil(size={"height": 28, "width": 28})
    processor.save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)) for _ in range(6)]
    classifier = pipeline("image-classification", model=str(tmp_path), batch_size=4)
    predictions = classifier(images, top_k=2)
    assert len(predictions) == 6
    with torch.no_grad():
        expected = model(processor(images, return_tensors="pt").pixel_values).logits.softmax(-1)
    for scores, prediction in zip(expected, predictions):
        top = scores.topk(2)
        assert [p["label"] for p in prediction] == [labels[i] for i in top.indices.tolist()]
        np.testing.assert_allclose([p["score"] for p in prediction], top.values.tolist(), atol=1e-5)


def test_legacy_onnx_export_of_the_mjp_classifier(tmp_path):
    onnx = pytest.importorskip("onnx")  # in the dev extra
    model = tiny_model().eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(
        model,
        (pixels(batch=2),),
        str(path),
        dynamo=False,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_axes={"pixel_values": {0: "batch"}},
    )
    graph = onnx.load(str(path)).graph
    assert [output.name for output in graph.output] == ["logits"]
    assert onnx.checker.check_model(onnx.load(str(path))) is None


@pytest.mark.parametrize(
    "row, problem",
    [
        ([0, 1, 2, 49] + list(range(4, 49)), r"values out of range \[49\]"),
        ([-1] + list(range(1, 49)), r"values out of range \[-1\]"),
        ([0, 0] + list(range(2, 49)), r"repeated values \[0\]"),
    ],
)
def test_a_given_permutation_must_be_a_permutation(row, problem):
    model = tiny_model()
    bad = torch.stack([torch.arange(49), torch.tensor(row)])
    with pytest.raises(ValueError, match=rf"jigsaw_permutation row 1 is not a permutation of 0..48 \({problem}\)"):
        model(pixels(batch=2), jigsaw_permutation=bad)
    with pytest.raises(ValueError, match="is not a permutation"):
        model(pixels(batch=2), jigsaw_mask=torch.ones(1, 49, dtype=torch.bool), jigsaw_permutation=bad)


def test_an_empty_batch_is_refused():
    with pytest.raises(ValueError, match=r"pixel_values must be a batch of at least one image .*got \(0, 3, 28, 28\)"):
        tiny_model()(pixels(batch=0))


def test_images_smaller_than_one_patch_are_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\(2\*2\) are smaller than one patch \(4\*4\)"):
        model(pixels(size=2), interpolate_pos_encoding=True)


# --- checkpoints saved before the DALR head moved out of the embeddings -------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures"


def _legacy_outputs():
    """What the code of bdd6b9a computed with the fixtures (tests/fixtures/make_legacy_fixtures.py)."""
    expected = json.loads((FIXTURES / "legacy_outputs.json").read_text())
    return {key: torch.tensor(value) if isinstance(value, list) else value for key, value in expected.items()}


@pytest.mark.parametrize(
    "folder, loader", [("legacy_mjp_classifier", AutoModelForImageClassification), ("legacy_mjp_model", AutoModel)]
)
def test_checkpoints_saved_before_the_dalr_moved_load_unchanged(tmp_path, folder, loader):
    old_keys = set(load_file(FIXTURES / folder / "model.safetensors"))
    assert {key for key in old_keys if "dalr_head" in key} and all(
        key.startswith(("embeddings.dalr_head.", "vit.embeddings.dalr_head."))
        for key in old_keys
        if "dalr_head" in key
    )
    model, info = loader.from_pretrained(FIXTURES / folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    expected = _legacy_outputs()
    x, labels = expected["pixels"], expected["labels"]
    with torch.no_grad():
        if folder == "legacy_mjp_classifier":
            model.eval()
            clean = model(x, labels=labels)
            assert torch.equal(clean.logits, expected["logits"])
            torch.testing.assert_close(
                clean.localization_loss.item(), expected["localization_loss"], rtol=1e-6, atol=0
            )
            jigsawed = model(
                x,
                labels=labels,
                jigsaw_mask=expected["jigsaw_mask"],
                jigsaw_permutation=expected["jigsaw_permutation"],
            )
            assert torch.equal(jigsawed.logits, expected["jigsawed_logits"])
            torch.testing.assert_close(
                jigsawed.localization_loss.item(), expected["jigsawed_localization_loss"], rtol=1e-6, atol=0
            )
        else:
            out = model.train()(x, jigsaw=False)
            assert torch.equal(out.pooler_output, expected["model_pooler_output"])
            loss = model.localization_loss(out.jigsaw_mask)
            torch.testing.assert_close(loss.item(), expected["model_localization_loss"], rtol=1e-6, atol=0)
    # Saved again, the file keeps the layout (and the tensors) of the old one: older mjp-hf reads new checkpoints.
    model.save_pretrained(tmp_path)
    resaved = load_file(tmp_path / "model.safetensors")
    old = load_file(FIXTURES / folder / "model.safetensors")
    assert set(resaved) == old_keys and all(torch.equal(resaved[key], old[key]) for key in old_keys)


def test_the_dalr_head_lives_in_the_base_model_and_moved_names_say_where():
    model = tiny_model()
    assert {name for name, _ in model.named_parameters() if "dalr" in name} == {
        f"vit.dalr_head.regressor.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")
    }
    with pytest.raises(
        AttributeError, match=r"MJPViTEmbeddings.localization_loss moved: use `model.vit.localization_loss"
    ):
        model.vit.embeddings.localization_loss(None)
    for name, replacement in [
        ("dalr_head", "dalr_head"),
        ("dalr_targets", "dalr_loss.targets()"),
        ("dalr_loss_weight", "dalr_loss.weight"),
    ]:
        with pytest.raises(AttributeError, match=re.escape(f"use `model.vit.{replacement}`")):
            getattr(model.vit.embeddings, name)
    with pytest.raises(
        AttributeError, match=re.escape("returns no loss: use `model.localization_loss(outputs.jigsaw_mask)`")
    ):
        model.vit(pixels()).localization_loss


def test_automodel_users_get_the_classifiers_localization_loss():
    model = tiny_model(dalr_loss_weight=0.3).train()
    x, labels = pixels(), torch.tensor([0, 1, 2, 3])
    mask = block_of(49, [3, 4, 10, 11])
    out = model(x, labels=labels, jigsaw_mask=mask)
    base = MJPViTModel(model.config, add_pooling_layer=False)
    base.load_state_dict(model.vit.state_dict())
    base_out = base.train()(x, jigsaw_mask=mask)
    assert torch.equal(base_out.jigsaw_mask, mask)
    torch.testing.assert_close(base.localization_loss(base_out.jigsaw_mask), out.localization_loss)
    # One row per sample (what the classifier computes, for per-sample gradients) is the same loss.
    torch.testing.assert_close(base.localization_loss(mask, batch_size=4), base.localization_loss(mask))
    assert MJPViTModel(MJPViTConfig(**tiny_config_kwargs(dalr_head="none"))).localization_loss(mask) is None


# Every variant of the model: the jigsaw modes, the DALR heads, with and without the unknown position embedding.
VARIANTS = [
    dict(jigsaw_mode=mode, dalr_head=head, use_unk_position_embedding=unk)
    for mode in ("mjp", "naive")
    for head in ("nonlinear", "linear", "none")
    for unk in (True, False)
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(str(value) for value in v.values()))
def test_no_module_with_trainable_parameters_holds_a_buffer(variant):
    # Opacus refuses a module with trainable parameters of its own and any buffer under it (GradSampleModule.validate):
    # buffers are shared by the batch, so no per-sample gradient accounts for them.
    config = MJPViTConfig(**tiny_config_kwargs(**variant))
    for model in (
        MJPViTForImageClassification(config),
        MJPViTModel(config),
        MJPViTModel(config, add_pooling_layer=False),
    ):
        for name, module in model.named_modules():
            if any(parameter.requires_grad for parameter in module.parameters(recurse=False)):
                assert not list(module.buffers()), (name, type(module).__name__)
        # The one buffer, the DALR loss weight, lives in a module without parameters.
        assert {name for name, _ in model.named_buffers()} <= {"dalr_loss.weight", "vit.dalr_loss.weight"}


# --- the lines copied from transformers' ViT ----------------------------------------------------------------------


def _copied_blocks(source: str) -> list[tuple[str, list[tuple[str, str]], list[str]]]:
    """`(upstream object, substitutions, copied lines)` of every "# Copied from X [with A->B, ...]" block of `source`,
    which ends at "# End of copy"; the marker may wrap onto the comment lines after it."""
    lines, blocks = source.splitlines(), []
    for start, line in enumerate(lines):
        if not line.strip().startswith("# Copied from"):
            continue
        body = start + 1
        marker = line.strip()[1:]
        while lines[body].strip().startswith("#"):
            marker += lines[body].strip()[1:]
            body += 1
        end = next(i for i in range(body, len(lines)) if lines[i].strip() == "# End of copy")
        target, _, substitutions = marker.removeprefix(" Copied from ").partition(" with ")
        # Pairs are separated by ", " before the next "old->" (a replacement may hold a comma).
        pairs = [tuple(pair.split("->")) for pair in re.split(r", (?=\S+->)", substitutions)] if substitutions else []
        blocks.append((target.strip(), pairs, lines[body:end]))
    return blocks


def _normalised(code: str) -> str:
    """Code without comments, blank space and trailing commas, so that formatting cannot hide or fake a change."""
    code = "".join(line.split("#", 1)[0] for line in code.splitlines())
    return re.sub(r",([)\]])", r"\1", re.sub(r"\s+", "", code))


def _upstream(target: str):
    module_name, attributes = target, []
    while module_name not in sys.modules:
        module_name, _, attribute = module_name.rpartition(".")
        attributes.insert(0, attribute)
    obj = sys.modules[module_name]
    for attribute in attributes:
        obj = getattr(obj, attribute)
    return obj


def copy_drift(target: str, substitutions, copied_lines) -> str | None:
    """`None` if the copied lines are, after the substitutions, a contiguous part of the installed upstream code;
    otherwise what differs."""
    upstream = _normalised(inspect.getsource(_upstream(target)))
    for old, new in substitutions:
        upstream = upstream.replace(_normalised(old), _normalised(new))
    copy = _normalised("\n".join(copied_lines))
    return (
        None
        if copy and copy in upstream
        else f"{target}: the copy no longer matches transformers {transformers.__version__}"
    )


def test_the_copies_of_vit_code_match_the_installed_transformers():
    import mjp_hf.modeling_mjp_vit as modeling

    blocks = _copied_blocks(inspect.getsource(modeling))
    targets = {target for target, _, _ in blocks}
    assert targets == {
        "transformers.models.vit.modeling_vit.ViTModel.forward",
        "transformers.models.vit.modeling_vit.ViTForImageClassification.__init__",
        "transformers.models.vit.modeling_vit.ViTForImageClassification.forward",
    }
    assert len(blocks) == 4 and sum(len(lines) for _, _, lines in blocks) >= 20
    assert [copy_drift(*block) for block in blocks] == [None] * len(blocks)
    # The check catches an edited line, a dropped line and a substitution left undone.
    for target, substitutions, lines in blocks:
        edited = [line.replace("self.", "self._", 1) if "self." in line else line for line in lines]
        assert copy_drift(target, substitutions, edited) is not None
        assert copy_drift(target, substitutions, lines[:1] + lines[2:]) is not None or len(lines) < 3
        assert not substitutions or copy_drift(target, [], lines) is not None


@pytest.mark.parametrize("per_sample_masks", [False, True])
def test_the_dalr_loss_once_per_mask_row_is_the_loss_once_per_sample(per_sample_masks):
    # A plain step computes the DALR once per mask row; per-sample gradients (Opacus) need it once per sample.
    model = tiny_model(jigsaw_prob=1.0, jigsaw_ratio=0.3, jigsaw_per_sample=per_sample_masks, dalr_loss_weight=0.5)
    model.train()
    x, labels = pixels(), torch.tensor([0, 1, 0, 1])
    results = []
    for per_sample in (False, True):
        model.per_sample_gradients = per_sample
        model.zero_grad()
        model.vit.embeddings.jigsaw_generator = torch.Generator().manual_seed(3)
        out = model(x, labels=labels)
        out.loss.backward()
        results.append((out.localization_loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_rows, grads_rows), (loss_samples, grads_samples) = results
    torch.testing.assert_close(loss_rows, loss_samples)
    for row, sample in zip(grads_rows, grads_samples):
        torch.testing.assert_close(row, sample)
