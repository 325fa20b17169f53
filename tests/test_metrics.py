"""The package's own `evaluate` metric module: top-1/top-k accuracy, loaded from a local path, offline."""

import subprocess
import textwrap

import evaluate
import numpy as np
import pytest

from mjp_hf.evaluation.metrics import ACCURACY_TOPK_PATH, load_accuracy_topk


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(ACCURACY_TOPK_PATH)


def test_top1_and_top5_from_ranked_labels(metric):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10))
    references = rng.integers(0, 10, size=200)
    ranked = np.argsort(-logits, axis=1)[:, :5]
    result = metric.compute(predictions=ranked.tolist(), references=references.tolist())
    assert result["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == references))
    rank_of_reference = (np.argsort(-logits, axis=1) == references[:, None]).argmax(1)
    assert result["top5_accuracy"] == pytest.approx(np.mean(rank_of_reference < 5))
    assert set(result) == {"accuracy", "top5_accuracy"}


def test_flat_predictions_and_custom_k(metric):
    assert metric.compute(predictions=[1, 2, 3, 4], references=[1, 2, 0, 0], k=1) == {"accuracy": 0.5}
    result = metric.compute(predictions=[[2, 0, 1], [1, 2, 0]], references=[2, 0], k=(1, 2, 3))
    assert result == {"accuracy": 0.5, "top2_accuracy": 0.5, "top3_accuracy": 1.0}


def _brute_force_topk(ranked, references, k):
    """Counts, example by example, whether the reference is among the first k distinct ranked labels."""
    hits = 0
    for row, reference in zip(ranked, references):
        hits += reference in list(row[:k])
    return hits / len(references)


@pytest.mark.parametrize("num_classes", [3, 10, 1000])
def test_topk_equals_a_brute_force_count_when_classes_are_missing(metric, num_classes):
    rng = np.random.default_rng(num_classes)
    references = rng.choice([0, 2, num_classes - 1], size=300)  # most classes never appear
    ranked = np.stack([rng.permutation(num_classes)[:3] for _ in references])
    rows = rng.random(len(references)) < 0.4
    ranked[rows, rng.integers(3, size=rows.sum())] = references[rows]  # the model is sometimes right
    ranked[::7, 1] = ranked[::7, 0]  # a label ranked twice counts at its first rank
    result = metric.compute(predictions=ranked.tolist(), references=references.tolist(), k=(1, 2, 3))
    assert result == {
        "accuracy": pytest.approx(_brute_force_topk(ranked, references, 1)),
        "top2_accuracy": pytest.approx(_brute_force_topk(ranked, references, 2)),
        "top3_accuracy": pytest.approx(_brute_force_topk(ranked, references, 3)),
    }
    assert 0 < result["accuracy"] < result["top3_accuracy"] < 1


def test_incremental_batches_equal_one_compute():
    metric = load_accuracy_topk()
    metric.add_batch(predictions=[[0, 1], [1, 0]], references=[0, 0])
    metric.add_batch(predictions=[[1, 0]], references=[1])
    assert metric.compute(k=(1, 2)) == {"accuracy": pytest.approx(2 / 3), "top2_accuracy": 1.0}


def test_bad_k_is_explained(metric):
    with pytest.raises(ValueError, match=r"top-5 accuracy needs at least 5 ranked labels.*k=\(1,\)"):
        metric.compute(predictions=[[0, 1], [1, 0]], references=[0, 1], k=(1, 5))
    with pytest.raises(ValueError, match="positive whole numbers"):
        metric.compute(predictions=[0], references=[0], k=0)


def test_two_processes_with_evaluate_distributed_mode(tmp_path, warm_python):
    """`num_process`/`process_id`: each process adds its shard, process 0 computes over both."""
    script = textwrap.dedent(f"""
        import json, sys
        from mjp_hf.evaluation.metrics import load_accuracy_topk
        rank = int(sys.argv[1])
        metric = load_accuracy_topk(num_process=2, process_id=rank, experiment_id="mjp-test",
                                    cache_dir={str(tmp_path)!r})
        shard = [([0, 1], 0), ([1, 0], 0)] if rank == 0 else [([1, 0], 1), ([0, 1], 1)]
        metric.add_batch(predictions=[p for p, _ in shard], references=[r for _, r in shard])
        print(json.dumps(metric.compute(k=(1, 2))))
    """)
    path = tmp_path / "worker.py"
    path.write_text(script)
    workers = [  # two processes at once (warm children: their imports are done)
        warm_python.popen(
            [path, str(rank)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preload=["evaluate"]
        )
        for rank in (0, 1)
    ]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), outputs
    assert outputs[0][0].strip().splitlines()[-1] == '{"accuracy": 0.5, "top2_accuracy": 1.0}'
    assert outputs[1][0].strip().splitlines()[-1] == "null"
