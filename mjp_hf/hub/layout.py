"""The two-checkpoint publishing layout of an MJP-ViT, written to a local folder or pushed to the Hub.

A published repository holds two checkpoints of the same network:

- the **root** is the stock-ViT export (`model.to_vit()`, `model_type: vit`): what `AutoModel*`, `pipeline`, the
  inference widget and serving stacks that never run remote code load;
- the subfolder `MJP_SUBFOLDER` is the full MJP checkpoint (unknown position embedding, DALR head, model code and
  `auto_map`), from which training continues with `mjp_hf` or `trust_remote_code=True`.

Both compute the same logits in evaluation mode.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from huggingface_hub import HfApi, ModelCard

from ..modeling_mjp_vit import MJPViTForImageClassification, MJPViTPreTrainedModel, mjp_auto_map
from .card import _labels, build_model_card, check_publishable, check_repo_id, default_widget_images
from .files import (
    MJP_SUBFOLDER,
    WIDGET_FOLDER,
    check_output_dir,
    layout_file_patterns,
    staged_folder,
    widget_file_name,
)


logger = logging.getLogger(__name__)


def _add_auto_map_entries(config_path: Path, model: MJPViTPreTrainedModel) -> None:
    """`save_pretrained` lists only the saved class and the config in `auto_map`; a classifier checkpoint also
    serves `AutoModel` (the encoder without its head), so list it too."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = mjp_auto_map(model, config.get("auto_map"))
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_publishing_inputs(model, image_processor, card: ModelCard | None) -> None:
    if not isinstance(model, MJPViTPreTrainedModel):
        raise TypeError(
            f"save_publishing_layout expects an MJP-ViT model, got {type(model).__name__}. A stock ViT needs no "
            "layout: use its own save_pretrained, or build an MJP model from it with `python -m mjp_hf.conversion.from_vit`."
        )
    if image_processor is None or not hasattr(image_processor, "save_pretrained"):
        raise TypeError(
            "save_publishing_layout needs the model's image processor (e.g. AutoImageProcessor.from_pretrained of the "
            f"training folder), got {type(image_processor).__name__}; pipeline() and the widget cannot run without it."
        )
    if card is not None:
        check_publishable(card)
    if isinstance(model, MJPViTForImageClassification) and all(
        re.fullmatch(r"LABEL_\d+", name) for name in _labels(model)
    ):
        logger.warning(
            "The model's id2label holds only generic names (LABEL_0, ...): pipeline() and the Hub widget will show "
            "those. Set model.config.id2label / label2id to the class names before publishing."
        )


def _write_layout(folder: Path, model, image_processor, card: ModelCard | None, widget_images: Mapping | None):
    model.to_vit().save_pretrained(folder)
    image_processor.save_pretrained(folder)
    if card is not None:
        card.save(folder / "README.md")
    if widget_images:
        (folder / WIDGET_FOLDER).mkdir()
        for title, image in widget_images.items():
            image.convert("RGB").save(folder / WIDGET_FOLDER / widget_file_name(title))
    mjp_dir = folder / MJP_SUBFOLDER
    model.save_pretrained(mjp_dir)
    image_processor.save_pretrained(mjp_dir)
    _add_auto_map_entries(mjp_dir / "config.json", model)
    # transformers fetches remote code from the repository root even when `subfolder=` is given, so
    # `from_pretrained(repo, subfolder="mjp", trust_remote_code=True)` needs the modules there too. The root
    # config has no `auto_map`: stock loading never runs them.
    for module_file in sorted(mjp_dir.glob("*.py")):
        shutil.copy2(module_file, folder / module_file.name)


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
    removes those of an earlier layout that this one lacks (`layout_file_patterns`); any other file stays. The
    layout is built in a hidden folder beside `output_dir` and moved in at the end (`files.staged_folder`): a
    failure leaves `output_dir` as it was.
    """
    _check_publishing_inputs(model, image_processor, card)
    output_dir = check_output_dir(output_dir, overwrite=overwrite)
    if widget_images is None:
        widget_images = default_widget_images(model)
    patterns = layout_file_patterns(list(widget_images or ()))
    with staged_folder(output_dir, overwrite=overwrite, patterns=patterns) as staging:
        _write_layout(staging, model, image_processor, card, widget_images)
    return output_dir


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
    (no metrics: pass a card built from the run's `all_results.json` to publish results). `repo_id` and the card
    are checked before anything is built or sent; the token goes to `HfApi` only, never into a file or a message.
    """
    check_repo_id(repo_id, "--hub_model_id (push_mjp_model's repo_id)")
    if card is None:
        card = build_model_card(model, model_id=repo_id)
    check_publishable(card)
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
