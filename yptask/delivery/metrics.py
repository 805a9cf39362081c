"""Per-task figures over the last minutes: handled and failed rates, handler latency, failures.

Each task's pool records every outcome here, from whichever worker thread
settles it: one bucket per second, for the last `WINDOW_S` seconds, holding a
count of handled and failed messages and a histogram of handler latency
(log-spaced bins, so any number of samples costs the same memory). Rates and
percentiles are read from the buckets; the console plots the series. The most
recent failed attempts are kept with their error and traceback.

Those buckets cover a window; Prometheus wants counts since start. So the same
lock also keeps a cumulative histogram of handler time over fixed buckets
(`yptask.histogram`: one bisect per message) and, for failed deliveries, how
many were put back for a retry and how many dead-lettered (counted where the
journal thread settles them): read by `cumulative()` at scrape time.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from yptask.histogram import HANDLER_BUCKETS_S, Histogram, HistogramView

__all__ = ["Cumulative", "Failure", "TaskMetrics"]

WINDOW_S = 600  # seconds of history
RECENT_S = 60  # rates and percentiles are over this many seconds
BINS = 64  # latency histogram: 0.1 ms * 1.3^i
_BIN_BASE_S = 0.0001
_BIN_GROWTH = 1.3
MAX_FAILURES = 200


@dataclass(frozen=True)
class Failure:
    """One failed attempt, as the console lists it."""

    id: str
    task: str
    name: str
    attempt: int
    error_class: str
    error: str
    traceback: str
    at: float
    trace_id: str | None = None  # its message's trace (yptask trace)
    parent_id: str | None = None


@dataclass(frozen=True)
class Cumulative:
    """What `TaskMetrics` counted since it was made: handler time, retries, dead letters."""

    handler_seconds: HistogramView
    retried: int  # failed attempts put back for another attempt
    dead_lettered: int  # failed deliveries dead-lettered (attempts spent, or undeliverable)


class _Second:
    __slots__ = ("failed", "handled", "latency", "second")

    def __init__(self, second: int) -> None:
        self.second = second
        self.handled = 0
        self.failed = 0
        self.latency = [0] * BINS


class TaskMetrics:
    """The figures of one task on this node. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seconds: deque[_Second] = deque(maxlen=WINDOW_S)
        self.failures: deque[Failure] = deque(maxlen=MAX_FAILURES)
        self._handler_seconds = Histogram(HANDLER_BUCKETS_S)  # since start, not windowed
        self._retried = 0
        self._dead_lettered = 0

    def record(self, *, ok: bool, latency_s: float | None) -> None:
        """Count one handled (ok) or failed message, and how long its handler took."""
        with self._lock:
            bucket = self._bucket(int(self._clock()))
            if ok:
                bucket.handled += 1
            else:
                bucket.failed += 1
            if latency_s is not None:
                bucket.latency[_bin(latency_s)] += 1
                self._handler_seconds.observe(latency_s)

    def failed(self, failure: Failure) -> None:
        with self._lock:
            self.failures.append(failure)

    def failure_settled(self, *, dead: bool) -> None:
        """A failed attempt was written: dead-lettered, or put back for a retry."""
        with self._lock:
            if dead:
                self._dead_lettered += 1
            else:
                self._retried += 1

    def cumulative(self) -> Cumulative:
        """The counts since start (for Prometheus)."""
        with self._lock:
            return Cumulative(self._handler_seconds.view(), self._retried, self._dead_lettered)

    def summary(self) -> dict[str, Any]:
        """Rates per second and latency percentiles (ms) over the last RECENT_S seconds."""
        now = int(self._clock())
        with self._lock:
            recent = [b for b in self._seconds if now - RECENT_S < b.second <= now]
            handled = sum(b.handled for b in recent)
            failed = sum(b.failed for b in recent)
            histogram = [sum(b.latency[i] for b in recent) for i in range(BINS)]
        return {"handled_per_s": round(handled / RECENT_S, 3),
                "failed_per_s": round(failed / RECENT_S, 3),
                "latency_ms": {name: _percentile(histogram, q) for name, q in
                               (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}}

    def series(self, step_s: int = 10, span_s: int = WINDOW_S) -> list[dict[str, Any]]:
        """Points every `step_s` over the last `span_s` seconds: rates and p50/p99 (ms)."""
        now = int(self._clock())
        first = now - span_s + 1
        with self._lock:
            buckets = [b for b in self._seconds if b.second >= first]
        points = []
        for start in range(first, now + 1, step_s):
            inside = [b for b in buckets if start <= b.second < start + step_s]
            histogram = [sum(b.latency[i] for b in inside) for i in range(BINS)]
            points.append({"t": start, "handled_per_s": sum(b.handled for b in inside) / step_s,
                           "failed_per_s": sum(b.failed for b in inside) / step_s,
                           "p50_ms": _percentile(histogram, 0.5),
                           "p99_ms": _percentile(histogram, 0.99)})
        return points

    def window(self, start: int, end: int) -> tuple[int, int, float | None, float | None]:
        """Handled, failed, and p50/p99 latency (ms) over the seconds in [start, end)."""
        with self._lock:
            inside = [b for b in self._seconds if start <= b.second < end]
            histogram = [sum(b.latency[i] for b in inside) for i in range(BINS)]
            handled, failed = sum(b.handled for b in inside), sum(b.failed for b in inside)
        return handled, failed, _percentile(histogram, 0.5), _percentile(histogram, 0.99)

    def recent_failures(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self.failures]

    def _bucket(self, second: int) -> _Second:
        # (if the clock steps back, counts go to the newest second rather than out of order)
        if not self._seconds or self._seconds[-1].second < second:
            self._seconds.append(_Second(second))
        return self._seconds[-1]


def _bin(seconds: float) -> int:
    if seconds <= _BIN_BASE_S:
        return 0
    return min(BINS - 1, int(math.log(seconds / _BIN_BASE_S, _BIN_GROWTH)) + 1)


def _percentile(histogram: list[int], q: float) -> float | None:
    """The upper edge (ms) of the bin holding quantile q, or None without samples."""
    total = sum(histogram)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram):
        seen += count
        if seen >= rank:
            return round(_BIN_BASE_S * _BIN_GROWTH ** i * 1000, 3)
    return round(_BIN_BASE_S * _BIN_GROWTH ** (BINS - 1) * 1000, 3)
