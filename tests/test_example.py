"""examples/run_image_classification.py: flags, the embedded default data, training from scratch and from a stock
ViT, MJP checkpoints, resume, and the bad inputs that must fail before training."""

import contextlib
import importlib.util
import io
import json
import logging
import re
import shutil
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_config_kwargs
from datasets import Dataset, Features, Value
from datasets import Image as DatasetImage
from PIL import Image
from safetensors.torch import load_file
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

from mjp_hf import MJPViTForImageClassification
from mjp_hf.data import FASHION_MNIST_LABELS, check_image_folder, fashion_mnist_available
from mjp_hf.training import MJPTrainer, TrainingDivergedError, unwrap_model
from mjp_hf.training.threads import AdaptiveThreadsCallback


ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "run_image_classification", ROOT / "examples/run_image_classification.py"
)
run = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = run  # dataclasses resolve the module of their fields' annotations
_spec.loader.exec_module(run)
DEMO_RECIPE = json.loads((ROOT / "examples/configs/demo_fashion_mnist.json").read_text())

TINY = "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64"
QUICK = [
    "--per_device_train_batch_size",
    "8",
    "--per_device_eval_batch_size",
    "32",
    "--disable_tqdm",
    "true",
    "--logging_steps",
    "1",
]


def _train(output_dir, *flags):
    return run.main(["--output_dir", str(output_dir), *QUICK, *flags])


def _on_folder(image_folder) -> list[str]:
    """Train and evaluate the tiny model on the test image folder."""
    return ["--train_dir", str(image_folder), "--validation_dir", str(image_folder), "--config_overrides", TINY]


def _saved_config(folder):
    return json.loads((Path(folder) / "config.json").read_text())


# --- flags --------------------------------------------------------------------------------------------------------


def test_no_arguments_means_the_demo_recipe_on_fresh_folder():
    model_args, data_args, mjp_args, defense_args, training_args = run.parse_arguments([])
    assert model_args.model_name_or_path is None and model_args.preset == "demo"
    assert data_args.dataset_name is None and data_args.train_dir is None  # the embedded Fashion-MNIST
    assert defense_args.defense().kind == "none"
    for name, value in DEMO_RECIPE.items():
        target = next(group for group in (model_args, mjp_args, data_args, training_args) if hasattr(group, name))
        assert getattr(target, name) == value or str(getattr(getattr(target, name), "value", "")) == value, name
    assert training_args.do_train and training_args.do_eval and not training_args.remove_unused_columns
    assert (
        Path(training_args.output_dir).parent == Path("runs") and "mjp-demo-fashion-mnist-" in training_args.output_dir
    )
    assert mjp_args.config_updates() == {}


def test_explicit_flags_win_and_only_they_override_the_config():
    model_args, data_args, mjp_args, _, training_args = run.parse_arguments(
        [
            "--num_train_epochs",
            "5",
            "--learning_rate=1e-4",
            "--jigsaw_ratio",
            "0.25",
            "--jigsaw_per_sample",
            "true",
            "--dalr_head",
            "linear",
            "--no_random_flip",
            "--output_dir",
            "/tmp/x",
            "--do_eval",
        ]
    )
    assert training_args.num_train_epochs == 5 and training_args.learning_rate == 1e-4
    assert training_args.weight_decay == DEMO_RECIPE["weight_decay"]
    assert training_args.do_train and training_args.do_eval and training_args.output_dir == "/tmp/x"
    assert data_args.random_flip is False
    assert mjp_args.config_updates() == {"jigsaw_ratio": 0.25, "jigsaw_per_sample": True, "dalr_head": "linear"}
    # Another preset: the released warmup, transformers' own training defaults.
    _, _, mjp_args, _, training_args = run.parse_arguments(["--preset", "tiny", "--output_dir", "/tmp/x"])
    assert mjp_args.jigsaw_warmup_epochs == 20 and training_args.num_train_epochs == 3.0


def test_the_released_recipe_config_parses():
    model_args, data_args, mjp_args, _, training_args = run.parse_arguments(
        [str(ROOT / "examples/configs/mjp_deit_small_imagenet.json")]
    )
    assert model_args.preset == "small" and training_args.num_train_epochs == 300
    assert training_args.per_device_train_batch_size * 8 == 1024 and training_args.learning_rate == 1e-3
    assert training_args.weight_decay == 0.05 and training_args.max_grad_norm == 5.0
    assert training_args.label_smoothing_factor == 0.1 and mjp_args.jigsaw_warmup_epochs == 20
    assert (data_args.mixup_alpha, data_args.cutmix_alpha, data_args.random_erasing_prob) == (0.8, 1.0, 0.25)
    assert data_args.rand_augment == "rand-m9-mstd0.5-inc1"
    assert mjp_args.config_updates() == {
        "jigsaw_ratio": 0.1,
        "jigsaw_prob": 0.5,
        "jigsaw_mode": "mjp",
        "jigsaw_per_sample": False,
        "use_unk_position_embedding": True,
        "dalr_head": "nonlinear",
        "dalr_loss_weight": 0.01,
    }


