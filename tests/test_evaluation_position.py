"""Position-embedding probes, similarity map, DALR error and the CLI."""

import json

import numpy as np
import pytest
import torch

from mjp_hf import MJPViTForImageClassification
from mjp_hf.evaluation import position
from mjp_hf.training.presets import config_from_preset


GRID = (7, 7)


def tiny_mjp(seed=0, **overrides):
    torch.manual_seed(seed)
    shape = dict(num_labels=10, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    return MJPViTForImageClassification(config_from_preset("demo", **{**shape, **overrides})).eval()


def test_probe_reads_position_from_embeddings_that_encode_it():
    rng = np.random.default_rng(0)
    coords = position.grid_coordinates(GRID)
    # Embeddings linear in (row, col) and the raster index, plus a little noise, in 8 dimensions.
    features = np.concatenate([coords, coords @ rng.normal(size=(2, 6))], axis=1)
    encoded = position.linear_probe(features + 0.01 * rng.normal(size=features.shape), GRID)
    assert encoded["mae_2d"] < 0.05 and encoded["mae_row"] < 0.05 and encoded["mae_col"] < 0.05
    # The raster index k = 7 row + col is linear in (row, col) too.
    assert encoded["mae_1d"] < 0.3
    random = position.linear_probe(rng.normal(size=(49, 8)), GRID)
    assert random["mae_2d"] > 0.8 * random["chance_mae_2d"]
    assert random["mae_1d"] > 0.8 * random["chance_mae_1d"]


def test_probe_rejects_bad_input():
    with pytest.raises(ValueError, match="48 PE rows"):
        position.linear_probe(np.zeros((48, 4)), GRID)
    with pytest.raises(ValueError, match="folds=1"):
        position.linear_probe(np.zeros((49, 4)), GRID, folds=1)


def test_similarity_map_and_mosaic():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(49, 16))
    similarity = position.cosine_similarity_map(embeddings)
    np.testing.assert_allclose(np.diag(similarity), 1.0)
    np.testing.assert_allclose(similarity, similarity.T)
    mosaic = position.similarity_mosaic(similarity, GRID)
    assert mosaic.shape == (7 * 8, 7 * 8)
    # The map of position (row 2, col 3) sits in tile (2, 3); its own pixel is 1.
    assert mosaic[2 * 8 + 2, 3 * 8 + 3] == pytest.approx(1.0)
    assert np.isnan(mosaic[7, 0])


def test_dalr_error_is_zero_for_an_exact_head_and_none_without_head():
    model = tiny_mjp(dalr_head="linear")
    embeddings = model.vit.embeddings
    coords = torch.as_tensor(position.grid_coordinates(GRID), dtype=torch.float32)
    with torch.no_grad():
        embeddings.position_embeddings.zero_()
        embeddings.position_embeddings[0, 1:, :2] = coords
        head = model.vit.dalr_head.regressor[0]
        head.weight.zero_()
        head.weight[0, 0] = head.weight[1, 1] = 1.0
        head.bias.zero_()
    exact = position.dalr_error(model)
    assert exact == {"mae": 0.0, "mean_distance": 0.0, "max_distance": 0.0}
    with torch.no_grad():
        head.bias.fill_(0.5)
    shifted = position.dalr_error(model)
    assert shifted["mae"] == pytest.approx(0.5) and shifted["mean_distance"] == pytest.approx(0.5 * 2**0.5)
    assert position.dalr_error(tiny_mjp(dalr_head="none")) is None
    assert position.dalr_error(tiny_mjp().to_vit()) is None


def test_evaluate_position_fields():
    report, similarity = position.evaluate_position(tiny_mjp())
    assert report["grid_size"] == [7, 7] and similarity.shape == (49, 49)
    assert set(report["probe"]) == {
        "folds",
        "mae_1d",
        "mae_2d",
        "mae_row",
        "mae_col",
        "chance_mae_1d",
        "chance_mae_2d",
    }
    assert set(report["dalr"]) == {"mae", "mean_distance", "max_distance"}


@pytest.mark.parametrize("stock", [False, True])
def test_cli_writes_json_and_png(tmp_path, stock):
    model = tiny_mjp()
    (model.to_vit() if stock else model).save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    position.main(["--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(out), "--device", "cpu"])
    report = json.loads((out / "position.json").read_text())
    assert (out / "position.png").stat().st_size > 0
    assert report["probe"]["folds"] == 5
    assert (report["dalr"] is None) is stock
    with pytest.raises(FileExistsError):
        position.main(["--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(out)])
