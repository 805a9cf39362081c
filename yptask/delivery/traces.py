"""The trace view: every message one request caused, on every node, with how each ended.

A trace is the tree of the casts and calls that share one W3C trace id
(`yptask.ingress.trace`): the first is the request, each other names its
parent (the message whose handler sent it). `Traces.trace(id)` (JSON-RPC
`trace`, `yptask trace ID`) takes a trace id, or a message id whose trace is
meant, and answers {"trace_id", "messages": [...]}, oldest first, merged from
this node's journal and from every live peer's (link request `trace`).

Each message: id, name, parent_id, kind ("cast" | "call"), node (where its
tasks ran), nodes (the journals that hold it), published_at, and per task
{task, node, state, attempt, ended_at, error_class?, error?}. A cast's task is
queued | running | handled | dead | expired | cancelled; a call's is
handled | failed | timeout.

A call is not journaled: each node keeps its last MAX_CALLS calls in memory
(`CallRing`, filled by the publisher), so a call shows in a trace while it is
among them and the node has not restarted since. A cast forwarded to the node
that runs its task is acked on the node that took it; where two nodes tell of
one delivery, the one still holding it (or, both done, the later) is believed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

from yptask.cluster.membership import Member
from yptask.delivery.cancel import check_message_id
from yptask.errors import ProtocolError, YPTaskError
from yptask.ingress.trace import own_trace_id
from yptask.store.group_commit import JournalThread

__all__ = ["MAX_CALLS", "TRACE_REQUEST", "CallRecord", "CallRing", "Traces"]

log = logging.getLogger(__name__)

TRACE_REQUEST = "trace"  # the link request kind: [trace id or message id] -> this node's view
MAX_CALLS = 10_000  # calls remembered per node for the trace view
MAX_MESSAGES = 10_000  # messages of one trace read from one journal
PEER_TIMEOUT_S = 10.0
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
# How final a task's state is, when two nodes tell of one delivery (the forwarder acked it).
_HOLDING = ("queued", "running", "dead", "expired", "cancelled", "failed", "timeout")

Request = Callable[[str, str, list[Any], float], Awaitable[Any]]


@dataclass(frozen=True)
class CallRecord:
    """One call run on this node, for the trace view."""

    id: str
    name: str
    trace_id: str
    parent_id: str | None
    node: str
    task: str
    started: float
    duration_s: float
    outcome: str  # handled | failed | timeout
    error_class: str | None = None


class CallRing:
    """The last MAX_CALLS calls run on this node (bounded: oldest forgotten). Thread-safe."""

    def __init__(self, size: int = MAX_CALLS) -> None:
        self._calls: deque[CallRecord] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, record: CallRecord) -> None:
        with self._lock:
            self._calls.append(record)

    def of_trace(self, trace_id: str) -> list[CallRecord]:
        with self._lock:
            return [c for c in self._calls if c.trace_id == trace_id]

    def trace_of(self, call_id: str) -> str | None:
        with self._lock:
            return next((c.trace_id for c in self._calls if c.id == call_id), None)


class Traces:
    """Answers `trace` for one node: its own view, merged with its live peers'."""

    def __init__(self, node_name: str, journal: JournalThread, calls: CallRing) -> None:
        self.node_name = node_name
        self._journal = journal
        self._calls = calls
        self._peers: Callable[[], list[Member]] = list
        self._request: Request | None = None

    def join(self, peers: Callable[[], list[Member]], request: Request) -> None:
        """The cluster runs: ask the live peers too."""
        self._peers, self._request = peers, request

    async def trace(self, id: Any) -> dict[str, Any]:
        """The trace of `id` (a trace id or a message id), from every live node."""
        wanted = check_message_id(id, "trace")
        here = await self.here(wanted)
        trace_id = here["trace_id"]
        peers = [m.name for m in self._peers()] if self._request is not None else []

        async def ask(what: str) -> list[dict[str, Any] | None]:
            return list(await asyncio.gather(*(self._ask(peer, what) for peer in peers)))

        if trace_id is None:  # a message id another node knows?
            answers = await ask(wanted)
            trace_id = next((a["trace_id"] for a in answers if a and a["trace_id"]), None)
            if trace_id is None:
                return {"trace_id": None, "messages": [], "unreached": _unreached(peers, answers)}
            here = await self.here(trace_id)
        answers = await ask(trace_id)  # by its trace id: each node has its own messages of it
        views = [here, *(a for a in answers if a and a["trace_id"] == trace_id)]
        return {"trace_id": trace_id, "messages": merge(views),
                "unreached": _unreached(peers, answers)}

    async def here(self, wanted: str) -> dict[str, Any]:
        """This node's view: {"trace_id" (None: unknown here), "messages"}."""
        trace_id = await self._journal.run(lambda j: j.read(partial(_trace_of, message_id=wanted)))
        if trace_id is None:
            trace_id = self._calls.trace_of(wanted)
        if trace_id is None and _TRACE_ID.fullmatch(wanted.lower()):
            trace_id = wanted.lower()
        if trace_id is None:
            return {"trace_id": None, "messages": []}
        found = trace_id
        casts = await self._journal.run(
            lambda j: j.read(partial(_casts, trace_id=found, node=self.node_name)))
        calls = [_call_view(c) for c in self._calls.of_trace(trace_id)]
        return {"trace_id": trace_id, "messages": casts + calls}

    async def answer(self, peer: str, args: list[Any]) -> dict[str, Any]:
        """Answer a peer's `trace` link request with this node's view."""
        if not (len(args) == 1 and isinstance(args[0], str)):
            raise ProtocolError(f"node {peer} sent a malformed {TRACE_REQUEST} request")
        return await self.here(args[0])

    async def _ask(self, peer: str, wanted: str) -> dict[str, Any] | None:
        assert self._request is not None
        try:
            answer = await self._request(peer, TRACE_REQUEST, [wanted], PEER_TIMEOUT_S)
        except (YPTaskError, OSError, TimeoutError) as exc:
            log.warning("node %s: no trace of %s from node %s: %s", self.node_name, wanted,
                        peer, exc)
            return None
        if not (isinstance(answer, dict) and isinstance(answer.get("messages"), list)):
            log.warning("node %s: node %s answered a trace with %r", self.node_name, peer,
                        str(answer)[:200])
            return None
        return answer


