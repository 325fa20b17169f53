"""What the position embeddings (PEs) encode: linear probes, a similarity map, and the DALR head's error.

* **Linear probes** (the released `pestudy/absolute.py`): 5-fold cross-validated linear regression (scikit-learn,
  folds over shuffled positions) from the patch PE rows to the 1-D raster index and to the 2-D (row, col); the
  score is the mean absolute error on the held-out positions, in index / grid units (the released scorer named
  `mse` computes this MAE). Low errors mean the PEs linearly encode position.
* **Cosine-similarity map**: for every patch position, the cosine similarity of its PE with every other position's,
  drawn as a grid of small maps (the ViT paper's figure 7).
* **DALR error**: the mean absolute error, per coordinate and in grid units, of the model's dense absolute
  localization regressor applied to the PE rows, and the mean Euclidean distance, when the model has the head.

`python -m mjp_hf.evaluation.position --model_name_or_path DIR --output_dir DIR` writes `position.json` and
`position.png`.
"""

import numpy as np
import torch
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import KFold, cross_val_score

from ..utils import bounded
from .common import base_parser, load_model, output_path, patch_grid, resolve_device, write_json


def patch_position_embeddings(model) -> np.ndarray:
    """The patch rows of the PE table, `[N, D]` float64 (CLS and the unknown embedding left out)."""
    return model.vit.embeddings.position_embeddings[0, 1:].detach().double().cpu().numpy()


def grid_coordinates(grid_size: tuple[int, int]) -> np.ndarray:
    """`[N, 2]` (row, col) of each raster position."""
    index = np.arange(grid_size[0] * grid_size[1])
    return np.stack((index // grid_size[1], index % grid_size[1]), axis=1)


def linear_probe(
    position_embeddings: np.ndarray, grid_size: tuple[int, int], *, folds: int = 5, seed: int = 0
) -> dict:
    """Cross-validated linear regression from PE rows to position.

    Returns `mae_1d` (raster index), `mae_2d` (mean over row and col), `mae_row`, `mae_col`, `folds`, and the
    `chance_mae_1d` / `chance_mae_2d` of always predicting the mean position, for scale.
    """
    num_patches = grid_size[0] * grid_size[1]
    if position_embeddings.shape[0] != num_patches:
        raise ValueError(f"Got {position_embeddings.shape[0]} PE rows for a {grid_size[0]}x{grid_size[1]} grid.")
    if not 2 <= folds <= num_patches:
        raise ValueError(f"folds={folds} is invalid for {num_patches} positions; pass 2 to {num_patches}.")
    splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    index = np.arange(num_patches, dtype=np.float64)
    coords = grid_coordinates(grid_size).astype(np.float64)

    def mae(targets):
        scores = cross_val_score(
            LinearRegression(), position_embeddings, targets, cv=splitter, scoring="neg_mean_absolute_error"
        )
        return float(-scores.mean())

    return {
        "folds": folds,
        "mae_1d": mae(index),
        "mae_2d": mae(coords),
        "mae_row": mae(coords[:, 0]),
        "mae_col": mae(coords[:, 1]),
        "chance_mae_1d": float(np.abs(index - index.mean()).mean()),
        "chance_mae_2d": float(np.abs(coords - coords.mean(0)).mean()),
    }


def cosine_similarity_map(position_embeddings: np.ndarray) -> np.ndarray:
    """`[N, N]` cosine similarities between PE rows."""
    unit = position_embeddings / np.linalg.norm(position_embeddings, axis=1, keepdims=True).clip(min=1e-12)
    return unit @ unit.T


@torch.no_grad()
def dalr_error(model) -> dict | None:
    """The DALR head's error on the PE table in grid units, or `None` when the model has no head.

    Returns `mae` (mean over positions and both coordinates), `mean_distance` (Euclidean, per position) and
    `max_distance`.
    """
    base = model.base_model
    head = getattr(base, "dalr_head", None)  # a stock ViT has none
    if head is None:
        return None
    predictions = head(base.embeddings.position_embeddings[0, 1:]).double()
    targets = base.dalr_loss.targets(predictions.device).double()
    if model.config.dalr_normalize_targets:
        # Back to grid units, so that heads trained either way compare.
        scale = torch.tensor(base.dalr_loss.grid_size, dtype=torch.float64, device=targets.device)
        predictions, targets = predictions * scale, targets * scale
    errors = predictions - targets
    distances = errors.norm(dim=-1)
    return {
        "mae": errors.abs().mean().item(),
        "mean_distance": distances.mean().item(),
        "max_distance": distances.max().item(),
    }


def evaluate_position(model, *, folds: int = 5, seed: int = 0) -> tuple[dict, np.ndarray]:
    """`(report, similarity)`: `report` has `grid_size`, `probe` (see `linear_probe`) and `dalr` (see
    `dalr_error`); `similarity` is the `[N, N]` PE cosine-similarity matrix."""
    grid_size, _ = patch_grid(model.config)
    embeddings = patch_position_embeddings(model)
    report = {
        "grid_size": list(grid_size),
        "probe": linear_probe(embeddings, grid_size, folds=folds, seed=seed),
        "dalr": dalr_error(model),
    }
    return report, cosine_similarity_map(embeddings)


def similarity_mosaic(similarity: np.ndarray, grid_size: tuple[int, int], gap: int = 1) -> np.ndarray:
    """Tile the `[N, N]` similarities as a `grid_h x grid_w` mosaic of `grid_h x grid_w` maps (one per position),
    separated by `gap` NaN pixels."""
    grid_h, grid_w = grid_size
    maps = similarity.reshape(grid_h, grid_w, grid_h, grid_w)
    padded = np.full((grid_h, grid_w, grid_h + gap, grid_w + gap), np.nan)
    padded[:, :, :grid_h, :grid_w] = maps
    return padded.transpose(0, 2, 1, 3).reshape(grid_h * (grid_h + gap), grid_w * (grid_w + gap))


def plot_similarity(similarity: np.ndarray, grid_size: tuple[int, int], report: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 5))
    image = ax.imshow(similarity_mosaic(similarity, grid_size), cmap="viridis", vmin=-1, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    probe = report["probe"]
    title = f"PE cosine similarity\nprobe MAE 1-D {probe['mae_1d']:.2f}, 2-D {probe['mae_2d']:.2f}"
    if report["dalr"] is not None:
        title += f", DALR {report['dalr']['mae']:.2f}"
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--folds",
        type=bounded(int, minimum=2),
        default=5,
        help="Cross-validation folds of the linear probes (at most the number of patch positions).",
    )
    args = parser.parse_args(argv)
    json_path = output_path(args.output_dir, "position.json", args.overwrite)
    png_path = output_path(args.output_dir, "position.png", args.overwrite)
    model = load_model(args.model_name_or_path, resolve_device(args.device))
    (rows, cols), _ = patch_grid(model.config)
    if args.folds > rows * cols:
        parser.error(f"--folds {args.folds}: the model has {rows * cols} patch positions; pass 2 to {rows * cols}.")
    report, similarity = evaluate_position(model, folds=args.folds, seed=args.seed)
    report = {"model_name_or_path": str(args.model_name_or_path), "model_class": type(model).__name__, **report}
    write_json(json_path, report)
    plot_similarity(similarity, tuple(report["grid_size"]), report, png_path)
    print(f"position: probe {report['probe']}, DALR {report['dalr']} -> {json_path}")
    return report


if __name__ == "__main__":
    main()
