"""How the example tells the flags a user gave from the ones it fills in: argparse with suppressed defaults."""

import importlib.util
import sys
from pathlib import Path


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
