"""The example's flags: how it tells the flags a user gave from the ones it fills in (`given_flags`), where each value
comes from (a flag, a `.json` recipe, the demo recipe, `--help` showing the defaults a command line runs with), the
numbers it refuses at parse time, the gradient defences' refusals, and which flags a resume compares."""

import dataclasses
import importlib.util
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainingArguments

from mjp_hf.training.arguments import FLAG_RANGES, TRAINING_ARGUMENTS, given_flags


ROOT = Path(__file__).resolve().parents[1]


def _demo_recipe() -> dict:
    return json.loads((ROOT / "examples/configs/demo_fashion_mnist.json").read_text())


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
    given = given_flags(
        run.ARGUMENT_CLASSES,
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
        ],
    )  # argparse's prefix matching: a flag it accepts counts as given
    assert given == {
        "num_train_epochs": 5.0,
        "learning_rate": 1e-4,
        "random_flip": False,
        "do_eval": True,
        "jigsaw_per_sample": False,
        "weight_decay": 0.1,
    }
    assert given_flags(run.ARGUMENT_CLASSES, []) == {}
    # A flag given with the value of its default still counts as given; --help is left for the real parse.
    assert given_flags(run.ARGUMENT_CLASSES, ["--seed", "42", "--help"]) == {"seed": 42}


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
    ("crop_min_scale", "0", "an area fraction in (0, 1]"),
    ("random_erasing_prob", "2", "a probability in [0, 1]"),
    ("mixup_switch_prob", "-1", "a probability in [0, 1]"),
    ("mixup_alpha", "-0.5", "a Beta parameter >= 0"),
    ("cutmix_alpha", "-1", "a Beta parameter >= 0"),
    ("dp_noise_multiplier", "-1", "a noise multiplier sigma >= 0"),
    ("dp_max_grad_norm", "0", "a clipping norm C > 0"),
    ("dp_delta", "1", "a delta in (0, 1)"),
    ("dp_noise_seed", "-3", "a whole number in [0, 2**32 - 1]"),
    ("local_noise_multiplier", "nan", "a noise multiplier sigma >= 0"),
    ("local_max_grad_norm", "-1", "a clipping norm C > 0"),
    ("prune_ratio", "1", "a share of each gradient tensor in [0, 1)"),
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
    """docs/TRAINING.md's account of a run without arguments follows the demo recipe file."""
    text = " ".join((ROOT / "docs/TRAINING.md").read_text(encoding="utf-8").split())
    recipe = _demo_recipe()
    epochs, warmup = recipe["num_train_epochs"], recipe["jigsaw_warmup_epochs"]
    assert f"trains it for {epochs} epochs (batch {recipe['per_device_train_batch_size']}," in text
    assert (
        f"lr {recipe['learning_rate']:.0e}".replace("e-0", "e-") in text
        and f"weight decay {recipe['weight_decay']}" in text
    )
    assert f"{recipe['warmup_steps']:.0%} warm-up" in text and f"clipping {recipe['max_grad_norm']:g}" in text
    assert (recipe["crop_min_scale"], recipe["random_flip"]) == (1.0, False) and "no crops or flips" in text
    assert f"in epoch {warmup} of {epochs}" in text