def _unreached(peers: list[str], answers: list[Any]) -> list[str]:
    return [peer for peer, answer in zip(peers, answers, strict=True) if answer is None]


# ---------------------------------------------------------------- one journal's view
# These run in the journal's thread, on its connection (Journal.read): reads only.


def _trace_of(db: sqlite3.Connection, message_id: str) -> str | None:
    row = db.execute("SELECT trace_id FROM messages WHERE id = ?", (message_id,)).fetchone()
    return None if row is None else row[0] or own_trace_id(message_id)


def _casts(db: sqlite3.Connection, trace_id: str, node: str) -> list[dict[str, Any]]:
    """The messages of a trace in this journal, each with its tasks' states here: those
    that store it, and the one whose own trace it is (stored as NULL: see own_trace_id)."""
    root = trace_id[:30] if own_trace_id(trace_id[:30]) == trace_id else ""
    rows = db.execute("SELECT id, name, parent_id, published_at, done_at FROM messages"
                      " WHERE trace_id = ?1 OR (id = ?2 AND trace_id IS NULL)"
                      " ORDER BY published_at LIMIT ?3",
                      (trace_id, root, MAX_MESSAGES)).fetchall()
    messages = []
    for mid, name, parent_id, published_at, done_at in rows:
        tasks = _tasks(db, mid, done_at)
        messages.append({"id": mid, "name": name, "parent_id": parent_id, "kind": "cast",
                         "published_at": published_at, "nodes": [node],
                         "tasks": [{**t, "node": node} for t in tasks]})
    return messages


def _tasks(db: sqlite3.Connection, mid: str, done_at: float | None) -> list[dict[str, Any]]:
    """Each task's state for one message: waiting or running (a delivery), dead or
    expired (a dead letter), cancelled, else handled."""
    states: dict[str, dict[str, Any]] = {}
    for task, state, attempt, error in db.execute(
            "SELECT task, state, attempt, last_error FROM deliveries WHERE message_id = ?",
            (mid,)):
        states[task] = {"task": task, "state": "queued" if state == "queued" else "running",
                        "attempt": attempt, "ended_at": None,
                        **({"error": error} if error else {})}
    for task, attempt, error_class, error, died_at in db.execute(
            "SELECT task, attempt, error_class, error, died_at FROM dead_letters"
            " WHERE message_id = ?", (mid,)):
        states[task] = {"task": task, "state": "expired" if error_class == "Expired" else "dead",
                        "attempt": attempt, "ended_at": died_at, "error_class": error_class,
                        "error": error}
    cancelled = db.execute("SELECT cancelled_at FROM cancelled WHERE message_id = ?",
                           (mid,)).fetchone()
    for (task,) in db.execute("SELECT task FROM received WHERE message_id = ?", (mid,)):
        if task not in states:
            states[task] = {"task": task, "state": "handled" if cancelled is None
                            else "cancelled", "attempt": None,
                            "ended_at": done_at if cancelled is None else cancelled[0]}
    return sorted(states.values(), key=lambda t: t["task"])


def _call_view(call: CallRecord) -> dict[str, Any]:
    record = asdict(call)
    task = {"task": call.task, "node": call.node, "state": call.outcome, "attempt": 1,
            "ended_at": call.started + call.duration_s, "duration_s": call.duration_s}
    if call.error_class:
        task["error_class"] = call.error_class
    return {"id": record["id"], "name": call.name, "parent_id": call.parent_id,
            "kind": "call", "published_at": call.started, "nodes": [call.node],
            "node": call.node, "tasks": [task]}


# ---------------------------------------------------------------- merging the nodes' views


def merge(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One list of the messages the nodes told of, oldest first. Where two nodes tell of
    the same task of a message, the one still holding (or that ended it) wins over one
    that had only forwarded it; both done, the later."""
    merged: dict[str, dict[str, Any]] = {}
    for view in views:
        for message in view["messages"]:
            if not (isinstance(message, dict) and isinstance(message.get("id"), str)):
                continue
            known = merged.setdefault(message["id"], {**message, "nodes": [], "tasks": []})
            known["nodes"] = sorted({*known["nodes"], *message.get("nodes", [])})
            tasks = {t["task"]: t for t in known["tasks"]}
            for task in message.get("tasks", []):
                tasks[task["task"]] = _believed(tasks.get(task["task"]), task)
            known["tasks"] = sorted(tasks.values(), key=lambda t: t["task"])
    for message in merged.values():
        ran = [t["node"] for t in message["tasks"] if t.get("node")]
        message["node"] = ran[0] if ran else (message["nodes"] or [None])[0]
    return sorted(merged.values(), key=lambda m: (m.get("published_at") or 0, m["id"]))


def _believed(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    if old is None:
        return new
    old_holds, new_holds = old["state"] in _HOLDING, new["state"] in _HOLDING
    if old_holds != new_holds:
        return old if old_holds else new
    return new if (new.get("ended_at") or 0) > (old.get("ended_at") or 0) else old

