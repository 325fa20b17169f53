"""Publishing MJP-ViT models on the Hugging Face Hub: model cards and the two-checkpoint repository layout.

A published repository holds two checkpoints of the same network:

- the **root** is the stock-ViT export (`model.to_vit()`, `model_type: vit`): what `AutoModel*`, `pipeline`, the
  inference widget and serving stacks that never run remote code load;
- the subfolder `MJP_SUBFOLDER` is the full MJP checkpoint (unknown position embedding, DALR head, model code and
  `auto_map`), from which training continues with `mjp_hf` or `trust_remote_code=True`.

Both compute the same logits in evaluation mode. Run `python -m mjp_hf.hub --help` for the command-line tools
(a model card from a training run, a push of a training run).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import math
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import TrainerState

from .configuration_mjp_vit import MJP_CONFIG_FIELDS
from .data import FASHION_MNIST_LABELS
from .modeling_mjp_vit import (
    MJPViTForImageClassification,
    MJPViTModel,
    MJPViTPreTrainedModel,
    is_mjp_only_parameter,
    mjp_auto_map,
)


logger = logging.getLogger(__name__)

MJP_SUBFOLDER = "mjp"
WIDGET_FOLDER = "widget"
# The files of the publishing layout, at the root and under `MJP_SUBFOLDER/`. The code modules are the ones
# `save_pretrained` copies beside MJP weights (`mjp_hf/configuration_mjp_vit.py` and what it imports).
LAYOUT_CODE_FILES = ("configuration_mjp_vit.py", "jigsaw.py", "modeling_mjp_vit.py")
LAYOUT_FILES = ("README.md", "config.json", "preprocessor_config.json", *LAYOUT_CODE_FILES)
# The names transformers gives a checkpoint's weights, in any format: a layout holds one checkpoint, so weights of
# an earlier one under these names would be a second, stale copy of the model.
WEIGHT_FILE_PATTERNS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model-*-of-*.bin",
)


def layout_file_patterns(widget_titles: Sequence[str] = ()) -> list[str]:
    """Every path (fnmatch pattern, POSIX, relative to the layout folder) the publishing layout may write: what an
    overwrite or a push may replace or delete. Anything else (`.gitattributes`, a licence file, a user's notes or
    scripts) is never touched. Widget images are named by their titles: the Fashion-MNIST ones and `widget_titles`."""
    names = [*LAYOUT_FILES, *WEIGHT_FILE_PATTERNS]
    titles = dict.fromkeys([*FASHION_MNIST_WIDGET, *widget_titles])
    return [
        *names,
        *(f"{MJP_SUBFOLDER}/{name}" for name in names),
        *(f"{WIDGET_FOLDER}/{_widget_file_name(title)}" for title in titles),
    ]


# model_cards/ at the root of a checkout, or inside the package when installed from a wheel (see setup.py).
MODEL_CARDS_DIR = next(
    (
        folder
        for folder in (
            Path(__file__).resolve().parent.parent / "model_cards",
            Path(__file__).resolve().parent / "model_cards",
        )
        if (folder / "mjp_model_card_template.md").is_file()
    ),
    Path(__file__).resolve().parent.parent / "model_cards",
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
# The sample images transformers' own ViT cards use for their widget; right for ImageNet-1k classifiers.
IMAGENET_WIDGET = [
    {"src": "https://huggingface.co/datasets/mishig/sample_images/resolve/main/tiger.jpg", "example_title": "Tiger"},
    {"src": "https://huggingface.co/datasets/mishig/sample_images/resolve/main/teapot.jpg", "example_title": "Teapot"},
    {"src": "https://huggingface.co/datasets/mishig/sample_images/resolve/main/palace.jpg", "example_title": "Palace"},
]
# Test images shown by the widget of a Fashion-MNIST model (stored in the repository under `widget/`): the first
# Fashion-MNIST test image of each class, shipped under `model_cards/widget/` (tests/test_hub.py checks the pixels).
FASHION_MNIST_WIDGET = ("Sneaker", "Trouser", "Bag")
FASHION_MNIST_WIDGET_DIR = MODEL_CARDS_DIR / "widget"
# Metrics written by the Trainer (`all_results.json`, `eval_results.json`) that enter the card's model-index:
# key -> (model-index metric type, display name).
MODEL_INDEX_METRICS = {
    "eval_accuracy": ("accuracy", "Top-1 accuracy"),
    "eval_top1_accuracy": ("accuracy", "Top-1 accuracy"),
    "eval_top5_accuracy": ("top_5_accuracy", "Top-5 accuracy"),
}
# `TrainingArguments` fields worth a line in a card, when a run recorded them (training_args.json).
CARD_TRAINING_ARGS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "label_smoothing_factor",
    "optim",
    "seed",
    "bf16",
    "fp16",
)


# ---------------------------------------------------------------------------------------------------------------
# Model cards
# ---------------------------------------------------------------------------------------------------------------


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


def _eval_results(metrics: Mapping, *, dataset_name: str | None, dataset_split: str | None):
    if not dataset_name:
        return None
    results = []
    for key, (metric_type, metric_name) in MODEL_INDEX_METRICS.items():
        value = metrics.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
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


def _labels(model: MJPViTPreTrainedModel) -> list[str]:
    id2label = {int(key): value for key, value in (model.config.id2label or {}).items()}
    return [id2label.get(index, "") for index in range(model.config.num_labels)]


def _is_fashion_mnist(model: MJPViTPreTrainedModel) -> bool:
    return isinstance(model, MJPViTForImageClassification) and _labels(model) == list(FASHION_MNIST_LABELS)


def _fashion_mnist_widget_shipped() -> bool:
    return all((FASHION_MNIST_WIDGET_DIR / _widget_file_name(title)).is_file() for title in FASHION_MNIST_WIDGET)


def default_widget_images(model: MJPViTPreTrainedModel) -> dict | None:
    """Example images a repository of this model should carry for its widget: for a Fashion-MNIST classifier
    (its `id2label` names the ten classes) the first test image of a few classes (`FASHION_MNIST_WIDGET_DIR`)."""
    if not (_is_fashion_mnist(model) and _fashion_mnist_widget_shipped()):
        return None
    from PIL import Image

    images = {}
    for title in FASHION_MNIST_WIDGET:
        with Image.open(FASHION_MNIST_WIDGET_DIR / _widget_file_name(title)) as image:
            images[title] = image.copy()
    return images


def default_widget(model: MJPViTPreTrainedModel, model_id: str) -> list[dict] | None:
    """The widget examples `build_model_card` uses when none are given: ImageNet sample images for a 1000-class
    classifier, the repository's own `widget/` images for a Fashion-MNIST one. Those are addressed by their URL in
    the repository, which only a full `namespace/name` id gives: without a namespace, no widget."""
    if isinstance(model, MJPViTForImageClassification) and model.config.num_labels == 1000:
        return IMAGENET_WIDGET
    if _is_fashion_mnist(model) and _fashion_mnist_widget_shipped() and "/" in model_id:
        return widget_from_images(model_id, FASHION_MNIST_WIDGET)
    return None


def _repo_id_problem(name) -> str | None:
    """Why `name` is not a Hub repository id (`huggingface_hub`'s own check), or None when it is one."""
    if not isinstance(name, str):
        return f"a repository id is a string, not {type(name).__name__}"
    try:
        validate_repo_id(name)
    except HFValidationError as error:
        return str(error)
    return None


def _is_hub_checkpoint(name) -> bool:
    """A base model the Hub can link: a repository id that is not also a local folder."""
    return _repo_id_problem(name) is None and not Path(name).exists()


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
        model_id: the Hub repository id (`org/name`), used in the usage examples.
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
    problem = _repo_id_problem(model_id)
    if problem is not None:
        raise ValueError(f"model_id={model_id!r} is not a Hub repository id ({problem}); pass 'org/name'.")
    template_path = Path(template_path) if template_path is not None else CARD_TEMPLATE
    if not template_path.is_file():
        raise FileNotFoundError(
            f"The model-card template {template_path} is missing; pass template_path= or run from a checkout of "
            "mjp-hf, which ships it under model_cards/."
        )
    config = model.config
    metrics = dict(metrics or {})
    is_classifier = isinstance(model, MJPViTForImageClassification)
    if widget is None:
        widget = default_widget(model, model_id) if run_dir is None else None
    eval_results = _eval_results(metrics, dataset_name=dataset_name, dataset_split=dataset_split)
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification" if is_classifier else "image-feature-extraction",
        license=license,
        tags=list(dict.fromkeys(["vision", "image-classification", "vit", "mjp", "masked-jigsaw-puzzle", *tags])),
        datasets=[dataset_name] if dataset_name else None,
        metrics=["accuracy"] if eval_results else None,
        base_model=base_model if _is_hub_checkpoint(base_model) else None,
        model_name=model_id.split("/")[-1],
        eval_results=eval_results,
        widget=[dict(example) for example in widget] if widget else None,
    )

    results = [
        (key, _format_metric(key, value))
        for key, value in sorted(metrics.items())
        if key.startswith("eval_")
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not key.endswith(("_runtime", "_per_second", "_time"))  # timings are not results
    ]
    split = f" ({dataset_split} split)" if dataset_split else ""
    if summary is None:
        task = "an image classifier" if is_classifier else "an image encoder"
        summary = f"`{model_id}` is {task}" + (f" trained on `{dataset_name}`" if dataset_name else "") + "."
        if base_model:
            if _is_hub_checkpoint(base_model):
                summary += f" It was fine-tuned from `{base_model}`."
            else:
                summary += f" It was fine-tuned from a local checkpoint (`{Path(base_model).name}`)."
    if training_text is None:
        training_text = (
            "Trained with `mjp_hf` (the Trainer-based example `examples/run_image_classification.py`)"
            + (f" on `{dataset_name}`" if dataset_name else "")
            + "."
            + (
                " The hyper-parameters below are the ones the run recorded."
                if hyperparameters
                else " The run recorded no hyper-parameters beside the MJP settings above."
            )
        )
    if limitations is None:
        limitations = [
            "The model only knows the classes in `config.json`'s `id2label`; anything else is forced into one of them.",
            "The MJP paper studies the robustness of MJP-trained ViTs and their resistance to gradient-inversion "
            "attacks; neither property was measured for this checkpoint.",
        ]
        if results:
            limitations.insert(
                1,
                "The results above were measured once, on the data named, with the preprocessing "
                "in `preprocessor_config.json`; they say nothing about other data or resolutions.",
            )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_id=model_id,
        model_name=model_id.split("/")[-1],
        summary=summary,
        subfolder=MJP_SUBFOLDER,
        vit_class=f"`{model._vit_class.__name__}`",
        mjp_class=f"`{type(model).__name__}`",
        example_image=(widget[0]["src"] if widget else "path/to/image.png"),
        architecture=_architecture_rows(model, run_folder=run_dir is not None),
        mjp_settings=[(name, _format_value(getattr(config, name))) for name in MJP_CONFIG_FIELDS],
        training_text=training_text,
        hyperparameters=[(name, _format_value(value)) for name, value in (hyperparameters or {}).items()],
        results=results,
        results_text=f"Measured by the training run{split} and copied from its {metrics_source} by "
        "`mjp_hf.hub.build_model_card`.",
        no_results_text="No evaluation results were recorded with this checkpoint, so none are reported.",
        limitations=list(limitations),
        bibtex=PAPER_BIBTEX,
        paper_url=PAPER_URL,
        code_url=CODE_URL,
        is_classifier=is_classifier,
        **_run_folder_fields(run_dir, model_id),
    )
    return card


