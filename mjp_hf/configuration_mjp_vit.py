"""MJP-ViT configuration: a `ViTConfig` plus the Masked Jigsaw Puzzle (MJP) switches."""

from huggingface_hub.dataclasses import strict
from transformers import ViTConfig

JIGSAW_MODES = ("mjp", "naive")
DALR_HEADS = ("nonlinear", "linear", "none")

# Names of the fields this config adds to `ViTConfig`; `to_vit()` drops exactly these.
MJP_CONFIG_FIELDS = (
    "jigsaw_ratio",
    "jigsaw_prob",
    "jigsaw_min_block",
    "jigsaw_max_block",
    "jigsaw_min_aspect",
    "jigsaw_per_sample",
    "jigsaw_mode",
    "use_unk_position_embedding",
    "dalr_head",
    "dalr_loss_weight",
    "dalr_normalize_targets",
)


@strict
class MJPViTConfig(ViTConfig):
    r"""
    Configuration of a Vision Transformer trained with Masked Jigsaw Puzzle position embeddings
    (Ren et al., "Masked Jigsaw Puzzle: A Versatile Position Embedding for Vision Transformers", CVPR 2023).

    Every `ViTConfig` argument keeps its meaning. The defaults of the added arguments are the authors' released
    recipe (ViT-S/16, `train.sh`).

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

    model_type = "mjp_vit"

    jigsaw_ratio: float | int = 0.1
    jigsaw_prob: float | int = 0.5
    jigsaw_min_block: int = 8
    jigsaw_max_block: int | None = None
    jigsaw_min_aspect: float | int = 0.3
    jigsaw_per_sample: bool = False
    jigsaw_mode: str = "mjp"
    use_unk_position_embedding: bool = True
    dalr_head: str = "nonlinear"
    dalr_loss_weight: float | int = 0.01
    dalr_normalize_targets: bool = False

    def __post_init__(self, **kwargs):
        # A config read from a stock ViT folder (to fine-tune it with MJP) carries `model_type: vit`.
        kwargs.pop("model_type", None)
        self.check_mjp_fields()
        super().__post_init__(**kwargs)

    def check_mjp_fields(self) -> None:
        """Raise a `ValueError` naming the first MJP field out of range; run at construction, and again by whoever
        sets fields afterwards."""

        def fail(name, value, expected):
            raise ValueError(f"MJPViTConfig: `{name}={value!r}` is invalid; {expected}.")

        for name in ("jigsaw_ratio", "jigsaw_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                fail(name, value, "pass a fraction in [0, 1]")
        if self.jigsaw_min_block < 1:
            fail("jigsaw_min_block", self.jigsaw_min_block, "pass a block area of at least 1 patch")
        if self.jigsaw_max_block is not None and self.jigsaw_max_block < 1:
            fail("jigsaw_max_block", self.jigsaw_max_block, "pass a block area of at least 1 patch, or None")
        if not 0 < self.jigsaw_min_aspect <= 1:
            fail("jigsaw_min_aspect", self.jigsaw_min_aspect, "pass an aspect ratio in (0, 1]; 0.3 as released")
        if self.jigsaw_mode not in JIGSAW_MODES:
            fail("jigsaw_mode", self.jigsaw_mode, f"choose one of {JIGSAW_MODES}")
        if self.dalr_head not in DALR_HEADS:
            fail("dalr_head", self.dalr_head, f"choose one of {DALR_HEADS}")
        if self.dalr_loss_weight < 0:
            fail("dalr_loss_weight", self.dalr_loss_weight, "pass a weight >= 0 (0 keeps the head but adds no loss)")

    @property
    def applies_unk_position_embedding(self) -> bool:
        """Whether shuffled positions get the unknown position embedding (only the block-wise "mjp" mode has it)."""
        return self.use_unk_position_embedding and self.jigsaw_mode == "mjp"


__all__ = ["MJPViTConfig"]
