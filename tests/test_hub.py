"""Hub publishing: model cards, the two-checkpoint layout, push_to_hub with only the HTTP boundary mocked, and
loading of the would-be-uploaded folder by stock transformers in a process where mjp_hf cannot be imported."""

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from transformers import AutoModelForImageClassification, ViTForImageClassification, ViTImageProcessorPil

from mjp_hf import MJPViTForImageClassification, MJPViTModel
from mjp_hf.data import FASHION_MNIST_LABELS, fashion_mnist_available
from mjp_hf.hub import (
    MJP_SUBFOLDER,
    build_model_card,
    layout_files,
    placeholder_repo_id,
    push_mjp_model,
    push_repo_id,
    read_run_records,
    save_publishing_layout,
)
from mjp_hf.hub.card import FASHION_MNIST_WIDGET_DIR, IMAGENET_WIDGET, default_widget_images, repo_id_problem
from mjp_hf.hub.cli import main
from mjp_hf.hub.files import FASHION_MNIST_WIDGET
from mjp_hf.training.presets import config_from_preset


HAS_FASHION_MNIST = fashion_mnist_available()
HAS_WIDGET_IMAGES = all(
    (FASHION_MNIST_WIDGET_DIR / f"{title.lower()}.png").is_file() for title in FASHION_MNIST_WIDGET
)
CODE_FILES = ["configuration_mjp_vit.py", "jigsaw.py", "modeling_mjp_vit.py"]
WIDGET_FILES = [f"widget/{title.lower()}.png" for title in FASHION_MNIST_WIDGET] if HAS_WIDGET_IMAGES else []
# What the layout of the demo model holds, exactly.
DEMO_LAYOUT = sorted(
    ["README.md", "config.json", "model.safetensors", "preprocessor_config.json", *CODE_FILES, *WIDGET_FILES]
    + [
        f"{MJP_SUBFOLDER}/{name}"
        for name in ["config.json", "model.safetensors", "preprocessor_config.json", *CODE_FILES]
    ]
)
RUN_METRICS = {
    "epoch": 3.0,
    "eval_accuracy": 0.8125,
    "eval_top5_accuracy": 0.96875,
    "eval_loss": 0.53,
    "eval_model_preparation_time": 0.0014,
    "eval_runtime": 1.5,
    "eval_samples_per_second": 21.3,
    "train_loss": 0.61,
}


def demo_model(seed=0, **overrides) -> MJPViTForImageClassification:
    """The demo preset as the Fashion-MNIST run builds it (ten named classes), with random weights."""
    torch.manual_seed(seed)
    labels = dict(enumerate(FASHION_MNIST_LABELS))
    config = config_from_preset(
        "demo", num_labels=10, id2label=labels, label2id={name: i for i, name in labels.items()}, **overrides
    )
    return MJPViTForImageClassification(config).eval()