def _run_folder_fields(run_dir, model_id: str) -> dict:
    """Template fields of a card describing a training run's output folder (none for the publishing layout)."""
    if run_dir is None:
        return {"run_folder": False, "settings_file": f"{MJP_SUBFOLDER}/config.json"}
    path = Path(run_dir).as_posix()
    repo_id = model_id if "/" in model_id else f"YOUR_NAMESPACE/{model_id}"
    # Beside the run folder, named after it (from inside it, `.` has no name of its own).
    layout_dir = f"{path}-hub" if Path(path).name not in ("", "..") else f"../{Path(run_dir).resolve().name}-hub"
    return {
        "run_folder": True,
        "run_card_marker": RUN_CARD_MARKER,
        "settings_file": "config.json",
        "code_files": ", ".join(f"`{name}`" for name in LAYOUT_CODE_FILES),
        "model_path": json.dumps(path),  # a Python string literal
        "run_dir_arg": shlex.quote(path),
        "layout_dir_arg": shlex.quote(layout_dir),
        "repo_id": repo_id,
    }


# ---------------------------------------------------------------------------------------------------------------
# Publishing layout
# ---------------------------------------------------------------------------------------------------------------


def _add_auto_map_entries(config_path: Path, model: MJPViTPreTrainedModel) -> None:
    """`save_pretrained` lists only the saved class and the config in `auto_map`; a classifier checkpoint also
    serves `AutoModel` (the encoder without its head), so list it too."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = mjp_auto_map(model, config.get("auto_map"))
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _widget_file_name(title: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "example"
    return f"{slug}.png"


def widget_from_images(model_id: str, titles: Sequence[str], revision: str = "main") -> list[dict]:
    """Widget entries for images that `save_publishing_layout(widget_images=...)` stores in the repository."""
    return [
        {
            "src": f"https://huggingface.co/{model_id}/resolve/{revision}/{WIDGET_FOLDER}/{_widget_file_name(title)}",
            "example_title": title,
        }
        for title in titles
    ]


def check_output_dir(
    output_dir: str | os.PathLike,
    *,
    overwrite: bool,
    inputs: Mapping[str, str | os.PathLike] | None = None,
    output_flag: str = "output_dir",
    overwrite_flag: str = "overwrite=True",
) -> Path:
    """Refuse an output folder that would lose what it holds, before any work starts; return it as a `Path`.

    Refused: a path that is a file; a non-empty folder unless `overwrite` (which then replaces only the layout's own
    files, see `layout_file_patterns`); and a folder that is, or contains, one of `inputs` (`{flag: path}`), whatever
    `overwrite` says: the output would replace the very files it is made from.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"{output_flag} {output_dir} exists and is not a folder; pass a folder path.")
    resolved = output_dir.resolve()
    for flag, path in (inputs or {}).items():
        source = Path(path).resolve()
        if source == resolved or resolved in source.parents:
            raise ValueError(
                f"{output_flag} {output_dir} {'is' if source == resolved else 'contains'} {flag} {path}: writing "
                f"there could replace the input itself. Pass a new folder outside it as {output_flag}."
            )
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{output_flag} {output_dir} is not empty; pass an empty or new folder, or {overwrite_flag} to replace "
            "the layout's own files in it (other files stay)."
        )
    return output_dir


