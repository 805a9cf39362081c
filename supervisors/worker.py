"""The Worker actor: owns one worker OS process and its pipes, runs one job at a time.

Started by its task's supervisor. `init()` spawns the process and calls its
`setup`; then the actor offers itself to its task's pool (the asyncio side)
and runs the `Job`s the pool hands it, in its own thread, with the blocking
`WorkerConnection`. After each job it takes the next claimed one from the
pool itself, and writes some into the worker's pipe ahead of reading the
oldest answer (as many as keep a fast worker busy, see PIPELINE_DEPTH), so
the worker never waits between messages (it still handles them one at a
time). The job at the head of the pipe, the one the worker is on, is reported
through `Job.started` (a frame the worker has not read yet is not started:
its attempt is not spent). Each job's outcome goes back through `Job.done`.
While the actor is idle, the pool may run a call on its pipes from the event
loop, holding the connection's lock, which the actor takes before touching
them again. When the process dies, hangs past the message timeout or breaks
the protocol, the oldest unanswered job is reported as lost (so it is
redelivered), the ones queued behind it as never started, and the actor
crashes on purpose: its supervisor starts a fresh worker. A job whose message cannot be encoded for
the worker fails for good (it is dead-lettered) and the worker serves on; any
other error while the actor holds jobs settles them all before it propagates,
so no delivery is left in flight.

A worker that cannot start (it exits, or its setup fails, before it serves) is an
expected failure: `init()` logs one warning naming the task, the exit status, the
last line the worker wrote to stderr and that log's path, and raises
`WorkerStartFailed` with the last lines of this start's stderr (see STDERR_TAIL_*),
which its supervisor keeps so status and calls can show it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yptask.errors import (
    CallTimeout,
    EncodeError,
    ProtocolError,
    WorkerExited,
    WorkerStartFailed,
    YPTaskError,
    last_line,
)
from yptask.supervision.child import ChildLink, Supervised
from yptask.supervision.policy import ExitReason
from yptask.workers.connection import WorkerConnection
from yptask.workers.process import WorkerSpec, handle_call

__all__ = ["Job", "Outcome", "ProcessGone", "WorkerActor", "WorkerConfig", "WorkerHooks"]

log = logging.getLogger(__name__)

# Jobs written into a worker's pipe ahead of the answer being read, at most. While the
# node's event loop is busy, this thread can wait milliseconds for the GIL after each read:
# the pipe must hold enough work to keep the worker busy meanwhile (with 4 jobs the workers
# of a no-op task sat idle 80% of the time under load). The depth adapts per worker: it
# doubles when an answer was already waiting to be read (the worker ran ahead of us), and
# halves when the worker kept us waiting longer than SLOW_ANSWER_S, so slow messages stay
# with the pool, for whichever worker is free first, rather than queue behind a busy one.
PIPELINE_DEPTH = 32
SLOW_ANSWER_S = 0.005  # the interpreter's GIL switch interval: about the longest GIL wait
ANSWER_WAITING_S = 50e-6  # an answer read within this had arrived before we asked
# What a failed start keeps of the worker's stderr: its last lines, and at most this much.
STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 4096
# A worker whose output closed during its start is given this long to exit on its own,
# so that its own exit status is reported rather than our kill's.
EXIT_GRACE_S = 2.0


@dataclass(frozen=True)
class Outcome:
    """How a job ended: a result, a handler's error, or a lost worker (then redeliver)."""

    result: Any = None
    error: YPTaskError | None = None
    worker_lost: bool = False
    started: bool = True  # False: the worker never read it, so no attempt was spent
    duration_s: float | None = None  # how long the handler took, when it answered
    permanent: bool = False  # the message itself cannot be delivered: no retry can help


@dataclass(frozen=True)
class Job:
    """One message for a worker. `done` is called once, in the worker's thread; `started`,
    if given, before it, in the same thread, once the worker is on this job."""

    name: str
    payload: Any
    meta: dict[str, Any]
    timeout_s: float
    done: Callable[[Outcome], None]
    started: Callable[[], None] | None = None


@dataclass(frozen=True)
class ProcessGone:
    """Told to a worker actor when its process exited while it was idle."""

    pid: int