def demo_processor():
    return ViTImageProcessorPil(size={"height": 28, "width": 28}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def pixels(batch=3, seed=1):
    return torch.randn(batch, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def sample_image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L")


# --- model cards -------------------------------------------------------------------------------------------------


def test_card_front_matter_and_body_come_from_the_metrics():
    card = build_model_card(
        demo_model(),
        model_id="me/mjp-vit-demo",
        dataset_name="zalando-datasets/fashion_mnist",
        dataset_split="test",
        metrics=RUN_METRICS,
        hyperparameters={"learning_rate": 0.001, "seed": 42},
        base_model="me/vit-tiny",
    )
    data = card.data
    assert (data.library_name, data.pipeline_tag, data.license) == (
        "transformers",
        "image-classification",
        "apache-2.0",
    )
    assert {"vision", "image-classification", "mjp"} <= set(data.tags)
    assert data.datasets == ["zalando-datasets/fashion_mnist"] and data.metrics == ["accuracy"]
    assert data.base_model == "me/vit-tiny"
    results = {result.metric_name: result for result in data.eval_results}
    assert results["Top-1 accuracy"].metric_value == 0.8125 and results["Top-1 accuracy"].dataset_split == "test"
    assert results["Top-5 accuracy"].metric_value == 0.96875
    assert results["Top-1 accuracy"].task_type == "image-classification"

    text = card.text
    assert "| `eval_accuracy` | 0.8125 (81.25%) |" in text and "| `eval_loss` | 0.53 |" in text
    assert "eval_runtime" not in text and "preparation_time" not in text and "train_loss" not in text
    assert "| `learning_rate` | 0.001 |" in text and "| `jigsaw_ratio` | 0.1 |" in text
    assert 'pipeline("image-classification", model="me/mjp-vit-demo")' in text
    assert 'from_pretrained("me/mjp-vit-demo", subfolder="mjp")' in text and "trust_remote_code=True" in text
    assert "@inproceedings{ren2023masked" in text and "## Limitations" in text
    assert f"| parameters (root, stock ViT) | {demo_model().to_vit().num_parameters():,} |" in text
    # The saved card parses back with the same front matter.
    reparsed = ModelCard(str(card))
    assert reparsed.data.eval_results[0].metric_value == 0.8125


def test_card_without_metrics_reports_no_results():
    card = build_model_card(demo_model(), model_id="me/x", metrics={"eval_accuracy": 0.9})  # no dataset: no index
    assert card.data.eval_results is None
    card = build_model_card(demo_model(), model_id="me/x")
    assert card.data.eval_results is None and card.data.metrics is None
    assert "No evaluation results were recorded" in card.text


@pytest.mark.parametrize("model_id", ["", "  ", "two\nlines", "a\ttab", "line\u2028separator", None])
def test_card_refuses_what_is_neither_a_repo_id_nor_a_one_line_name(model_id):
    with pytest.raises(ValueError, match="neither a Hub repository id nor a one-line name"):
        build_model_card(demo_model(), model_id=model_id)


@pytest.mark.parametrize("name", ["my run", "modèle d'été", "x" * 120, "a/b/c", "a--b", "-run-"])
def test_a_card_for_a_name_is_built_but_never_published(name, tmp_path):
    """A run folder's name need not be a repository id: its card is built, shows a valid placeholder id where the
    snippets need one, and is refused by both ways of publishing."""
    card = build_model_card(demo_model(), model_id=name)
    placeholder = placeholder_repo_id(name)
    assert repo_id_problem(placeholder) is None and placeholder.startswith("YOUR_NAMESPACE/")
    assert f"# {name}\n" in card.text and f'model="{placeholder}"' in card.text
    assert getattr(card.data, "widget", None) is None and card.data.model_name == name
    hub = RecordingHub(tmp_path / "uploaded")
    with hub.patch(), pytest.raises(ValueError, match="--hub_model_id namespace/name"):
        push_mjp_model(demo_model(), demo_processor(), "me/x", card=card)
    with pytest.raises(ValueError, match="not a Hub repository id"):
        save_publishing_layout(demo_model(), demo_processor(), tmp_path / "layout", card=card)
    assert hub.calls == [] and not (tmp_path / "layout").exists()


@pytest.mark.parametrize("repo_id", ["my run", "a--b", "name.git", "x" * 97, "a/b/c", ""])
def test_push_refuses_what_the_hub_refuses_before_any_work(repo_id, tmp_path):
    hub = RecordingHub(tmp_path / "uploaded")
    with hub.patch(), pytest.raises(ValueError, match="is not a Hub repository id") as error:
        push_mjp_model(demo_model(), demo_processor(), repo_id)
    message = str(error.value)
    assert repr(repo_id) in message and "--hub_model_id" in message and "Pass namespace/name" in message
    assert hub.calls == []


def test_the_repository_a_run_pushes_to_is_checked_with_the_flag_and_the_fix():
    assert push_repo_id(None, "runs/mjp-demo") == "mjp-demo" and push_repo_id("me/x", "runs/my run") == "me/x"
    with pytest.raises(ValueError, match=r"The --output_dir name 'my run' is not a Hub repository id .*--push_to_hub"):
        push_repo_id(None, "runs/my run")
    with pytest.raises(ValueError, match=r"--hub_model_id 'a b' is not .*--hub_model_id YOUR_NAMESPACE/a-b"):
        push_repo_id("a b", "runs/x")


def test_card_and_layout_refuse_stock_models(tmp_path):
    vit = demo_model().to_vit()
    with pytest.raises(TypeError, match="MJP-ViT model"):
        build_model_card(vit, model_id="me/x")
    with pytest.raises(TypeError, match="mjp_hf.conversion.from_vit"):
        save_publishing_layout(vit, demo_processor(), tmp_path / "out")
    with pytest.raises(TypeError, match="image processor"):
        save_publishing_layout(demo_model(), None, tmp_path / "out")


def test_widget_images_ship_with_the_package_and_are_the_first_test_image_of_each_class():
    assert HAS_WIDGET_IMAGES  # the checkout ships them; hub.py never reads the dataset for them
    images = default_widget_images(demo_model())
    assert list(images) == list(FASHION_MNIST_WIDGET)
    assert default_widget_images(MJPViTForImageClassification(config_from_preset("demo", num_labels=1000))) is None
    if not HAS_FASHION_MNIST:
        return
    from mjp_hf.data import load_fashion_mnist_arrays

    test_images, test_labels = load_fashion_mnist_arrays("test")
    for title, image in images.items():
        first = int(np.flatnonzero(test_labels == FASHION_MNIST_LABELS.index(title))[0])
        np.testing.assert_array_equal(np.asarray(image.convert("L")), test_images[first])


def test_widget_examples():
    imagenet = MJPViTForImageClassification(config_from_preset("demo", num_labels=1000))
    assert build_model_card(imagenet, model_id="me/x").data.widget == IMAGENET_WIDGET
    explicit = [{"src": "https://example.org/cat.png", "example_title": "Cat"}]
    assert build_model_card(demo_model(), model_id="me/x", widget=explicit).data.widget == explicit
    widget = build_model_card(demo_model(), model_id="me/x").data.widget
    if HAS_WIDGET_IMAGES:
        assert [example["example_title"] for example in widget] == list(FASHION_MNIST_WIDGET)
        assert widget[0]["src"] == "https://huggingface.co/me/x/resolve/main/widget/sneaker.png"
    else:
        assert widget is None
    # A repository URL needs the namespace: an id without one (the example's default, the run folder's name) gets
    # no widget rather than URLs that resolve nowhere.
    card = build_model_card(demo_model(), model_id="mjp-demo-fashion-mnist")
    assert getattr(card.data, "widget", None) is None and "huggingface.co/mjp-demo" not in card.text


# --- the publishing layout -------------------------------------------------------------------------------------


def test_layout_files_and_configs(tmp_path):
    model = demo_model()
    folder = save_publishing_layout(
        model, demo_processor(), tmp_path / "layout", card=build_model_card(model, model_id="me/x")
    )
    assert layout_files(folder) == DEMO_LAYOUT
    root = json.loads((folder / "config.json").read_text())
    assert root["model_type"] == "vit" and root["architectures"] == ["ViTForImageClassification"]
    assert "auto_map" not in root and not any(key.startswith(("jigsaw_", "dalr_")) for key in root)
    assert root["id2label"]["7"] == "Sneaker" and root["layer_norm_eps"] == 1e-6
    mjp = json.loads((folder / MJP_SUBFOLDER / "config.json").read_text())
    assert mjp["model_type"] == "mjp_vit"
    assert mjp["auto_map"] == {
        "AutoConfig": "configuration_mjp_vit.MJPViTConfig",
        "AutoModel": "modeling_mjp_vit.MJPViTModel",
        "AutoModelForImageClassification": "modeling_mjp_vit.MJPViTForImageClassification",
    }
    for name in CODE_FILES:  # the root copies are what trust_remote_code + subfolder reads
        assert (folder / name).read_bytes() == (folder / MJP_SUBFOLDER / name).read_bytes()
    if HAS_WIDGET_IMAGES:
        assert Image.open(folder / "widget" / "sneaker.png").size == (28, 28)


def test_layout_never_overwrites_unless_asked(tmp_path):
    target = tmp_path / "layout"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_publishing_layout(demo_model(), demo_processor(), target)
    assert (target / "notes.txt").read_text() == "keep me"
    save_publishing_layout(demo_model(), demo_processor(), target, overwrite=True, widget_images={})
    assert (target / "notes.txt").read_text() == "keep me" and (target / "model.safetensors").is_file()
    assert not any(path.name.startswith(".layout.") for path in tmp_path.iterdir())  # no staging left behind


def test_overwrite_replaces_only_the_layouts_own_files(tmp_path):
    target = tmp_path / "layout"
    first = save_publishing_layout(
        demo_model(seed=1),
        demo_processor(),
        target,
        widget_images={"Sneaker": sample_image(), "My photo": sample_image()},
    )
    user_files = {
        ".gitattributes": "*.safetensors filter=lfs",
        "LICENSE": "mine",
        "eval.json": "{}",
        "train.py": "print()",
        f"{MJP_SUBFOLDER}/notes.md": "mine",
        "widget/cat.png": "not a png",
    }
    for name, text in user_files.items():
        (first / name).write_text(text)
    (first / "pytorch_model.bin").write_bytes(b"stale weights of an earlier checkpoint")
    model = demo_model(seed=2)
    save_publishing_layout(model, demo_processor(), target, overwrite=True, widget_images={})
    for name, text in user_files.items():  # never written by the layout: kept, whatever their names look like
        assert (target / name).read_text() == text, name
    # Files of the earlier layout that this one lacks are gone; its own files are the new ones.
    assert not (target / "pytorch_model.bin").exists() and not (target / "widget" / "sneaker.png").exists()
    # A widget image named by a title only the first call knew is not the second call's to name: it stays.
    assert (target / "widget" / "my-photo.png").is_file()
    reloaded = MJPViTForImageClassification.from_pretrained(target, subfolder=MJP_SUBFOLDER)
    assert torch.equal(reloaded.classifier.weight, model.classifier.weight)
    assert sorted(set(layout_files(target)) - set(user_files)) == sorted(
        [name for name in DEMO_LAYOUT if not name.startswith("widget/") and name != "README.md"]
        + ["widget/my-photo.png"]
    )


def test_layout_loads_in_process_with_identical_logits(tmp_path):
    model = demo_model(seed=3)
    folder = save_publishing_layout(model, demo_processor(), tmp_path / "layout", widget_images={})
    x = pixels()
    with torch.no_grad():
        expected = model(x).logits
        root = AutoModelForImageClassification.from_pretrained(folder).eval()
        assert type(root) is ViTForImageClassification
        torch.testing.assert_close(root(x).logits, expected, atol=1e-6, rtol=1e-6)
        full = MJPViTForImageClassification.from_pretrained(folder, subfolder=MJP_SUBFOLDER).eval()
        torch.testing.assert_close(full(x).logits, expected, atol=1e-6, rtol=1e-6)
    # The subfolder keeps what training needs: the UNK embedding and the DALR head, bit for bit.
    embeddings, reloaded = model.vit.embeddings, full.vit.embeddings
    assert torch.equal(reloaded.unk_position_embedding, embeddings.unk_position_embedding)
    assert torch.equal(full.vit.dalr_head.regressor[2].weight, model.vit.dalr_head.regressor[2].weight)


def test_layout_of_an_encoder_without_head(tmp_path):
    torch.manual_seed(0)
    encoder = MJPViTModel(config_from_preset("demo")).eval()
    folder = save_publishing_layout(
        encoder, demo_processor(), tmp_path / "layout", card=build_model_card(encoder, model_id="me/enc")
    )
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["ViTModel"]
    assert ModelCard.load(folder / "README.md").data.pipeline_tag == "image-feature-extraction"
    reloaded = MJPViTModel.from_pretrained(folder, subfolder=MJP_SUBFOLDER).eval()
    x = pixels()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).last_hidden_state, encoder(x).last_hidden_state)