def _replace_layout_files(staging: Path, output_dir: Path, widget_titles: Sequence[str]) -> None:
    """Move the staged layout into an existing `output_dir`: same-named files are replaced, files of an earlier
    layout that this one lacks (matching `layout_file_patterns`) are removed, and nothing else is touched."""
    patterns = layout_file_patterns(widget_titles)
    new_files = set(layout_files(staging))
    for name in sorted(new_files):
        target = output_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, target)
    for name in layout_files(output_dir):
        if name not in new_files and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns):
            (output_dir / name).unlink()


def save_publishing_layout(
    model: MJPViTPreTrainedModel,
    image_processor,
    output_dir: str | os.PathLike,
    *,
    card: ModelCard | None = None,
    overwrite: bool = False,
    widget_images: Mapping | None = None,
) -> Path:
    """Write the Hub layout of an MJP model into `output_dir` and return its path.

    Root: the stock-ViT export (`model.to_vit()`, safetensors, `model_type: vit`), the image processor's
    `preprocessor_config.json`, the card as `README.md` (when given) and the optional widget images under
    `widget/` (`default_widget_images(model)` when not given; `{}` for none). `MJP_SUBFOLDER`: the full MJP
    checkpoint with its code and `auto_map`, and the image processor.

    A non-empty `output_dir` is refused unless `overwrite=True`, which replaces the files the layout writes and
    removes those of an earlier layout that this one lacks (`layout_file_patterns`); any other file stays.
    """
    if not isinstance(model, MJPViTPreTrainedModel):
        raise TypeError(
            f"save_publishing_layout expects an MJP-ViT model, got {type(model).__name__}. A stock ViT needs no "
            "layout: use its own save_pretrained, or build an MJP model from it with `python -m mjp_hf.from_vit`."
        )
    if image_processor is None or not hasattr(image_processor, "save_pretrained"):
        raise TypeError(
            "save_publishing_layout needs the model's image processor (e.g. AutoImageProcessor.from_pretrained of the "
            f"training folder), got {type(image_processor).__name__}; pipeline() and the widget cannot run without it."
        )
    if card is not None and RUN_CARD_MARKER in card.text:
        raise ValueError(
            "This card describes a training run's output folder, not the publishing layout; build the layout's card "
            "with build_model_card(...) without run_dir, or with card_for_run(run_dir, model_id=...)."
        )
    output_dir = check_output_dir(output_dir, overwrite=overwrite)
    if widget_images is None:
        widget_images = default_widget_images(model)
    if isinstance(model, MJPViTForImageClassification) and all(
        re.fullmatch(r"LABEL_\d+", name) for name in _labels(model)
    ):
        logger.warning(
            "The model's id2label holds only generic names (LABEL_0, ...): pipeline() and the Hub widget will show "
            "those. Set model.config.id2label / label2id to the class names before publishing."
        )
    output_dir.parent.mkdir(parents=True, exist_ok=True)

    # Build beside the target and swap at the end, so a failure never leaves a half-written layout behind.
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        vit = model.to_vit()
        vit.save_pretrained(staging)
        image_processor.save_pretrained(staging)
        if card is not None:
            card.save(staging / "README.md")
        if widget_images:
            (staging / WIDGET_FOLDER).mkdir()
            for title, image in widget_images.items():
                image.convert("RGB").save(staging / WIDGET_FOLDER / _widget_file_name(title))

        mjp_dir = staging / MJP_SUBFOLDER
        model.save_pretrained(mjp_dir)
        image_processor.save_pretrained(mjp_dir)
        _add_auto_map_entries(mjp_dir / "config.json", model)
        # transformers fetches remote code from the repository root even when `subfolder=` is given, so
        # `from_pretrained(repo, subfolder="mjp", trust_remote_code=True)` needs the modules there too. The root
        # config has no `auto_map`: stock loading never runs them.
        for module_file in sorted(mjp_dir.glob("*.py")):
            shutil.copy2(module_file, staging / module_file.name)

        if output_dir.is_dir():
            _replace_layout_files(staging, output_dir, list(widget_images or ()))
        else:
            staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def layout_files(folder: str | os.PathLike) -> list[str]:
    """The relative paths (POSIX) of every file of a layout folder, sorted: what an upload of it sends."""
    folder = Path(folder)
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def push_mjp_model(
    model: MJPViTPreTrainedModel,
    image_processor,
    repo_id: str,
    *,
    card: ModelCard | None = None,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    widget_images: Mapping | None = None,
    revision: str | None = None,
) -> str:
    """Push an MJP model to the Hub in the layout of `save_publishing_layout`; return the commit URL.

    The repository is created if needed (`private` applies only then). Without `card` a default card is built
    (no metrics: pass a card built from the run's `all_results.json` to publish results).
    """
    if card is None:
        card = build_model_card(model, model_id=repo_id)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="mjp-hub-") as tmp:
        folder = save_publishing_layout(
            model, image_processor, Path(tmp) / "layout", card=card, widget_images=widget_images
        )
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=getattr(repo_url, "repo_id", None) or repo_id,
            folder_path=folder,
            commit_message=commit_message
            or f"Upload MJP-ViT: stock ViT at the root, full MJP model in {MJP_SUBFOLDER}/",
            revision=revision,
            # Files of an earlier push that this layout no longer has (other weights, other widget images) must not
            # linger; files the layout never writes (.gitattributes, a user's own files) are never deleted.
            delete_patterns=layout_file_patterns(list(widget_images or ())),
        )
    return commit.commit_url


