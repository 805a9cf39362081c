"""How a task's pool fills its backlog from the journal: by lottery, and by overtaking.

A pool keeps a backlog of claimed deliveries ahead of its workers (yptask.delivery.pool).
Each claim draws among the priority levels waiting by their tickets
(yptask.delivery.lottery), appended at the back. A priority higher than everything in
the backlog, just cast or forwarded here, does not wait behind it: it is claimed at once
and put at the FRONT, so it waits only for the jobs in the workers' pipes. The bound,
and why a delivery is passed by one overtaking at most, are in docs/api.md ("Priorities").
"""

from __future__ import annotations

from collections import deque
from functools import partial

from yptask.config.tasks import TaskDef
from yptask.delivery import lottery
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Delivery, Journal
from yptask.workers.job import MAX_CLAIM

__all__ = ["BacklogClaims"]


class BacklogClaims:
    """The claims of one pool into its `backlog` (a deque its workers pop from the left, in
    their threads: appends at either end are thread-safe). Used on the event loop."""

    def __init__(self, journal: JournalThread, backlog: deque[Delivery]) -> None:
        self.journal = journal
        self.backlog = backlog
        self._urgent = -1  # the highest priority notified since the last claim looked
        self._passed: Delivery | None = None  # the last delivery the last overtaking passed

    def notify(self, priority: int | None) -> None:
        """New deliveries wait in the journal, the highest at `priority` (None: unknown)."""
        if priority is not None and priority > self._urgent:
            self._urgent = priority

    async def claim(self, task: TaskDef, low_water: int) -> None:
        """Overtake the backlog with higher priorities just cast, then top it up to twice
        `low_water` if it is below."""
        if self._urgent > 0:  # nothing is lower than 0: it overtakes nothing
            await self._overtake(task, low_water)
        if len(self.backlog) < low_water:
            limit = min(MAX_CLAIM, 2 * low_water - len(self.backlog))
            self.backlog.extend(await self.journal.run(partial(
                Journal.claim, task=task.name, limit=limit, tickets=lottery.tickets(task))))

    async def _overtake(self, task: TaskDef, limit: int) -> None:
        """Claim what waits above every priority in the backlog and put it at the front.

        A delivery of the backlog is passed by one overtaking at most: another waits until
        the last one passed is handed out (what is cast meanwhile is claimed by lottery at
        the back, as usual), so that no stream of high casts holds a claimed one back.
        """
        urgent, self._urgent = self._urgent, -1
        backlog = self.backlog.copy()
        if not backlog:
            return  # the claim that follows takes it, by lottery
        if self._passed is not None and any(d is self._passed for d in backlog):
            self._urgent = max(self._urgent, urgent)  # looked at again at the next claim
            return
        floor = min(d.message.priority for d in backlog)
        if urgent <= floor:
            return
        ahead = await self.journal.run(partial(
            Journal.claim, task=task.name, limit=limit, min_priority=floor + 1,
            tickets=lottery.tickets(task)))
        if ahead:
            self._passed = backlog[-1]
            self.backlog.extendleft(reversed(ahead))  # in the order drawn
