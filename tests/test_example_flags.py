"""The example's flags: how it tells the flags a user gave from the ones it fills in (argparse with suppressed
defaults), and the numbers it refuses at parse time."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def _example():
    name = "run_image_classification"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples/run_image_classification.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve the module of their fields' annotations
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_given_flags_hold_only_what_the_command_line_sets():
    run = _example()
    given = run._given_flags(
        [
            "--num_train_epochs",
            "5",
            "--learning_rate=1e-4",
            "--no_random_flip",
            "--do_eval",
            "--jigsaw_per_sample",
            "false",
            "--weight_dec",
            "0.1",
        ]
    )  # argparse's prefix matching: a flag it accepts counts as given
    assert given == {
        "num_train_epochs": 5.0,
        "learning_rate": 1e-4,
        "random_flip": False,
        "do_eval": True,
        "jigsaw_per_sample": False,
        "weight_decay": 0.1,
    }
    assert run._given_flags([]) == {}


# --- numbers out of range: refused at parse time, naming the flag, the value and what to pass ----------------------

OUT_OF_RANGE = [
    ("per_device_train_batch_size", "0", "a whole number >= 1"),
    ("per_device_eval_batch_size", "0", "a whole number >= 1"),
    ("gradient_accumulation_steps", "0", "a whole number >= 1"),
    ("eval_accumulation_steps", "0", "a whole number >= 1"),
    ("num_train_epochs", "0", "a number of epochs > 0 (nothing would be trained"),
    ("num_train_epochs", "-1", "a number of epochs > 0"),
    ("num_train_epochs", "nan", "a number of epochs > 0"),
    ("max_steps", "0", "a whole number of steps >= 1, or -1 (the default)"),
    ("max_steps", "-2", "a whole number of steps >= 1, or -1"),
    ("learning_rate", "0", "a learning rate > 0"),
    ("learning_rate", "-1e-3", "a learning rate > 0"),
    ("learning_rate", "inf", "a learning rate > 0"),
    ("weight_decay", "-0.1", "a weight decay >= 0"),
    ("adam_beta1", "1", "a number in [0, 1)"),
    ("adam_beta2", "-0.5", "a number in [0, 1)"),
    ("adam_epsilon", "0", "a number > 0"),
    ("max_grad_norm", "-1", "a norm >= 0"),
    ("warmup_steps", "-1", "a whole number of steps >= 0, or a fraction"),
    ("warmup_steps", "2.5", "a whole number of steps >= 0, or a fraction"),
    ("label_smoothing_factor", "1", "a number in [0, 1)"),
    ("logging_steps", "0", "a whole number of steps >= 1, or a fraction"),
    ("save_steps", "-5", "a whole number of steps >= 1, or a fraction"),
    ("eval_steps", "2.5", "a whole number of steps >= 1, or a fraction"),
    ("eval_delay", "-1", "a number >= 0"),
    ("save_total_limit", "0", "a whole number >= 1 of checkpoints"),
    ("seed", "-1", "a whole number in [0, 2**32 - 1]"),
    ("data_seed", str(2**32), "a whole number in [0, 2**32 - 1]"),
    ("dataloader_num_workers", "-1", "a whole number >= 0"),
    ("dataloader_prefetch_factor", "0", "a whole number >= 1"),
    ("max_train_samples", "0", "a whole number of examples >= 1"),
    ("max_train_samples", "-1", "a whole number of examples >= 1"),
    ("max_eval_samples", "0", "a whole number of examples >= 1"),
    ("jigsaw_warmup_epochs", "-1", "a whole number of epochs >= 0"),
    ("jigsaw_ratio", "1.5", "`jigsaw_ratio=1.5` is invalid; pass a fraction in [0, 1]"),
    ("jigsaw_prob", "-0.1", "pass a fraction in [0, 1]"),
    ("jigsaw_min_block", "0", "pass a block area of at least 1 patch"),
    ("jigsaw_max_block", "0", "pass a block area of at least 1 patch"),
    ("dalr_loss_weight", "-1", "pass a weight >= 0"),
    ("train_val_split", "1", "a fraction in (0, 1)"),
    ("crop_min_scale", "0", "must be in (0, 1]"),
    ("random_erasing_prob", "2", "is a probability"),
    ("mixup_switch_prob", "-1", "is a probability"),
    ("mixup_alpha", "-0.5", "must be >= 0"),
    ("cutmix_alpha", "-1", "must be >= 0"),
]


@pytest.mark.parametrize("flag, value, fix", OUT_OF_RANGE, ids=[f"{flag}={value}" for flag, value, _ in OUT_OF_RANGE])
def test_a_number_out_of_range_is_refused_at_parse_time(flag, value, fix):
    with pytest.raises(ValueError, match=rf"--{flag}[ =]") as refused:
        _example().parse_arguments([f"--{flag}={value}"])
    message = str(refused.value)
    assert fix in message and (value in message or repr(float(value)) in message), message


def test_a_config_file_is_range_checked_too(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 0}))
    with pytest.raises(ValueError, match=r"--per_device_train_batch_size 0: pass a whole number >= 1"):
        _example().parse_arguments([str(config)])


def test_zero_length_training_is_refused_before_any_folder_or_data(tmp_path, image_folder, monkeypatch):
    """`--num_train_epochs 0` and `--max_steps 0` would train nothing; so would a training set too small for one
    full batch with --dataloader_drop_last. None of them writes a model or a card claiming a training."""
    run = _example()
    for flags, message in (
        (["--num_train_epochs", "0"], "nothing would be trained"),
        (["--max_steps", "0"], "0 would train nothing"),
    ):
        output = tmp_path / flags[0][2:]
        with pytest.raises(ValueError, match=message):
            run.main(["--output_dir", str(output), "--train_dir", str(image_folder), *flags])
        assert not output.exists()
    output = tmp_path / "no_batch"
    with pytest.raises(ValueError, match=r"3 training examples make no full batch of 8 .*nothing would be trained"):
        run.main(
            ["--output_dir", str(output), "--train_dir", str(image_folder), "--max_train_samples", "3"]
            + ["--per_device_train_batch_size", "8", "--dataloader_drop_last", "true", "--max_steps", "2"]
        )
    assert not output.exists()


def test_a_distributed_run_needs_an_explicit_output_dir(monkeypatch):
    """Every process must write into the same folder: a dated default name could differ between them (the two-process
    runs of tests/test_distributed.py pass one)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"Distributed runs need an explicit --output_dir"):
        _example().parse_arguments([])


def test_the_training_doc_states_the_demo_recipe_the_example_runs():
    """docs/TRAINING.md's account of a run without arguments follows `DEMO_DEFAULTS`."""
    run = _example()
    text = " ".join((ROOT / "docs/TRAINING.md").read_text(encoding="utf-8").split())
    recipe = run.DEMO_DEFAULTS
    epochs, warmup = recipe["num_train_epochs"], recipe["jigsaw_warmup_epochs"]
    assert f"trains it for {epochs} epochs (batch {recipe['per_device_train_batch_size']}," in text
    assert (
        f"lr {recipe['learning_rate']:.0e}".replace("e-0", "e-") in text
        and f"weight decay {recipe['weight_decay']}" in text
    )
    assert f"{recipe['warmup_steps']:.0%} warm-up" in text and f"clipping {recipe['max_grad_norm']:g}" in text
    assert (recipe["crop_min_scale"], recipe["random_flip"]) == (1.0, False) and "no crops or flips" in text
    assert f"in epoch {warmup} of {epochs}" in text
