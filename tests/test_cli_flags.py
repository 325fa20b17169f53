"""Every numeric flag (and every repository id) of the hub and conversion commands, the study and the privacy-figures script is range-checked when the
command line is parsed, before any work, and the error names the flag (argparse's `argument --flag: ...`)."""

import importlib.util
from pathlib import Path

import pytest

from mjp_hf.conversion import from_vit, original


REPO = Path(__file__).resolve().parents[1]


def _example(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FROM_VIT = ["--model_name_or_path", "vit", "--output_dir", "out"]
ORIGINAL = ["--checkpoint", "best_model.pth", "--output_dir", "out"]
BAD = [
    # (command, argv, flag)
    ("from_vit", [*FROM_VIT, "--jigsaw_ratio", "1.5"], "--jigsaw_ratio"),
    ("from_vit", [*FROM_VIT, "--jigsaw_ratio", "nan"], "--jigsaw_ratio"),
    ("from_vit", [*FROM_VIT, "--jigsaw_prob", "-0.1"], "--jigsaw_prob"),
    ("from_vit", [*FROM_VIT, "--jigsaw_min_block", "0"], "--jigsaw_min_block"),
    ("from_vit", [*FROM_VIT, "--jigsaw_max_block", "0"], "--jigsaw_max_block"),
    ("from_vit", [*FROM_VIT, "--jigsaw_max_block", "2.5"], "--jigsaw_max_block"),
    ("from_vit", [*FROM_VIT, "--jigsaw_min_aspect", "0"], "--jigsaw_min_aspect"),
    ("from_vit", [*FROM_VIT, "--jigsaw_min_aspect", "inf"], "--jigsaw_min_aspect"),
    ("from_vit", [*FROM_VIT, "--dalr_loss_weight", "-1"], "--dalr_loss_weight"),
    ("from_vit", [*FROM_VIT, "--dalr_head", "deep"], "--dalr_head"),
    ("from_vit", [*FROM_VIT, "--jigsaw_mode", "random"], "--jigsaw_mode"),
    ("hub", ["push", "--run_dir", "run", "--hub_model_id", "my run"], "--hub_model_id"),
    ("hub", ["layout", "--run_dir", "run", "--output_dir", "o", "--model_id", "x--y"], "--model_id"),
    ("hub", ["card", "--run_dir", "run", "--output", "card.md", "--model_id", "a" * 97], "--model_id"),
    ("original", [*ORIGINAL, "--num_attention_heads", "0"], "--num_attention_heads"),
    ("original", [*ORIGINAL, "--num_attention_heads", "-6"], "--num_attention_heads"),
    ("original", [*ORIGINAL, "--push_to_hub", "my run"], "--push_to_hub"),
    ("original", [*ORIGINAL, "--model_id", "a/b/c"], "--model_id"),
    ("mjp_study", ["--parallel", "0"], "--parallel"),
    ("mjp_study", ["--seeds", "0", "-1"], "--seeds"),
    ("mjp_study", ["--seeds", str(2**32)], "--seeds"),
    ("mjp_study", ["--max_steps", "0"], "--max_steps"),
    ("mjp_study", ["--max_eval_samples", "0"], "--max_eval_samples"),
    ("mjp_study", ["--robustness_samples", "-5"], "--robustness_samples"),
    ("mjp_study", ["--privacy_images", "0"], "--privacy_images"),
    ("mjp_study", ["--severities", "0,1"], "--severities"),
    ("mjp_study", ["--severities", "1,six"], "--severities"),
    ("mjp_study", ["--seeds_for", "mjp=-1"], "--seeds_for"),
    ("privacy_figures", ["--ratios", "0.1", "1.5"], "--ratios"),
    ("privacy_figures", ["--probs", "-0.5"], "--probs"),
    ("privacy_figures", ["--train_steps", "0"], "--train_steps"),
    ("privacy_figures", ["--batch_size", "0"], "--batch_size"),
    ("privacy_figures", ["--seed", "-1"], "--seed"),
]


def _parse(command, argv):
    if command == "hub":
        from mjp_hf.hub.cli import _parse_args

        return _parse_args(argv)
    if command == "from_vit":
        return from_vit._parse_args(argv)
    if command == "original":
        return original._parse_args(argv)
    return _example(command).parse_args(argv)


@pytest.mark.parametrize("command, argv, flag", BAD, ids=[f"{c}{flag}={a[-1][:12]}" for c, a, flag in BAD])
def test_a_value_out_of_range_is_refused_at_parse_time_naming_the_flag(command, argv, flag, capsys):
    with pytest.raises(SystemExit) as error:
        _parse(command, argv)
    assert error.value.code == 2  # argparse's usage error, before anything is read or loaded
    assert f"argument {flag}" in capsys.readouterr().err


GOOD = [
    ("from_vit", [*FROM_VIT, "--jigsaw_ratio", "0", "--jigsaw_prob", "1", "--jigsaw_max_block", "12"]),
    ("from_vit", [*FROM_VIT, "--dalr_loss_weight", "0", "--jigsaw_min_aspect", "1", "--dalr_head", "none"]),
    ("original", [*ORIGINAL, "--num_attention_heads", "6", "--push_to_hub", "org/mjp-vit-small"]),
    ("mjp_study", ["--parallel", "2", "--seeds", "0", "4294967295", "--severities", "1,5", "--max_steps", "1"]),
    ("privacy_figures", ["--ratios", "0.1", "1", "--probs", "0", "1", "--train_steps", "1", "--seed", "0"]),
]


@pytest.mark.parametrize("command, argv", GOOD, ids=[c for c, _ in GOOD])
def test_the_edges_of_each_range_are_accepted(command, argv):
    _parse(command, argv)