def test_every_numeric_flag_has_a_range_and_every_range_a_flag():
    """`FLAG_RANGES` names real flags (a typo would check nothing), and no numeric flag of the example's own
    dataclasses is left unchecked."""
    run = _example()
    flags = {f.name: f.type for cls in run.ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    assert set(FLAG_RANGES) <= set(flags), set(FLAG_RANGES) - set(flags)
    own = {
        f.name: str(f.type).replace("<class '", "").replace("'>", "")
        for cls in run.ARGUMENT_CLASSES[:-1]
        for f in dataclasses.fields(cls)
    }
    numeric = {name for name, kind in own.items() if kind.startswith(("int", "float"))}
    mjp_config_fields = set(run.MJP_FLAGS)  # checked by MJPViTConfig itself
    assert numeric - mjp_config_fields <= set(FLAG_RANGES), numeric - mjp_config_fields - set(FLAG_RANGES)


# --- where a value comes from ---------------------------------------------------------------------------------------


def test_the_demo_recipe_is_the_default_of_a_from_scratch_demo_run_and_flags_override_it(tmp_path):
    run = _example()
    recipe = _demo_recipe()
    for argv in ([], ["--preset", "demo"], ["--seed", "1", "--jigsaw_prob", "0"]):
        _, data_args, mjp_args, _, training_args = run.parse_arguments(argv)
        assert training_args.per_device_train_batch_size == recipe["per_device_train_batch_size"], argv
        assert mjp_args.jigsaw_warmup_epochs == recipe["jigsaw_warmup_epochs"] and data_args.random_flip is False
    # The study's command line: its flags on top of the recipe.
    _, _, mjp_args, _, training_args = run.parse_arguments(
        ["--preset", "demo", "--seed", "1", "--learning_rate", "0.1"]
    )
    assert training_args.seed == 1 and training_args.learning_rate == 0.1
    assert training_args.weight_decay == recipe["weight_decay"] and training_args.num_train_epochs == 5
    # Another preset, a config or a checkpoint: transformers' own defaults and the released warm-up.
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for argv in (["--preset", "tiny"], ["--config_name", str(model)]):
        _, _, mjp_args, _, training_args = run.parse_arguments(argv)
        assert training_args.per_device_train_batch_size == 8 and training_args.learning_rate == 5e-5, argv
        assert mjp_args.jigsaw_warmup_epochs == 20 and training_args.max_grad_norm == 1.0


def test_a_json_recipe_alone_or_followed_by_flags(tmp_path):
    """A lone `.json` argument is the whole command line, as upstream; flags after it override it; the demo recipe
    stays under a from-scratch demo run's file, and a key that is no flag is refused."""
    run = _example()
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"learning_rate": 0.01, "seed": 3, "output_dir": str(tmp_path / "run")}))
    _, _, _, _, training_args = run.parse_arguments([str(recipe)])
    assert (training_args.learning_rate, training_args.seed, training_args.output_dir) == (
        0.01,
        3,
        str(tmp_path / "run"),
    )
    assert training_args.per_device_train_batch_size == _demo_recipe()["per_device_train_batch_size"]
    _, _, _, _, training_args = run.parse_arguments([str(recipe), "--seed", "4"])
    assert (training_args.learning_rate, training_args.seed) == (0.01, 4)
    # The demo recipe file itself is a recipe like any other: the same run as no arguments at all.
    _, _, _, _, from_file = run.parse_arguments([str(ROOT / "examples/configs/demo_fashion_mnist.json")])
    _, _, _, _, default = run.parse_arguments([])
    assert {k: v for k, v in from_file.to_dict().items() if k != "output_dir"} == {
        k: v for k, v in default.to_dict().items() if k != "output_dir"
    }
    recipe.write_text(json.dumps({"learning_rat": 0.01}))
    with pytest.raises(ValueError, match="learning_rat"):
        run.parse_arguments([str(recipe)])


