import re

import pytest
from transformers import AutoConfig, ViTConfig

from mjp_hf import MJPViTConfig
from mjp_hf.configuration_mjp_vit import MJP_CONFIG_FIELDS, MJPConfigError


def test_defaults_are_the_released_recipe():
    config = MJPViTConfig()
    assert isinstance(config, ViTConfig)
    assert config.model_type == "mjp_vit"
    assert (config.jigsaw_ratio, config.jigsaw_prob) == (0.1, 0.5)
    assert (config.jigsaw_min_block, config.jigsaw_max_block, config.jigsaw_min_aspect) == (8, None, 0.3)
    assert config.jigsaw_per_sample is False and config.jigsaw_mode == "mjp"
    assert config.use_unk_position_embedding is True and config.applies_unk_position_embedding
    assert (config.dalr_head, config.dalr_loss_weight, config.dalr_normalize_targets) == ("nonlinear", 0.01, False)


def test_integer_values_are_accepted_for_float_fields():
    config = MJPViTConfig(jigsaw_ratio=0, jigsaw_prob=1, dalr_loss_weight=0)
    assert config.jigsaw_ratio == 0 and config.jigsaw_prob == 1


@pytest.mark.parametrize(
    "field, value",
    [
        ("jigsaw_ratio", 1.5),
        ("jigsaw_ratio", -0.1),
        ("jigsaw_prob", 2),
        ("jigsaw_min_block", 0),
        ("jigsaw_max_block", 0),
        ("jigsaw_min_aspect", 0),
        ("jigsaw_min_aspect", 3.0),
        ("jigsaw_mode", "shuffle"),
        ("dalr_head", "mlp"),
        ("dalr_loss_weight", -0.01),
    ],
)
def test_out_of_range_values_name_the_field_and_the_value(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value!r}"):
        MJPViTConfig(**{field: value})


def test_naive_mode_has_no_unknown_embedding():
    assert not MJPViTConfig(jigsaw_mode="naive").applies_unk_position_embedding
    assert not MJPViTConfig(use_unk_position_embedding=False).applies_unk_position_embedding


def test_round_trip_through_auto_config(tmp_path):
    config = MJPViTConfig(jigsaw_ratio=0.25, jigsaw_per_sample=True, dalr_head="linear", num_labels=3)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is MJPViTConfig
    for field in MJP_CONFIG_FIELDS:
        assert getattr(loaded, field) == getattr(config, field)
    assert loaded.num_labels == 3


def test_mjp_fields_are_the_added_ones_not_the_redeclared_vit_ones():
    assert MJP_CONFIG_FIELDS == (
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
    # Re-declared with range checks, still ViT fields: a ViT export keeps them.
    assert not {"image_size", "patch_size", "hidden_dropout_prob", "layer_norm_eps"} & set(MJP_CONFIG_FIELDS)


def test_vit_config_conversion_round_trips():
    vit_config = ViTConfig(image_size=32, patch_size=4, hidden_size=48, num_labels=3, architectures=["ViTModel"])
    config = MJPViTConfig.from_vit_config(vit_config, jigsaw_ratio=0.25, dalr_head=None)
    assert (config.jigsaw_ratio, config.dalr_head, config.architectures) == (0.25, "nonlinear", None)
    back = config.to_vit_config()
    assert type(back) is ViTConfig and not any(hasattr(back, field) for field in MJP_CONFIG_FIELDS)
    assert (back.image_size, back.patch_size, back.hidden_size, back.num_labels) == (32, 4, 48, 3)
    with pytest.raises(ValueError, match="jigsaw_raito"):
        MJPViTConfig.from_vit_config(vit_config, jigsaw_raito=0.2)


# --- validation through the @strict machinery: every path that sets a value --------------------------------------

BAD_VALUES = [
    ("jigsaw_ratio", 3.0, r"pass a fraction in \[0, 1\]"),
    ("jigsaw_prob", float("nan"), "finite"),
    ("dalr_loss_weight", float("nan"), "finite"),
    ("dalr_loss_weight", float("inf"), "finite"),
    ("jigsaw_min_aspect", float("nan"), "finite"),
    ("hidden_dropout_prob", float("nan"), "finite"),
    ("layer_norm_eps", float("inf"), "finite"),
    ("initializer_range", float("nan"), "finite"),
    ("patch_size", 0, "at least|>= 1"),
    ("image_size", [224, 0], ">= 1"),
    ("jigsaw_mode", "shuffle", r"'mjp', 'naive'"),
    ("dalr_head", "mlp", r"'nonlinear', 'linear', 'none'"),
    ("jigsaw_ratio", "0.1", "expected float"),
]


@pytest.mark.parametrize("field, value, fix", BAD_VALUES)
def test_assignment_after_construction_is_checked(field, value, fix):
    config = MJPViTConfig()
    before = getattr(config, field)
    with pytest.raises(MJPConfigError, match=rf"`{field}={re.escape(repr(value))}` is invalid; .*({fix})"):
        setattr(config, field, value)
    assert getattr(config, field) == before  # the bad value was never stored
    with pytest.raises(ValueError):  # an MJPConfigError is a ValueError, as Python code expects of a bad value
        MJPViTConfig(**{field: value})


@pytest.mark.parametrize("field, value, fix", BAD_VALUES)
def test_from_pretrained_keyword_arguments_are_checked(tmp_path, field, value, fix):
    MJPViTConfig(num_labels=3).save_pretrained(tmp_path)
    for loader in (MJPViTConfig.from_pretrained, AutoConfig.from_pretrained):
        with pytest.raises(MJPConfigError, match=rf"`{field}={re.escape(repr(value))}` is invalid"):
            loader(tmp_path, **{field: value})


def test_model_from_pretrained_checks_config_keyword_arguments(tmp_path):
    from mjp_hf import MJPViTForImageClassification

    config = MJPViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_labels=3,
    )
    MJPViTForImageClassification(config).save_pretrained(tmp_path)
    with pytest.raises(MJPConfigError, match=r"`jigsaw_ratio=3.0` is invalid"):
        MJPViTForImageClassification.from_pretrained(tmp_path, jigsaw_ratio=3.0)
    with pytest.raises(MJPConfigError, match=r"`image_size=16` is smaller than one patch \(`patch_size=32`\)"):
        MJPViTConfig.from_pretrained(tmp_path, patch_size=32)


