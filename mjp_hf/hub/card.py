"""Model cards of MJP-ViT models: the card of a published repository (the layout of `mjp_hf.hub.layout`), and the
card of a training run's output folder as it is. Also what a Hub repository id is, checked where one is needed."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..configuration_mjp_vit import MJP_CONFIG_FIELDS
from ..modeling_mjp_vit import MJPViTForImageClassification, MJPViTPreTrainedModel, is_mjp_only_parameter
from .files import FASHION_MNIST_WIDGET, LAYOUT_CODE_FILES, MJP_SUBFOLDER, WIDGET_FOLDER, widget_file_name


# model_cards/ at the root of a checkout, or inside the package when installed from a wheel (see setup.py).
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
MODEL_CARDS_DIR = next(
    (
        folder
        for folder in (_PACKAGE_DIR.parent / "model_cards", _PACKAGE_DIR / "model_cards")
        if (folder / "mjp_model_card_template.md").is_file()
    ),
    _PACKAGE_DIR.parent / "model_cards",
)
CARD_TEMPLATE = MODEL_CARDS_DIR / "mjp_model_card_template.md"
DEFAULT_LICENSE = "apache-2.0"
PAPER_URL = "https://arxiv.org/abs/2205.12551"
CODE_URL = "https://github.com/yhlleo/MJP"
PAPER_BIBTEX = """@inproceedings{ren2023masked,
  title     = {Masked Jigsaw Puzzle: A Versatile Position Embedding for Vision Transformers},
  author    = {Ren, Bin and Liu, Yahui and Song, Yue and Bi, Wei and Cucchiara, Rita and Sebe, Nicu and Wang, Wei},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023},
  eprint    = {2205.12551},
  archivePrefix = {arXiv}
}"""
# Written into the card of a training run's folder (invisible on the Hub): such a card describes that folder, so
# `save_publishing_layout` refuses to publish it.
RUN_CARD_MARKER = "<!-- mjp_hf: the card of a training run's output folder, not of a published repository -->"
# Written into a card built for a name that is no Hub repository id (a run folder's "my run"): its usage examples
# name a placeholder repository, so it is not published either.
NAME_ONLY_CARD_MARKER = "<!-- mjp_hf: built for a name, not a Hub repository id: not a card to publish -->"
PLACEHOLDER_NAMESPACE = "YOUR_NAMESPACE"
# The sample images transformers' own ViT cards use for their widget; right for ImageNet-1k classifiers.
IMAGENET_WIDGET = [
    {"src": "https://huggingface.co/datasets/mishig/sample_images/resolve/main/tiger.jpg", "example_title": "Tiger"},
    {"src": "https://huggingface.co/datasets/mishig/sample_images/resolve/main/teapot.jpg", "example_title": "Teapot"},
    {"src": "https://huggingface.co/datasets/mishig/sample_images/resolve/main/palace.jpg", "example_title": "Palace"},
]
# The first Fashion-MNIST test image of each `FASHION_MNIST_WIDGET` class, shipped under `model_cards/widget/`
# (tests/test_hub.py checks the pixels), with `labels.json`: the label set of the classifiers they suit.
FASHION_MNIST_WIDGET_DIR = MODEL_CARDS_DIR / "widget"
FASHION_MNIST_WIDGET_LABELS = FASHION_MNIST_WIDGET_DIR / "labels.json"
# Metrics written by the Trainer (`all_results.json`, `eval_results.json`) that enter the card's model-index:
# key -> (model-index metric type, display name).
MODEL_INDEX_METRICS = {
    "eval_accuracy": ("accuracy", "Top-1 accuracy"),
    "eval_top1_accuracy": ("accuracy", "Top-1 accuracy"),
    "eval_top5_accuracy": ("top_5_accuracy", "Top-5 accuracy"),
}


# --- repository ids -----------------------------------------------------------------------------------------------


def repo_id_problem(name) -> str | None:
    """Why `name` is not a Hub repository id (`huggingface_hub`'s own check), or None when it is one."""
    if not isinstance(name, str):
        return f"a repository id is a string, not {type(name).__name__}"
    try:
        validate_repo_id(name)
    except HFValidationError as error:
        return str(error)
    return None


def placeholder_repo_id(name: str, namespace: str = PLACEHOLDER_NAMESPACE) -> str:
    """`namespace/<name made a valid repository name>` ("my run" -> `YOUR_NAMESPACE/my-run`): what a card shows in
    the commands and snippets that need a repository id where it only knows a name."""
    ascii_name = unicodedata.normalize("NFKD", name.split("/")[-1]).encode("ascii", "ignore").decode()
    slug = re.sub(r"[-.]{2,}", "-", re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_name)).strip("-.")
    slug = slug[:96].strip("-.").removesuffix(".git") or "mjp-vit"
    return f"{namespace}/{slug}"


