"""Per-task figures: rates, latency percentiles, series and recent failures, on a fake clock."""

from __future__ import annotations

from yptask.delivery.metrics import MAX_FAILURES, Failure, TaskMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_rates_and_percentiles_cover_the_last_minute():
    clock = Clock()
    metrics = TaskMetrics(clock)
    for second in range(120):  # two minutes: 3 handled and 1 failed a second
        clock.now = 1_000_000.0 + second
        for _ in range(3):
            metrics.record(ok=True, latency_s=0.010)
        metrics.record(ok=False, latency_s=2.0)
    summary = metrics.summary()
    assert (summary["handled_per_s"], summary["failed_per_s"]) == (3.0, 1.0)
    latency = summary["latency_ms"]
    assert 10 <= latency["p50"] <= 13  # the bin holding 10 ms
    assert 2000 <= latency["p99"] <= 2600  # the failures are the slow quarter
    assert latency["p50"] <= latency["p90"] <= latency["p99"]


def test_no_samples_no_percentiles_and_old_seconds_do_not_count():
    clock = Clock()
    metrics = TaskMetrics(clock)
    assert metrics.summary()["latency_ms"] == {"p50": None, "p90": None, "p99": None}
    metrics.record(ok=True, latency_s=0.5)
    clock.now += 3600
    assert metrics.summary()["handled_per_s"] == 0.0


def test_series_are_points_over_the_span():
    clock = Clock()
    metrics = TaskMetrics(clock)
    for second in range(30):
        clock.now = 1_000_000.0 + second
        metrics.record(ok=True, latency_s=0.001)
    points = metrics.series(step_s=10, span_s=30)
    assert [p["handled_per_s"] for p in points] == [1.0, 1.0, 1.0]
    assert all(p["p50_ms"] is not None and p["failed_per_s"] == 0 for p in points)


def test_recent_failures_are_kept_newest_last_and_bounded():
    metrics = TaskMetrics(Clock())
    for i in range(MAX_FAILURES + 5):
        metrics.failed(Failure(f"m{i}", "t", "a.b", 1, "ValueError", "bad", "Traceback...", i))
    kept = metrics.recent_failures()
    assert len(kept) == MAX_FAILURES and kept[-1]["id"] == f"m{MAX_FAILURES + 4}"
