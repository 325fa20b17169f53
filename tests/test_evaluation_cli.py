"""The evaluation CLIs' shared layer (`mjp_hf.evaluation.common`): bad flags and wrong model paths are refused at
parse time with the value, the flag and the fix, no advice to load unsafely is ever printed, a failed evaluation
leaves no folder behind, and the output files never replace what they should not (links, the model, the data)."""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mjp_hf import MJPViTForImageClassification
from mjp_hf.data import fashion_mnist_available
from mjp_hf.evaluation import position, privacy, robustness
from mjp_hf.evaluation.common import check_model_source, load_model, output_path, write_json
from mjp_hf.training.presets import config_from_preset


CLIS = {"robustness": robustness.main, "position": position.main, "privacy": privacy.main}
QUICK = {
    "robustness": ["--corruptions", "none", "--max_eval_samples", "4", "--device", "cpu"],
    "position": ["--device", "cpu"],
    "privacy": ["--num_images", "1", "--steps", "1", "--attacks", "analytic", "--device", "cpu"],
}


def tiny_mjp(**overrides):
    torch.manual_seed(0)
    shape = dict(num_labels=10, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    return MJPViTForImageClassification(config_from_preset("demo", **{**shape, **overrides})).eval()


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    tiny_mjp().save_pretrained(folder)
    return folder


def image_folder(root: Path, count: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = root / "test" / f"class{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(folder / f"{index}.png")
    return root


def run_cli(name, argv, capsys):
    """Run a CLI expected to refuse its arguments: the exit status and everything it printed."""
    with pytest.raises(SystemExit) as stopped:
        CLIS[name](argv)
    captured = capsys.readouterr()
    return stopped.value.code, captured.out + captured.err


# --- wrong model paths --------------------------------------------------------------------------------------------


def _resnet(folder: Path) -> str:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(num_labels=10, embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1])
    ResNetForImageClassification(config).save_pretrained(folder / "resnet")
    return "resnet"


def _file(folder: Path) -> str:
    tiny_mjp().save_pretrained(folder / "good")
    return "good/model.safetensors"


def _pickled_checkpoint(folder: Path) -> str:
    torch.save({"model": tiny_mjp().state_dict(), "args": argparse.Namespace(lr=1)}, folder / "best.pth")
    return "best.pth"


def _truncated(folder: Path) -> str:
    tiny_mjp().save_pretrained(folder / "truncated")
    weights = folder / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return "truncated"


def _missing(folder: Path) -> str:
    return "runs/missing"


def _missing_absolute(folder: Path) -> str:
    return str(folder / "no such folder")


def _no_config(folder: Path) -> str:
    (folder / "bare").mkdir()
    (folder / "bare" / "notes.txt").write_text("not a model")
    return "bare"


def _not_json(folder: Path) -> str:
    tiny_mjp().save_pretrained(folder / "broken")
    (folder / "broken" / "config.json").write_text("{ not json")
    return "broken"


def _pickled_weights(folder: Path) -> str:
    model = tiny_mjp()
    model.save_pretrained(folder / "pickled")
    (folder / "pickled" / "model.safetensors").unlink()
    torch.save({**model.state_dict(), "args": argparse.Namespace(lr=1)}, folder / "pickled" / "pytorch_model.bin")
    return "pickled"


def _missing_shard(folder: Path) -> str:
    tiny_mjp().save_pretrained(folder / "sharded", max_shard_size="20KB")
    shards = sorted((folder / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    return "sharded"


def _encoder_only(folder: Path) -> str:
    tiny_mjp().vit.save_pretrained(folder / "encoder")
    return "encoder"


WRONG_MODELS = {
    "a ResNet folder": (_resnet, "is a 'resnet' model"),
    "a relative path to a weights file": (_file, "is a file, not a model folder"),
    "a pickled release checkpoint": (_pickled_checkpoint, "mjp_hf.conversion.original"),
    "a truncated model.safetensors": (_truncated, "cannot be read, truncated/model.safetensors"),
    "a missing folder": (_missing, "no such folder"),
    "a missing absolute folder": (_missing_absolute, "no such folder"),
    "a folder without config.json": (_no_config, "no config.json"),
    "a config.json that is not JSON": (_not_json, "not readable JSON"),
    "a pickled pytorch_model.bin": (_pickled_weights, "holds more than tensors (argparse.Namespace)"),
    "a sharded model missing a shard": (_missing_shard, "which is missing"),
    "an encoder without a head": (_encoder_only, "no classification head"),
}


@pytest.mark.parametrize("cli", sorted(CLIS))
@pytest.mark.parametrize("case", sorted(WRONG_MODELS))
def test_a_wrong_model_path_is_refused_with_the_value_flag_and_fix_and_no_unsafe_advice(
    case, cli, tmp_path, monkeypatch, capsys
):
    make, message = WRONG_MODELS[case]
    monkeypatch.chdir(tmp_path)
    value = make(tmp_path)
    code, printed = run_cli(cli, ["--model_name_or_path", value, "--output_dir", "out/nested", *QUICK[cli]], capsys)
    assert code == 2
    assert message in printed and "--model_name_or_path" in printed and repr(value) in printed, printed
    assert "weights_only" not in printed and "arbitrary code" not in printed
    assert not (tmp_path / "out").exists()  # no folder left behind


def test_the_head_check_and_unsafe_pickles_fail_in_load_model_too(tmp_path, monkeypatch):
    """`load_model`, the library call: the same refusals, and the exception carries no unsafe advice in its chain."""
    import torch.serialization

    # The load-time check too, as on a torch without the checkpoint scan.
    monkeypatch.delattr(torch.serialization, "get_unsafe_globals_in_checkpoint")
    monkeypatch.chdir(tmp_path)
    for make, message in ((_pickled_weights, "holds more than tensors"), WRONG_MODELS["an encoder without a head"]):
        value = make(tmp_path)
        with pytest.raises(ValueError, match=message) as caught:
            load_model(value)
        error, chain = caught.value, []
        while error is not None:
            chain.append(str(error))
            error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
        assert not any("weights_only" in text for text in chain)


def test_a_good_folder_passes_by_a_relative_path_a_symlink_and_an_odd_name(tmp_path, monkeypatch):
    odd = tmp_path / "model ünïcode [1]"
    tiny_mjp().save_pretrained(odd)
    (tmp_path / "link").symlink_to(odd)
    monkeypatch.chdir(tmp_path)
    for value in (str(odd), "model ünïcode [1]", "./link", "link/"):
        assert check_model_source(value) == value
        assert isinstance(load_model(value), MJPViTForImageClassification)


# --- numeric and other flags, at parse time -------------------------------------------------------------------------

BAD_FLAGS = [
    ("robustness", ["--max_eval_samples", "-1"]),
    ("robustness", ["--max_eval_samples", "0"]),
    ("robustness", ["--batch_size", "0"]),
    ("robustness", ["--batch_size", "-1"]),
    ("robustness", ["--jigsaw_ratio", "1.5"]),
    ("robustness", ["--jigsaw_ratio", "nan"]),
    ("robustness", ["--consistency_ratio", "-0.1"]),
    ("robustness", ["--severities", "0"]),
    ("robustness", ["--severities", "1,1"]),
    ("robustness", ["--severities", "6"]),
    ("robustness", ["--severities", "a"]),
    ("robustness", ["--corruptions", "snowball"]),
    ("robustness", ["--corruptions", ","]),
    ("robustness", ["--seed", "-1"]),
    ("position", ["--folds", "1"]),
    ("position", ["--seed", "2147483648"]),
    ("privacy", ["--seed", "-5"]),
]


@pytest.mark.parametrize("cli, flag", BAD_FLAGS, ids=[f"{c}{f[0]}={f[1]}" for c, f in BAD_FLAGS])
def test_every_numeric_flag_is_range_checked_at_parse_time(cli, flag, model_dir, tmp_path, capsys):
    code, printed = run_cli(
        cli, ["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "o"), *flag], capsys
    )
    assert code == 2 and f"argument {flag[0]}:" in printed and repr(flag[1]) in printed, printed
    assert not (tmp_path / "o").exists()


def test_a_corruption_cache_that_is_a_file_is_refused(model_dir, tmp_path, capsys):
    (tmp_path / "cache").write_text("x")
    argv = ["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "o"), "--corruption_cache"]
    code, printed = run_cli("robustness", [*argv, str(tmp_path / "cache")], capsys)
    assert code == 2 and "--corruption_cache" in printed and "is a file" in printed
    assert not (tmp_path / "o").exists()


def test_more_folds_than_positions_is_refused_before_any_output(model_dir, tmp_path, capsys):
    code, printed = run_cli(
        "position",
        ["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "o"), "--folds", "50"],
        capsys,
    )
    assert code == 2 and "--folds 50: the model has 49 patch positions; pass 2 to 49" in printed
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--device", "potato"], "--device 'potato' is not a torch device"),
        (["--device", "cuda:7"], "--device 'cuda:7': this machine has"),
        (["--split", "validation"], "--split 'validation': the embedded Fashion-MNIST has the splits"),
        (["--data_dir", "no-such-folder"], "--data_dir 'no-such-folder' is not a folder"),
        (["--image_column_name", " "], "non-empty names"),
    ],
)
@pytest.mark.parametrize("cli", sorted(CLIS))
def test_shared_flags_are_checked_at_parse_time_for_every_evaluation(cli, flags, message, model_dir, tmp_path, capsys):
    if flags[:2] == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight CUDA devices")
    code, printed = run_cli(
        cli, ["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "o"), *flags], capsys
    )
    assert code == 2 and message in printed, printed
    assert not (tmp_path / "o").exists()


# --- output files ---------------------------------------------------------------------------------------------------


def test_an_output_file_that_is_a_link_is_never_written_through_even_with_overwrite(model_dir, tmp_path):
    """A link named like an output, to the evaluated model's weights: refused, and the weights are untouched."""
    weights = model_dir / "model.safetensors"
    before = weights.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    (out / "position.json").symlink_to(weights)
    for overwrite in ([], ["--overwrite"]):
        with pytest.raises(FileExistsError, match="is a symbolic link"):
            position.main(["--model_name_or_path", str(model_dir), "--output_dir", str(out), *overwrite])
    assert weights.read_bytes() == before and (out / "position.json").is_symlink()
    dangling = tmp_path / "dangling"
    dangling.mkdir()
    (dangling / "position.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(FileExistsError, match="is a symbolic link"):
        output_path(dangling, "position.png", overwrite=True)
    assert not (tmp_path / "nowhere.png").exists()


def test_overwrite_replaces_only_the_evaluations_own_files_even_in_the_model_folder(model_dir, tmp_path):
    """--output_dir = the model folder: the outputs go beside the model and leave every file of it as it was;
    without --overwrite an existing output is refused before any work, with it only the two outputs change."""
    files = {path.name: path.read_bytes() for path in model_dir.iterdir()}
    (model_dir / "notes.md").write_text("mine")
    argv = ["--model_name_or_path", str(model_dir), "--output_dir", str(model_dir), "--device", "cpu"]
    position.main(argv)
    assert {path.name for path in model_dir.iterdir()} == {*files, "notes.md", "position.json", "position.png"}
    (model_dir / "position.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--overwrite"):
        position.main(argv)
    assert (model_dir / "position.json").read_text() == "{}"
    position.main([*argv, "--overwrite"])
    assert json.loads((model_dir / "position.json").read_text())["probe"]["folds"] == 5
    assert {name: (model_dir / name).read_bytes() for name in files} == files
    assert (model_dir / "notes.md").read_text() == "mine"
    assert not [path for path in model_dir.iterdir() if path.name.endswith(".tmp")]


def test_an_output_folder_inside_the_evaluated_data_is_refused(model_dir, tmp_path, monkeypatch, capsys):
    """The PNG would become an image of the data set; also through a relative path and a link to the data."""
    data = image_folder(tmp_path / "data")
    (tmp_path / "data-link").symlink_to(data)
    monkeypatch.chdir(tmp_path)
    for output in (str(data / "test" / "class0"), "data/test/../test", "data-link/test/new", "data"):
        code, printed = run_cli(
            "robustness",
            [
                "--model_name_or_path",
                str(model_dir),
                "--output_dir",
                output,
                "--data_dir",
                "data",
                *QUICK["robustness"],
            ],
            capsys,
        )
        assert code == 2 and "is inside --data_dir" in printed, (output, printed)
    assert sorted(path.name for path in (data / "test").rglob("*") if path.is_file()) == [f"{i}.png" for i in range(4)]


def test_an_output_folder_that_is_or_is_under_a_file_is_refused(model_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="cannot be written"):
        position.main(["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "file" / "out")])
    code, printed = run_cli(
        "position", ["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "file")], capsys
    )
    assert code == 2 and "is a file" in printed and (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_output_folder_that_cannot_be_written_is_refused_before_any_work(model_dir, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="cannot be written"):
            position.main(["--model_name_or_path", str(model_dir), "--output_dir", str(locked / "out")])
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not fashion_mnist_available(), reason="the embedded Fashion-MNIST is not installed")
def test_a_failed_evaluation_leaves_no_folder_it_made_and_keeps_the_users(tmp_path):
    """A 2-class model on the 10-class default data fails after the model loads: neither `out` nor `out/nested` is
    left; a folder the user made before stays (empty)."""
    labels = {0: "cat", 1: "dog"}
    model_dir = tmp_path / "two-class"
    tiny_mjp(num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()}).save_pretrained(model_dir)
    for cli in ("robustness", "privacy"):
        with pytest.raises(ValueError, match="classifies 2 classes"):
            CLIS[cli](
                ["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "out" / "nested"), *QUICK[cli]]
            )
        assert not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(ValueError, match="classifies 2 classes"):
        robustness.main(
            ["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "mine"), *QUICK["robustness"]]
        )
    assert (tmp_path / "mine").is_dir() and not list((tmp_path / "mine").iterdir())


def test_write_json_writes_whole_files_and_makes_the_folder(tmp_path):
    path = tmp_path / "a" / "b" / "result.json"
    write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    with pytest.raises(ValueError):
        write_json(path, {"x": float("nan")})  # not JSON: refused before a byte is written
    assert json.loads(path.read_text()) == {"x": 1} and [p.name for p in path.parent.iterdir()] == ["result.json"]


# --- labels ---------------------------------------------------------------------------------------------------------


def test_labels_are_checked_against_the_model_in_every_spelling_and_order(tmp_path):
    """Class names compared where both sides have them, whatever the spelling; the data's own order matters."""
    labels = {0: "T-shirt/top", 1: "Trouser"}
    model_dir = tmp_path / "model"
    tiny_mjp(num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()}).save_pretrained(model_dir)
    rng = np.random.default_rng(0)

    def folder(names):
        root = tmp_path / "-".join(names).replace("/", "_")
        for name in names:
            (root / "test" / name).mkdir(parents=True)
            for index in range(2):
                Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(
                    root / "test" / name / f"{index}.png"
                )
        return root

    argv = ["--model_name_or_path", str(model_dir), "--corruptions", "none", "--device", "cpu"]
    report = robustness.main(
        [*argv, "--output_dir", str(tmp_path / "ok"), "--data_dir", str(folder(["t-shirt_top", "trouser"]))]
    )
    assert report["corruption"]["num_images"] == 4
    # Folders sort alphabetically: "Trouser" before "t-shirt" would swap the classes; it is refused.
    with pytest.raises(ValueError, match="names class 0"):
        robustness.main(
            [
                *argv,
                "--output_dir",
                str(tmp_path / "swapped"),
                "--data_dir",
                str(folder(["A-Trouser", "B-T-shirt-top"])),
            ]
        )
    assert not (tmp_path / "swapped").exists()


def test_a_label_column_of_strings_is_refused_naming_the_flag(model_dir, tmp_path):
    from datasets import Dataset, Features, Value
    from datasets import Image as DatasetImage

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)) for _ in range(2)]
    (tmp_path / "saved").mkdir()
    Dataset.from_dict(
        {"image": images, "label": ["cat", "dog"]},
        features=Features({"image": DatasetImage(), "label": Value("string")}),
    ).to_parquet(tmp_path / "saved" / "train.parquet")
    from mjp_hf.data.sources import load_labelled_images

    with pytest.raises(ValueError, match="--label_column_name 'label': the column holds"):
        load_labelled_images(dataset_name=str(tmp_path / "saved"), split="train")