def check_repo_id(repo_id, flag: str) -> str:
    """`repo_id` if it is a Hub repository id; otherwise a ValueError naming `flag`, the reason and the fix."""
    problem = repo_id_problem(repo_id)
    if problem is not None:
        example = placeholder_repo_id(repo_id if isinstance(repo_id, str) else "name")
        raise ValueError(
            f"{flag} {repo_id!r} is not a Hub repository id ({problem}). Pass namespace/name, e.g. {example}."
        )
    return repo_id


def repo_id_argument(value: str) -> str:
    """argparse `type=` of a repository id flag: refused when the command line is parsed, before any work."""
    try:
        return check_repo_id(value, "")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).strip()) from None


def push_repo_id(hub_model_id: str | None, output_dir: str | os.PathLike) -> str:
    """The repository a training run pushes to: `--hub_model_id`, or else the output folder's name (transformers'
    rule). A ValueError naming `--hub_model_id` and the fix when that is no Hub repository id: call it when the
    flags are parsed, so that a run never trains only to fail at its push."""
    repo_id = hub_model_id or Path(output_dir).absolute().name
    problem = repo_id_problem(repo_id)
    if problem is not None:
        given = f"--hub_model_id {hub_model_id!r}" if hub_model_id else f"The --output_dir name {repo_id!r}"
        raise ValueError(
            f"{given} is not a Hub repository id ({problem}); --push_to_hub needs one. Pass --hub_model_id "
            f"namespace/name, e.g. --hub_model_id {placeholder_repo_id(repo_id)}."
        )
    return repo_id


def _card_name(model_id) -> str:
    line_breaks = ("Cc", "Zl", "Zp")  # control characters (newlines, tabs) and line separators
    if (
        not isinstance(model_id, str)
        or not model_id.strip()
        or any(unicodedata.category(c) in line_breaks for c in model_id)
    ):
        raise ValueError(
            f"model_id={model_id!r} is neither a Hub repository id nor a one-line name; pass 'namespace/name', or the "
            "run folder's name for the card of a run folder."
        )
    return model_id


def _is_hub_checkpoint(name) -> bool:
    """A base model the Hub can link: a repository id that is not also a local folder."""
    return repo_id_problem(name) is None and not Path(name).exists()


def check_publishable(card: ModelCard) -> None:
    """Refuse a card that describes something other than a published repository."""
    if RUN_CARD_MARKER in card.text:
        raise ValueError(
            "This card describes a training run's output folder, not the publishing layout; build the layout's card "
            "with build_model_card(...) without run_dir, or with card_for_run(run_dir, model_id=...)."
        )
    if NAME_ONLY_CARD_MARKER in card.text:
        raise ValueError(
            "This card was built for a name that is not a Hub repository id, so its usage examples name a "
            "placeholder; build it with build_model_card(model, model_id='namespace/name') (on the command lines: "
            "--hub_model_id namespace/name)."
        )


# --- widgets ------------------------------------------------------------------------------------------------------


def _labels(model: MJPViTPreTrainedModel) -> list[str]:
    id2label = {int(key): value for key, value in (model.config.id2label or {}).items()}
    return [id2label.get(index, "") for index in range(model.config.num_labels)]


def _is_fashion_mnist(model: MJPViTPreTrainedModel) -> bool:
    if not (isinstance(model, MJPViTForImageClassification) and FASHION_MNIST_WIDGET_LABELS.is_file()):
        return False
    return _labels(model) == json.loads(FASHION_MNIST_WIDGET_LABELS.read_text(encoding="utf-8"))["labels"]


def _fashion_mnist_widget_shipped() -> bool:
    return all((FASHION_MNIST_WIDGET_DIR / widget_file_name(title)).is_file() for title in FASHION_MNIST_WIDGET)


def default_widget_images(model: MJPViTPreTrainedModel) -> dict | None:
    """Example images a repository of this model should carry for its widget: for a Fashion-MNIST classifier
    (its `id2label` names the ten classes) the first test image of a few classes (`FASHION_MNIST_WIDGET_DIR`)."""
    if not (_is_fashion_mnist(model) and _fashion_mnist_widget_shipped()):
        return None
    from PIL import Image

    images = {}
    for title in FASHION_MNIST_WIDGET:
        with Image.open(FASHION_MNIST_WIDGET_DIR / widget_file_name(title)) as image:
            images[title] = image.copy()
    return images