@dataclass(frozen=True)
class WorkerHooks:
    """How a worker actor reaches the node: thread-safe callbacks, supplied by the node."""

    # (task, actor ref, connection): the worker is free for a job; while it is idle the
    # pool may run a call on its connection itself, holding the connection's lock
    ready: Callable[[str, Any, WorkerConnection], None]
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
        self._busy_since = 0.0  # when the worker started on the oldest unanswered job
        self._depth = 1  # jobs this worker's pipe may hold now (see PIPELINE_DEPTH)

    def init(self) -> None:
        spec = self.config.spec
        stderr_from = _size(spec.stderr_path)  # this start's stderr is what follows
        try:
            self.conn = WorkerConnection(spec)
        except OSError as exc:  # not even started (a command not found, with no cwd)
            raise self._start_failed("not started", stderr_from, reason=str(exc)) from None
        try:
            self.hooks.watch(self.task, self.conn.pid, self.actor_ref)
            self.conn.call("yptask", "setup", [self.config.setup_info],
                           self.config.setup_timeout_s)
        except BaseException as exc:
            # pykka runs no cleanup hook for a failed start: end the process here. One whose
            # output closed is let exit first: its own status says more than our kill.
            exited = isinstance(exc, WorkerExited) and self._exits_within(EXIT_GRACE_S)
            self.conn.kill()
            code = self.conn.wait()
            if not isinstance(exc, YPTaskError):
                raise
            reason = None if exited else str(exc)
            raise self._start_failed(_exit_text(code), stderr_from, reason=reason) from None
        self.hooks.ready(self.task, self.actor_ref, self.conn)

    def _exits_within(self, timeout_s: float) -> bool:
        """Whether the worker process exits within `timeout_s`."""
        assert self.conn is not None
        deadline = time.monotonic() + timeout_s
        while self.conn.poll() is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _start_failed(self, exit: str, stderr_from: int, *,
                      reason: str | None) -> WorkerStartFailed:
        """Log the one line a failed start gets; return the error that says why."""
        path = self.config.spec.stderr_path
        tail = _tail(path, stderr_from)
        log.warning("worker of task %s could not start: %s; last stderr line: %s (stderr log: "
                    "%s)", self.task, exit if reason is None else f"{reason} ({exit})",
                    last_line(tail) or "-", path or "the node's own")
        return WorkerStartFailed.of(self.task, exit, tail, stderr_log=path, reason=reason)

    def on_receive(self, message: Any) -> Any:
        assert self.conn is not None
        if isinstance(message, Job):
            with self.conn.lock:
                self._run_jobs(message)
            self.hooks.ready(self.task, self.actor_ref, self.conn)
        elif isinstance(message, ProcessGone) and self.conn.pid == message.pid:
            with self.conn.lock:  # a call the pool runs on it ends first (the pipe closed)
                raise WorkerExited(f"worker {message.pid} of task {self.task} exited while "
                                   "idle")
        return None

    def _run_jobs(self, first: Job) -> None:
        """Run `first`, then claimed deliveries for as long as there are any.

        Jobs are written ahead into the worker's pipe before the oldest answer is
        read (see PIPELINE_DEPTH): the worker finds its next message waiting and never
        sleeps between messages (it still handles them one at a time, in order). A
        job too big to wait in the pipe is held until the answers ahead of it are read.
        """
        window: deque[Job] = deque()  # written, not yet answered, oldest first
        held: Job | None = first  # taken from the pool, not yet written
        try:
            while True:
                while len(window) < self._depth:
                    if held is None:
                        held = self.hooks.pull(self.task, self.actor_ref)
                        if held is None:
                            break
                    if not window:  # the worker starts on it now
                        self._busy_since = time.monotonic()
                    if not self._send(held, window):
                        break
                    held = None
                if not window:  # an empty pipe takes any job, so nothing is held either
                    return
                self._finish(window, held)
        except BaseException as exc:
            # Whatever went wrong, no job this actor holds is left unsettled (a job
            # settled already keeps its first outcome).
            _lose(window, exc if isinstance(exc, YPTaskError) else
                  WorkerExited(f"worker actor failed: {exc!r}"), held)
            raise

    def _send(self, job: Job, window: deque[Job]) -> bool:
        """Write a job's call behind the `window`, or fail a job that cannot be encoded;
        False if it must wait for answers. On a dead worker raise (the caller settles)."""
        assert self.conn is not None
        try:
            sent = self.conn.send(handle_call(job.name, job.payload, job.meta))
        except EncodeError as exc:  # nothing was written: the worker serves on
            log.error("message %s cannot be sent to a worker of task %s: %s",
                      job.meta.get("id"), self.task, exc)
            job.done(Outcome(error=EncodeError(f"the message cannot be encoded for its "
                                               f"worker: {exc}"), permanent=True))
            return True
        if sent:
            window.append(job)
            if len(window) == 1:  # nothing ahead of it: the worker is on it now
                _begin(job)
        return sent

    def _finish(self, window: deque[Job], held: Job | None) -> None:
        """Read the oldest job's answer and settle it; `held` is not written yet."""
        assert self.conn is not None
        asked = time.monotonic()
        try:
            result = self.conn.receive(window[0].timeout_s)
        except (WorkerExited, CallTimeout, ProtocolError):
            raise  # crash on purpose (the jobs are settled): a fresh worker is started
        except YPTaskError as exc:  # the handler raised, or has no handler for the name
            window.popleft().done(Outcome(error=exc, duration_s=self._took()))
        else:
            window.popleft().done(Outcome(result=result, duration_s=self._took()))
        if window:  # the worker takes the next job from its pipe at once
            _begin(window[0])
        self._adapt(waited_s=time.monotonic() - asked, written=len(window) + 1)
        self.handled += 1

    def _took(self) -> float:
        """How long the answered job ran: since it was sent, or since the answer before it
        (the worker takes the next job waiting in its pipe at once)."""
        now = time.monotonic()
        took, self._busy_since = now - self._busy_since, now
        return took

    def _adapt(self, *, waited_s: float, written: int) -> None:
        """Deepen or shallow the pipeline after waiting `waited_s` for an answer, with
        `written` jobs in the pipe."""
        if waited_s > SLOW_ANSWER_S:
            self._depth = max(1, self._depth // 2)
        elif waited_s < ANSWER_WAITING_S and written >= self._depth:
            self._depth = min(PIPELINE_DEPTH, self._depth * 2)

    def terminate(self, reason: ExitReason) -> None:
        if self.conn is None:
            return
        with self.conn.lock:  # a call the pool is running on this idle worker ends first
            if reason is ExitReason.NORMAL:
                self.conn.stop(self.config.shutdown_timeout_s)
            else:
                self.conn.kill()
                self.conn.wait()


def _size(path: str | None) -> int:
    """The size of a log file now (0: none yet, or no file)."""
    if path is None:
        return 0
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _tail(path: str | None, start: int) -> str:
    """The last lines written to the log at `path` since offset `start`, bounded by
    STDERR_TAIL_LINES and STDERR_TAIL_BYTES."""
    if path is None:
        return ""
    with contextlib.suppress(OSError), open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end < start:  # the file was truncated (rotated) meanwhile: its start is ours
            start = 0
        cut = end - STDERR_TAIL_BYTES > start  # then the first line read is a part of one
        f.seek(max(start, end - STDERR_TAIL_BYTES))
        lines = f.read(STDERR_TAIL_BYTES).decode("utf-8", "replace").splitlines()
        return "\n".join((lines[1:] if cut else lines)[-STDERR_TAIL_LINES:])
    return ""


def _exit_text(code: int) -> str:
    """An exit status as `waitstatus_to_exitcode` gives it, for people: negative is a signal."""
    if code >= 0:
        return f"status {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


def _begin(job: Job) -> None:
    if job.started is not None:
        job.started()


def _lose(window: deque[Job], error: YPTaskError, held: Job | None) -> None:
    """Settle the jobs of a worker that is gone: the oldest unanswered one may have
    started (a spent attempt); the ones behind it, and `held`, were never read."""
    if window:
        window.popleft().done(Outcome(error=error, worker_lost=True))
    for job in (*window, *([held] if held is not None else [])):
        job.done(Outcome(error=error, worker_lost=True, started=False))
    window.clear()
