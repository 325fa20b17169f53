"""MJP-ViT configuration: a `ViTConfig` plus the Masked Jigsaw Puzzle (MJP) switches."""

import dataclasses
import math
from typing import Literal

from huggingface_hub.dataclasses import as_validated_field, strict
from huggingface_hub.errors import StrictDataclassError
from transformers import ViTConfig


# What a saved config.json records about its model class and writer rather than the model: never carried across a
# ViT <-> MJP conversion.
_CLASS_KEYS = ("model_type", "architectures", "auto_map", "transformers_version")


class MJPConfigError(StrictDataclassError, ValueError):
    """An invalid `MJPViTConfig` value; the message names the field, the value and the fix."""


def _checked(condition, fix: str):
    """A `huggingface_hub` validated field for finite values meeting `condition`; a failure says `fix`."""

    @as_validated_field
    def check(value) -> None:
        if any(isinstance(v, float) and not math.isfinite(v) for v in pair(value)):
            raise ValueError("pass a finite number")
        if not condition(value):
            raise ValueError(fix)

    return check


_fraction = _checked(lambda v: 0 <= v <= 1, "pass a fraction in [0, 1]")
_finite = _checked(lambda v: True, "")
_positive = _checked(lambda v: v > 0, "pass a number > 0")
_pixels = _checked(
    lambda v: len(pair(v)) == 2 and all(not isinstance(s, bool) and s >= 1 for s in pair(v)),
    "pass a whole number of pixels >= 1, or a (height, width) pair of them",
)
_block_area = _checked(lambda v: v is None or v >= 1, "pass a block area of at least 1 patch")
_aspect = _checked(lambda v: 0 < v <= 1, "pass an aspect ratio in (0, 1]; 0.3 as released")
_loss_weight = _checked(lambda v: v >= 0, "pass a weight >= 0 (0 keeps the head but adds no loss)")


@strict
class _MJPViTFields(ViTConfig):
    # ViT fields re-declared with their defaults, only to add range checks (finite floats, at least one pixel).
    hidden_dropout_prob: float | int = _fraction(default=0.0)
    attention_probs_dropout_prob: float | int = _fraction(default=0.0)
    initializer_range: float = _finite(default=0.02)
    layer_norm_eps: float = _positive(default=1e-12)
    image_size: int | list[int] | tuple[int, int] = _pixels(default=224)
    patch_size: int | list[int] | tuple[int, int] = _pixels(default=16)

    jigsaw_ratio: float | int = _fraction(default=0.1)
    jigsaw_prob: float | int = _fraction(default=0.5)
    jigsaw_min_block: int = _block_area(default=8)
    jigsaw_max_block: int | None = _block_area(default=None)
    jigsaw_min_aspect: float | int = _aspect(default=0.3)
    jigsaw_per_sample: bool = False
    jigsaw_mode: Literal["mjp", "naive"] = "mjp"
    use_unk_position_embedding: bool = True
    dalr_head: Literal["nonlinear", "linear", "none"] = "nonlinear"
    dalr_loss_weight: float | int = _loss_weight(default=0.01)
    dalr_normalize_targets: bool = False

    def validate_patch_grid(self) -> None:
        """The image holds at least one patch in each direction."""
        image_size, patch_size = pair(self.image_size), pair(self.patch_size)
        if image_size[0] < patch_size[0] or image_size[1] < patch_size[1]:
            raise MJPConfigError(
                f"MJPViTConfig: `image_size={self.image_size!r}` is smaller than one patch (`patch_size="
                f"{self.patch_size!r}`); pass an image_size of at least the patch size."
            )

    def validate_checked_fields(self) -> None:
        """The checks of assignment, again: a value that bypassed them never reaches a config.json."""
        for name in _MJPViTFields.__annotations__:
            setattr(self, name, getattr(self, name))


