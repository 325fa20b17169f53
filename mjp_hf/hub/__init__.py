"""Publishing MJP-ViT on the Hugging Face Hub: the two-checkpoint repository layout (a stock ViT at the root, the
full MJP checkpoint under `mjp/`) and its push (`layout`), model cards (`card`), a training run's folder (`runs`),
the files and how a folder of them is written safely (`files`). `python -m mjp_hf.hub --help` lists the
command-line tools (`cli`)."""

from .card import MODEL_CARDS_DIR, build_model_card, check_repo_id, placeholder_repo_id, push_repo_id
from .files import MJP_SUBFOLDER, check_output_dir, layout_files
from .layout import push_mjp_model, save_publishing_layout
from .runs import card_for_run, read_run_records


def __getattr__(name: str):
    """The names of `mjp_hf.hub` as the single module it was before the split (`publish` keeps them all)."""
    import importlib

    publish = importlib.import_module(f"{__name__}.publish")  # not `from . import`, which asks this function first
    try:
        return getattr(publish, name)
    except AttributeError:
        raise AttributeError(f"module 'mjp_hf.hub' has no attribute {name!r}") from None


__all__ = [
    "MJP_SUBFOLDER",
    "MODEL_CARDS_DIR",
    "build_model_card",
    "card_for_run",
    "check_output_dir",
    "check_repo_id",
    "layout_files",
    "placeholder_repo_id",
    "push_mjp_model",
    "push_repo_id",
    "read_run_records",
    "save_publishing_layout",
]
