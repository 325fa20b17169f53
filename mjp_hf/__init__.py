"""mjp-hf: Masked Jigsaw Puzzle position embeddings for transformers Vision Transformers.

Importing the package registers `MJPViTConfig` (model type `mjp_vit`) and its models with the Auto classes, so
`AutoModel`, `AutoModelForImageClassification` and `pipeline("image-classification")` load MJP-ViT folders.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    ViTImageProcessorPil,
)

from .configuration_mjp_vit import MJPViTConfig
from .modeling_mjp_vit import (
    MJPImageClassifierOutput,
    MJPViTForImageClassification,
    MJPViTModel,
    MJPViTModelOutput,
    MJPViTPreTrainedModel,
)


__version__ = "0.1.0"

AutoConfig.register(MJPViTConfig.model_type, MJPViTConfig, exist_ok=True)
AutoModel.register(MJPViTConfig, MJPViTModel, exist_ok=True)
AutoModelForImageClassification.register(MJPViTConfig, MJPViTForImageClassification, exist_ok=True)
AutoImageProcessor.register(MJPViTConfig, image_processor_classes={"pil": ViTImageProcessorPil}, exist_ok=True)

# `save_pretrained` copies the configuration and modeling code beside the weights and writes `auto_map`, so a
# process without mjp_hf loads the folder with `trust_remote_code=True`.
MJPViTConfig.register_for_auto_class()
MJPViTModel.register_for_auto_class("AutoModel")
MJPViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

# Modules that moved into the subpackages: their old import paths, and `python -m` of the old command paths, keep
# working (with a DeprecationWarning naming the new path).
_MOVED_MODULES = {
    "mjp_hf.augmentation": "mjp_hf.data.augmentation",
    "mjp_hf.convert_original": "mjp_hf.conversion.original",
    "mjp_hf.from_vit": "mjp_hf.conversion.from_vit",
    "mjp_hf.metrics": "mjp_hf.evaluation.metrics",
    "mjp_hf.mixup": "mjp_hf.data.mixup",
    "mjp_hf.presets": "mjp_hf.training.presets",
    "mjp_hf.rand_augment": "mjp_hf.data.rand_augment",
    "mjp_hf.threads": "mjp_hf.training.threads",
    "mjp_hf.transforms": "mjp_hf.data.transforms",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module at its new path (the same module object)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in _MOVED_MODULES else None

    def create_module(self, spec):
        new_name = _MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} moved to {new_name}; import it from there.", DeprecationWarning, stacklevel=3)
        return importlib.import_module(new_name)

    def exec_module(self, module):
        pass  # the module at the new path is already executed

    def get_code(self, name):
        # `python -m <old path>` (runpy reads the code of the spec): run the new path as the main module.
        source = f"import runpy; runpy.run_module({_MOVED_MODULES[name]!r}, run_name='__main__', alter_sys=True)"
        return compile(source, f"<{name}, moved to {_MOVED_MODULES[name]}>", "exec")


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())

__all__ = [
    "MJPImageClassifierOutput",
    "MJPViTConfig",
    "MJPViTForImageClassification",
    "MJPViTModel",
    "MJPViTModelOutput",
    "MJPViTPreTrainedModel",
]