def widget_from_images(model_id: str, titles: Sequence[str], revision: str = "main") -> list[dict]:
    """Widget entries for images that `save_publishing_layout(widget_images=...)` stores in the repository."""
    return [
        {
            "src": f"https://huggingface.co/{model_id}/resolve/{revision}/{WIDGET_FOLDER}/{widget_file_name(title)}",
            "example_title": title,
        }
        for title in titles
    ]


def default_widget(model: MJPViTPreTrainedModel, model_id: str) -> list[dict] | None:
    """The widget examples `build_model_card` uses when none are given: ImageNet sample images for a 1000-class
    classifier, the repository's own `widget/` images for a Fashion-MNIST one. Those are addressed by their URL in
    the repository, which only a full `namespace/name` id gives: without a namespace, no widget."""
    if isinstance(model, MJPViTForImageClassification) and model.config.num_labels == 1000:
        return IMAGENET_WIDGET
    full_id = repo_id_problem(model_id) is None and "/" in model_id
    if _is_fashion_mnist(model) and _fashion_mnist_widget_shipped() and full_id:
        return widget_from_images(model_id, FASHION_MNIST_WIDGET)
    return None


# --- the parts of a card ------------------------------------------------------------------------------------------


def _format_value(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(item) for item in value)
    return str(value)


def _format_metric(name: str, value) -> str:
    if isinstance(value, float) and "accuracy" in name and 0.0 <= value <= 1.0:
        return f"{value:.4f} ({100 * value:.2f}%)"
    return _format_value(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _eval_results(metrics: Mapping, *, dataset_name: str | None, dataset_split: str | None):
    if not dataset_name:
        return None
    results = []
    for key, (metric_type, metric_name) in MODEL_INDEX_METRICS.items():
        value = metrics.get(key)
        if not _is_number(value) or not math.isfinite(value):
            continue
        if any(result.metric_name == metric_name for result in results):
            continue  # eval_accuracy and eval_top1_accuracy are the same measurement
        results.append(
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=dataset_name,
                dataset_name=dataset_name.split("/")[-1],
                dataset_split=dataset_split,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_value=float(value),
            )
        )
    return results or None


def _result_rows(metrics: Mapping) -> list[tuple[str, str]]:
    """Every `eval_*` number of the metrics file but timings, formatted."""
    return [
        (key, _format_metric(key, value))
        for key, value in sorted(metrics.items())
        if key.startswith("eval_") and _is_number(value) and not key.endswith(("_runtime", "_per_second", "_time"))
    ]


def _architecture_rows(model: MJPViTPreTrainedModel, run_folder: bool = False) -> list[tuple[str, str]]:
    config = model.config
    vit_parameters = sum(
        parameter.numel() for name, parameter in model.named_parameters() if not is_mjp_only_parameter(name)
    )
    rows = [
        ("image size", _format_value(config.image_size)),
        ("patch size", _format_value(config.patch_size)),
        ("patch grid", "x".join(str(size) for size in model.mjp_embeddings.grid_size)),
        ("channels", str(config.num_channels)),
        (
            "hidden size / depth / heads / MLP",
            f"{config.hidden_size} / {config.num_hidden_layers} / "
            f"{config.num_attention_heads} / {config.intermediate_size}",
        ),
        ("layer-norm eps", _format_value(config.layer_norm_eps)),
    ]
    if run_folder:
        rows += [
            ("parameters (the stock ViT it exports to)", f"{vit_parameters:,}"),
            ("parameters (this checkpoint, with the MJP parts)", f"{model.num_parameters():,}"),
        ]
    else:
        rows += [
            ("parameters (root, stock ViT)", f"{vit_parameters:,}"),
            (f"parameters (`{MJP_SUBFOLDER}/`, with the MJP parts)", f"{model.num_parameters():,}"),
        ]
    if isinstance(model, MJPViTForImageClassification):
        rows.insert(4, ("classes", str(config.num_labels)))
    return rows


def _summary(model, name: str, dataset_name: str | None, base_model: str | None) -> str:
    task = "an image classifier" if isinstance(model, MJPViTForImageClassification) else "an image encoder"
    summary = f"`{name}` is {task}" + (f" trained on `{dataset_name}`" if dataset_name else "") + "."
    if base_model and _is_hub_checkpoint(base_model):
        summary += f" It was fine-tuned from `{base_model}`."
    elif base_model:
        summary += f" It was fine-tuned from a local checkpoint (`{Path(base_model).name}`)."
    return summary


