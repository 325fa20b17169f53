import pytest
from transformers import AutoConfig, ViTConfig

from mjp_hf import MJPViTConfig
from mjp_hf.configuration_mjp_vit import MJP_CONFIG_FIELDS


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
