"""Cumulative histograms over fixed buckets: counts since start, as Prometheus reads them.

A `Histogram` counts each observation in the first bucket whose upper bound holds
it (one bisect over a dozen bounds and two additions), and keeps the sum. It
has no lock of its own: its owner records and reads it under the lock it
already holds for its other figures. The bucket bounds are fixed, so a
histogram costs the same memory whatever it has seen, and two reads of it
taken at different times can be subtracted.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["COMMIT_BUCKETS_S", "HANDLER_BUCKETS_S", "Histogram", "HistogramView"]

# Upper bounds in seconds (the last bucket, +Inf, is implicit).
HANDLER_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                     10.0, 30.0, 60.0, 300.0)
COMMIT_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0)


@dataclass(frozen=True)
class HistogramView:
    """A histogram as read at one moment: cumulative counts per upper bound (+Inf last)."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]  # one more than `bounds`: the +Inf bucket, the count
    sum: float

    @property
    def count(self) -> int:
        return self.cumulative[-1]


class Histogram:
    """Counts of observations per fixed bucket, and their sum. Not thread-safe by itself."""

    __slots__ = ("_counts", "bounds", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        """`bounds`: the buckets' upper bounds, distinct and ascending."""
        self.bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def view(self) -> HistogramView:
        running, cumulative = 0, []
        for count in self._counts:
            running += count
            cumulative.append(running)
        return HistogramView(self.bounds, tuple(cumulative), self.sum)