def _help(run, capsys, *argv) -> str:
    with pytest.raises(SystemExit):
        run.parse_arguments([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_states_the_rule_and_the_defaults_of_its_own_command_line(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    run = _example()
    text = _help(run, capsys)
    assert "Each value comes from the first of: a flag given; a .json recipe given first; the defaults shown" in text
    assert "examples/configs/demo_fashion_mnist.json" in text
    assert "The batch size per device for training. (default: 128)" in text
    # With another preset the defaults shown are transformers' own: the ones that run would use.
    text = _help(run, capsys, "--preset", "tiny")
    assert "The batch size per device for training. (default: 8)" in text
    assert "(default: runs/mjp-tiny-fashion-mnist-" in text


def test_the_schedule_warns_when_the_jigsaw_never_runs(caplog):
    from mjp_hf.training import MJPScheduleCallback

    callback = MJPScheduleCallback(warmup_epochs=3)
    callback._apply = lambda state, model: None  # the warning alone
    for epochs, max_steps, warned in ((3, -1, True), (4, -1, False), (3, 100, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            callback.on_train_begin(SimpleNamespace(num_train_epochs=epochs, max_steps=max_steps), None, None)
        assert ("the jigsaw never runs" in caplog.text) == warned, (epochs, max_steps)


# --- the gradient defences: refused at parse time, naming the flag ---------------------------------------------------

DEFENSE_REFUSALS = [
    (["--dp_max_grad_norm", "2"], r"--dp_max_grad_norm 2.0 sets a defence that is off: pass --dp_noise_multiplier"),
    (["--dp_delta", "1e-5"], r"--dp_delta 1e-05 sets a defence that is off"),
    (["--dp_noise_seed", "7"], r"--dp_noise_seed 7 sets a defence that is off"),
    (["--dp_grad_sample_mode", "functorch"], r"--dp_grad_sample_mode functorch sets a defence that is off"),
    (["--local_max_grad_norm", "2"], r"--local_max_grad_norm 2.0 sets a defence that is off: pass --local_noise"),
    (["--dp_noise_multiplier", "1", "--prune_ratio", "0.5"], r"--dp_noise_multiplier and --prune_ratio are two"),
    (["--local_noise_multiplier", "1", "--prune_ratio", "0.5"], r"--local_noise_multiplier and --prune_ratio are two"),
    (["--dp_noise_multiplier", "1", "--local_noise_multiplier", "1"], r"--dp_noise_multiplier and --local_noise"),
    (["--dp_noise_multiplier", "1", "--gradient_accumulation_steps", "2"], r"--gradient_accumulation_steps 2 would"),
    (["--dp_noise_multiplier", "1", "--mixup_alpha", "0.8"], r"--mixup_alpha/--cutmix_alpha mix the examples"),
    (["--dp_noise_multiplier", "1", "--cutmix_alpha", "1"], r"--mixup_alpha/--cutmix_alpha mix the examples"),
    (["--dp_noise_multiplier", "1", "--max_grad_norm", "1"], r"--max_grad_norm 1.0 clips the batch gradient"),
    (["--prune_ratio", "0.5", "--do_train", "false", "--model_name_or_path", "."], r"--prune_ratio is a defence in"),
]


@pytest.mark.parametrize("flags, message", DEFENSE_REFUSALS, ids=[" ".join(flags) for flags, _ in DEFENSE_REFUSALS])
def test_defence_flags_that_cannot_work_are_refused_at_parse_time(flags, message):
    with pytest.raises(ValueError, match=message):
        _example().parse_arguments(flags)


def test_dp_sgd_turns_the_trainers_clipping_off_and_the_flags_build_one_defence():
    run = _example()
    _, _, _, defense_args, training_args = run.parse_arguments(["--dp_noise_multiplier", "0.8"])
    assert training_args.max_grad_norm == 0  # the demo recipe's 5.0 is not the user's: it gives way
    assert defense_args.defense().to_dict() == {"kind": "dp_sgd", "noise_multiplier": 0.8, "max_grad_norm": 1.0}
    settings = defense_args.dp_sgd_settings()
    assert (settings.delta, settings.grad_sample_mode, settings.noise_seed) == (None, "hooks", None)
    _, _, _, defense_args, training_args = run.parse_arguments(["--local_noise_multiplier", "0.5"])
    assert training_args.max_grad_norm == 5.0 and defense_args.dp_sgd_settings() is None
    assert defense_args.defense().describe() == "local noise (σ 0.5, C 1)"
    _, _, _, defense_args, _ = run.parse_arguments(["--prune_ratio", "0.9", "--max_grad_norm", "1"])
    assert defense_args.defense().to_dict() == {"kind": "prune", "prune_ratio": 0.9}
    assert run.parse_arguments([])[3].defense().kind == "none"


# --- what a resume compares ------------------------------------------------------------------------------------------


def test_the_flags_a_resume_compares_are_real_flags():
    """Each name of `TRAINING_FLAGS` is a field of its group (a misspelt one would compare nothing), in the oldest
    transformers the package declares as in the newest (`TRAINING_ARGUMENTS`)."""
    run = _example()
    groups = dict(zip(run.TRAINING_FLAGS, run.ARGUMENT_CLASSES))
    for group, names in run.TRAINING_FLAGS.items():
        fields = {f.name for f in dataclasses.fields(groups[group])}
        assert set(names) <= fields, (group, set(names) - fields)
    assert TRAINING_ARGUMENTS <= {f.name for f in dataclasses.fields(TrainingArguments)}
    # Where and how often a run logs, saves or evaluates is not among them.
    assert not {"logging_steps", "save_steps", "eval_strategy", "report_to", "output_dir"} & TRAINING_ARGUMENTS
