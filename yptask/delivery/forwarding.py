"""Store and forward: deliveries of a task that runs no worker here go to a node that runs it.

A cast is journaled on the node that received it, with one delivery per
subscribed task, wherever the task runs. For a task with no worker on this
node, its `Forwarder` claims a batch of its deliveries, picks a live node that
runs it (the one with the shortest queue, from the load peers gossip in their
heartbeats), and sends them in one `deliver` request. The receiver journals
them and only then answers; only then are they acked here. If the request
fails (the link breaks, the peer dies, times out, or refuses) the batch is
released, attempts unspent, and sent again, to that node or another. So a
message is never in no journal; it may, rarely, be in two, and the receiver's
dedupe by (message id, task) drops a resend it already took.

With no live node running the task, its deliveries wait here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from yptask.cluster.membership import Member
from yptask.config.tasks import TaskDef
from yptask.errors import YPTaskError
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Delivery, Journal

__all__ = ["Forwarder", "delivery_terms"]

log = logging.getLogger(__name__)

FORWARD_BATCH = 256
IDLE_POLL_S = 0.5
RETRY_S = 0.5
DELIVER_TIMEOUT_S = 30.0

Request = Callable[[str, str, list[Any], float], Any]  # (peer, kind, args, timeout) -> awaitable


class Forwarder:
    """Moves one task's deliveries to other nodes while it runs no worker on this one."""

    def __init__(self, task: TaskDef, node_name: str, journal: JournalThread,
                 peers: Callable[[], list[Member]], request: Request) -> None:
        self.task = task
        self.node_name = node_name
        self.journal = journal
        self._peers = peers
        self._request = request
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.forwarded = 0

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(
            self._forward_forever(), name=f"forward {self.task.name}")

    async def close(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None

    def notify(self) -> None:
        """New deliveries, or a change in who runs what: look again now."""
        self._wake.set()

    def target(self) -> str | None:
        """The live peer to send to: one running the task, with the shortest queue."""
        name = self.task.name
        runners = [m for m in self._peers() if self.task.workers_on(m.name) > 0]
        if not runners:
            return None
        return min(runners, key=lambda m: (_queued(m, name), m.name)).name

    async def _forward_forever(self) -> None:
        name = self.task.name
        while True:
            self._wake.clear()
            target = None if self.task.workers_on(self.node_name) > 0 else self.target()
            if target is not None:
                try:
                    batch = await self.journal.run(partial(Journal.claim, task=name,
                                                           limit=FORWARD_BATCH))
                except Exception:  # the store failed: this loop carries on, and tries again
                    log.exception("task %s: claiming deliveries to forward failed; trying "
                                  "again", name)
                    await asyncio.sleep(RETRY_S)
                    continue
                if batch:
                    if await self._send(target, batch):
                        continue  # more may be waiting
                    await asyncio.sleep(RETRY_S)
                    continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_S):
                    await self._wake.wait()

    async def _send(self, target: str, batch: list[Delivery]) -> bool:
        pairs = [(d.message.id, d.task) for d in batch]
        try:
            await self._request(target, "deliver", [self.task.name, delivery_terms(batch)],
                                DELIVER_TIMEOUT_S)
        except (YPTaskError, OSError) as exc:
            log.warning("task %s: forwarding %d message(s) to node %s failed (%s); they stay "
                        "here and go again", self.task.name, len(batch), target, exc)
            await self.journal.run(partial(Journal.release_many, deliveries=pairs))
            return False
        except BaseException:  # cancelled (stopping): they stay here, unacked
            self.journal.run_nowait(partial(Journal.release_many, deliveries=pairs))
            raise
        await self.journal.run(partial(Journal.ack_many, deliveries=pairs))
        self.forwarded += len(batch)
        return True


def delivery_terms(batch: list[Delivery]) -> list[list[Any]]:
    """The messages of a batch as the `deliver` request carries them."""
    return [[d.message.id, d.message.name, d.message.payload, d.message.published_at,
             d.message.priority, d.message.deadline] for d in batch]


def _queued(member: Member, task: str) -> int:
    load = member.load.get(task)
    if not isinstance(load, dict):
        return 0
    value = load.get("queued", 0)
    return int(value) if isinstance(value, (int, float)) else 0