# --- push_to_hub, HTTP mocked, and loading without mjp_hf ---------------------------------------------------------

FRESH_PROCESS_LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class RefuseMJP(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mjp_hf" or name.startswith("mjp_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

    sys.meta_path.insert(0, RefuseMJP())
    try:
        import mjp_hf
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("mjp_hf was importable")

    import torch
    from PIL import Image
    from transformers import AutoModel, AutoModelForImageClassification, pipeline

    folder, inputs, outputs = sys.argv[1:4]
    x = torch.load(inputs, weights_only=True)["pixels"]
    results, classes = {}, {}
    with torch.no_grad():
        for name, loader, kwargs in [
            ("root_classifier", AutoModelForImageClassification, {}),
            ("root_encoder", AutoModel, {}),
            ("mjp_classifier", AutoModelForImageClassification, {"subfolder": "mjp", "trust_remote_code": True}),
            ("mjp_encoder", AutoModel, {"subfolder": "mjp", "trust_remote_code": True}),
        ]:
            model = loader.from_pretrained(folder, **kwargs).eval()
            classes[name] = [type(model).__name__, model.config.model_type]
            out = model(x)
            results[name] = out.logits if hasattr(out, "logits") else out.last_hidden_state
    classifier = pipeline("image-classification", model=folder)
    predictions = classifier(Image.open(sys.argv[4]), top_k=3)
    torch.save(results, outputs)
    print(json.dumps({"classes": classes, "pipeline": predictions,
                      "modules": sorted(m for m in sys.modules if m.startswith("mjp_hf"))}))
    """
)


def load_without_mjp_hf(folder: Path, x: torch.Tensor, image_path: Path, tmp_path: Path):
    """Load `folder` in a fresh interpreter in which `mjp_hf` cannot be imported; return its outputs."""
    inputs, outputs, script = tmp_path / "inputs.pt", tmp_path / "outputs.pt", tmp_path / "load.py"
    torch.save({"pixels": x}, inputs)
    script.write_text(FRESH_PROCESS_LOADER)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, str(script), str(folder), str(inputs), str(outputs), str(image_path)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report, torch.load(outputs, weights_only=True)


class RecordingHub:
    """Stands in for the two HTTP calls of a push; keeps a copy of the folder that would be uploaded."""

    def __init__(self, destination: Path):
        self.destination, self.calls = destination, []

    def create_repo(self, api, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs, api.token))
        return mock.Mock(repo_id=repo_id)

    def upload_folder(self, api, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs, api.token))
        shutil.copytree(folder_path, self.destination)
        return mock.Mock(commit_url=f"https://huggingface.co/{repo_id}/commit/0123abcd")

    def patch(self):
        hub = self
        return mock.patch.multiple(
            HfApi,
            create_repo=lambda api, repo_id, **kw: hub.create_repo(api, repo_id, **kw),
            upload_folder=lambda api, **kw: hub.upload_folder(api, **kw),
        )


def test_push_uploads_the_layout_and_it_loads_without_mjp_hf(tmp_path):
    model = demo_model(seed=5)
    processor = demo_processor()
    card = build_model_card(
        model, model_id="me/mjp-vit-demo", dataset_name="zalando-datasets/fashion_mnist", metrics=RUN_METRICS
    )
    hub = RecordingHub(tmp_path / "uploaded")
    with hub.patch():
        url = push_mjp_model(model, processor, "me/mjp-vit-demo", card=card, token="hf_test", private=True)
    assert url == "https://huggingface.co/me/mjp-vit-demo/commit/0123abcd"
    (create, upload) = hub.calls
    assert create == ("create_repo", "me/mjp-vit-demo", {"private": True, "exist_ok": True}, "hf_test")
    assert upload[0:2] == ("upload_folder", "me/mjp-vit-demo") and upload[3] == "hf_test"
    assert "stock ViT at the root" in upload[2]["commit_message"]
    # A re-push removes what an earlier push left and this layout lacks: old weights, old code, the old mjp/ files.
    stale = [
        "pytorch_model.bin",
        "model-00001-of-00002.safetensors",
        "model.safetensors.index.json",
        f"{MJP_SUBFOLDER}/pytorch_model.bin",
        "widget/trouser.png",
    ]
    # Only what the layout writes is the push's to delete: never .gitattributes, nor a user's files, code or data.
    kept = [
        ".gitattributes",
        "LICENSE",
        "notes/eval.md",
        "old_module.py",
        "eval.json",
        f"{MJP_SUBFOLDER}/extra.json",
        "widget/my-photo.png",
    ]
    assert [
        name
        for name in stale + kept
        if any(fnmatch.fnmatch(name, pattern) for pattern in upload[2]["delete_patterns"])
    ] == stale

    uploaded = tmp_path / "uploaded"
    assert layout_files(uploaded) == DEMO_LAYOUT  # exactly these files, safetensors only
    assert ModelCard.load(uploaded / "README.md").data.eval_results[0].metric_value == 0.8125

    x = pixels(batch=4, seed=9)
    image_path = tmp_path / "shirt.png"
    sample_image().save(image_path)
    report, outputs = load_without_mjp_hf(uploaded, x, image_path, tmp_path)
    assert report["modules"] == []
    assert report["classes"] == {
        "root_classifier": ["ViTForImageClassification", "vit"],
        "root_encoder": ["ViTModel", "vit"],
        "mjp_classifier": ["MJPViTForImageClassification", "mjp_vit"],
        "mjp_encoder": ["MJPViTModel", "mjp_vit"],
    }
    with torch.no_grad():
        expected_logits = model(x).logits
        expected_tokens = model.vit(x).last_hidden_state
        image_inputs = processor(sample_image().convert("RGB"), return_tensors="pt").pixel_values
        expected_scores = model(image_inputs).logits.softmax(-1)[0]
    for name in ("root_classifier", "mjp_classifier"):
        torch.testing.assert_close(outputs[name], expected_logits, atol=1e-5, rtol=1e-5)
    for name in ("root_encoder", "mjp_encoder"):
        torch.testing.assert_close(outputs[name], expected_tokens, atol=1e-5, rtol=1e-5)
    top = expected_scores.topk(3)
    assert [p["label"] for p in report["pipeline"]] == [FASHION_MNIST_LABELS[i] for i in top.indices.tolist()]
    np.testing.assert_allclose([p["score"] for p in report["pipeline"]], top.values.tolist(), atol=1e-5)


def test_push_without_card_builds_a_default_one(tmp_path):
    hub = RecordingHub(tmp_path / "uploaded")
    with hub.patch():
        push_mjp_model(demo_model(), demo_processor(), "me/other", commit_message="first")
    assert hub.calls[0][2] == {"private": None, "exist_ok": True}
    assert hub.calls[1][2]["commit_message"] == "first"
    card = ModelCard.load(tmp_path / "uploaded" / "README.md")
    assert card.data.pipeline_tag == "image-classification" and 'model="me/other"' in card.text


# --- training runs: records, the card command, the push command ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real (tiny) Trainer run of the demo model: the files a training output folder holds."""
    from transformers import Trainer, TrainingArguments

    from mjp_hf.data import load_fashion_mnist_arrays

    run_dir = tmp_path_factory.mktemp("run") / "mjp-demo"
    if HAS_FASHION_MNIST:
        train_images, train_labels = (array[:64] for array in load_fashion_mnist_arrays("train"))
        test_images, test_labels = (array[:32] for array in load_fashion_mnist_arrays("test"))
    else:
        rng = np.random.default_rng(0)
        train_images, test_images = rng.integers(0, 256, (64, 28, 28)), rng.integers(0, 256, (32, 28, 28))
        train_labels, test_labels = rng.integers(0, 10, 64), rng.integers(0, 10, 32)

    def as_dataset(images, labels):
        x = (torch.tensor(np.array(images), dtype=torch.float32) / 127.5 - 1).unsqueeze(1).expand(-1, 3, -1, -1)
        return [{"pixel_values": x[i], "labels": int(labels[i])} for i in range(len(labels))]

    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        top5 = np.argsort(-logits, -1)[:, :5]
        return {
            "accuracy": float((top5[:, 0] == prediction.label_ids).mean()),
            "top5_accuracy": float((top5 == prediction.label_ids[:, None]).any(-1).mean()),
        }

    args = TrainingArguments(
        output_dir=str(run_dir),
        max_steps=3,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=32,
        learning_rate=1e-3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=7,
        logging_steps=1,
    )
    trainer = Trainer(
        model=demo_model(seed=7).train(),
        args=args,
        train_dataset=as_dataset(train_images, train_labels),
        eval_dataset=as_dataset(test_images, test_labels),
        compute_metrics=compute_metrics,
    )
    train_metrics = trainer.train().metrics
    eval_metrics = trainer.evaluate(ignore_keys=["classification_loss", "localization_loss", "jigsaw_mask"])
    trainer.save_model()
    trainer.save_metrics("all", {**train_metrics, **eval_metrics})
    trainer.save_state()
    demo_processor().save_pretrained(run_dir)
    (run_dir / "training_args.json").write_text(json.dumps(args.to_dict(), default=str))
    return run_dir


def test_run_records_come_from_the_run_files(tiny_run):
    metrics, hyperparameters = read_run_records(tiny_run)
    assert metrics == json.loads((tiny_run / "all_results.json").read_text())
    assert 0.0 <= metrics["eval_accuracy"] <= metrics["eval_top5_accuracy"] <= 1.0
    assert hyperparameters["learning_rate"] == 1e-3 and hyperparameters["max_steps"] == 3
    assert hyperparameters["seed"] == 7 and hyperparameters["optimizer steps"] == 3
    assert (tiny_run / "training_args.bin").is_file()  # present, and never unpickled by read_run_records


def test_card_command_fills_the_card_from_the_run(tiny_run, tmp_path):
    output = tmp_path / "model_cards" / "mjp-vit-demo.md"
    main(
        [
            "card",
            "--run_dir",
            str(tiny_run),
            "--model_id",
            "me/mjp-vit-demo",
            "--output",
            str(output),
            "--dataset_name",
            "zalando-datasets/fashion_mnist",
            "--dataset_split",
            "test",
        ]
    )
    recorded = json.loads((tiny_run / "all_results.json").read_text())
    card = ModelCard.load(output)
    values = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert values == {"Top-1 accuracy": recorded["eval_accuracy"], "Top-5 accuracy": recorded["eval_top5_accuracy"]}
    assert f"{100 * recorded['eval_accuracy']:.2f}%" in card.text
    assert "| `max_steps` | 3 |" in card.text
    before = output.read_text()
    with pytest.raises(FileExistsError, match="--overwrite"):
        main(["card", "--run_dir", str(tiny_run), "--model_id", "me/mjp-vit-demo", "--output", str(output)])
    assert output.read_text() == before and os.listdir(output.parent) == [output.name]


def test_push_command_uploads_the_run(tiny_run, tmp_path):
    hub = RecordingHub(tmp_path / "uploaded")
    with hub.patch():
        main(
            [
                "push",
                "--run_dir",
                str(tiny_run),
                "--hub_model_id",
                "me/mjp-vit-demo",
                "--hub_token",
                "hf_x",
                "--hub_private_repo",
                "--dataset_name",
                "zalando-datasets/fashion_mnist",
            ]
        )
    assert hub.calls[0][1:] == ("me/mjp-vit-demo", {"private": True, "exist_ok": True}, "hf_x")
    assert layout_files(tmp_path / "uploaded") == DEMO_LAYOUT
    model = MJPViTForImageClassification.from_pretrained(tiny_run).eval()
    root = ViTForImageClassification.from_pretrained(tmp_path / "uploaded").eval()
    x = pixels()
    with torch.no_grad():
        torch.testing.assert_close(root(x).logits, model(x).logits, atol=1e-6, rtol=1e-6)


def test_commands_refuse_folders_that_are_not_mjp_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        main(["card", "--run_dir", str(tmp_path), "--model_id", "me/x", "--output", str(tmp_path / "c.md")])
    demo_model().to_vit().save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match="model_type 'vit'"):
        main(["layout", "--run_dir", str(tmp_path / "vit"), "--model_id", "me/x", "--output_dir", str(tmp_path / "o")])