def _training_text(dataset_name: str | None, hyperparameters: Mapping | None) -> str:
    return (
        "Trained with `mjp_hf` (the Trainer-based example `examples/run_image_classification.py`)"
        + (f" on `{dataset_name}`" if dataset_name else "")
        + "."
        + (
            " The hyper-parameters below are the ones the run recorded."
            if hyperparameters
            else " The run recorded no hyper-parameters beside the MJP settings above."
        )
    )


def _limitations(has_results: bool) -> list[str]:
    limitations = [
        "The model only knows the classes in `config.json`'s `id2label`; anything else is forced into one of them.",
        "The MJP paper studies the robustness of MJP-trained ViTs and their resistance to gradient-inversion "
        "attacks; neither property was measured for this checkpoint.",
    ]
    if has_results:
        limitations.insert(
            1,
            "The results above were measured once, on the data named, with the preprocessing "
            "in `preprocessor_config.json`; they say nothing about other data or resolutions.",
        )
    return limitations


def _cut(name: str, size: int) -> str:
    """`name` cut to at most `size` bytes of UTF-8 (file names have 255)."""
    return name.encode("utf-8")[:size].decode("utf-8", "ignore")


def _layout_dir_arg(run_dir) -> str:
    """Where the run card's `hub layout` command writes: beside the run folder, named after it."""
    path = Path(run_dir)
    if path.name in ("", ".."):  # `.` or `..` has no name of its own: name the folder, relative to here
        resolved = path.resolve()
        return shlex.quote(os.path.relpath(resolved.parent / f"{_cut(resolved.name, 251)}-hub"))
    return shlex.quote((path.parent / f"{_cut(path.name, 251)}-hub").as_posix())


def _run_folder_fields(run_dir, model_id: str) -> dict:
    """Template fields of a card describing a training run's output folder (none for the publishing layout)."""
    if run_dir is None:
        return {"run_folder": False, "settings_file": f"{MJP_SUBFOLDER}/config.json"}
    path = Path(run_dir).as_posix()
    full_id = repo_id_problem(model_id) is None and "/" in model_id
    return {
        "run_folder": True,
        "run_card_marker": RUN_CARD_MARKER,
        "settings_file": "config.json",
        "code_files": ", ".join(f"`{name}`" for name in LAYOUT_CODE_FILES),
        "model_path": json.dumps(path, ensure_ascii=False),  # a Python string literal
        "run_dir_arg": shlex.quote(path),
        "layout_dir_arg": _layout_dir_arg(run_dir),
        "repo_id": model_id if full_id else placeholder_repo_id(model_id),
    }


# --- the card -----------------------------------------------------------------------------------------------------


