"""Training with a gradient defence from examples/run_image_classification.py: DP-SGD of MJP-ViT through Opacus (its ε
recorded in `all_results.json` and the card, equal to an accounting made here from the data and the flags alone; an
exact resume), local noise and pruning (the defended model trained, the defence recorded), and no JSON `Infinity`
when σ = 0. The parse-time refusals are in tests/test_example_flags.py."""

import json
import shutil

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from test_example import _on_folder, _train

from mjp_hf.modeling_mjp_vit import MJPViTModel
from mjp_hf.training.defenses import dp_sgd_epsilon


IMAGES, BATCH = 36, 8  # the image folder (3 classes of 12), QUICK's per-device batch


def _flags(image_folder, *extra):
    """MJP-ViT with the jigsaw on at every step from the start, 2 steps, a checkpoint after each, no evaluation."""
    return [
        *_on_folder(image_folder),
        *("--jigsaw_warmup_epochs", "0", "--jigsaw_prob", "1", "--lr_scheduler_type", "constant"),
        *("--max_steps", "2", "--save_steps", "1", "--do_eval", "false"),
        *extra,
    ]


def _results(folder) -> dict:
    return json.loads((folder / "all_results.json").read_text())


def _assert_same_weights(expected, actual):
    expected, actual = load_file(expected / "model.safetensors"), load_file(actual / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory, image_folder):
    """A DP-SGD run (σ 1, C 1) of MJP-ViT, with the jigsaw masks its training steps drew."""
    output = tmp_path_factory.mktemp("dp") / "run"
    masks = []

    def record(module, args, result):
        if isinstance(module, MJPViTModel) and module.training and result.jigsaw_mask is not None:
            masks.append(int(result.jigsaw_mask.sum()))

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        metrics = _train(output, *_flags(image_folder, "--dp_noise_multiplier", "1.0"))
    finally:
        hook.remove()
    return output, metrics, masks


def test_dp_sgd_of_mjp_vit_records_the_epsilon_an_independent_accounting_gives(dp_run):
    output, metrics, masks = dp_run
    assert len(masks) >= 2 and all(count > 0 for count in masks), "the jigsaw did not run in every step"
    results = _results(output)
    # Poisson sampling at q = B / N over the 36 training images, 2 steps, δ = 1 / N.
    expected = dp_sgd_epsilon(1.0, BATCH / IMAGES, 2, 1 / IMAGES)
    assert 0 < expected < float("inf")
    assert (
        results["dp_epsilon"] == pytest.approx(expected, rel=1e-12) and metrics["dp_epsilon"] == results["dp_epsilon"]
    )
    assert results["defense"] == {"kind": "dp_sgd", "noise_multiplier": 1.0, "max_grad_norm": 1.0}
    assert (results["dp_delta"], results["dp_sample_rate"], results["dp_steps"]) == (1 / IMAGES, BATCH / IMAGES, 2)
    assert json.loads((output / "training_args.json").read_text())["max_grad_norm"] == 0  # no batch clipping
    history = json.loads((output / "trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "loss" in entry]
    assert len(logged) == 2 and all(entry["localization_loss"] > 0 and "grad_norm" not in entry for entry in logged)
    assert logged[-1]["dp_epsilon"] == pytest.approx(expected, rel=1e-12)
    card = ModelCard.load(output / "README.md").text
    assert "| `defense` | DP-SGD (σ 1, C 1) |" in card
    assert f"| `dp_epsilon` | {expected:.4g} at δ = {1 / IMAGES:.3g} |" in card
    assert (
        f"Opacus' RDP accountant gives ε = {expected:.4g} at δ = {1 / IMAGES:.3g}. The guarantee covers the " in card
    )
    assert "trained weights, for the training examples. It does not cover" in card


def test_a_dp_run_resumes_exactly_and_refuses_another_noise(dp_run, tmp_path, image_folder):
    output = dp_run[0]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(output / "checkpoint-1", resumed / "checkpoint-1")  # what an interruption after step 1 leaves
    with pytest.raises(ValueError, match=r"--dp_noise_multiplier 1.0 there, 2.0 now"):
        _train(resumed, *_flags(image_folder, "--dp_noise_multiplier", "2.0"))
    _train(resumed, *_flags(image_folder, "--dp_noise_multiplier", "1.0"))
    _assert_same_weights(output, resumed)
    assert _results(resumed)["dp_epsilon"] == _results(output)["dp_epsilon"]
    assert _results(resumed)["dp_steps"] == 2


@pytest.fixture(scope="module")
def undefended_run(tmp_path_factory, image_folder):
    output = tmp_path_factory.mktemp("undefended") / "run"
    _train(output, *_flags(image_folder, "--save_strategy", "no"))
    return output


@pytest.mark.parametrize(
    "flags, recorded, described",
    [
        (
            ["--local_noise_multiplier", "0.5", "--local_max_grad_norm", "2"],
            {"kind": "local_noise", "noise_multiplier": 0.5, "max_grad_norm": 2.0},
            "local noise (σ 0.5, C 2)",
        ),
        (["--prune_ratio", "0.9"], {"kind": "prune", "prune_ratio": 0.9}, "pruning (0.9 of each tensor zeroed)"),
    ],
    ids=["local-noise", "pruning"],
)
def test_local_noise_and_pruning_train_the_defended_model_and_record_it(
    flags, recorded, described, undefended_run, tmp_path, image_folder
):
    output = tmp_path / "defended"
    _train(output, *_flags(image_folder, "--save_strategy", "no", *flags))
    results = _results(output)
    assert results["defense"] == recorded and "dp_epsilon" not in results
    card = ModelCard.load(output / "README.md").text
    assert f"| `defense` | {described} |" in card and "these weights are the ones trained with" in card
    # The same run without the defence ends elsewhere: the gradients the optimizer used were the defended ones.
    assert not torch.equal(
        load_file(output / "model.safetensors")["classifier.weight"],
        load_file(undefended_run / "model.safetensors")["classifier.weight"],
    )


def test_dp_sgd_without_noise_records_no_epsilon_and_never_json_infinity(tmp_path, image_folder):
    output = tmp_path / "clipping_only"
    printed = _train(output, *_flags(image_folder, "--dp_noise_multiplier", "0", "--max_steps", "1"))
    results = _results(output)
    assert results["dp_epsilon"] is None and "no privacy guarantee" in results["dp_epsilon_note"]
    assert printed["dp_epsilon"] is None
    for path in output.rglob("*.json"):
        assert "Infinity" not in path.read_text(), path
    card = ModelCard.load(output / "README.md").text
    assert "| `dp_epsilon` | none: σ = 0, no guarantee |" in card and "no privacy guarantee." in card
