"""Top-k accuracy, an `evaluate` metric module shipped with mjp-hf so that nothing is fetched from the Hub.

Load it with `evaluate.load(<path of this folder>)` (or `mjp_hf.evaluation.metrics.load_accuracy_topk()`).
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import top_k_accuracy_score


_DESCRIPTION = """
Top-k accuracy: the fraction of examples whose reference label is among the k best predicted labels. Top-1 is the
usual accuracy. Each prediction is either one label or the predicted labels ranked best first (e.g.
`logits.topk(5).indices`); top-k needs at least k ranked labels per example.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`, or `list` of `list` of `int`): predicted labels, or ranked labels (best first).
    references (`list` of `int`): the true labels.
    k (`int` or `tuple` of `int`, *optional*, defaults to `(1, 5)`): the values of k to report; with single labels
        as predictions only k=1 is possible.
Returns:
    `accuracy` (top-1) and `top{k}_accuracy` for every other k, each in [0, 1].
Examples:
    >>> metric = evaluate.load("mjp_hf/evaluation/metrics/accuracy_topk")
    >>> metric.compute(predictions=[[2, 0, 1], [1, 2, 0]], references=[2, 0], k=(1, 2))
    {'accuracy': 0.5, 'top2_accuracy': 0.5}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AccuracyTopk(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
                ),
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            ],
        )

    def _compute(self, predictions, references, k=(1, 5)):
        ks = (k,) if isinstance(k, int) else tuple(k)
        if not ks or any(int(value) != value or value < 1 for value in ks):
            raise ValueError(f"k={k!r}: pass positive whole numbers, e.g. k=(1, 5).")
        ranked = np.asarray(predictions, dtype=np.int64)
        if ranked.ndim == 1:
            ranked = ranked[:, None]
        references = np.asarray(references, dtype=np.int64)
        if ranked.shape[0] == 0:
            raise ValueError("No predictions to score: add_batch/compute received 0 examples.")
        if max(ks) > ranked.shape[1]:
            raise ValueError(
                f"top-{max(ks)} accuracy needs at least {max(ks)} ranked labels per example, got {ranked.shape[1]}; "
                f"pass k={tuple(value for value in ks if value <= ranked.shape[1])} or rank more labels."
            )
        hits = dict.fromkeys(ks, 0)
        for start in range(0, len(ranked), _CHUNK):
            scores, labels = _scores_from_ranking(ranked[start : start + _CHUNK], references[start : start + _CHUNK])
            for value in ks:
                hits[value] += top_k_accuracy_score(
                    references[start : start + _CHUNK], scores, k=value, labels=labels, normalize=False
                )
        return {
            ("accuracy" if value == 1 else f"top{value}_accuracy"): float(hits[value] / len(ranked)) for value in ks
        }


# Rows scored at once: the score matrix is `[rows, classes]`.
_CHUNK = 4096


def _scores_from_ranking(ranked: np.ndarray, references: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores `[n, len(labels)]` whose top k labels are exactly the first k ranked ones, and the sorted `labels` they
    score, for scikit-learn's `top_k_accuracy_score`.

    `labels` covers every reference and ranked label (not all classes need appear), plus one filler label per rank and
    one more: a label ranked twice keeps its first rank and its repeat becomes a filler, so that top-k means the first
    k ranked entries; the extra one keeps k below the number of labels (and the problem multiclass)."""
    count, ranks = ranked.shape
    filler = max(int(ranked.max()), int(references.max())) + 1 + np.arange(ranks + 1)
    repeat = np.tril(ranked[:, :, None] == ranked[:, None, :], k=-1).any(axis=2)
    ranked = np.where(repeat, filler[None, :ranks], ranked)
    labels = np.union1d(np.union1d(references, ranked), filler)
    scores = np.zeros((count, len(labels)), dtype=np.float32)
    scores[np.arange(count)[:, None], np.searchsorted(labels, ranked)] = ranks - np.arange(ranks, dtype=np.float32)
    return scores, labels
