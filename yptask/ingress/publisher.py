"""Publishing: a cast journaled for every subscribed task, a call run by one worker now.

`Publisher` is where every cast and call enters the node, whatever surface it
came by (JSON-RPC, BERT-RPC, a timer's tick, a peer's forwarded call): each
field is checked here, by the rules of `yptask.ingress.checks`, once. A cast is
answered once it is committed to the journal (in one group commit with the
casts that came with it); a refused cast stores nothing and costs the others
nothing. Given ids are first claimed at their home nodes
(yptask.cluster.client_ids), so an id is taken once in the whole cluster.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import Any

from yptask.access.policy import current_publisher
from yptask.cluster.client_ids import KNOWN, PENDING, Claims, ClientIds
from yptask.cluster.membership import Member
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef, validate_message_name
from yptask.delivery.forwarding import Request, pick_peer
from yptask.delivery.load import Load
from yptask.delivery.running import RunningTasks
from yptask.delivery.traces import CallRecord, CallRing
from yptask.errors import (
    CallTimeout,
    EncodeError,
    IdPending,
    InvalidParams,
    JournalError,
    NodeStopping,
    NoSubscriber,
    Overloaded,
    ProtocolError,
    TaskPaused,
    YPTaskError,
)
from yptask.ingress import checks
from yptask.ingress.cast import CastRequest, CastTimes
from yptask.ingress.trace import check_traceparent, new_trace_id, own_trace_id, traceparent_of
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Envelope
from yptask.workers.job import delivery_meta
from yptask.workers.process import payload_size

__all__ = ["Publisher"]

log = logging.getLogger(__name__)

LINK_GRACE_S = 2.0  # a call sent to another node waits this much longer than its timeout
Accepted = list[tuple[Envelope, dict[str, int]]]  # a message to journal, its tasks' priorities
Places = list[tuple[int, dict[str, Any]]]  # (place in the answers, the answer)


class Publisher:
    """Casts and calls into one node."""

    def __init__(self, config: NodeConfig, journal: JournalThread, running: RunningTasks,
                 load: Load, stopping: Callable[[], bool]) -> None:
        self.config = config
        self.name = config.name
        self._journal = journal
        self._running = running
        self._load = load
        self._stopping = stopping
        self._new_id = MessageIds()
        self._ids: ClientIds | None = None  # from the cluster's start: before, alone
        self._peers: Callable[[], list[Member]] = list
        self._request: Request | None = None
        self.calls = CallRing()  # the calls run here, for the trace view

    def join(self, ids: ClientIds, peers: Callable[[], list[Member]], request: Request) -> None:
        """The cluster runs: claim given ids at their homes, send calls to peers."""
        self._ids, self._peers, self._request = ids, peers, request

    def check_running(self) -> None:
        if self._stopping():
            raise NodeStopping(f"node {self.name} is stopping; send to another node or retry")

    async def cast(self, name: Any, msg: Any, *, ticks: bool = False, **options: Any
                   ) -> dict[str, Any]:
        """Journal a message for every subscribed task; return once it is committed.

        `options` are those of `CastRequest` (id, priority, ttl_s, ...)."""
        result = (await self.cast_many([CastRequest(name, msg, **options)], ticks=ticks))[0]
        if isinstance(result, YPTaskError):
            raise result
        return result

    async def cast_many(self, casts: list[CastRequest], *, ticks: bool = False
                        ) -> list[dict[str, Any] | YPTaskError]:
        """Journal many casts in one group commit.

        Answers each in order: its result as `cast` gives it, or the error that
        refused it (a refused cast stores nothing; the others are not affected, even
        when the journal itself refuses one of them). Only the timer leader casts
        `ticks`, with ids publishers may not use.
        """
        self.check_running()
        answers: list[dict[str, Any] | YPTaskError] = []
        accepted, results, given = self._checked(casts, answers, ticks=ticks)
        claims = None
        if given and self._ids is not None:
            claims = await self._ids.claim(given)
            accepted, results = _claimed(claims, accepted, results, answers)
        added = await self._journal.append_many(accepted) if accepted else []
        if claims is not None:
            assert self._ids is not None
            stored = [(envelope.id, not isinstance(new, Exception))
                      for (envelope, _), new in zip(accepted, added, strict=True)]
            self._ids.settle(claims, taken=[i for i, ok in stored if ok],
                             released=[i for i, ok in stored if not ok])
        notified: dict[str, int] = {}  # task -> the highest priority of its new deliveries
        for (envelope, subscribed), new, (place, result) in zip(accepted, added, results,
                                                                strict=True):
            if isinstance(new, Exception):  # the others of its group commit are stored
                answers[place] = _journal_refused(envelope, new)
                continue
            result["duplicate"] = not new
            if new:
                for task in subscribed:
                    self._load.added(task)
                    notified[task] = max(notified.get(task, 0), subscribed[task])
                    if envelope.not_before and task in self._running.pools:  # a delayed cast
                        self._running.pools[task].wake_at(envelope.not_before)
        for task, priority in notified.items():
            self._running.notify(task, priority)
        return answers

    def _checked(self, casts: list[CastRequest],
                 answers: list[dict[str, Any] | YPTaskError], *, ticks: bool
                 ) -> tuple[Accepted, Places, list[str]]:
        """Check every cast; answer the refused ones in `answers`, and return the others
        (with their places in `answers`) and the ids they came with."""
        accepted: Accepted = []
        results: Places = []
        given: list[str] = []  # the ids the casts came with (a publisher's, a tick's)
        for cast in casts:
            try:
                envelope, subscribed = self._envelope(cast, ticks=ticks)
            except YPTaskError as exc:
                answers.append(exc)
                continue
            accepted.append((envelope, subscribed))
            result: dict[str, Any] = {"id": envelope.id, "tasks": list(subscribed)}
            if envelope.not_before:
                result["not_before"] = envelope.not_before
            results.append((len(answers), result))
            answers.append(result)
            if cast.id is not None:
                given.append(envelope.id)
        return accepted, results, given

    def _envelope(self, cast: CastRequest, *, ticks: bool) -> tuple[Envelope, dict[str, int]]:
        """The checked message of a cast, and its tasks with the priority of each delivery."""
        name = checks.check_name(cast.name)
        id = checks.check_id(cast.id, tick=ticks)
        priority = None if cast.priority is None else checks.check_priority(cast.priority)
        now = time.time()
        times = CastTimes.of(cast, now)
        trace_id = check_traceparent(cast.traceparent)
        parent = checks.check_id(cast.parent, tick=True, param="parent")  # a tick may be one
        self.check_message(name, cast.msg, journaled=True)
        payload_json = _journal_text(cast.msg)
        subscribed = self._running.subscribers(name)
        self._running.check_accepting(subscribed, current_publisher.get())
        self._load.check_room(subscribed)
        tasks = self._running.tasks
        priorities = {task: tasks[task].default_priority if priority is None else priority
                      for task in subscribed}
        mid = id or self._new_id()
        if trace_id is None:  # it starts a trace of its own (a node-made id is one for it)
            trace_id = f"{mid}00" if id is None else own_trace_id(mid) or new_trace_id()
        envelope = Envelope(mid, name, cast.msg, now,
                            checks.MIN_PRIORITY if priority is None else priority,
                            times.deadline, trace_id, parent, times.not_before,
                            payload_json=payload_json)
        return envelope, priorities

    async def call(self, name: Any, msg: Any, *, timeout_s: Any = 30.0,
                   here_only: bool = False, traceparent: Any = None, parent: Any = None) -> Any:
        """Have one worker of a subscribed task handle `msg` now; return its result.

        A task with workers here is preferred; otherwise the call goes to a live node
        that runs one (unless `here_only`: it came from another node already), with its
        trace. Every field is checked here (`yptask.ingress.checks`), whatever the surface.
        A call run here is kept for the trace view (`calls`), not journaled.
        """
        name = checks.check_name(name, "call")
        timeout_s = checks.check_timeout(timeout_s)
        trace_id = check_traceparent(traceparent, "call") or new_trace_id()
        parent = checks.check_id(parent, "call", tick=True, param="parent")
        self.check_running()
        self.check_message(name, msg)
        running = self._running
        subscribed = [running.tasks[task] for task in running.subscribers(name)]
        if not subscribed:
            raise NoSubscriber(f"no task subscribes to {name!r}")
        self._running.check_accepting([t.name for t in subscribed], current_publisher.get())
        if all(t.paused for t in subscribed):
            raise TaskPaused(f"task(s) {', '.join(t.name for t in subscribed)} subscribed to "
                             f"{name!r} are paused: resume one (`yptask resume TASK`), or cast")
        subscribed = [t for t in subscribed if not t.paused]
        local = [t for t in subscribed if t.workers_on(self.name) > 0]
        call_id = self._new_id()
        if not local:
            peer = None if here_only else pick_peer(self._peers(), subscribed)
            if peer is None:
                raise NoSubscriber(f"task(s) {', '.join(t.name for t in subscribed)} subscribe "
                                   f"to {name!r} but run no worker on a live node")
            assert self._request is not None  # the trace travels as a traceparent
            carried = traceparent if isinstance(traceparent, str) else \
                traceparent_of(trace_id, call_id)
            return await self._request(peer, "call", [name, msg, timeout_s, carried, parent],
                                       timeout_s + LINK_GRACE_S)
        task = max(local, key=lambda t: running.pools[t.name].free_workers)
        now = time.time()  # the caller's deadline: no worker takes the call after it
        meta = delivery_meta(call_id, 1, now, 0, deadline=now + timeout_s, trace_id=trace_id,
                             parent_id=parent)
        outcome, error_class = "failed", None
        try:
            result = await self._run_call(task, name, msg, meta, timeout_s)
            outcome = "handled"
            return result
        except CallTimeout:
            outcome, error_class = "timeout", "CallTimeout"
            raise
        except YPTaskError as exc:
            error_class = type(exc).__name__
            raise
        finally:
            self.calls.add(CallRecord(call_id, name, trace_id, parent, self.name, task.name,
                                      now, round(time.time() - now, 6), outcome, error_class))

    async def call_from_peer(self, peer: str, args: list[Any]) -> Any:
        """Run a call another node sent over its link: [name, msg, timeout_s] and, from a
        node that passes the trace on, [traceparent, parent]."""
        if len(args) in (3, 5) and isinstance(args[0], str) \
                and isinstance(args[2], (int, float)):
            return await self.call(args[0], args[1], timeout_s=float(args[2]), here_only=True,
                                   **dict(zip(("traceparent", "parent"), args[3:], strict=False)))
        raise ProtocolError(f"node {peer} sent a malformed call request")

    async def _run_call(self, task: TaskDef, name: str, msg: Any, meta: dict[str, Any],
                        timeout_s: float) -> Any:
        """Run a call on one worker of `task` here; its result, or its error raised."""
        running = self._running
        pool = running.pools[task.name]
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: no task per call
                run = pool.run(name, msg, meta, task.message_timeout_s)
                if pool.free_workers or pool.live_workers:  # the cheap test first
                    outcome = await run
                else:  # no worker runs: one must start first, and may not be able to
                    outcome = await running.tree.once_started(
                        task.name, lambda: pool.live_workers, run)
        except TimeoutError:
            raise CallTimeout(f"no answer to {name!r} from task {task.name} within "
                              f"{timeout_s} s") from None
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

    def check_message(self, name: str, msg: Any, *, journaled: bool = False) -> None:
        """Refuse a message that cannot reach a worker (or, `journaled`, the journal)."""
        validate_message_name(name)
        checks.check_payload(msg, "cast" if journaled else "call", journaled=journaled)
        try:
            size = payload_size(msg)  # as deep as the packet that delivers it puts it
        except EncodeError as exc:
            raise EncodeError(f"message payload cannot travel to a worker: {exc}") from None
        if size > self.config.max_payload_bytes:
            raise InvalidParams(f"message payload is {size} bytes encoded, over the node's limit "
                                f"of {self.config.max_payload_bytes}")


def _claimed(claims: Claims, accepted: Accepted, results: Places, answers: list[Any]
             ) -> tuple[Accepted, Places]:
    """The casts still to store once their ids' homes have answered: an id taken already
    is answered as a duplicate, one another node is taking is refused (retryable)."""
    kept: Accepted = []
    kept_results: Places = []
    for (envelope, subscribed), (place, result) in zip(accepted, results, strict=True):
        verdict = claims.verdicts.get(envelope.id)
        if verdict == KNOWN:
            result["duplicate"] = True
        elif verdict == PENDING:
            answers[place] = IdPending(
                f"id {envelope.id!r} is being taken by another cast, not yet stored: retry "
                f"in a moment (it is then either taken by you or a duplicate)")
        else:
            kept.append((envelope, subscribed))
            kept_results.append((place, result))
    return kept, kept_results


def _journal_refused(envelope: Envelope, exc: Exception) -> YPTaskError:
    """The answer to a cast the journal refused after every check passed (logged here)."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:  # the disk is full
        log.error("the journal is full: message %r (%s) refused: %s", envelope.id,
                  envelope.name, exc)
        return Overloaded("the node's journal is full (its disk has no room left): the "
                          "message was not stored; retry later or on another node")
    reference = uuid.uuid4().hex[:12]
    log.error("the journal refused message %r (%s), reference %s", envelope.id, envelope.name,
              reference, exc_info=exc)
    return JournalError(f"Internal error: the journal could not store this message, so it was "
                        f"not accepted; the node's log has the details under reference "
                        f"{reference}", reference)


def _journal_text(msg: Any) -> str:
    """A cast's payload as the journal keeps it: JSON (a call's payload is never journaled)."""
    try:
        return json.dumps(msg, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"message payload cannot travel as JSON to the journal: {exc}") from None


class MessageIds:
    """Message ids that sort by time and are unique across nodes and restarts.

    12 hex digits of milliseconds, 10 random hex digits drawn once per node start,
    then a counter: far cheaper per cast than a uuid4 (a getrandom call each).
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(5).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{int(time.time() * 1000):012x}{self._prefix}{next(self._counter) & 0xFFFFFFFF:08x}"