class MJPViTConfig(_MJPViTFields):
    r"""
    Configuration of a Vision Transformer trained with Masked Jigsaw Puzzle position embeddings
    (Ren et al., "Masked Jigsaw Puzzle: A Versatile Position Embedding for Vision Transformers", CVPR 2023).

    Every `ViTConfig` argument keeps its meaning. The defaults of the added arguments are the authors' released
    recipe (ViT-S/16, `train.sh`).

    `@strict` checks every value when it is set (at construction, by assignment, and by `from_pretrained(...,
    **kwargs)`), and all of them again in `validate()`, which `save_pretrained` runs: an invalid value raises an
    `MJPConfigError` (a `ValueError`) naming the field, the value and the fix. Floats must be finite.

    Args:
        jigsaw_ratio (`float`, *optional*, defaults to 0.1):
            Fraction of the patch grid selected for the jigsaw (the paper's shuffle ratio gamma); `int(num_patches *
            jigsaw_ratio)` patches are targeted, in [0, 1].
        jigsaw_prob (`float`, *optional*, defaults to 0.5):
            Chance that a training step is jigsawed, in [0, 1].
        jigsaw_min_block (`int`, *optional*, defaults to 8):
            Smallest area, in patches, of one rectangular block of the block-wise mask.
        jigsaw_max_block (`int`, *optional*):
            Largest area of one block. `None` keeps the released cap of 75 patches on a 14x14 grid, scaled to the
            grid in use (`round(num_patches * 75 / 196)`).
        jigsaw_min_aspect (`float`, *optional*, defaults to 0.3):
            Smallest aspect ratio of a block; the largest is its inverse. Aspects are drawn log-uniformly.
        jigsaw_per_sample (`bool`, *optional*, defaults to `False`):
            `False`: one mask and one permutation for the whole batch, as released. `True`: an independent mask,
            permutation and jigsaw decision for every sample.
        jigsaw_mode (`str`, *optional*, defaults to `"mjp"`):
            `"mjp"`: block-wise jigsaw of the selected patches. `"naive"`: the paper's naive-shuffle ablation, every
            patch shuffled and the pixels inside every patch permuted by one shared permutation, with no unknown
            position embedding and the localization loss over all positions.
        use_unk_position_embedding (`bool`, *optional*, defaults to `True`):
            Replace the position embedding of every shuffled patch by one learnable "unknown" position embedding
            (the masked position embedding of MJP). Used in `"mjp"` mode only.
        dalr_head (`str`, *optional*, defaults to `"nonlinear"`):
            The dense absolute localization regressor (DALR) that maps each position embedding to its (row, col):
            `"nonlinear"` (Linear-ReLU-Linear, as released), `"linear"`, or `"none"` (no head, no loss).
        dalr_loss_weight (`float`, *optional*, defaults to 0.01):
            Weight of the DALR L1 loss added to the classification loss, >= 0.
        dalr_normalize_targets (`bool`, *optional*, defaults to `False`):
            `False`: regress raw grid coordinates (0 .. grid - 1), as released. `True`: divide them by the grid size.

    Example:

    ```python
    >>> from mjp_hf import MJPViTConfig, MJPViTForImageClassification

    >>> config = MJPViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536)
    >>> model = MJPViTForImageClassification(config)
    ```"""

    # `@strict` (on the parent, which declares the fields) reports a failed check as a `StrictDataclassError`, no
    # `ValueError`; this class raises it again as an `MJPConfigError`, which is both, naming the field and value.
    model_type = "mjp_vit"

    def __setattr__(self, name, value):
        try:
            super().__setattr__(name, value)
        except StrictDataclassError as error:
            raise MJPConfigError(f"MJPViTConfig: `{name}={value!r}` is invalid; {error.__cause__}.") from error

    def validate(self) -> None:
        try:
            super().validate()
        except StrictDataclassError as error:
            cause = error.__cause__
            raise cause if isinstance(cause, MJPConfigError) else MJPConfigError(str(cause)) from error

    def check_mjp_fields(self) -> None:
        """Same as `validate()`."""
        self.validate()

    def __post_init__(self, **kwargs):
        # A config read from a stock ViT folder (to fine-tune it with MJP) carries `model_type: vit`.
        kwargs.pop("model_type", None)
        super().__post_init__(**kwargs)
        self.validate()

    @classmethod
    def from_dict(cls, config_dict, **kwargs):
        # Keyword arguments are assigned one by one after construction, each checked: check their combination too.
        result = super().from_dict(config_dict, **kwargs)
        (result[0] if isinstance(result, tuple) else result).validate()
        return result

    @classmethod
    def from_vit_config(cls, vit_config: ViTConfig, **mjp_settings) -> "MJPViTConfig":
        """An `MJPViTConfig` with every field of `vit_config` and the given MJP settings (`None` or absent: the
        release's defaults)."""
        unknown = sorted(set(mjp_settings) - set(MJP_CONFIG_FIELDS))
        if unknown:
            raise ValueError(f"Unknown MJP settings {unknown}; choose from {list(MJP_CONFIG_FIELDS)}.")
        fields = {key: value for key, value in vit_config.to_dict().items() if key not in _CLASS_KEYS}
        return cls(**fields, **{key: value for key, value in mjp_settings.items() if value is not None})

    def to_vit_config(self) -> ViTConfig:
        """The stock `ViTConfig` of this model without the MJP fields (what `to_vit()` exports)."""
        dropped = set(MJP_CONFIG_FIELDS) | set(_CLASS_KEYS)
        vit_config = ViTConfig(**{key: value for key, value in self.to_dict().items() if key not in dropped})
        vit_config._attn_implementation = self._attn_implementation
        return vit_config

    @property
    def applies_unk_position_embedding(self) -> bool:
        """Whether shuffled positions get the unknown position embedding (only the block-wise "mjp" mode has it)."""
        return self.use_unk_position_embedding and self.jigsaw_mode == "mjp"


def pair(value) -> tuple[int, int]:
    """`(height, width)` of an `image_size` or `patch_size` given as one number or as a pair."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def patch_grid(config) -> tuple[tuple[int, int], tuple[int, int]]:
    """`(grid_size, patch_size)` of a ViT config, in patches and pixels."""
    (image_h, image_w), (patch_h, patch_w) = pair(config.image_size), pair(config.patch_size)
    return (image_h // patch_h, image_w // patch_w), (patch_h, patch_w)


# The fields this config adds to `ViTConfig` (not those it re-declares to check them); `to_vit_config()` drops these.
MJP_CONFIG_FIELDS = tuple(
    field.name for field in dataclasses.fields(MJPViTConfig) if field.name not in ViTConfig.__dataclass_fields__
)

__all__ = ["MJPConfigError", "MJPViTConfig"]
