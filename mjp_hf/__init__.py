"""mjp-hf: Masked Jigsaw Puzzle position embeddings for transformers Vision Transformers.

Importing the package registers `MJPViTConfig` (model type `mjp_vit`) and its models with the Auto classes, so
`AutoModel`, `AutoModelForImageClassification` and `pipeline("image-classification")` load MJP-ViT folders.
"""

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

__all__ = [
    "MJPImageClassifierOutput",
    "MJPViTConfig",
    "MJPViTForImageClassification",
    "MJPViTModel",
    "MJPViTModelOutput",
    "MJPViTPreTrainedModel",
]
