"""The statistics behind the benchmarks' verdicts (`benchmarks/_timing.py`): paired ratios and their intervals."""

import random

from benchmarks._timing import interval_verdict, paired_ratio, paired_ratio_interval


def test_the_interval_brackets_the_paired_ratio_and_narrows_with_rounds():
    rng = random.Random(0)
    widths = []
    for rounds in (30, 600):
        # A variant 2% slower than the baseline, with 5% of noise shared by the pair and 3% of its own.
        stock, variant = [], []
        for _ in range(rounds):
            load = 1 + abs(rng.gauss(0, 0.05))
            stock.append(0.1 * load * (1 + rng.gauss(0, 0.03)))
            variant.append(0.102 * load * (1 + rng.gauss(0, 0.03)))
        ratio = paired_ratio(stock, variant)
        low, high = paired_ratio_interval(stock, variant)
        assert low <= ratio <= high
        assert low < 1 / 1.02 < high or rounds == 30
        widths.append(high - low)
    assert widths[1] < widths[0] / 3
    assert paired_ratio_interval([0.1] * 20, [0.1] * 20) == (1.0, 1.0)


def test_verdict_needs_the_whole_interval_on_one_side():
    assert interval_verdict(0.992, 1.01, 0.99, at_most=False) == "met"
    assert interval_verdict(0.95, 0.985, 0.99, at_most=False) == "MISSED"
    assert interval_verdict(0.985, 1.0, 0.99, at_most=False).startswith("unresolved")
    assert interval_verdict(1.001, 1.015, 1.02) == "met"
    assert interval_verdict(1.021, 1.03, 1.02) == "MISSED"
    assert interval_verdict(0.5, 2.0, 1.0, quick=True).startswith("quick run")