def test_image_smaller_than_one_patch_is_refused():
    with pytest.raises(MJPConfigError, match=r"`image_size=8` is smaller than one patch \(`patch_size=16`\)"):
        MJPViTConfig(image_size=8, patch_size=16)
    with pytest.raises(MJPConfigError, match=r"smaller than one patch"):
        MJPViTConfig(image_size=[32, 8], patch_size=16)
    config = MJPViTConfig(image_size=32, patch_size=16)
    config.image_size = 8  # a combination is checked by validate(), which save_pretrained runs
    with pytest.raises(MJPConfigError, match="smaller than one patch"):
        config.validate()


def test_an_invalid_value_never_reaches_a_config_json(tmp_path):
    config = MJPViTConfig()
    object.__setattr__(config, "dalr_loss_weight", float("nan"))  # bypasses the assignment check
    with pytest.raises(MJPConfigError, match=r"`dalr_loss_weight=nan` is invalid; pass a finite number"):
        config.save_pretrained(tmp_path)
    with pytest.raises(MJPConfigError, match="dalr_loss_weight=nan"):
        config.check_mjp_fields()
    assert not (tmp_path / "config.json").exists()


def test_valid_values_still_round_trip(tmp_path):
    config = MJPViTConfig(
        jigsaw_ratio=1,
        jigsaw_prob=0.0,
        image_size=[32, 48],
        patch_size=16,
        jigsaw_max_block=3,
        jigsaw_mode="naive",
        dalr_head="none",
        dalr_loss_weight=0,
        layer_norm_eps=1e-6,
    )
    config.jigsaw_ratio = 0.5
    config.save_pretrained(tmp_path)
    loaded = MJPViTConfig.from_pretrained(tmp_path, jigsaw_prob=1.0)
    assert (loaded.jigsaw_ratio, loaded.jigsaw_prob, loaded.image_size) == (0.5, 1.0, [32, 48])


def test_the_choice_constants_of_the_released_config_module_still_import():
    """`JIGSAW_MODES` and `DALR_HEADS` (public in the config module before the redesign) are the fields' choices."""
    from mjp_hf.configuration_mjp_vit import DALR_HEADS, JIGSAW_MODES

    for name, choices in (("jigsaw_mode", JIGSAW_MODES), ("dalr_head", DALR_HEADS)):
        for choice in choices:
            assert getattr(MJPViTConfig(**{name: choice}), name) == choice
        with pytest.raises(ValueError, match=name):
            MJPViTConfig(**{name: "another"})
    assert JIGSAW_MODES == ("mjp", "naive") and DALR_HEADS == ("nonlinear", "linear", "none")