def test_local_base_model_stays_out_of_the_front_matter(tmp_path, monkeypatch):
    local = tmp_path / "my-vit"
    local.mkdir()
    card = build_model_card(demo_model(), model_id="me/x", base_model=str(local))
    assert card.data.base_model is None and "a local checkpoint (`my-vit`)" in card.text
    assert (
        build_model_card(demo_model(), model_id="me/x", base_model="google/vit-base-patch16-224").data.base_model
        == "google/vit-base-patch16-224"
    )
    monkeypatch.chdir(tmp_path)  # a model id that is also a folder name (the example's default) is still an id
    assert build_model_card(demo_model(), model_id="my-vit").data.model_name == "my-vit"


def test_card_command_takes_dataset_and_base_model_from_the_written_card(tiny_run, tmp_path):
    written = build_model_card(
        demo_model(),
        model_id="me/x",
        dataset_name="zalando-datasets/fashion_mnist",
        base_model="google/vit-base-patch16-224",
    )
    written.save(tiny_run / "README.md")
    try:
        main(["card", "--run_dir", str(tiny_run), "--model_id", "me/y", "--output", str(tmp_path / "y.md")])
    finally:
        (tiny_run / "README.md").unlink()
    card = ModelCard.load(tmp_path / "y.md")
    assert card.data.datasets == ["zalando-datasets/fashion_mnist"]
    assert card.data.base_model == "google/vit-base-patch16-224" and card.data.eval_results


