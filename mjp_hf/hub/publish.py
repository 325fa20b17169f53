"""The module `mjp_hf.hub` was first written as, now split by job (`card`, `layout`, `files`, `runs`, `cli`): its
names stay importable from here. New code imports from `mjp_hf.hub` or the module that defines the name."""

from .card import (  # noqa: F401
    CARD_TEMPLATE,
    DEFAULT_LICENSE,
    FASHION_MNIST_WIDGET_DIR,
    IMAGENET_WIDGET,
    MODEL_CARDS_DIR,
    NAME_ONLY_CARD_MARKER,
    RUN_CARD_MARKER,
    build_model_card,
    check_publishable,
    default_widget,
    default_widget_images,
    widget_from_images,
)
from .cli import main  # noqa: F401
from .files import (  # noqa: F401
    FASHION_MNIST_WIDGET,
    LAYOUT_CODE_FILES,
    LAYOUT_FILES,
    MJP_SUBFOLDER,
    WEIGHT_FILE_PATTERNS,
    WIDGET_FOLDER,
    check_output_dir,
    layout_file_patterns,
    layout_files,
)
from .layout import push_mjp_model, save_publishing_layout  # noqa: F401
from .runs import CARD_TRAINING_ARGS, card_for_run, read_run_records  # noqa: F401
