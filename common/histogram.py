"""A latency histogram with fixed buckets, as counts anyone can subtract.

A server keeps one for its replication lag and reports the counts in its status
row; a reader takes two readings and subtracts them to get the histogram of
what happened in between (how Prometheus histograms work). Bucket ``i`` counts
values up to ``BOUNDS_MS[i]``; the last one counts everything above the largest
bound. Percentiles are bucket upper bounds: at most 25% above the true value.
"""
from __future__ import annotations

from bisect import bisect_left

BOUNDS_MS: tuple[float, ...] = tuple(round(0.05 * 1.25 ** i, 3) for i in range(48))
"""Upper bounds in milliseconds: 0.05 ms to about 1.8 s, each 25% above the last."""
SIZE = len(BOUNDS_MS) + 1


class Histogram:
    def __init__(self, counts: list[int] | None = None) -> None:
        self.counts = list(counts) if counts is not None else [0] * SIZE

    @classmethod
    def parse(cls, raw) -> "Histogram | None":
        """From a status row's list of counts; None unless it is one."""
        if not isinstance(raw, list) or len(raw) != SIZE or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in raw):
            return None
        return cls(raw)

    def record(self, ms: float) -> None:
        self.counts[bisect_left(BOUNDS_MS, ms)] += 1

    @property
    def total(self) -> int:
        return sum(self.counts)

    def minus(self, earlier: "Histogram") -> "Histogram":
        return Histogram([max(0, a - b) for a, b in zip(self.counts, earlier.counts)])

    def plus(self, other: "Histogram") -> "Histogram":
        return Histogram([a + b for a, b in zip(self.counts, other.counts)])

    def percentile(self, q: float) -> float:
        """The upper bound (ms) of the bucket holding the q-th percentile (nearest
        rank); infinity if it is above the largest bound, NaN when empty."""
        total = self.total
        if total == 0:
            return float("nan")
        rank = max(1, -(-q * total // 100))        # ceil without floats drifting
        seen = 0
        for i, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                return BOUNDS_MS[i] if i < len(BOUNDS_MS) else float("inf")
        return float("inf")

    def summary(self) -> str:
        if not self.total:
            return "n=0"
        return (f"n={self.total} p50<={self.percentile(50):g}ms "
                f"p99<={self.percentile(99):g}ms")