def test_layout_of_a_bfloat16_model_keeps_its_dtype(tmp_path):
    model = demo_model(seed=11).to(torch.bfloat16)
    folder = save_publishing_layout(model, demo_processor(), tmp_path / "layout", widget_images={})
    root = ViTForImageClassification.from_pretrained(folder, dtype="auto").eval()
    full = MJPViTForImageClassification.from_pretrained(folder, subfolder=MJP_SUBFOLDER, dtype="auto").eval()
    assert root.dtype == full.dtype == torch.bfloat16
    x = pixels().to(torch.bfloat16)
    with torch.no_grad():
        expected = model(x).logits
        assert torch.equal(root(x).logits, expected) and torch.equal(full(x).logits, expected)


# --- destructive paths: the run folder is never an output, an incomplete checkpoint is never published ------------


def test_layout_refuses_an_output_folder_that_is_or_holds_the_run(tiny_run, tmp_path, monkeypatch):
    before = {name: (tiny_run / name).read_bytes() for name in layout_files(tiny_run)}
    for output in (tiny_run, tiny_run.parent):
        with pytest.raises(ValueError, match=r"--output_dir .* (is|contains) --run_dir .*Pass a new folder outside"):
            main(
                [
                    "layout",
                    "--run_dir",
                    str(tiny_run),
                    "--output_dir",
                    str(output),
                    "--model_id",
                    "me/x",
                    "--overwrite",
                ]
            )
    monkeypatch.chdir(tiny_run)
    with pytest.raises(ValueError, match=r"--output_dir \. is --run_dir \."):
        main(["layout", "--run_dir", ".", "--output_dir", ".", "--model_id", "me/x", "--overwrite"])
    assert {name: (tiny_run / name).read_bytes() for name in layout_files(tiny_run)} == before


