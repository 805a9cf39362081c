"""How loaded this node's tasks are, and what that refuses.

`Load` keeps each task's queue depth here and the journal's size on disk fresh
(every LOAD_EVERY_S): the heartbeats carry them to the peers (where
`yptask.delivery.forwarding.pick_peer` reads them), and back-pressure refuses a
cast rather than let a queue or the journal grow unbounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from pathlib import Path
from typing import Any

from yptask.delivery.running import RunningTasks
from yptask.errors import Overloaded
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Journal

__all__ = ["Load"]

log = logging.getLogger(__name__)

LOAD_EVERY_S = 1.0


class Load:
    """Queue depths and the journal's size, for heartbeats and back-pressure."""

    def __init__(self, node_name: str, journal: JournalThread, running: RunningTasks, *,
                 journal_files: list[Path], max_journal_mb: float) -> None:
        self.node_name = node_name
        self._journal = journal
        self._running = running
        self._files = journal_files
        self._max_journal_mb = max_journal_mb
        self.queued: dict[str, int] = running.queued  # task -> deliveries waiting here
        self.journal_bytes = 0
        self._measuring: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._measuring = asyncio.get_running_loop().create_task(self._measure_forever(),
                                                                 name="measure load")

    async def stop(self) -> None:
        if self._measuring is not None:
            self._measuring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._measuring

    def added(self, task: str) -> None:
        """One more delivery of `task` is journaled here (until the next measure)."""
        self.queued[task] = self.queued.get(task, 0) + 1

    def check_room(self, tasks: list[str]) -> None:
        """Back-pressure: refuse a cast rather than let a queue or the journal grow unbounded."""
        limit_mb = self._max_journal_mb
        if self.journal_bytes > limit_mb * 1024 * 1024:
            raise Overloaded(f"node {self.node_name}: its journal is "
                             f"{self.journal_bytes >> 20} MB, over max_journal_mb "
                             f"({limit_mb:g}); retry later or elsewhere")
        for task in tasks:
            waiting, limit = self.queued.get(task, 0), self._running.tasks[task].max_queue
            if waiting >= limit:
                raise Overloaded(f"task {task} has {waiting} messages waiting on node "
                                 f"{self.node_name}, at its max_queue ({limit}); retry later")

    def journal_view(self) -> dict[str, int]:
        """The journal's size on disk (as last measured) and the size past which casts are
        refused, for status."""
        return {"bytes": self.journal_bytes,
                "max_bytes": int(self._max_journal_mb * 1024 * 1024)}

    def heartbeat(self) -> dict[str, Any]:
        """What this node's heartbeats say about its tasks."""
        return {name: {"workers": pool.live_workers, "in_flight": pool.in_flight,
                       "queued": self.queued.get(name, 0), "waiting": pool.rate.waiting}
                for name, pool in self._running.pools.items()}

    async def _measure_forever(self) -> None:
        while True:
            try:
                for name in list(self._running.pools):
                    queued, _ = await self._journal.run(partial(Journal.depth, task=name))
                    self.queued[name] = queued
                self.journal_bytes = sum(f.stat().st_size for f in self._files if f.exists())
            except Exception:  # the store failed: the figures stay as they were a moment
                log.exception("measuring the queues failed; trying again")
            await asyncio.sleep(LOAD_EVERY_S)
