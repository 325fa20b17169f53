"""Named MJP-ViT shapes: the DeiT family the paper trains, and a CPU-sized demo for the embedded default data."""

from ..configuration_mjp_vit import MJPViTConfig


# DeiT shapes (Touvron et al. 2021): patch 16 at 224, MLP ratio 4, LayerNorm eps 1e-6 as in timm and the release.
_DEIT = dict(image_size=224, patch_size=16, num_channels=3, layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True)

PRESETS: dict[str, dict] = {
    "tiny": dict(_DEIT, hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
    "small": dict(_DEIT, hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": dict(_DEIT, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    # Fashion-MNIST on a 2-core CPU (the example's demo recipe): 28x28 images (converted to RGB so that any image,
    # and the Hub widget, can be fed to it) cut into 4x4 patches, a 7x7 grid on which the jigsaw still means
    # something. Width 48 with an MLP ratio of 2, chosen over width 64 with ratio 4, which learned no faster per
    # epoch at a larger cost per step; the block mask's smallest block scales with the grid like the largest (8 of
    # 196 -> 2 of 49).
    "demo": dict(
        image_size=28,
        patch_size=4,
        num_channels=3,
        hidden_size=48,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=96,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        jigsaw_min_block=2,
    ),
}


def config_from_preset(name: str, **overrides) -> MJPViTConfig:
    """An `MJPViTConfig` of the named shape; keyword arguments override any field."""
    if name not in PRESETS:
        raise ValueError(f"Unknown MJP-ViT preset {name!r}; choose one of {sorted(PRESETS)}.")
    return MJPViTConfig(**{**PRESETS[name], **overrides})