def _without_a_tensor(run_dir: Path, destination: Path) -> str:
    from safetensors.torch import load_file, save_file

    shutil.copytree(run_dir, destination)
    weights = load_file(destination / "model.safetensors")
    dropped = next(key for key in sorted(weights) if ".layer.0." in key)  # saved under the v4 key names
    del weights[dropped]
    save_file(weights, destination / "model.safetensors", metadata={"format": "pt"})
    return dropped


@pytest.mark.parametrize("edit", ["unexpected", "mis-shaped"])
def test_layout_and_push_refuse_a_checkpoint_with_unexpected_or_mis_shaped_tensors(tiny_run, tmp_path, edit):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken-run"
    shutil.copytree(tiny_run, broken)
    weights = load_file(broken / "model.safetensors")
    if edit == "unexpected":
        weights["vit.dist_token"] = torch.zeros(1, 1, 48)
        expected = r"unexpected tensors \['vit\.dist_token'\]"
    else:
        key = next(key for key in sorted(weights) if key.endswith("classifier.weight"))
        weights[key] = torch.zeros(weights[key].shape[0] + 1, weights[key].shape[1])
        expected = r"tensors of the wrong shape \[.*classifier\.weight"
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=expected):
        main(["layout", "--run_dir", str(broken), "--output_dir", str(tmp_path / "out"), "--model_id", "me/x"])
    assert not (tmp_path / "out").exists()
    hub = RecordingHub(tmp_path / "uploaded")
    with hub.patch(), pytest.raises(ValueError, match=expected):
        main(["push", "--run_dir", str(broken), "--hub_model_id", "me/x"])
    assert hub.calls == []


