"""Store and forward: deliveries of a task that runs no worker here go to a node that runs it.

A cast is journaled on the node that received it, with one delivery per
subscribed task, wherever the task runs. For a task with no worker on this
node, its `Forwarder` claims a batch of its deliveries, picks a live node that
runs it (`pick_peer`: the one with the least work waiting and in flight, from
the load peers gossip in their heartbeats; calls go by the same rule), and
sends them in one `deliver` request. The receiver journals
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
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from yptask.cluster.membership import Member
from yptask.config.tasks import TaskDef
from yptask.errors import ProtocolError, UnknownTask, YPTaskError
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Delivery, Envelope, Journal

__all__ = ["Forwarder", "accept_forwarded", "delivery_terms", "pick_peer"]

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
        """The live peer to send to (see pick_peer)."""
        return pick_peer(self._peers(), [self.task])

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
             d.message.priority, d.message.deadline, d.message.trace_id, d.message.parent_id]
            for d in batch]


def pick_peer(members: list[Member], tasks: list[TaskDef]) -> str | None:
    """The live peer to give work of `tasks` to: one running a worker of one of them, with
    the least of their work waiting and in flight (ties: by name); None if none runs one."""
    runners = [m for m in members if any(t.workers_on(m.name) > 0 for t in tasks)]
    if not runners:
        return None
    return min(runners, key=lambda m: (sum(_busy(m, t.name) for t in tasks), m.name)).name


def _busy(member: Member, task: str) -> int:
    """Deliveries of `task` waiting and in flight on `member`, as it last said."""
    load = member.load.get(task)
    if not isinstance(load, dict):
        return 0
    return sum(int(v) for key in ("queued", "in_flight")
               if isinstance(v := load.get(key, 0), (int, float)) and not isinstance(v, bool))


async def accept_forwarded(journal: JournalThread, peer: str, args: list[Any], *,
                           node_name: str, pools: Mapping[str, Any],
                           check_room: Callable[[list[str]], None]) -> int:
    """Journal the deliveries a peer forwards for one of our tasks (its `deliver` request);
    answer how many were new, once they are committed."""
    if not (len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], list)):
        raise ProtocolError(f"node {peer} sent a malformed deliver request")
    task, terms = args
    pool = pools.get(task)
    if pool is None:
        raise UnknownTask(f"node {node_name} has no task {task!r} (yet)")
    check_room([task])  # the sender keeps them, and tries again later
    envelopes = [_envelope(term, peer) for term in terms]
    new = await journal.run(partial(Journal.accept_forwarded, envelopes=envelopes, task=task))
    if new:
        pool.notify(max(envelope.priority for envelope in envelopes))
    return int(new)


def _envelope(term: Any, peer: str) -> Envelope:
    """A forwarded message, as `delivery_terms` wrote it (a node before trace ids wrote
    the first six fields only)."""
    if not (isinstance(term, list) and len(term) in (6, 8) and isinstance(term[0], str)
            and isinstance(term[1], str) and isinstance(term[3], (int, float))
            and isinstance(term[4], int)
            and (term[5] is None or isinstance(term[5], (int, float)))
            and all(t is None or isinstance(t, str) for t in term[6:])):
        raise ProtocolError(f"node {peer} forwarded a malformed message {term!r:.80}")
    trace_id, parent_id = term[6:] if len(term) == 8 else (None, None)
    return Envelope(term[0], term[1], term[2], float(term[3]), term[4],
                    None if term[5] is None else float(term[5]), trace_id, parent_id)
