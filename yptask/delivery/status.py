"""What a node tells of its tasks: status, recent failures, rates, and its dead letters.

(Their series over time, `metrics`, are `yptask.delivery.series`'s.)

Every figure is read from what the parts keep or publish (pools' counters, the
supervisors' published states, the journal, peers' heartbeats), never by
asking an actor, so status answers at once while a worker's setup hangs.
Replay requeues a dead letter: the one write here. What waits for a later time
(delayed casts, retries) is listed by `scheduled`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from yptask.cluster.membership import Member
from yptask.delivery.running import RunningTasks
from yptask.errors import WorkerStartFailed
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Journal

__all__ = ["Inspector"]


class Inspector:
    """Answers status, failures, dead letters and replay for one node (metrics: series)."""

    def __init__(self, node_name: str, journal: JournalThread, running: RunningTasks,
                 pids: Callable[[str], list[int]],
                 journal_view: Callable[[], dict[str, int]] = dict) -> None:
        self.node_name = node_name
        self.started_at = time.time()
        self._journal = journal
        self._running = running
        self._pids = pids  # the live worker processes of a task
        self._journal_view = journal_view  # its size on disk, and the cap (Load)
        self._peers: Callable[[], list[Member]] = list
        self._ids_status: Callable[[], dict[str, Any]] = dict

    def join(self, peers: Callable[[], list[Member]],
             ids_status: Callable[[], dict[str, Any]]) -> None:
        """The cluster runs: count the peers' workers, show the client ids' state."""
        self._peers, self._ids_status = peers, ids_status

    async def status(self) -> dict[str, Any]:
        """Per task: workers (and their pids), state, queue depth, in flight, handled, failed,
        and while its workers cannot start, why (`start_error`)."""
        tasks = {}
        tree = self._running.tree
        for name, pool in list(self._running.pools.items()):
            queued, inflight = await self._journal.run(partial(Journal.depth, task=name))
            state = tree.state(name)
            workers = {self.node_name: state["workers"], **self._workers_elsewhere(name)}
            task = self._running.tasks.get(name)
            if task is not None and task.paused and state["state"] in ("running", "idle",
                                                                         "starting"):
                state = {**state, "state": "paused"}
            if name in self._running.apply_errors:  # stored, but its workers could not start
                state = {**state, "state": "update failed",
                         "error": self._running.apply_errors[name]}
            tasks[name] = {**pool.metrics.summary(), "workers": workers, "state": state["state"],
                           "queued": queued, "in_flight": inflight, "handled": pool.handled,
                           "failed": pool.failed, "expired": pool.expired,
                           "pids": sorted(self._pids(name)),
                           "accepting": task is None or task.accepting, **pool.rate.view(),
                           **({"error": state["error"]} if "error" in state else {}),
                           **_start_error_view(tree.start_error(name))}
        return {"node": self.node_name, "uptime_s": round(time.time() - self.started_at, 1),
                "tasks": tasks, "client_ids": self._ids_status(),
                "journal": self._journal_view()}

    def _workers_elsewhere(self, task: str) -> dict[str, int]:
        """Workers of `task` on the other live nodes, as their last heartbeats said."""
        counts = {}
        for member in self._peers():
            load = member.load.get(task)
            if isinstance(load, dict) and isinstance(load.get("workers"), int):
                counts[member.name] = load["workers"]
        return counts

    async def failures(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent failed attempts on this node, newest first, with tracebacks."""
        rows = [f for pool in self._running.pools.values()
                for f in pool.metrics.recent_failures()]
        return sorted(rows, key=lambda f: f["at"], reverse=True)[:limit]

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        letters = await self._journal.run(lambda j: j.dead_letters(limit))
        return [{"id": d.message.id, "name": d.message.name, "payload": d.message.payload,
                 "task": d.task, "attempt": d.attempt, "error_class": d.error_class,
                 "error": d.error, "traceback": d.traceback, "died_at": d.died_at,
                 "trace_id": d.message.trace_id, "parent_id": d.message.parent_id}
                for d in letters]

    async def scheduled(self, limit: int = 100) -> list[dict[str, Any]]:
        """Deliveries journaled here that wait for a later time, soonest first: delayed
        casts ("delayed") and failed attempts waiting to be retried ("retry")."""
        rows = await self._journal.run(partial(Journal.scheduled, limit=limit))
        return [{**row, "node": self.node_name} for row in rows]

    async def replay(self, message_id: str, task: str | None = None) -> int:
        """Requeue a dead letter (for one task, or for every task it died in)."""
        letters = [d for d in await self.dead_letters(limit=10**6)
                   if d["id"] == message_id and task in (None, d["task"])]
        replayed = 0
        for letter in letters:
            if await self._journal.run(partial(Journal.replay, message_id=message_id,
                                               task=letter["task"])):
                replayed += 1
                self._running.notify(letter["task"])
        return replayed


def _start_error_view(error: WorkerStartFailed | None) -> dict[str, Any]:
    """A task's `start_error` in its status (nothing when its last start did not fail)."""
    if error is None:
        return {}
    return {"start_error": {"error": str(error), "exit": error.exit,
                            "stderr_tail": error.stderr_tail, "stderr_log": error.stderr_log,
                            "at": error.at}}