def test_bad_flags_fail_before_training(tmp_path):
    with pytest.raises(
        ValueError, match=r"Unknown --preset 'huge'; choose one of \['base', 'demo', 'small', 'tiny'\]"
    ):
        run.parse_arguments(["--preset", "huge"])
    with pytest.raises(ValueError, match="--preset builds a model from scratch"):
        run.parse_arguments(["--preset", "tiny", "--model_name_or_path", "google/vit-base-patch16-224"])
    with pytest.raises(SystemExit):
        run.parse_arguments(["--jigsaw_ratioo", "0.1"])
    with pytest.raises(ValueError, match=r"--mixup_alpha -0.5: pass a Beta parameter >= 0"):
        run.parse_arguments(["--mixup_alpha", "-0.5"])
    with pytest.raises(ValueError, match=r"Unknown part 'q5' in RandAugment spec 'rand-q5'"):
        run.parse_arguments(["--rand_augment", "rand-q5"])
    with pytest.raises(ValueError, match=r"--random_erasing_prob 2.0: pass a probability"):
        run.parse_arguments(["--random_erasing_prob", "2"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--fp16 needs a GPU.*use --bf16 instead"):
            run.parse_arguments(["--fp16", "--output_dir", str(tmp_path / "fp16")])
    with pytest.raises(ValueError, match=r"jigsaw_ratio=1.5.*\[0, 1\]"):
        _train(tmp_path / "bad", "--jigsaw_ratio", "1.5", "--max_steps", "1", "--max_train_samples", "8")


# --- training -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_data_run(tmp_path_factory):
    """A short run on the embedded default data (Fashion-MNIST, which has a Hub id: its card has a model-index)."""
    if not fashion_mnist_available():
        pytest.skip("needs the Debian package dataset-fashion-mnist")
    output = tmp_path_factory.mktemp("default_data") / "run"
    flags = ["--config_overrides", TINY, "--max_steps", "3", "--max_train_samples", "48", "--max_eval_samples", "40"]
    return output, _train(output, *flags)


def test_the_main_job_benchmark_writes_the_card_of_its_own_run(default_data_run, tmp_path):
    """`benchmarks/main_job_time.py --card` fills the demo card from the run it times: the card's figures are that
    run's, under the repo id its file name gives."""
    from benchmarks import main_job_time

    output, metrics = default_data_run
    card = tmp_path / "mjp-vit-demo-fashion-mnist.md"
    main_job_time.write_card(output, card)
    text = card.read_text(encoding="utf-8")
    assert 'pipeline("image-classification", model="org/mjp-vit-demo-fashion-mnist")' in text
    assert f"| `eval_accuracy` | {metrics['eval_accuracy']:.4f} " in text


def test_default_data_from_scratch_writes_the_full_output_folder(default_data_run):
    output, metrics = default_data_run
    names = {path.name for path in output.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "all_results.json",
        "README.md",
        "training_curves.png",
        "configuration_mjp_vit.py",
        "modeling_mjp_vit.py",
        "jigsaw.py",
        "training_args.json",
        "trainer_state.json",
    } <= names
    config = _saved_config(output)
    assert config["model_type"] == "mjp_vit" and config["hidden_size"] == 32 and "auto_map" in config
    assert [config["id2label"][str(i)] for i in range(10)] == FASHION_MNIST_LABELS
    results = json.loads((output / "all_results.json").read_text())
    assert 0 <= results["eval_accuracy"] <= results["eval_top5_accuracy"] <= 1 and results == pytest.approx(metrics)
    assert "defense" not in results  # an undefended run records no defence
    state = json.loads((output / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss" in entry]
    assert len(logged) == 3 and all("classification_loss" in e and "localization_loss" in e for e in logged)
    assert "eval_accuracy" in (output / "README.md").read_text()
    assert MJPViTForImageClassification.from_pretrained(output).config.num_labels == 10


def test_the_run_folder_card_describes_the_folder_and_names_the_evaluated_split(default_data_run):
    """The README the run writes is the card of the run folder as it is (the MJP checkpoint with its code, the
    `hub layout` command for the publishing layout), and its results name the split they were measured on."""
    from huggingface_hub import ModelCard

    from mjp_hf.hub.publish import RUN_CARD_MARKER

    card = ModelCard.load(default_data_run[0] / "README.md")
    assert RUN_CARD_MARKER in card.text
    assert "trust_remote_code=True" in card.text and "python -m mjp_hf.hub layout" in card.text
    assert "widget" not in card.data.to_dict()
    results = card.data.eval_results
    assert {result.metric_name for result in results} == {"Top-1 accuracy", "Top-5 accuracy"}
    assert all(result.dataset_split == "test" for result in results)
    assert "defense" not in card.text


def test_mjp_flags_override_and_an_mjp_checkpoint_keeps_its_own(tmp_path, image_folder):
    first = tmp_path / "first"
    _train(
        first,
        "--train_dir",
        str(image_folder),
        "--config_overrides",
        TINY,
        "--max_steps",
        "2",
        "--jigsaw_ratio",
        "0.3",
        "--dalr_head",
        "linear",
        "--jigsaw_mode",
        "naive",
        "--dalr_loss_weight",
        "0.05",
    )
    config = _saved_config(first)
    assert (config["jigsaw_ratio"], config["dalr_head"], config["jigsaw_mode"]) == (0.3, "linear", "naive")
    assert config["id2label"] == {"0": "cat", "1": "dog", "2": "owl"}
    second = tmp_path / "second"
    _train(
        second,
        "--train_dir",
        str(image_folder),
        "--model_name_or_path",
        str(first),
        "--max_steps",
        "1",
        "--jigsaw_prob",
        "0.2",
    )
    config = _saved_config(second)
    assert (config["jigsaw_ratio"], config["dalr_head"], config["jigsaw_mode"], config["dalr_loss_weight"]) == (
        0.3,
        "linear",
        "naive",
        0.05,
    )
    assert config["jigsaw_prob"] == 0.2 and config["hidden_size"] == 32


@pytest.fixture(scope="module")
def stock_vit(tmp_path_factory):
    """A locally saved stock `ViTForImageClassification` with the image folder's labels (v4 key names on disk)."""
    folder = tmp_path_factory.mktemp("stock_vit")
    labels = ["cat", "dog", "owl"]
    torch.manual_seed(0)
    config = ViTConfig(
        **tiny_config_kwargs(
            num_labels=3, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}
        )
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 28, "width": 28}).save_pretrained(folder)
    return folder


def test_fine_tuning_a_stock_vit_loads_its_weights(tmp_path, image_folder, stock_vit):
    evaluated = tmp_path / "eval_only"
    metrics = _train(
        evaluated, "--train_dir", str(image_folder), "--model_name_or_path", str(stock_vit), "--do_train", "false"
    )
    stock = ViTForImageClassification.from_pretrained(stock_vit).state_dict()
    ours = MJPViTForImageClassification.from_pretrained(evaluated).state_dict()
    shared = [key for key in ours if "unk_position_embedding" not in key and "dalr_head" not in key]
    assert len(shared) == len(stock)
    for key in shared:
        torch.testing.assert_close(ours[key], stock[key], rtol=0, atol=0, msg=key)
    assert "eval_accuracy" in metrics and "train_runtime" not in metrics
    card = (evaluated / "README.md").read_text()
    assert "Not trained by this run" in card and "Trained with" not in card
    trained = tmp_path / "trained"
    _train(trained, "--train_dir", str(image_folder), "--model_name_or_path", str(stock_vit), "--max_steps", "2")
    assert _saved_config(trained)["model_type"] == "mjp_vit"


def test_checkpoint_mismatches_name_the_fixing_flag(tmp_path, image_folder, stock_vit):
    other_labels = tmp_path / "vit_5_labels"
    ViTForImageClassification(ViTConfig(**tiny_config_kwargs(num_labels=5))).save_pretrained(other_labels)
    ViTImageProcessorPil(size={"height": 28, "width": 28}).save_pretrained(other_labels)
    common = ["--train_dir", str(image_folder), "--max_steps", "1"]
    with pytest.raises(
        ValueError, match=r"classifies 5 labels .* data has 3 \(cat, dog, owl\).*--ignore_mismatched_sizes"
    ):
        _train(tmp_path / "a", *common, "--model_name_or_path", str(other_labels))
    _train(tmp_path / "b", *common, "--model_name_or_path", str(other_labels), "--ignore_mismatched_sizes")
    assert _saved_config(tmp_path / "b")["id2label"] == {"0": "cat", "1": "dog", "2": "owl"}
    other_size = tmp_path / "processor_32"
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(other_size)
    with pytest.raises(ValueError, match=r"resizes to 32x32 but the model takes 28x28.*--image_processor_name"):
        _train(
            tmp_path / "c", *common, "--model_name_or_path", str(stock_vit), "--image_processor_name", str(other_size)
        )
    with pytest.raises(ValueError, match="changes the shape of .*--ignore_mismatched_sizes"):
        _train(tmp_path / "d", *common, "--model_name_or_path", str(stock_vit), "--config_overrides", "image_size=32")


def test_bad_data_fails_before_training(tmp_path, image_folder):
    with pytest.raises(
        ValueError, match=r"no column 'img' \(its columns: \['image', 'label'\]\).*--image_column_name"
    ):
        _train(tmp_path / "a", "--train_dir", str(image_folder), "--image_column_name", "img")
    with pytest.raises(ValueError, match="--label_column_name"):
        _train(tmp_path / "b", "--train_dir", str(image_folder), "--label_column_name", "class")
    one_class = tmp_path / "one_class"
    (one_class / "cat").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(one_class / "cat" / f"{i}.png")
    with pytest.raises(ValueError, match=r"no column 'label'.*needs at least 2 classes, one sub-folder each"):
        _train(tmp_path / "c", "--train_dir", str(one_class))
    parquet = tmp_path / "one_label"
    parquet.mkdir()
    images = [{"bytes": (one_class / "cat" / f"{i}.png").read_bytes(), "path": None} for i in range(4)]
    Dataset.from_dict(
        {"image": images, "label": [7] * 4}, features=Features({"image": DatasetImage(), "label": Value("int64")})
    ).to_parquet(parquet / "train.parquet")
    with pytest.raises(ValueError, match=r"has 1 class \(\['7'\]\); a classifier needs at least 2"):
        _train(tmp_path / "d", "--dataset_name", str(parquet))
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


# --- output folder and resume -------------------------------------------------------------------------------------


def test_a_used_output_folder_is_never_overwritten_unasked(tmp_path, image_folder):
    output = tmp_path / "used"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    common = ["--train_dir", str(image_folder), "--config_overrides", TINY, "--max_steps", "1"]
    with pytest.raises(ValueError, match=r"already exists and is not empty.*--overwrite_output_dir"):
        _train(output, *common)
    _train(output, *common, "--overwrite_output_dir")
    assert (output / "model.safetensors").is_file() and (output / "notes.txt").read_text() == "mine"


ALL_AUGMENTATIONS = [
    "--rand_augment",
    "rand-m9-mstd0.5-inc1",
    "--random_erasing_prob",
    "0.5",
    "--mixup_alpha",
    "0.8",
    "--cutmix_alpha",
    "1.0",
    "--label_smoothing_factor",
    "0.1",
]


@pytest.mark.parametrize("augmentation", [[], ALL_AUGMENTATIONS], ids=["crop-flip", "all-augmentations"])
def test_resume_continues_the_same_run(tmp_path, image_folder, augmentation):
    """Interrupted in mid-epoch and resumed, a run ends with exactly the weights of the uninterrupted run: the same
    data order, the same crops, flips, RandAugment ops, erasing and Mixup/CutMix (keyed to the sample, the batch and
    the epoch), the same jigsaw masks (the restored RNG) and the same schedule."""
    # 32 of the 36 images, batches of 8: 4 steps an epoch, and checkpoint-3 falls inside the first.
    common = [
        *_on_folder(image_folder),
        "--max_train_samples",
        "32",
        "--crop_min_scale",
        "0.5",
        *augmentation,
        "--max_steps",
        "8",
        "--save_steps",
        "3",
        "--save_total_limit",
        "5",
        "--jigsaw_warmup_epochs",
        "0",
        "--jigsaw_prob",
        "1",
        "--lr_scheduler_type",
        "constant",
        "--eval_strategy",
        "no",
        "--dataloader_drop_last",
        "true",
    ]
    full = tmp_path / "full"
    _train(full, *common)
    for checkpoint in ("checkpoint-3", "checkpoint-6"):  # mid-epoch 1, mid-epoch 2
        interrupted = tmp_path / f"interrupted-{checkpoint}"
        interrupted.mkdir()
        # What an interruption after that step leaves behind: that checkpoint only.
        shutil.copytree(full / checkpoint, interrupted / checkpoint)
        _train(interrupted, *common)  # finds the checkpoint and resumes from it
        state = json.loads((interrupted / "trainer_state.json").read_text())
        assert state["global_step"] == 8 and [e["step"] for e in state["log_history"] if "loss" in e] == list(
            range(1, 9)
        )
        expected, resumed = load_file(full / "model.safetensors"), load_file(interrupted / "model.safetensors")
        assert expected.keys() == resumed.keys()
        for key in expected:
            torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=0, msg=f"{checkpoint}: {key}")
    initial = load_file(full / "checkpoint-3" / "model.safetensors")
    assert not torch.equal(
        initial["vit.embeddings.unk_position_embedding"], expected["vit.embeddings.unk_position_embedding"]
    )


def test_augmentation_does_not_depend_on_the_number_of_workers(tmp_path, image_folder):
    """Keyed augmentation: data-loader worker processes give the very batches, hence weights, of the main process."""
    common = [
        "--train_dir",
        str(image_folder),
        "--config_overrides",
        TINY,
        "--max_steps",
        "3",
        "--crop_min_scale",
        "0.4",
        "--jigsaw_warmup_epochs",
        "0",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        *ALL_AUGMENTATIONS,
    ]
    _train(tmp_path / "main", *common)
    _train(tmp_path / "workers", *common, "--dataloader_num_workers", "2")
    expected, with_workers = (
        load_file(tmp_path / "main" / "model.safetensors"),
        load_file(tmp_path / "workers" / "model.safetensors"),
    )
    for key in expected:
        torch.testing.assert_close(with_workers[key], expected[key], rtol=0, atol=0, msg=key)


def test_gradient_checkpointing_passes_through(tmp_path, image_folder):
    metrics = _train(
        tmp_path / "gc",
        "--train_dir",
        str(image_folder),
        "--config_overrides",
        TINY,
        "--max_steps",
        "2",
        "--gradient_checkpointing",
        "--jigsaw_warmup_epochs",
        "0",
        "--jigsaw_prob",
        "1",
    )
    assert metrics["train_loss"] > 0


def test_bf16_autocast_passes_through_to_the_model(tmp_path, image_folder):
    """`--bf16` trains under bfloat16 autocast (CPU here; CUDA alike): the encoder's matmuls run in bf16 while the
    jigsaw and both loss parts stay finite."""
    dtypes = []

    def record(module, args, output):
        if isinstance(module, torch.nn.Linear) and module.training:
            dtypes.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        metrics = _train(
            tmp_path / "bf16",
            "--train_dir",
            str(image_folder),
            "--config_overrides",
            TINY,
            "--max_steps",
            "2",
            "--bf16",
            "--jigsaw_warmup_epochs",
            "0",
            "--jigsaw_prob",
            "1",
            "--eval_strategy",
            "no",
        )
    finally:
        handle.remove()
    assert dtypes and set(dtypes) == {torch.bfloat16}
    history = json.loads((tmp_path / "bf16" / "trainer_state.json").read_text())["log_history"]
    logged = [entry for entry in history if "loss" in entry]
    assert logged and all(
        np.isfinite(entry["classification_loss"]) and entry["localization_loss"] > 0 for entry in logged
    )
    assert np.isfinite(metrics["train_loss"])


def test_torch_compile_passes_through_without_graph_breaks(tmp_path, image_folder):
    """`--torch_compile` compiles the model the Trainer trains; the jigsaw, the unknown PE and the DALR loss add no
    graph break (aot_eager keeps the test quick; inductor compiles the same graphs)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    metrics = _train(
        tmp_path / "compiled",
        "--train_dir",
        str(image_folder),
        "--config_overrides",
        TINY,
        "--max_steps",
        "3",
        "--torch_compile",
        "--torch_compile_backend",
        "aot_eager",
        "--jigsaw_warmup_epochs",
        "0",
        "--jigsaw_prob",
        "1",
        "--eval_strategy",
        "no",
    )
    graph_breaks = dict(counters["graph_break"])
    torch._dynamo.reset()
    assert counters["stats"]["unique_graphs"] >= 1, "the Trainer did not compile the model"
    assert not graph_breaks, f"graph breaks while training: {graph_breaks}"
    assert np.isfinite(metrics["train_loss"])


def test_released_augmentations_train_on_soft_targets(tmp_path, image_folder, monkeypatch):
    """RandAugment, Mixup/CutMix with label smoothing and random erasing, as the released recipe: training runs on mixed batches
    with soft targets; evaluation batches pass unmixed, with hard labels."""
    collated = []
    mix = run.MixupCutmixCollator.__call__

    def spy(self, examples):
        batch = mix(self, examples)
        collated.append(batch["labels"])
        return batch

    monkeypatch.setattr(run.MixupCutmixCollator, "__call__", spy)
    metrics = _train(
        tmp_path / "mixed",
        *_on_folder(image_folder),
        "--max_steps",
        "3",
        "--mixup_alpha",
        "0.8",
        "--cutmix_alpha",
        "1.0",
        "--random_erasing_prob",
        "0.5",
        "--rand_augment",
        "rand-m9-mstd0.5-inc1",
        "--label_smoothing_factor",
        "0.1",
        "--eval_strategy",
        "no",
    )
    assert np.isfinite(metrics["train_loss"]) and 0 <= metrics["eval_accuracy"] <= 1
    history = json.loads((tmp_path / "mixed" / "trainer_state.json").read_text())["log_history"]
    assert len([entry for entry in history if "classification_loss" in entry]) == 3
    soft = [labels for labels in collated if labels.is_floating_point()]
    hard = [labels for labels in collated if not labels.is_floating_point()]
    assert len(soft) >= 3 and all(labels.shape[1] == 3 and labels.max() < 1 for labels in soft)
    assert hard and all(labels.ndim == 1 for labels in hard)  # the evaluation batches


# --- the output folder: checked before anything loads, overwritten only where the script wrote ----------------------


@pytest.fixture
def no_loading(monkeypatch):
    """Fails the test if the run gets as far as loading data."""

    def refuse(*args, **kwargs):
        raise AssertionError("the run loaded its data before checking the output folder")

    monkeypatch.setattr(run, "load_image_dataset", refuse)


def test_overwrite_deletes_only_what_earlier_runs_wrote(tmp_path, image_folder):
    output = tmp_path / "used"
    common = ["--train_dir", str(image_folder), "--config_overrides", TINY, "--max_train_samples", "16"]
    _train(output, *common, "--max_steps", "2", "--save_steps", "1", "--save_total_limit", "3")
    written = {path.name for path in output.iterdir()}
    assert {"checkpoint-1", "checkpoint-2", "README.md", "eval_results.json", "model.safetensors"} <= written
    # The user's own files, beside and inside the run's.
    (output / "notes.txt").write_text("mine")
    (output / "data").mkdir()
    (output / "data" / "config.json").write_text("{}")
    (output / "checkpoint-1" / "my_analysis.txt").write_text("mine too")
    _train(
        output, *common, "--max_steps", "1", "--save_strategy", "no", "--do_eval", "false", "--overwrite_output_dir"
    )
    names = {path.name for path in output.iterdir()}
    assert "checkpoint-2" not in names and "eval_results.json" not in names  # stale files of the earlier run
    assert (output / "notes.txt").read_text() == "mine" and (output / "data" / "config.json").read_text() == "{}"
    assert [path.name for path in (output / "checkpoint-1").iterdir()] == ["my_analysis.txt"]
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 1


def test_an_output_folder_holding_an_input_is_refused(tmp_path, image_folder, no_loading):
    project = tmp_path / "project"
    shutil.copytree(image_folder, project / "images")
    for output, flags in (
        (project, ["--train_dir", str(project / "images")]),
        (project / "images", ["--train_dir", str(project / "images")]),
        (project / "images" / "run", ["--train_dir", str(project / "images")]),
    ):
        with pytest.raises(ValueError, match=r"--output_dir .* (is|holds|is inside) the input --train_dir"):
            _train(output, *flags, "--overwrite_output_dir")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"is the input --model_name_or_path"):
        _train(model, "--model_name_or_path", str(model), "--overwrite_output_dir")
    assert sorted(path.name for path in (project / "images").iterdir()) == ["cat", "dog", "owl"]
    assert [path.name for path in model.iterdir()] == ["config.json"]


def test_a_users_readme_is_never_replaced_by_a_card(tmp_path, image_folder, no_loading):
    output = tmp_path / "with_readme"
    output.mkdir()
    (output / "README.md").write_text("# My project\n")
    with pytest.raises(ValueError, match=r"README.md is not a model card this script wrote"):
        _train(output, "--train_dir", str(image_folder), "--overwrite_output_dir")
    assert (output / "README.md").read_text() == "# My project\n"
    # A link to a card of another run, which reads like a card this script wrote: the run would write through it.
    other_card = tmp_path / "other run" / "README.md"
    other_card.parent.mkdir()
    other_card.write_text("---\ntags:\n- masked-jigsaw-puzzle\n---\n# another run's card\n")
    (output / "README.md").unlink()
    (output / "README.md").symlink_to(other_card)
    with pytest.raises(ValueError, match=r"README.md is not a model card this script wrote"):
        _train(output, "--train_dir", str(image_folder), "--overwrite_output_dir")
    assert other_card.read_text().endswith("# another run's card\n") and (output / "README.md").is_symlink()


def test_unusable_output_paths_and_missing_data_fail_before_loading(tmp_path, no_loading):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"--output_dir .*a_file is a file"):
        _train(a_file)
    with pytest.raises(PermissionError, match=r"--output_dir .*inside is not writable"):
        _train(a_file / "inside")
    with pytest.raises(PermissionError, match=r"--output_dir /sys/mjp-test-run is not writable"):
        _train("/sys/mjp-test-run")  # read-only even for root
    missing = tmp_path / "no_such_images"
    with pytest.raises(FileNotFoundError, match=rf"--train_dir {missing} is not a folder"):
        _train(tmp_path / "run", "--train_dir", str(missing))


def test_a_wrong_model_path_is_named_with_its_fix_before_anything_loads(tmp_path, image_folder, stock_vit, no_loading):
    """A local --model_name_or_path that is no ViT/MJP-ViT model folder with whole weights is refused with the value,
    the flag and the fix, before the output folder is made or any data is read; no message advises unsafe loading."""
    from transformers import ResNetConfig, ResNetForImageClassification

    resnet = tmp_path / "resnet"
    ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], num_labels=3)
    ).save_pretrained(resnet)
    truncated = tmp_path / "truncated"
    shutil.copytree(stock_vit, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:3000])
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"")
    sharded = tmp_path / "sharded"
    shutil.copytree(stock_vit, sharded)
    (sharded / "model.safetensors").unlink()
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"classifier.weight": "model-00001-of-00002.safetensors"}})
    )
    (tmp_path / "best_model.pth").write_bytes(b"PK\x03\x04 a torch archive, say")
    pytorch_weights = tmp_path / "pytorch_weights"
    pytorch_weights.mkdir()
    shutil.copy(stock_vit / "config.json", pytorch_weights)
    (pytorch_weights / "pytorch_model.bin").write_bytes(b"PK\x03\x04 the first bytes of an archive")
    cases = {
        str(resnet): r"is a 'resnet' model .*google/vit-base-patch16-224-in21k.* or leave --model_name_or_path out",
        "best_model.pth": r"is a file, not a model folder; pass the output_dir .*mjp_hf.conversion.original",
        str(
            truncated
        ): rf"holds a weight file that cannot be read, {re.escape(str(weights))} .*save or copy the model",
        str(no_config): r"is not a saved model folder \(no config.json\); pass the output_dir of a training run",
        str(sharded): r"lists the weight file model-00001-of-00002.safetensors, which is missing",
        str(pytorch_weights): r"has a pytorch_model.bin that cannot be read .*truncated or not model weights",
        "./no_such_model": r"'./no_such_model': no such folder \(looked in .*\); pass the output_dir of a training run",
    }
    for value, message in cases.items():
        output = tmp_path / "runs" / Path(value).name
        with pytest.raises(
            (ValueError, FileNotFoundError), match=rf"--model_name_or_path {re.escape(repr(value))}"
        ) as error:
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(tmp_path)
                _train(output, "--train_dir", str(image_folder), "--model_name_or_path", value)
        assert re.search(message, str(error.value)), (value, str(error.value))
        assert "weights_only" not in str(error.value)
        assert not output.exists()


def test_an_image_folder_without_images_is_refused_before_anything_loads(tmp_path, image_folder, no_loading):
    empty = tmp_path / "validation"
    (empty / "cat").mkdir(parents=True)
    (empty / "cat" / "notes.txt").write_text("no image here")
    (empty / "cat" / "loop").symlink_to(empty, target_is_directory=True)  # a link back up: the search still ends
    with pytest.raises(ValueError, match=rf"--validation_dir {empty} holds no images .*leave --validation_dir out"):
        _train(tmp_path / "run", "--train_dir", str(image_folder), "--validation_dir", str(empty))
    with pytest.raises(ValueError, match=rf"--train_dir {empty} holds no images .*one sub-folder of images per class"):
        _train(tmp_path / "run", "--train_dir", str(empty))
    assert not (tmp_path / "run").exists()
    linked = tmp_path / "linked"  # class folders that are links hold images too
    linked.mkdir()
    for name in ("cat", "dog"):
        (linked / name).symlink_to(image_folder / name, target_is_directory=True)
    check_image_folder("--train_dir", str(linked))  # the linked class folders hold images


def test_push_to_hub_publishes_the_layout_never_the_trainers_own_push(tmp_path, image_folder, monkeypatch):
    """--push_to_hub pushes the stock-ViT + MJP layout through `mjp_hf.hub.push_mjp_model` with the run's card; the
    Trainer pushes nothing (it would upload the MJP folder at the root), and the token is saved nowhere."""
    from transformers import Trainer

    pushed = []

    def push_mjp_model(model, processor, repo_id, **kwargs):
        pushed.append((repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}/commit/0"

    def refuse(*args, **kwargs):
        raise AssertionError("the Trainer pushed")

    monkeypatch.setattr(run, "push_mjp_model", push_mjp_model)
    monkeypatch.setattr(Trainer, "push_to_hub", refuse)
    monkeypatch.setattr(Trainer, "init_hf_repo", refuse)
    token = "hf_pushTokenForTheTest42"
    output = tmp_path / "pushed"
    _train(
        output,
        *_on_folder(image_folder),
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--push_to_hub",
        "--hub_model_id",
        "me/mjp-test",
        "--hub_token",
        token,
    )
    assert [repo for repo, _ in pushed] == ["me/mjp-test"]
    assert pushed[0][1]["token"] == token and "me/mjp-test" in str(pushed[0][1]["card"])
    for path in output.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


def test_push_to_hub_with_a_folder_name_that_is_no_repo_id_is_refused_before_training(tmp_path, image_folder):
    output = tmp_path / "my run"
    with pytest.raises(
        ValueError,
        match=r"The --output_dir name 'my run' is not a Hub repository id .*--hub_model_id YOUR_NAMESPACE/my-run",
    ):
        _train(output, *_on_folder(image_folder), "--max_steps", "1", "--push_to_hub")
    assert not output.exists()


def test_a_truncated_image_is_named(tmp_path, image_folder):
    images = tmp_path / "images"
    shutil.copytree(image_folder, images)
    damaged = images / "dog" / "3.png"
    damaged.write_bytes(damaged.read_bytes()[:200])
    with pytest.raises(OSError, match=rf"Cannot read the image {damaged} .*truncated"):
        _train(
            tmp_path / "run",
            "--train_dir",
            str(images),
            "--config_overrides",
            TINY,
            "--max_steps",
            "8",
            "--eval_strategy",
            "no",
        )


def test_a_diverging_run_stops_without_a_card(tmp_path, image_folder, monkeypatch):
    """NaN weights (as a too-high learning rate or a NaN loss weight leave them) stop the run with an error, before
    a checkpoint or a card could claim a result; the Trainer's logged loss alone would hide the NaN."""
    training_step = MJPTrainer.training_step

    def poisoned(self, model, inputs, *args, **kwargs):
        if self.state.global_step == 2:
            with torch.no_grad():
                unwrap_model(model).classifier.weight.fill_(float("nan"))
        return training_step(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(MJPTrainer, "training_step", poisoned)
    output = tmp_path / "nan"
    with pytest.raises(
        TrainingDivergedError,
        match=r"Training diverged by step \d: the training loss is not "
        r"finite .*--learning_rate",
    ):
        _train(
            output,
            "--train_dir",
            str(image_folder),
            "--config_overrides",
            TINY,
            "--max_steps",
            "6",
            "--logging_steps",
            "2",
            "--save_steps",
            "3",
            "--eval_strategy",
            "no",
        )
    assert not (output / "README.md").exists() and not (output / "model.safetensors").exists()
    assert not (output / "checkpoint-3").exists()


# --- what a run tells the user ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def told_run(tmp_path_factory, image_folder):
    """One short run on the image folder at log level info, with what it printed, logged and warned."""
    output = tmp_path_factory.mktemp("told") / "told"
    printed, records, thread_events = io.StringIO(), [], []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        with (
            pytest.MonkeyPatch.context() as patch,
            contextlib.redirect_stdout(printed),
            warnings.catch_warnings(record=True) as caught,
        ):
            for event in ("on_step_end", "on_prediction_step"):  # the thread controller's two hooks
                original = getattr(AdaptiveThreadsCallback, event)

                def spy(self, *args, _original=original, _event=event, **kwargs):
                    thread_events.append(_event)
                    return _original(self, *args, **kwargs)

                patch.setattr(AdaptiveThreadsCallback, event, spy)
            warnings.simplefilter("always")
            _train(output, *_on_folder(image_folder), "--max_steps", "1", "--log_level", "info")
    finally:
        logging.getLogger().removeHandler(handler)
    return SimpleNamespace(
        output=output, printed=printed.getvalue(), records=records, warnings=caught, thread_events=thread_events
    )


def test_the_end_of_a_run_says_where_it_went_and_what_to_run_next(told_run):
    printed = told_run.printed
    assert f"Saved the run to {told_run.output}" in printed
    assert re.search(r"Evaluated on the validation split \(36 images\): top-1 \d+\.\d\d%\n", printed)
    for command in (
        "mjp_hf.hub layout --run_dir",
        "mjp_hf.hub push --run_dir",
        "mjp_hf.evaluation.privacy",
        "mjp_hf.evaluation.robustness",
        "mjp_hf.evaluation.position",
    ):
        assert f"python -m {command}" in printed, command
    process_lines = [record for record in told_run.records if record.getMessage().startswith("Process 0 of 1")]
    assert process_lines and all(record.levelno < logging.WARNING for record in process_lines)


def _help_entry(text: str, flag: str) -> str:
    """The help paragraph of `flag` in an argparse help text."""
    start = text.index(f"\n  {flag} ")
    end = text.find("\n  --", start + 1)
    return " ".join(text[start:end].split())


def test_help_shows_the_values_a_run_without_flags_uses(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no line breaks inside a value
    with pytest.raises(SystemExit):
        run.parse_arguments(["--help"])
    text = capsys.readouterr().out
    for flag in ("per_device_train_batch_size", "num_train_epochs", "learning_rate", "weight_decay"):
        assert f"(default: {DEMO_RECIPE[flag]})" in _help_entry(text, f"--{flag}"), flag
    if not torch.cuda.is_available():
        assert "(default: adamw_torch)" in _help_entry(text, "--optim")
    assert re.search(r"\(default: runs/mjp-demo-fashion-mnist-\d{8}-\d{6}\)", _help_entry(text, "--output_dir"))
    assert "(default: True)" in _help_entry(text, "--do_train") and "(default: True)" in _help_entry(text, "--do_eval")
    preset = _help_entry(text, "--preset")
    assert preset.count("default") == 1 and "(default: demo)" in preset
    # What --help shows is what the run uses.
    _, _, _, _, training_args = run.parse_arguments([])
    assert training_args.per_device_train_batch_size == DEMO_RECIPE["per_device_train_batch_size"]


def test_the_example_adapts_threads_between_steps_and_batches(told_run):
    """The example runs `AdaptiveThreadsCallback` (docs/TRAINING.md#threads): after every training step and every
    evaluation batch."""
    assert told_run.thread_events.count("on_step_end") == 1 and "on_prediction_step" in told_run.thread_events


@pytest.mark.skipif(torch.accelerator.is_available(), reason="pinned memory is right with an accelerator")
def test_a_cpu_run_does_not_pin_memory(told_run):
    assert not [str(warning.message) for warning in told_run.warnings if "pin_memory" in str(warning.message)]


def test_runs_are_named_after_what_they_train(tmp_path):
    def name(*flags):
        return Path(run.parse_arguments(list(flags))[4].output_dir).name

    assert name().startswith("mjp-demo-fashion-mnist-")
    assert name("--jigsaw_prob", "0", "--dalr_head", "none").startswith("vit-demo-fashion-mnist-")
    assert name("--jigsaw_mode", "naive").startswith("naive-demo-fashion-mnist-")
    assert name("--jigsaw_prob", "0").startswith("mjp-")  # the DALR head still trains the position embeddings
    baseline = tmp_path / "baseline_model"
    baseline.mkdir()
    (baseline / "config.json").write_text(
        json.dumps({"model_type": "mjp_vit", "jigsaw_prob": 0.0, "dalr_head": "none"})
    )
    assert name("--model_name_or_path", str(baseline)).startswith("vit-baseline-model-fashion-mnist-")


def test_do_train_and_do_eval_mean_what_they_say():
    _, _, _, _, training_args = run.parse_arguments(["--do_eval", "false"])
    assert training_args.do_train and not training_args.do_eval and training_args.eval_strategy == "no"
    _, _, _, _, training_args = run.parse_arguments(["--do_train"])
    assert training_args.do_train and training_args.do_eval
    with pytest.raises(
        ValueError,
        match=r"--do_train false without --model_name_or_path would evaluate a randomly "
        r"initialised model",
    ):
        run.parse_arguments(["--do_train", "false"])
    with pytest.raises(ValueError, match="this run would do nothing"):
        run.parse_arguments(["--do_train", "false", "--do_eval", "false", "--model_name_or_path", "x"])
    with pytest.raises(ValueError, match="--do_eval false contradicts --eval_strategy epoch"):
        run.parse_arguments(["--do_eval", "false", "--eval_strategy", "epoch"])


def test_a_run_without_evaluation_trains_and_reports_no_results(tmp_path, image_folder):
    output = tmp_path / "no_eval"
    metrics = _train(
        output, "--train_dir", str(image_folder), "--config_overrides", TINY, "--max_steps", "2", "--do_eval", "false"
    )
    assert "train_loss" in metrics and not any(key.startswith("eval_") for key in metrics)
    card = (output / "README.md").read_text()
    assert "Trained with" in card and "eval_accuracy" not in card


@pytest.mark.parametrize(
    "schedule, passes",
    [
        (["--eval_strategy", "epoch"], 2),  # the last epoch's evaluation is the final one
        (["--eval_strategy", "steps", "--eval_steps", "4"], 3),  # 4, 8 and the Trainer's own at the end (10)
        (["--eval_strategy", "no"], 1),  # the final weights only
        (["--eval_strategy", "epoch", "--save_strategy", "epoch", "--load_best_model_at_end", "true"], 3),
    ],
)
def test_the_final_weights_are_evaluated_once(tmp_path, image_folder, monkeypatch, schedule, passes):
    """An evaluation at the last step already measured the final weights: the run reports it rather than evaluating
    them again. Any other schedule, or loading the best checkpoint afterwards, evaluates the final weights anew."""
    evaluated = []
    loop = MJPTrainer.evaluation_loop

    def counting_loop(trainer, *args, **kwargs):
        output = loop(trainer, *args, **kwargs)
        evaluated.append((trainer.state.global_step, output.metrics["eval_accuracy"]))
        return output

    monkeypatch.setattr(MJPTrainer, "evaluation_loop", counting_loop)
    output = tmp_path / "run"
    metrics = _train(
        output,
        *_on_folder(image_folder),
        "--num_train_epochs",
        "2",
        "--learning_rate",
        "0.01",
        *schedule,
    )  # 36 images at batch 8: 5 steps an epoch, 10 in all
    assert len(evaluated) == passes
    assert evaluated[-1][0] == 10 and metrics["eval_accuracy"] == evaluated[-1][1]
    results = json.loads((output / "all_results.json").read_text())
    assert results["eval_accuracy"] == evaluated[-1][1]