def test_the_card_command_never_unpickles_training_args_bin(tiny_run, tmp_path):
    """`training_args.bin` is a pickle: loading it could run any code. A booby-trapped one stays untouched."""
    import pickle

    trap = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (Path.touch, (trap,))

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "training_args.bin").write_bytes(pickle.dumps(Trap()))
    main(["card", "--run_dir", str(run), "--model_id", "me/x", "--output", str(tmp_path / "card.md")])
    main(["layout", "--run_dir", str(run), "--model_id", "me/x", "--output_dir", str(tmp_path / "layout")])
    assert (tmp_path / "card.md").is_file() and not trap.exists()
    pickle.loads((run / "training_args.bin").read_bytes())  # the trap works: it is the commands that never load it
    assert trap.exists()


def test_layout_and_push_refuse_a_checkpoint_with_missing_tensors(tiny_run, tmp_path):
    broken = tmp_path / "broken-run"
    _without_a_tensor(tiny_run, broken)
    with pytest.raises(
        ValueError,
        match=r"does not hold a complete MJPViTForImageClassification checkpoint: "
        r"missing tensors \['vit\.layers\.0\..*'\]",
    ):
        main(["layout", "--run_dir", str(broken), "--output_dir", str(tmp_path / "out"), "--model_id", "me/x"])
    assert not (tmp_path / "out").exists()
    hub = RecordingHub(tmp_path / "uploaded")
    with hub.patch(), pytest.raises(ValueError, match="missing tensors"):
        main(["push", "--run_dir", str(broken), "--hub_model_id", "me/x"])
    assert hub.calls == []


# --- the card of a training run's folder describes that folder ---------------------------------------------------