def build_model_card(
    model: MJPViTPreTrainedModel,
    *,
    model_id: str,
    dataset_name: str | None = None,
    metrics: Mapping | None = None,
    hyperparameters: Mapping | None = None,
    base_model: str | None = None,
    dataset_split: str | None = None,
    license: str = DEFAULT_LICENSE,
    widget: Sequence[Mapping] | None = None,
    summary: str | None = None,
    training_text: str | None = None,
    limitations: Sequence[str] | None = None,
    metrics_source: str = "`all_results.json`",
    tags: Sequence[str] = (),
    template_path: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
) -> ModelCard:
    """The model card of an MJP-ViT repository in the layout of `save_publishing_layout`, or, with `run_dir`, of
    a training run's output folder as it is.

    Args:
        model: the MJP model (`MJPViTForImageClassification` or `MJPViTModel`).
        model_id: the Hub repository id (`namespace/name`) the card describes, used in the usage examples; or a
            name that is no repository id (a run folder's "my run"): the card then shows a placeholder id
            (`placeholder_repo_id`) and is refused by `save_publishing_layout` and `push_mjp_model`.
        dataset_name: Hub id of the training/evaluation dataset; needed for the `model-index`.
        metrics: the run's metrics as the Trainer writes them (`all_results.json`): `eval_accuracy` and
            `eval_top5_accuracy` enter the `model-index`, every `eval_*` number the results table. Never type
            figures here by hand: pass the file's content.
        hyperparameters: the training recipe actually used, rendered as a table.
        base_model: the checkpoint the model was fine-tuned from, if any. Only a Hub id enters the front matter;
            a local folder is named in the text alone.
        widget: `[{"src": url, "example_title": title}, ...]` for the inference widget; `default_widget` when not
            given (pass `[]` for none).
        summary, training_text, limitations: replace the generated paragraphs.
        metrics_source: how the results section names where the figures come from.
        run_dir: the training run's output folder (the path as users will type it) when the card is its README:
            the card then describes that folder (the full MJP checkpoint with its code: `trust_remote_code=True` or
            `import mjp_hf`), shows no widget unless `widget` is given (the folder has no `widget/` images), and
            points to `python -m mjp_hf.hub layout` / `push` for the publishing layout.
    """
    if not isinstance(model, MJPViTPreTrainedModel):
        raise TypeError(
            f"build_model_card expects an MJP-ViT model (MJPViTForImageClassification or MJPViTModel), got "
            f"{type(model).__name__}; load the checkpoint with mjp_hf first."
        )
    name = _card_name(model_id)
    is_repo_id = repo_id_problem(name) is None
    model_name = name.split("/")[-1] if is_repo_id else name
    template_path = Path(template_path) if template_path is not None else CARD_TEMPLATE
    if not template_path.is_file():
        raise FileNotFoundError(
            f"The model-card template {template_path} is missing; pass template_path= or run from a checkout of "
            "mjp-hf, which ships it under model_cards/."
        )
    metrics = dict(metrics or {})
    if widget is None:
        widget = default_widget(model, name) if run_dir is None else None
    results = _result_rows(metrics)
    card = ModelCard.from_template(
        _card_data(model, model_name, dataset_name, dataset_split, metrics, base_model, license, tags, widget),
        template_path=str(template_path),
        model_id=name if is_repo_id else placeholder_repo_id(name),
        model_name=model_name,
        summary=summary if summary is not None else _summary(model, name, dataset_name, base_model),
        training_text=training_text if training_text is not None else _training_text(dataset_name, hyperparameters),
        limitations=list(limitations if limitations is not None else _limitations(bool(results))),
        example_image=(widget[0]["src"] if widget else "path/to/image.png"),
        **_model_fields(model, run_folder=run_dir is not None),
        hyperparameters=[(key, _format_value(value)) for key, value in (hyperparameters or {}).items()],
        **_results_fields(results, dataset_split, metrics_source),
        **_run_folder_fields(run_dir, name),
    )
    if not is_repo_id:
        card.text += f"\n{NAME_ONLY_CARD_MARKER}\n"
    return card


def _card_data(
    model, model_name, dataset_name, dataset_split, metrics, base_model, license, tags, widget
) -> ModelCardData:
    """The card's front matter."""
    eval_results = _eval_results(metrics, dataset_name=dataset_name, dataset_split=dataset_split)
    is_classifier = isinstance(model, MJPViTForImageClassification)
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification" if is_classifier else "image-feature-extraction",
        license=license,
        tags=list(dict.fromkeys(["vision", "image-classification", "vit", "mjp", "masked-jigsaw-puzzle", *tags])),
        datasets=[dataset_name] if dataset_name else None,
        metrics=["accuracy"] if eval_results else None,
        base_model=base_model if _is_hub_checkpoint(base_model) else None,
        model_name=model_name,
        eval_results=eval_results,
        widget=[dict(example) for example in widget] if widget else None,
    )


def _model_fields(model: MJPViTPreTrainedModel, *, run_folder: bool) -> dict:
    """Template fields describing the network: classes, architecture, MJP settings, the paper."""
    return {
        "subfolder": MJP_SUBFOLDER,
        "vit_class": f"`{model._vit_class.__name__}`",
        "mjp_class": f"`{type(model).__name__}`",
        "is_classifier": isinstance(model, MJPViTForImageClassification),
        "architecture": _architecture_rows(model, run_folder=run_folder),
        "mjp_settings": [(name, _format_value(getattr(model.config, name))) for name in MJP_CONFIG_FIELDS],
        "bibtex": PAPER_BIBTEX,
        "paper_url": PAPER_URL,
        "code_url": CODE_URL,
    }


def _results_fields(results: list, dataset_split: str | None, metrics_source: str) -> dict:
    split = f" ({dataset_split} split)" if dataset_split else ""
    return {
        "results": results,
        "results_text": f"Measured by the training run{split} and copied from its {metrics_source} by "
        "`mjp_hf.hub.build_model_card`.",
        "no_results_text": "No evaluation results were recorded with this checkpoint, so none are reported.",
    }
