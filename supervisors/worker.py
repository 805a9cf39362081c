"""The Worker actor: owns one worker OS process and its pipes, runs one job at a time.

Started by its task's supervisor. `init()` spawns the process and calls its
`setup`; then the actor offers itself to its task's pool (the asyncio side)
and runs the `Job`s the pool hands it, in its own thread, with the blocking
`WorkerConnection`. After each job it takes the next claimed one from the
pool itself, and writes it into the worker's pipe before reading the current
answer, so the worker never waits between messages (it still handles them
one at a time). Each job's outcome goes back through `Job.done`. When the
process dies, hangs past the message timeout or breaks the protocol, the job
is reported as lost (so it is redelivered), the one queued behind it as never
started, and the actor crashes on purpose: its supervisor starts a fresh worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yptask.errors import CallTimeout, ProtocolError, WorkerExited, YPTaskError
from yptask.supervision import ChildLink, ExitReason, Supervised
from yptask.worker_connection import WorkerConnection
from yptask.worker_process import WorkerSpec

__all__ = ["Job", "Outcome", "ProcessGone", "WorkerActor", "WorkerConfig", "WorkerHooks"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How a job ended: a result, a handler's error, or a lost worker (then redeliver)."""

    result: Any = None
    error: YPTaskError | None = None
    worker_lost: bool = False
    started: bool = True  # False: the worker never read it, so no attempt was spent


@dataclass(frozen=True)
class Job:
    """One message for a worker. `done` is called once, in the worker's thread."""

    name: str
    payload: Any
    meta: dict[str, Any]
    timeout_s: float
    done: Callable[[Outcome], None]


@dataclass(frozen=True)
class ProcessGone:
    """Told to a worker actor when its process exited while it was idle."""

    pid: int


@dataclass(frozen=True)
class WorkerHooks:
    """How a worker actor reaches the node: thread-safe callbacks, supplied by the node."""

    ready: Callable[[str, Any], None]  # (task, actor ref): the worker is free for a job
    watch: Callable[[str, int, Any], None]  # (task, pid, ref): tell ProcessGone when it exits
    # (task, actor ref): hand this worker no more jobs; returns once the pool knows
    retire: Callable[[str, Any], None]
    # (task, actor ref): the next claimed delivery for this worker, or None
    pull: Callable[[str, Any], Job | None]


@dataclass(frozen=True)
class WorkerConfig:
    """What one worker actor needs: its task, how to start its process, how to set it up."""

    task: str
    spec: WorkerSpec
    setup_info: dict[str, Any]
    setup_timeout_s: float
    shutdown_timeout_s: float


class WorkerActor(Supervised):
    """One worker process of one task."""

    def __init__(self, config: WorkerConfig, hooks: WorkerHooks, *,
                 link: ChildLink | None = None) -> None:
        super().__init__(link=link)
        self.config = config
        self.task = config.task
        self.hooks = hooks
        self.conn: WorkerConnection | None = None
        self.handled = 0

    def init(self) -> None:
        self.conn = WorkerConnection(self.config.spec)
        try:
            self.hooks.watch(self.task, self.conn.pid, self.actor_ref)
            self.conn.call("yptask", "setup", [self.config.setup_info],
                           self.config.setup_timeout_s)
        except BaseException:
            # pykka runs no cleanup hook for a failed start: end the process here.
            self.conn.kill()
            self.conn.wait()
            raise
        self.hooks.ready(self.task, self.actor_ref)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Job):
            job: Job | None = message
            self._send(message)
            while job is not None:
                # Send the next claimed delivery before reading this answer: the worker
                # finds it waiting and never sleeps between messages.
                following = self.hooks.pull(self.task, self.actor_ref)
                if following is not None:
                    self._send(following, behind=job)
                self._finish(job, following)
                job = following
            self.hooks.ready(self.task, self.actor_ref)
        elif (isinstance(message, ProcessGone) and self.conn is not None
              and self.conn.pid == message.pid):
            raise WorkerExited(f"worker {message.pid} of task {self.task} exited while idle")
        return None

    def _send(self, job: Job, behind: Job | None = None) -> None:
        """Write a job's call; on a dead worker settle it (and `behind`) as lost and crash."""
        assert self.conn is not None
        try:
            self.conn.send("yptask", "handle", [job.name, job.payload, job.meta])
        except WorkerExited as exc:
            job.done(Outcome(error=exc, worker_lost=True, started=False))
            if behind is not None:
                behind.done(Outcome(error=exc, worker_lost=True))
            raise  # crash on purpose: the supervisor starts a fresh worker

    def _finish(self, job: Job, following: Job | None) -> None:
        """Read `job`'s answer and settle it; `following` is already in the worker's pipe."""
        assert self.conn is not None
        try:
            result = self.conn.receive(job.timeout_s)
        except (WorkerExited, CallTimeout, ProtocolError) as exc:
            job.done(Outcome(error=exc, worker_lost=True))
            if following is not None:  # never started: the worker died before reading it
                following.done(Outcome(error=exc, worker_lost=True, started=False))
            raise  # crash on purpose: the supervisor starts a fresh worker
        except YPTaskError as exc:  # the handler raised, or has no handler for the name
            job.done(Outcome(error=exc))
        except BaseException as exc:  # a bug here: the jobs must still be settled
            lost = Outcome(error=WorkerExited(f"worker actor failed: {exc!r}"), worker_lost=True)
            job.done(lost)
            if following is not None:
                following.done(lost)
            raise
        else:
            job.done(Outcome(result=result))
        self.handled += 1

    def terminate(self, reason: ExitReason) -> None:
        if self.conn is None:
            return
        if reason is ExitReason.NORMAL:
            self.conn.stop(self.config.shutdown_timeout_s)
        else:
            self.conn.kill()
            self.conn.wait()