# ---------------------------------------------------------------------------------------------------------------
# Training runs (the example's output folder)
# ---------------------------------------------------------------------------------------------------------------


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-run the evaluation that writes it.") from error


def _read_trainer_state(path: Path) -> TrainerState:
    try:
        return TrainerState.load_from_json(str(path))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-run the training that writes it.") from error
    except TypeError as error:  # fields this transformers version does not know
        raise ValueError(f"{path} is not a `TrainerState` this transformers version reads ({error}).") from error


def read_run_records(run_dir: str | os.PathLike) -> tuple[dict, dict]:
    """`(metrics, hyperparameters)` recorded by a training run's output folder.

    Metrics come from `all_results.json` (or `eval_results.json`). Hyper-parameters come from `training_args.json`
    (a JSON dump of the `TrainingArguments`, selected fields) and `trainer_state.json` (batch size, steps);
    `training_args.bin` is a pickle and is never read.
    """
    run_dir = Path(run_dir)
    metrics = {}
    for name in ("all_results.json", "eval_results.json"):
        if (run_dir / name).is_file():
            metrics = _read_json(run_dir / name)
            break
    hyperparameters = {}
    if (run_dir / "training_args.json").is_file():
        args = _read_json(run_dir / "training_args.json")
        hyperparameters.update(
            {key: args[key] for key in CARD_TRAINING_ARGS if args.get(key) not in (None, -1, 0.0, False)}
        )
        for key in ("num_train_epochs", "learning_rate", "seed"):
            if key in args:
                hyperparameters.setdefault(key, args[key])
    if (run_dir / "trainer_state.json").is_file():
        state = _read_trainer_state(run_dir / "trainer_state.json")
        for key, name in (
            ("train_batch_size", "train_batch_size (per device)"),
            ("global_step", "optimizer steps"),
            ("num_train_epochs", "num_train_epochs"),
        ):
            if getattr(state, key):  # None or 0: the `TrainerState` default, so the run did not record it
                hyperparameters.setdefault(name, getattr(state, key))
    return metrics, hyperparameters


