"""Statistics over seeds for comparing training variants: means with Student-t intervals, paired differences, and
verdicts that come from the intervals, never from the means alone."""

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


HELD, NOT_HELD, NOT_SHOWN = "held", "not held", "not shown at this budget"


@dataclass(frozen=True)
class Interval:
    """A mean over `n` values and its two-sided confidence interval (`low`, `high`); `None` bounds when `n < 2`."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @classmethod
    def of(cls, values, confidence: float = 0.95) -> "Interval | None":
        """The mean of `values` (`None` entries dropped) with its Student-t interval; `None` for no values."""
        values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
        if values.size == 0:
            return None
        mean = float(values.mean())
        if values.size < 2:
            return cls(mean, None, None, 1)
        half = stats.t.ppf(0.5 + confidence / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
        return cls(mean, mean - half, mean + half, int(values.size))

    @property
    def resolved(self) -> bool:
        return self.low is not None

    def above(self, threshold: float) -> bool:
        """The whole interval lies above `threshold`."""
        return self.resolved and self.low > threshold

    def below(self, threshold: float) -> bool:
        """The whole interval lies below `threshold`."""
        return self.resolved and self.high < threshold

    def scaled(self, factor: float) -> "Interval":
        if not self.resolved:
            return Interval(self.mean * factor, None, None, self.n)
        low, high = sorted((self.low * factor, self.high * factor))
        return Interval(self.mean * factor, low, high, self.n)

    def format(self, decimals: int = 1) -> str:
        if not self.resolved:
            return f"{self.mean:.{decimals}f}"
        return f"{self.mean:.{decimals}f} [{self.low:.{decimals}f}, {self.high:.{decimals}f}]"

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def paired_difference(values: dict, reference: dict, confidence: float = 0.95) -> Interval | None:
    """The interval of `values[seed] - reference[seed]` over the seeds both have a value for (same seed, same data
    order: pairing removes the seed-to-seed spread that both variants share)."""
    seeds = [s for s in values if s in reference and values[s] is not None and reference[s] is not None]
    return Interval.of([values[s] - reference[s] for s in seeds], confidence)


def verdict(supports: list[bool], contradicts: list[bool]) -> str:
    """`held` when every condition is supported by its interval, `not held` when any interval contradicts its
    condition, `not shown at this budget` otherwise (an interval that straddles the line, or a single seed)."""
    if any(contradicts):
        return NOT_HELD
    if all(supports):
        return HELD
    return NOT_SHOWN
