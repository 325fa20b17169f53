"""Publishing MJP-ViT on the Hugging Face Hub (`publish`): the two-checkpoint repository layout (a stock ViT at the
root, the full MJP checkpoint under `mjp/`), model cards, and the push. `python -m mjp_hf.hub --help` lists the
command-line tools."""

from .publish import (
    MJP_SUBFOLDER,
    MODEL_CARDS_DIR,
    build_model_card,
    card_for_run,
    check_output_dir,
    layout_files,
    push_mjp_model,
    read_run_records,
    save_publishing_layout,
)


__all__ = [
    "MJP_SUBFOLDER",
    "MODEL_CARDS_DIR",
    "build_model_card",
    "card_for_run",
    "check_output_dir",
    "layout_files",
    "push_mjp_model",
    "read_run_records",
    "save_publishing_layout",
]