def _load_run(run_dir: Path):
    from transformers import AutoImageProcessor

    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} holds no config.json; pass the output folder of a finished training run.")
    config = _read_json(run_dir / "config.json")
    if config.get("model_type") != "mjp_vit":
        raise ValueError(
            f"{run_dir}/config.json has model_type {config.get('model_type')!r}, not 'mjp_vit'; these tools publish "
            "MJP-ViT checkpoints (convert a stock ViT with `python -m mjp_hf.from_vit`)."
        )
    model_class = (
        MJPViTForImageClassification
        if "MJPViTForImageClassification" in config.get("architectures", ["MJPViTForImageClassification"])
        else MJPViTModel
    )
    model, info = model_class.from_pretrained(run_dir, output_loading_info=True)
    # Weights left at their random initialisation would be published as trained ones.
    problems = [
        f"{what} {sorted(map(str, info[key]))}"
        for key, what in (
            ("missing_keys", "missing tensors"),
            ("unexpected_keys", "unexpected tensors"),
            ("mismatched_keys", "tensors of the wrong shape"),
        )
        if info.get(key)
    ]
    if problems:
        raise ValueError(
            f"{run_dir} does not hold a complete {model_class.__name__} checkpoint: "
            + "; ".join(problems)
            + ". Publish the output folder of a finished run, or re-save the model with `save_pretrained`."
        )
    image_processor = AutoImageProcessor.from_pretrained(run_dir)
    return model.eval(), image_processor


