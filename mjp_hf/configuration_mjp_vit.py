"""MJP-ViT configuration: a `ViTConfig` plus the Masked Jigsaw Puzzle (MJP) switches."""

import dataclasses
import math
from typing import Literal

from huggingface_hub.dataclasses import as_validated_field, strict
from huggingface_hub.errors import StrictDataclassError
from transformers import ViTConfig


# What a config.json records about the class and the writer, not the model: never carried across ViT <-> MJP.
_CLASS_KEYS = ("model_type", "architectures", "auto_map", "transformers_version")
JIGSAW_MODES, DALR_HEADS = ("mjp", "naive"), ("nonlinear", "linear", "none")  # the choices of two fields below


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
    initializer_range: float = _checked(lambda v: True, "")(default=0.02)  # finite
    layer_norm_eps: float = _positive(default=1e-12)
    image_size: int | list[int] | tuple[int, int] = _pixels(default=224)
    patch_size: int | list[int] | tuple[int, int] = _pixels(default=16)

    jigsaw_ratio: float | int = _fraction(default=0.1)
    jigsaw_prob: float | int = _fraction(default=0.5)
    jigsaw_min_block: int = _block_area(default=8)
    jigsaw_max_block: int | None = _block_area(default=None)
    jigsaw_min_aspect: float | int = _aspect(default=0.3)
    jigsaw_per_sample: bool = False
    jigsaw_mode: Literal[JIGSAW_MODES] = "mjp"
    use_unk_position_embedding: bool = True
    dalr_head: Literal[DALR_HEADS] = "nonlinear"
    dalr_loss_weight: float | int = _loss_weight(default=0.01)
    dalr_normalize_targets: bool = False

    def validate_patch_grid(self) -> None:
        """The image holds at least one patch in each direction."""
        if any(image < patch for image, patch in zip(pair(self.image_size), pair(self.patch_size))):
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
    A `ViTConfig` plus the switches of Masked Jigsaw Puzzle position embeddings (Ren et al., "Masked Jigsaw Puzzle: A
    Versatile Position Embedding for Vision Transformers", CVPR 2023); the added arguments default to the authors'
    released recipe (ViT-S/16, `train.sh`). Every value is checked when set (at construction, by assignment, by
    `from_pretrained(..., **kwargs)`) and again by `validate()`, which `save_pretrained` runs: an invalid one raises an
    `MJPConfigError` (a `ValueError`) naming the field, the value and the fix. Floats must be finite.

    Args:
        jigsaw_ratio (`float`, *optional*, defaults to 0.1):
            The paper's shuffle ratio gamma, in [0, 1]: `int(num_patches * jigsaw_ratio)` patches are targeted.
        jigsaw_prob (`float`, *optional*, defaults to 0.5):
            Chance that a training step is jigsawed, in [0, 1].
        jigsaw_min_block (`int`, *optional*, defaults to 8):
            Smallest area, in patches, of one rectangular block of the block-wise mask.
        jigsaw_max_block (`int`, *optional*):
            Largest area of one block; `None`: the released cap of 75 of 196 patches, scaled to the grid in use.
        jigsaw_min_aspect (`float`, *optional*, defaults to 0.3):
            Smallest aspect ratio of a block (the largest is its inverse); aspects are drawn log-uniformly.
        jigsaw_per_sample (`bool`, *optional*, defaults to `False`):
            A mask, permutation and jigsaw decision per sample, instead of one for the whole batch as released.
        jigsaw_mode (`str`, *optional*, defaults to `"mjp"`):
            `"mjp"`: the block-wise jigsaw. `"naive"`: the paper's naive-shuffle ablation, every patch shuffled and
            the pixels in every patch permuted alike, with no unknown position embedding and the DALR over all.
        use_unk_position_embedding (`bool`, *optional*, defaults to `True`):
            Give every shuffled patch one learnable "unknown" position embedding instead of its own (`"mjp"` only).
        dalr_head (`str`, *optional*, defaults to `"nonlinear"`):
            The dense absolute localization regressor from a position embedding to its (row, col): `"nonlinear"`
            (Linear-ReLU-Linear, as released), `"linear"`, or `"none"` (no head, no loss).
        dalr_loss_weight (`float`, *optional*, defaults to 0.01):
            Weight of the DALR L1 loss added to the classification loss, >= 0.
        dalr_normalize_targets (`bool`, *optional*, defaults to `False`):
            Regress coordinates divided by the grid size, instead of the raw 0 .. grid - 1 as released.
    """

    # `@strict` (on the parent) raises a `StrictDataclassError`, no `ValueError`: re-raised as an `MJPConfigError` (both).
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

    check_mjp_fields = validate  # its name before the checks moved into `@strict`

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
        """`vit_config`'s fields and the given MJP settings (`None` or absent: the release's defaults)."""
        if unknown := sorted(set(mjp_settings) - set(MJP_CONFIG_FIELDS)):
            raise ValueError(f"Unknown MJP settings {unknown}; choose from {list(MJP_CONFIG_FIELDS)}.")
        fields = {key: value for key, value in vit_config.to_dict().items() if key not in _CLASS_KEYS}
        return cls(**fields, **{key: value for key, value in mjp_settings.items() if value is not None})

    def to_vit_config(self) -> ViTConfig:
        """The stock `ViTConfig` of this model without the MJP fields (what `to_vit()` exports)."""
        vit_config = ViTConfig(**{k: v for k, v in self.to_dict().items() if k not in MJP_CONFIG_FIELDS + _CLASS_KEYS})
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
