"""`evaluate` metric modules shipped with mjp-hf (loaded from this folder; nothing is fetched from the Hub)."""

from pathlib import Path


METRICS_DIR = Path(__file__).resolve().parent
ACCURACY_TOPK_PATH = str(METRICS_DIR / "accuracy_topk")


def load_accuracy_topk(**kwargs):
    """`evaluate.load` of the top-k accuracy module; keyword arguments (e.g. `num_process`, `process_id`,
    `experiment_id`) pass through."""
    import evaluate

    return evaluate.load(ACCURACY_TOPK_PATH, **kwargs)


__all__ = ["ACCURACY_TOPK_PATH", "METRICS_DIR", "load_accuracy_topk"]
