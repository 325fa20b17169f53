"""A training run's output folder may have any name a folder can have ("my run", non-ASCII, longer than a Hub
repository name): the example trains, saves and writes the folder's card, and the publishing commands that card
gives run as written. A repository id is needed, and checked, only to publish."""

import importlib.util
import re
import shlex
import sys
from pathlib import Path
from unittest import mock

import pytest
from huggingface_hub import HfApi, ModelCard

from mjp_hf.hub import layout_files
from mjp_hf.hub.card import RUN_CARD_MARKER
from mjp_hf.hub.cli import main


ROOT = Path(__file__).resolve().parents[1]
TINY = "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64"
NAMES = ["my run", "modèle d'été ü", "r" * 120]


def _example():
    name = "run_image_classification"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "examples/run_image_classification.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve the module of their fields' annotations
        spec.loader.exec_module(module)
    return sys.modules[name]


def _train(output_dir: Path, image_folder: Path, *flags):
    return _example().main(
        [
            "--output_dir",
            str(output_dir),
            "--train_dir",
            str(image_folder),
            "--validation_dir",
            str(image_folder),
            "--config_overrides",
            TINY,
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--per_device_eval_batch_size",
            "32",
            "--disable_tqdm",
            "true",
            *flags,
        ]
    )


@pytest.mark.parametrize("name", NAMES, ids=["space", "non-ascii", "120-chars"])
def test_a_run_folder_of_any_name_gets_its_card_and_its_publishing_commands_work(
    name, tmp_path, image_folder, monkeypatch, capsys
):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.chdir(runs)  # the folder as users type it: a relative path with the odd name
    metrics = _train(Path(name), image_folder)
    # The commands the end-of-run report prints run as printed: each path is one shell word.
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  python -m "):
            words = shlex.split(line, comments=True)
            flag = "--run_dir" if "--run_dir" in words else "--model_name_or_path"
            assert words[words.index(flag) + 1] == name, line
            if "--output_dir" in words:
                assert words[words.index("--output_dir") + 1].startswith(f"{name}-"), line
    run_dir = runs / name
    card = ModelCard.load(run_dir / "README.md")
    assert RUN_CARD_MARKER in card.text and f"# {name}\n" in card.text
    assert f"({100 * metrics['eval_accuracy']:.2f}%)" in card.text  # the run's own results

    # The commands the card gives, run as a shell would split them: the layout, then the push (HTTP recorded).
    bash = "".join(code for language, code in re.findall(r"```(\w+)\n(.*?)```", card.text, re.S) if language == "bash")
    layout_command, push_command = (shlex.split(line) for line in bash.splitlines())
    assert layout_command[:4] == ["python", "-m", "mjp_hf.hub", "layout"]
    main(layout_command[3:])
    layout_dir = Path(layout_command[layout_command.index("--output_dir") + 1])
    assert "config.json" in layout_files(layout_dir) and "mjp/model.safetensors" in layout_files(layout_dir)
    published = ModelCard.load(layout_dir / "README.md")
    assert "## Repository layout" in published.text and RUN_CARD_MARKER not in published.text
    repo_id = push_command[push_command.index("--hub_model_id") + 1]
    uploads = []
    with (
        mock.patch.object(HfApi, "create_repo", return_value=mock.Mock(repo_id=repo_id)),
        mock.patch.object(
            HfApi,
            "upload_folder",
            lambda api, **kwargs: uploads.append(kwargs) or mock.Mock(commit_url="https://huggingface.co/x/commit/1"),
        ),
    ):
        main(push_command[3:])
    assert uploads and uploads[0]["repo_id"] == repo_id and repo_id.startswith("YOUR_NAMESPACE/")
