"""Cancellation: a message's waiting deliveries, on every node, never delivered after all.

`Cancels.cancel(id)` cancels here and asks every live peer (link request
`cancel`) to do the same, and answers what was cancelled where and what was
already running where: {"cancelled": {node: [task, ...]}, "running": {node:
[task, ...]}, "unreached": [node, ...]} (a node is named only with tasks).

On each node the journal does the work (`Journal.cancel`): the deliveries that
wait (queued, delayed, or waiting for a retry) are deleted, and the id is kept,
so a later cast or forward of it makes no delivery (sticky across restarts,
for the dedupe window). A delivery claimed into a pool's backlog and not yet
handed out counts as cancelled: the pool drops it at hand-out
(`TaskPool.drop_cancelled`). One a handler runs is not stopped: it is reported
running, its handler can ask `BaseTask.cancelled()` (`message.cancelled`),
and if it fails it is dropped instead of retried.

A member that is down, or does not answer, when the cancel is made is named in
"unreached"; it does not learn of the cancel later (the replicated config map
holds definitions, kept for good, not one key per message): cancel again once
it is back. A peer that is reached but knows nothing of the id still keeps
it, so a copy of the message forwarded there afterwards is refused too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

from yptask.cluster.membership import Member
from yptask.errors import ProtocolError, YPTaskError
from yptask.ingress import checks
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Journal

__all__ = ["CANCEL_REQUEST", "Cancels", "check_message_id"]

log = logging.getLogger(__name__)

CANCEL_REQUEST = "cancel"  # the link request kind
PEER_TIMEOUT_S = 10.0
MAX_REMEMBERED = 10_000  # ids cancelled in this run that `cancelled` answers from memory

Request = Callable[[str, str, list[Any], float], Awaitable[Any]]
Here = tuple[list[str], list[str]]  # (tasks cancelled, tasks running) on one node


def check_message_id(value: Any, method: str) -> str:
    """The id of an existing message (a string), or InvalidParams naming 'id'."""
    if value is None:
        raise checks.bad_param(method, "id", "a message id (a string)", value)
    checked = checks.check_id(value, method, tick=True)
    assert checked is not None
    return checked


class Cancels:
    """Cancels messages here and, through the links, on every live peer."""

    def __init__(self, node_name: str, journal: JournalThread,
                 pools: Callable[[], Mapping[str, Any]]) -> None:
        self.node_name = node_name
        self.journal = journal
        self._pools = pools  # task -> its TaskPool on this node
        self._peers: Callable[[], list[Member]] = list
        self._request: Request | None = None
        self._members: Callable[[], list[str]] = list
        self._recent: dict[str, None] = {}  # ids cancelled in this run, oldest first

    def join(self, peers: Callable[[], list[Member]], request: Request,
             members: Callable[[], list[str]]) -> None:
        """Once the cluster runs: its live peers, how to ask one, every member's name."""
        self._peers, self._request, self._members = peers, request, members

    async def cancel(self, message_id: Any) -> dict[str, Any]:
        """Cancel a message on every node that holds it (see the module docstring)."""
        mid = check_message_id(message_id, "cancel")
        peers = [m.name for m in self._peers()]
        answers = await asyncio.gather(self.cancel_here(mid),
                                       *(self._ask(peer, mid) for peer in peers))
        down = sorted(set(self._members()) - set(peers) - {self.node_name})
        result: dict[str, Any] = {"cancelled": {}, "running": {}, "unreached": down}
        for node, answer in zip([self.node_name, *peers], answers, strict=True):
            if answer is None:
                result["unreached"] = sorted([*result["unreached"], node])
                continue
            for key, tasks in zip(("cancelled", "running"), answer, strict=True):
                if tasks:
                    result[key][node] = tasks
        log.info("node %s: message %s cancelled: %s", self.node_name, mid, result)
        return result

    async def cancel_here(self, message_id: str) -> Here:
        """Cancel the message's deliveries in this node's journal and pools."""
        self._remember(message_id)
        cancelled, running = await self.journal.run(
            partial(Journal.cancel, message_id=message_id))
        return self._drop_claimed(message_id, cancelled, running)

    async def cancel_many_here(self, message_ids: list[str]) -> dict[str, Here]:
        """`cancel_here` for many messages, in one journal transaction (messages.bulk)."""
        for message_id in message_ids:
            self._remember(message_id)
        answers = await self.journal.run(partial(Journal.cancel_many, message_ids=message_ids))
        return {mid: self._drop_claimed(mid, *answer) for mid, answer in answers.items()}

    def _drop_claimed(self, message_id: str, cancelled: list[str], running: list[str]) -> Here:
        pools = self._pools()
        for task in list(running):
            pool = pools.get(task)
            if pool is not None and pool.drop_cancelled(message_id):
                running.remove(task)  # claimed, not handed out: the pool drops it
                cancelled.append(task)
        return sorted(cancelled), running

    async def cancelled(self, message_id: Any) -> bool:
        """Was this message cancelled (here: a running handler asks its own node)?"""
        mid = check_message_id(message_id, "message.cancelled")
        if mid in self._recent:
            return True
        return bool(await self.journal.run(partial(Journal.cancelled, message_id=mid)))

    async def answer(self, peer: str, args: list[Any]) -> list[list[str]]:
        """Answer a peer's `cancel` link request: [cancelled tasks, running tasks]."""
        if not (len(args) == 1 and isinstance(args[0], str)):
            raise ProtocolError(f"node {peer} sent a malformed {CANCEL_REQUEST} request")
        cancelled, running = await self.cancel_here(args[0])
        return [cancelled, running]

    async def _ask(self, peer: str, message_id: str) -> Here | None:
        """A peer's answer, or None if it cannot be had."""
        assert self._request is not None
        try:
            answer = await self._request(peer, CANCEL_REQUEST, [message_id], PEER_TIMEOUT_S)
        except (YPTaskError, OSError, TimeoutError) as exc:
            log.warning("node %s: cancel of %s not confirmed by node %s: %s", self.node_name,
                        message_id, peer, exc)
            return None
        if not (isinstance(answer, list) and len(answer) == 2
                and all(isinstance(tasks, list) for tasks in answer)):
            log.warning("node %s: node %s answered a cancel with %r", self.node_name, peer,
                        answer)
            return None
        return [str(t) for t in answer[0]], [str(t) for t in answer[1]]

    def _remember(self, message_id: str) -> None:
        self._recent[message_id] = None
        while len(self._recent) > MAX_REMEMBERED:
            del self._recent[next(iter(self._recent))]
