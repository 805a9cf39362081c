"""What travels between a task's pool and its workers: `Job`, its `Outcome`, delivery meta.

Also the pipeline's sizes in one place: how many jobs a worker's pipe holds ahead
of the answer being read (PIPELINE_DEPTH, bounded in bytes by PIPE_ROOM), when
that depth adapts (SLOW_ANSWER_S, ANSWER_WAITING_S), and how much a pool claims
ahead from the journal to keep those pipes full (BACKLOG_PER_WORKER, MAX_CLAIM).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yptask.errors import YPTaskError
from yptask.ingress.trace import traceparent_of

__all__ = ["ANSWER_WAITING_S", "BACKLOG_PER_WORKER", "MAX_CLAIM", "PIPELINE_DEPTH", "PIPE_ROOM",
           "SLOW_ANSWER_S", "Ending", "Job", "Outcome", "delivery_meta"]

# Jobs written into a worker's pipe ahead of the answer being read, at most. While the
# node's event loop is busy, the actor's thread can wait milliseconds for the GIL after each
# read: the pipe must hold enough work to keep the worker busy meanwhile (with 4 jobs the
# workers of a no-op task sat idle 80% of the time under load). The depth adapts per worker:
# it doubles when an answer was already waiting to be read (the worker ran ahead of us), and
# halves when the worker kept us waiting longer than SLOW_ANSWER_S, so slow messages stay
# with the pool, for whichever worker is free first, rather than queue behind a busy one.
PIPELINE_DEPTH = 32
SLOW_ANSWER_S = 0.005  # the interpreter's GIL switch interval: about the longest GIL wait
ANSWER_WAITING_S = 50e-6  # an answer read within this had arrived before we asked
# Bytes of unanswered calls that may wait in a worker's input pipe. Well under the
# 64 KiB of a Linux pipe, so writing them never blocks: a write that blocked while the
# worker blocks writing a long answer (which nobody reads meanwhile) would deadlock.
PIPE_ROOM = 32 * 1024
# Claimed ahead per worker: enough to refill a worker's pipeline (PIPELINE_DEPTH) twice,
# so that workers pulling in their own threads rarely find the backlog empty; a new
# high-priority message waits behind at most this many, plus a pipeline, per worker.
BACKLOG_PER_WORKER = 64
MAX_CLAIM = 256


class Ending(enum.Enum):
    """How a job ended, and so what becomes of its delivery."""

    HANDLED = "handled"  # the handler answered: ack
    FAILED = "failed"  # the handler raised (or has none for the name): an attempt spent
    REFUSED = "refused"  # the message itself cannot be delivered: no retry can help
    LOST = "lost"  # the worker died, hung or broke the protocol on it: an attempt spent
    UNSTARTED = "unstarted"  # the worker never read it: no attempt spent, deliver again


# Slotted, not frozen: one is made per message on the hot path, and a frozen dataclass's
# __init__ costs about three times as much (2.0 against 0.7 us with ten fields).
# Nothing changes one once it is made.
@dataclass(slots=True)
class Outcome:
    """How a job ended: its `ending`, the handler's result or the error, and how long it took."""

    ending: Ending
    result: Any = None
    error: YPTaskError | None = None
    duration_s: float | None = None  # how long the handler took, when it answered
    worker: str | None = None  # who answered: the worker's pid, or a remote worker's id

    @classmethod
    def handled(cls, result: Any, duration_s: float, worker: str | None = None) -> Outcome:
        return cls(Ending.HANDLED, result=result, duration_s=duration_s, worker=worker)

    @classmethod
    def failed(cls, error: YPTaskError, duration_s: float | None = None,
               worker: str | None = None) -> Outcome:
        return cls(Ending.FAILED, error=error, duration_s=duration_s, worker=worker)

    @classmethod
    def refused(cls, error: YPTaskError) -> Outcome:
        return cls(Ending.REFUSED, error=error)

    @classmethod
    def lost(cls, error: YPTaskError) -> Outcome:
        return cls(Ending.LOST, error=error)

    @classmethod
    def unstarted(cls, error: YPTaskError) -> Outcome:
        return cls(Ending.UNSTARTED, error=error)

    @property
    def started(self) -> bool:
        """Whether the worker took the job (its attempt is spent)."""
        return self.ending is not Ending.UNSTARTED

    @property
    def worker_lost(self) -> bool:
        """Whether the worker is gone: it was lost on this job, or before it took it."""
        return self.ending in (Ending.LOST, Ending.UNSTARTED)


@dataclass(slots=True)  # as Outcome
class Job:
    """One message for a worker. `done` is called once, in the worker's thread; `started`,
    if given, before it, in the same thread, once the worker is on this job."""

    name: str
    payload: Any
    meta: dict[str, Any]
    timeout_s: float
    done: Callable[[Outcome], None]
    started: Callable[[], None] | None = None


def delivery_meta(message_id: str, attempt: int, published_at: float, priority: int, *,
                  deadline: float | None = None, trace_id: str | None = None,
                  parent_id: str | None = None) -> dict[str, Any]:
    """The meta a handler is given with a message (`deadline`, the trace and the parent
    only when it has them). `traceparent` names this message as the parent span of what
    its handler casts or calls next."""
    meta: dict[str, Any] = {"id": message_id, "attempt": attempt,
                            "published_at": published_at, "priority": priority}
    if deadline is not None:
        meta["deadline"] = deadline
    if trace_id is not None:
        meta["trace_id"] = trace_id
        meta["traceparent"] = traceparent_of(trace_id, message_id)
    if parent_id is not None:
        meta["parent_id"] = parent_id
    return meta