def card_for_run(run_dir: str | os.PathLike, *, model_id: str, **card_kwargs) -> ModelCard:
    """The model card of a training run's output folder, filled from its recorded metrics and arguments."""
    run_dir = Path(run_dir)
    model, _ = _load_run(run_dir)
    metrics, hyperparameters = read_run_records(run_dir)
    # The card the training script wrote knows the dataset and the starting checkpoint.
    if (run_dir / "README.md").is_file():
        written = ModelCard.load(run_dir / "README.md").data
        if card_kwargs.get("dataset_name") is None and written.datasets:
            card_kwargs["dataset_name"] = written.datasets[0]
        if card_kwargs.get("base_model") is None and written.base_model:
            card_kwargs["base_model"] = written.base_model
        if card_kwargs.get("dataset_split") is None and written.eval_results:
            card_kwargs["dataset_split"] = written.eval_results[0].dataset_split
    card_kwargs.setdefault("metrics", metrics)
    card_kwargs.setdefault("hyperparameters", hyperparameters)
    return build_model_card(model, model_id=model_id, **card_kwargs)


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mjp_hf.hub", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    card = commands.add_parser("card", help="write the model card of a training run's output folder")
    card.add_argument("--run_dir", required=True, help="output folder of examples/run_image_classification.py")
    card.add_argument("--model_id", required=True, help="Hub repository id the card describes (org/name)")
    card.add_argument("--output", required=True, help="where to write the card, e.g. model_cards/mjp-vit-demo.md")
    card.add_argument("--overwrite", action="store_true", help="replace an existing card file")

    push = commands.add_parser("push", help="push a training run's output folder in the publishing layout")
    push.add_argument("--run_dir", required=True)
    push.add_argument("--hub_model_id", required=True)
    push.add_argument("--hub_token", default=None, help="defaults to the token of `hf auth login` / HF_TOKEN")
    push.add_argument("--hub_private_repo", action="store_true")
    push.add_argument("--card", default=None, help="a card file to publish instead of the generated one")

    layout = commands.add_parser("layout", help="write the publishing layout of a training run to a local folder")
    layout.add_argument("--run_dir", required=True)
    layout.add_argument("--output_dir", required=True)
    layout.add_argument("--model_id", required=True)
    layout.add_argument("--overwrite", action="store_true")

    for sub in (card, push, layout):
        sub.add_argument("--dataset_name", default=None, help="Hub id of the dataset (for the model-index)")
        sub.add_argument("--dataset_split", default=None)
        sub.add_argument("--base_model", default=None)
        sub.add_argument("--license", default=DEFAULT_LICENSE)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = _parse_args(argv)
    run_dir = Path(args.run_dir)
    model_id = getattr(args, "hub_model_id", None) or args.model_id
    card_kwargs = dict(
        dataset_name=args.dataset_name,
        dataset_split=args.dataset_split,
        base_model=args.base_model,
        license=args.license,
    )
    if args.command == "layout":  # before loading anything
        check_output_dir(
            args.output_dir,
            overwrite=args.overwrite,
            inputs={"--run_dir": run_dir},
            output_flag="--output_dir",
            overwrite_flag="--overwrite",
        )
    if args.command == "card":
        output = Path(args.output)
        if output.exists() and not args.overwrite:
            raise SystemExit(f"{output} exists; pass --overwrite to replace it.")
        card = card_for_run(run_dir, model_id=model_id, **card_kwargs)
        output.parent.mkdir(parents=True, exist_ok=True)
        card.save(output)
        print(f"Wrote {output}")
        return
    model, image_processor = _load_run(run_dir)
    if args.command == "push" and args.card:
        card = ModelCard.load(args.card)
    else:
        card = card_for_run(run_dir, model_id=model_id, **card_kwargs)
    if args.command == "layout":
        folder = save_publishing_layout(model, image_processor, args.output_dir, card=card, overwrite=args.overwrite)
        print(f"Wrote {folder}: " + ", ".join(layout_files(folder)))
        return
    url = push_mjp_model(
        model, image_processor, model_id, card=card, token=args.hub_token, private=args.hub_private_repo or None
    )
    print(f"Pushed {run_dir} to {model_id}: {url}")


if __name__ == "__main__":
    main()
