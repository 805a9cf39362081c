"""Per-task series for a day, and the markers of what changed: what `metrics` answers.

Every `SAMPLE_S` one loop writes a row per task for the interval just ended
(handled, failed, p50/p99 from the pool's latency bins, queue depth and in
flight as they are then) into the history file (`yptask.store.history`), all
tasks in one transaction, on the history thread; and prunes what is past a
day. `metrics(step, span)` reads the rows back aggregated per step in SQL,
adds the interval not yet written from the pools' memory, so a point is never
a step late, and answers every step of the span (a step without a row counts
nothing, with `queued` and `in_flight` null) with the markers of the span:
restarts, changes, pauses and resumes of a task asked of this node, and this
node's starts. Rows survive a restart of the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from yptask.delivery.load import Load
from yptask.delivery.running import RunningTasks
from yptask.errors import InvalidParams
from yptask.store.history import KEEP_S, History, Sample

__all__ = ["EVENT_KINDS", "SAMPLE_S", "STEPS", "Series", "default_step"]

log = logging.getLogger(__name__)

SAMPLE_S = 10
# span -> its step: up to 10 min every 10 s, up to an hour every minute, then 10 min
STEPS = ((600, 10), (3600, 60), (KEEP_S, 600))
MAX_POINTS = 1000
EVENT_KINDS = ("restart", "put", "pause", "resume", "node_start")
CATCH_UP = 60  # intervals written at most after a stall (the pools keep 10 minutes)
PRUNE_EVERY_S = 60


def default_step(span_s: int) -> int:
    """The step a span is shown at (10 s, 60 s or 600 s)."""
    return next(step for longest, step in STEPS if span_s <= longest)


class Series:
    """Samples this node's tasks into its history, and answers `metrics`."""

    def __init__(self, history: History, running: RunningTasks, load: Load,
                 clock: Callable[[], float] = time.time) -> None:
        self._history = history
        self._running = running
        self._load = load
        self._clock = clock
        self._written_until = _floor(int(clock()), SAMPLE_S)  # the samples' next start
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.event("node_start")
        self._loop = asyncio.get_running_loop().create_task(self._sample_forever(),
                                                            name="sample series")

    async def stop(self) -> None:
        """Stop sampling, and write what the pools hold since the last row (so a restart
        loses none of it: the next run adds to that row)."""
        if self._loop is None:
            return
        self._loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._loop
        try:
            await self._sample()
            unwritten = self._unwritten(int(self._clock()))
            if unwritten:
                await self._history.run(self._history.add_samples, unwritten)
        except Exception:  # the history file failed: the last seconds are not kept
            log.exception("writing the last series rows failed")

    def event(self, kind: str, task: str | None = None, generation: int | None = None) -> None:
        """Mark a restart, change, pause or resume of `task`, or this node's start."""
        assert kind in EVENT_KINDS, kind
        self._history.submit(self._history.add_event, self._clock(), kind, task, generation)

    async def metrics(self, step_s: int | None = None, span_s: int = 600) -> dict[str, Any]:
        """`series`: per task, a point every step over the span; `events`: its markers."""
        step = default_step(span_s) if step_s is None else step_s
        if step % SAMPLE_S or step > span_s or span_s // step > MAX_POINTS:
            raise InvalidParams(f"invalid params for metrics: step {step} must be a multiple "
                                f"of {SAMPLE_S} s, at most the span ({span_s} s), and give "
                                f"at most {MAX_POINTS} points")
        now = int(self._clock())
        first = _floor(now - span_s, step) + step
        # What no row holds yet, taken as the read is queued: the rows written before it
        # are read, the seconds after them are the pools'.
        unwritten = self._unwritten(now)
        rows = await self._history.run(self._history.series, list(self._running.pools),
                                       first, step)
        events = await self._history.run(self._history.events, float(first))
        steps: dict[str, dict[int, list[Any]]] = {name: {} for name in self._running.pools}
        for task, start, *figures in rows:
            if task in steps:
                steps[task][start] = figures
        for task, start, *figures in unwritten:
            if task in steps:
                _add(steps[task], _floor(start, step), figures)
        series = {task: [_point(start, step, by_start.get(start))
                         for start in range(first, now + 1, step)]
                  for task, by_start in steps.items()}
        return {"series": series, "events": events}

    # ------------------------------------------------------------------ sampling

    async def _sample_forever(self) -> None:
        while True:
            # just past the end of the interval under way (after a failure too: the next
            # write catches up the intervals missed)
            await asyncio.sleep(SAMPLE_S - self._clock() % SAMPLE_S + 0.05)
            try:
                await self._sample()
            except Exception:  # the history file failed: the next interval tries again
                log.exception("writing the series failed; trying again in %d s", SAMPLE_S)

    async def _sample(self) -> None:
        now = int(self._clock())
        end = _floor(now, SAMPLE_S)
        start = max(self._written_until, end - CATCH_UP * SAMPLE_S)
        samples: list[Sample] = []
        for t in range(start, end, SAMPLE_S):
            samples.extend(self._samples(t, t + SAMPLE_S))
        # Queued before it is awaited: a `metrics` read queued meanwhile sees these rows,
        # and no longer adds the same seconds from the pools.
        written = self._history.run(self._history.add_samples, samples) if samples else None
        self._written_until = max(self._written_until, end)
        if written is not None:
            await written
        if end % PRUNE_EVERY_S == 0:
            await self._history.run(self._history.prune, self._clock())

    def _samples(self, start: int, end: int) -> list[Sample]:
        """Each task's row for [start, end): its counts, and its queue as it is now."""
        samples = []
        for name, pool in list(self._running.pools.items()):
            handled, failed, p50, p99 = pool.metrics.window(start, end)
            samples.append((name, start, handled, failed, self._load.queued.get(name, 0),
                            pool.in_flight, p50, p99))
        return samples

    def _unwritten(self, now: int) -> list[Sample]:
        """What the pools hold that no row has yet: since the last interval written."""
        return self._samples(self._written_until, now + 1) if now >= self._written_until \
            else []


def _floor(t: int, step: int) -> int:
    return t - t % step


def _add(by_start: dict[int, list[Any]], start: int, figures: list[Any]) -> None:
    """Fold the unwritten interval into its step's figures (as the SQL aggregates them)."""
    old = by_start.get(start)
    if old is None:
        by_start[start] = figures
        return
    handled, failed, queued, in_flight, p50, p99 = figures
    old_handled, old_failed, old_queued, old_in_flight, old_p50, old_p99 = old
    old_n = old_handled + old_failed if old_p50 is not None else 0
    new_n = handled + failed if p50 is not None else 0
    merged_p50 = ((old_p50 or 0.0) * old_n + (p50 or 0.0) * new_n) / (old_n + new_n) \
        if old_n + new_n else None
    p99s = [x for x in (old_p99, p99) if x is not None]
    by_start[start] = [old_handled + handled, old_failed + failed, max(old_queued or 0, queued),
                       max(old_in_flight or 0, in_flight), merged_p50,
                       max(p99s) if p99s else None]


def _point(start: int, step: int, figures: list[Any] | None) -> dict[str, Any]:
    if figures is None:
        return {"t": start, "handled_per_s": 0.0, "failed_per_s": 0.0, "p50_ms": None,
                "p99_ms": None, "queued": None, "in_flight": None}
    handled, failed, queued, in_flight, p50, p99 = figures
    return {"t": start, "handled_per_s": handled / step, "failed_per_s": failed / step,
            "p50_ms": None if p50 is None else round(p50, 3),
            "p99_ms": None if p99 is None else round(p99, 3),
            "queued": queued, "in_flight": in_flight}