SNIPPET_RUNNER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class RefuseMJP(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mjp_hf" or name.startswith("mjp_hf."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")

    if sys.argv[2] == "without-mjp_hf":
        sys.meta_path.insert(0, RefuseMJP())
    for index, code in enumerate(json.load(open(sys.argv[1]))):
        scope = {}
        exec(compile(code, f"<card snippet {index}>", "exec"), scope)
        print(json.dumps({"snippet": index, "names": sorted(name for name in scope if not name.startswith("_"))}))
    print(json.dumps({"modules": sorted(m for m in sys.modules if m.startswith("mjp_hf"))}))
    """
)


def run_snippets(snippets, tmp_path, cwd, *, with_mjp_hf: bool, warm_python=None):
    """Run card snippets one after the other in a fresh interpreter, with or without `mjp_hf` importable (with it,
    in `warm_python` when given: a warm child, whose imports are done)."""
    tag = "with" if with_mjp_hf else "without"
    source, script = tmp_path / f"snippets-{tag}.json", tmp_path / "run_snippets.py"
    source.write_text(json.dumps(snippets))
    script.write_text(SNIPPET_RUNNER)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / f"hf_home_{tag}"),
        "PYTHONPATH": os.pathsep.join(sys.path) if with_mjp_hf else "",
    }
    done = (warm_python.run if warm_python is not None and with_mjp_hf else subprocess.run)(
        [sys.executable, str(script), str(source), f"{tag}-mjp_hf"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_run_folder_card_is_true_of_the_run_folder(tiny_run, tmp_path, monkeypatch, warm_python):
    import re
    import shlex

    run = tmp_path / "runs" / "mjp-demo"
    shutil.copytree(tiny_run, run)
    model = MJPViTForImageClassification.from_pretrained(run)
    metrics = json.loads((run / "all_results.json").read_text())
    card = build_model_card(
        model,
        model_id="mjp-demo",
        run_dir="runs/mjp-demo",
        metrics=metrics,
        dataset_name="zalando-datasets/fashion_mnist",
        dataset_split="test",
    )
    card.save(run / "README.md")
    text = card.text

    # What the folder is: MJP with its code, no widget images, no URL of a repository that does not exist.
    assert getattr(card.data, "widget", None) is None
    assert "widget/" not in text and "huggingface.co/mjp-demo" not in text
    assert "## Repository layout" not in text and "`model_type: mjp_vit`" in text
    assert json.loads((run / "config.json").read_text())["model_type"] == "mjp_vit"
    for name in ("configuration_mjp_vit.py", "modeling_mjp_vit.py", "jigsaw.py", "preprocessor_config.json"):
        assert f"`{name}`" in text and (run / name).is_file(), name
    assert card.data.eval_results[0].dataset_split == "test"

    # Every snippet runs as written, from the folder the run was started in.
    blocks = re.findall(r"```(\w+)\n(.*?)```", text, re.S)
    image = tmp_path / "shirt.png"
    sample_image().save(image)
    python = [code.replace("path/to/image.png", str(image)) for language, code in blocks if language == "python"]
    stock = [code for code in python if "mjp_hf" not in code]
    assert len(stock) == 2 and all("trust_remote_code=True" in code for code in stock)
    report = run_snippets(stock, tmp_path, tmp_path, with_mjp_hf=False)
    assert report[-1] == {"modules": []} and {"classifier", "model", "processor"} <= {
        name for entry in report[:-1] for name in entry["names"]
    }
    mjp_snippets = [code for code in python if "mjp_hf" in code]
    run_snippets(mjp_snippets, tmp_path, tmp_path, with_mjp_hf=True, warm_python=warm_python)

    # The publishing commands it points to produce the layout (push with the HTTP calls recorded).
    commands = [shlex.split(line) for language, code in blocks if language == "bash" for line in code.splitlines()]
    assert [command[:4] for command in commands] == [
        ["python", "-m", "mjp_hf.hub", "layout"],
        ["python", "-m", "mjp_hf.hub", "push"],
    ]
    monkeypatch.chdir(tmp_path)
    main(commands[0][3:])
    layout = tmp_path / "runs" / "mjp-demo-hub"
    assert layout_files(layout) == DEMO_LAYOUT
    published = ModelCard.load(layout / "README.md")
    assert "## Repository layout" in published.text and published.data.eval_results[0].dataset_split == "test"
    hub = RecordingHub(tmp_path / "uploaded")
    with hub.patch():
        main(commands[1][3:])
    assert hub.calls[0][1] == "YOUR_NAMESPACE/mjp-demo" and layout_files(tmp_path / "uploaded") == DEMO_LAYOUT


def test_a_run_folder_card_is_never_published(tmp_path):
    model = demo_model()
    run_card = build_model_card(model, model_id="me/mjp-demo", run_dir="runs/mjp-demo")
    hub = RecordingHub(tmp_path / "uploaded")
    with hub.patch(), pytest.raises(ValueError, match="describes a training run's output folder"):
        push_mjp_model(model, demo_processor(), "me/mjp-demo", card=run_card)
    assert hub.calls == [] and not (tmp_path / "layout").exists()
    publishing = build_model_card(model, model_id="me/mjp-demo")
    assert "## Repository layout" in publishing.text and "run's output folder" not in publishing.text


def test_the_token_is_never_written_or_printed(tiny_run, tmp_path, capsys, caplog):
    import logging

    token = "hf_SECRETtokenNeverWritten0123456789"
    hub = RecordingHub(tmp_path / "uploaded")
    with hub.patch(), caplog.at_level(logging.DEBUG):
        main(["push", "--run_dir", str(tiny_run), "--hub_model_id", "me/x", "--hub_token", token])
    assert hub.calls[0][3] == hub.calls[1][3] == token  # it reached the Hub client, and only that
    printed = capsys.readouterr()
    assert token not in printed.out + printed.err + caplog.text
    for folder in (tmp_path / "uploaded", tiny_run):
        for name in layout_files(folder):
            assert token.encode() not in (folder / name).read_bytes(), name


def test_card_command_never_replaces_the_run_folders_own_card_nor_writes_into_a_folder(tiny_run, tmp_path):
    card = tiny_run / "README.md"
    card.write_text("the run's card")
    try:
        with pytest.raises(ValueError, match="is the run folder's own card"):
            main(["card", "--run_dir", str(tiny_run), "--model_id", "me/x", "--output", str(card), "--overwrite"])
        assert card.read_text() == "the run's card"
    finally:
        card.unlink()
    (tmp_path / "cards").mkdir()
    with pytest.raises(IsADirectoryError, match="--output .*cards is a folder"):
        main(["card", "--run_dir", str(tiny_run), "--model_id", "me/x", "--output", str(tmp_path / "cards")])
    assert os.listdir(tmp_path / "cards") == []


def test_card_command_never_replaces_the_run_folders_card_through_a_link_or_a_relative_path(
    tiny_run, tmp_path, monkeypatch
):
    """docs/HUB.md: the card command never replaces the run folder's own README.md, however --output names it."""
    card = tiny_run / "README.md"
    card.write_text("the run's card")
    (tmp_path / "card link.md").symlink_to(card)
    (tmp_path / "run link").symlink_to(tiny_run, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    try:
        for output in ("card link.md", "run link/README.md", f"{tiny_run}/../{tiny_run.name}/README.md"):
            with pytest.raises(ValueError, match="is the run folder's own card"):
                main(["card", "--run_dir", str(tiny_run), "--model_id", "me/x", "--output", output, "--overwrite"])
            assert card.read_text() == "the run's card" and (tmp_path / "card link.md").is_symlink()
    finally:
        card.unlink()


def test_run_records_reject_a_corrupt_trainer_state(tmp_path):
    (tmp_path / "trainer_state.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="trainer_state.json is not valid JSON"):
        read_run_records(tmp_path)
    (tmp_path / "trainer_state.json").write_text('{"global_step": 4, "no_such_field": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match="no_such_field"):
        read_run_records(tmp_path)
    (tmp_path / "trainer_state.json").write_text('{"global_step": 4, "train_batch_size": 8}', encoding="utf-8")
    assert read_run_records(tmp_path)[1] == {"optimizer steps": 4, "train_batch_size (per device)": 8}
