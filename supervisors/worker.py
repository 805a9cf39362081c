"""The Worker actor: owns one worker OS process and its pipes, runs one job at a time.

Started by its task's supervisor. `init()` spawns the process, has the node's
exit watch watch it, and calls its `setup`; then the actor offers itself to
its task's pool (through the pool's port, `PoolPort`) and runs the `Job`s the
pool hands it, in its own thread, with the blocking `WorkerConnection`. After
each job it takes the next claimed one from the pool itself, and writes some
into the worker's pipe ahead of reading the oldest answer (as many as keep a
fast worker busy, see PIPELINE_DEPTH), so the worker never waits between
messages (it still handles them one at a time). The job at the head of the
pipe, the one the worker is on, is reported through `Job.started` (a frame the
worker has not read yet is not started: its attempt is not spent). Each job's
outcome goes back through `Job.done`. While the actor is idle, the pool may
run a call on its pipes from the event loop, having claimed the connection,
which the actor holds before touching them again. When the process dies, hangs
past the message timeout or breaks the protocol, the oldest unanswered job is
reported as lost (so it is redelivered), the ones queued behind it as never
started, and the actor crashes on purpose: its supervisor starts a fresh
worker. A job whose message cannot be encoded for the worker fails for good
(it is dead-lettered) and the worker serves on; any other error while the
actor holds jobs settles them all before it propagates, so no delivery is left
in flight.

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
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

import pykka

from yptask.errors import (
    CallTimeout,
    EncodeError,
    ProtocolError,
    WorkerExited,
    WorkerStartFailed,
    YPTaskError,
    exit_text,
    last_line,
)
from yptask.supervision.child import ChildLink, Supervised
from yptask.supervision.policy import ExitReason
from yptask.workers.connection import WorkerConnection
from yptask.workers.exits import ExitWatch
from yptask.workers.job import ANSWER_WAITING_S, PIPELINE_DEPTH, SLOW_ANSWER_S, Job, Outcome
from yptask.workers.output import WorkerLogs
from yptask.workers.port import PoolPort
from yptask.workers.process import WorkerSpec, handle_call

__all__ = ["ProcessGone", "WorkerActor", "WorkerConfig"]

log = logging.getLogger(__name__)
# What a failed start keeps of the worker's stderr: its last lines, and at most this much.
STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 4096
# A worker whose output closed during its start is given this long to exit on its own,
# so that its own exit status is reported rather than our kill's.
EXIT_GRACE_S = 2.0


@dataclass(frozen=True)
class ProcessGone:
    """Told to a worker actor when its process exited while it was idle."""

    pid: int


@dataclass(frozen=True)
class WorkerConfig:
    """What one worker actor needs: its task, how to start its process, how to set it up."""

    task: str
    spec: WorkerSpec
    setup_info: dict[str, Any]
    setup_timeout_s: float
    shutdown_timeout_s: float
    logs: WorkerLogs | None = None  # the node's writer of the spec's log files


class WorkerActor(Supervised):
    """One worker process of one task."""

    def __init__(self, config: WorkerConfig, pool: PoolPort, exits: ExitWatch, *,
                 link: ChildLink | None = None) -> None:
        super().__init__(link=link)
        self.config = config
        self.task = config.task
        self.pool = pool
        self.exits = exits
        self.conn: WorkerConnection | None = None
        self.handled = 0
        self._busy_since = 0.0  # when the worker started on the oldest unanswered job
        self._depth = 1  # jobs this worker's pipe may hold now (see PIPELINE_DEPTH)

    def init(self) -> None:
        spec = self.config.spec
        stderr_from = _size(spec.stderr_path)  # this start's stderr is what follows
        if spec.cwd is not None and not os.path.isdir(spec.cwd):
            raise self._start_failed("not started", stderr_from, reason=(
                f"its working directory {spec.cwd} does not exist (the task's cwd)"))
        try:
            self.conn = WorkerConnection(spec, self.config.logs)
        except OSError as exc:  # not even started (a command not found, with no cwd)
            raise self._start_failed("not started", stderr_from, reason=str(exc)) from None
        try:
            pid = self.conn.pid
            self.exits.watch(self.task, pid, partial(_tell, self.actor_ref, ProcessGone(pid)))
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
            raise self._start_failed(exit_text(code), stderr_from, reason=reason) from None
        self.pool.worker_ready(self.actor_ref, self.conn)

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
        output = None if self.conn is None else self.conn.output
        tail = _tail(path, stderr_from) if output is None else _last_lines(
            output.stderr_tail(EXIT_GRACE_S))
        log.warning("worker of task %s could not start: %s; last stderr line: %s (stderr log: "
                    "%s)", self.task, exit if reason is None else f"{reason} ({exit})",
                    last_line(tail) or "-", path or "the node's own")
        return WorkerStartFailed.of(self.task, exit, tail, stderr_log=path, reason=reason)

    def on_receive(self, message: Any) -> Any:
        assert self.conn is not None
        if isinstance(message, Job):
            with self.conn.held():
                self._run_jobs(message)
            self.pool.worker_ready(self.actor_ref, self.conn)
        elif isinstance(message, ProcessGone) and self.conn.pid == message.pid:
            with self.conn.held():  # a call the pool runs on it ends first (the pipe closed)
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
                        held = self.pool.pull(self.actor_ref)
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
                  WorkerExited(f"worker actor failed: {exc!r}"), held,
                  head_unread=self.conn is not None and self.conn.lost_unread)
            raise

    def _send(self, job: Job, window: deque[Job]) -> bool:
        """Write a job's call behind the `window`, or fail a job that cannot be encoded (or
        give back unstarted one whose deadline passed); False if it must wait for answers
        (a job with a deadline waits for an empty pipe). On a dead worker raise."""
        assert self.conn is not None
        deadline = job.meta.get("deadline")
        if deadline is not None:  # written only to an idle worker, so never run past it
            if window:
                return False
            if deadline <= time.time():  # the pool dead-letters it as expired
                job.done(Outcome.unstarted(CallTimeout("its deadline passed before a worker "
                                                       "was free to take it")))
                return True
        try:
            sent = self.conn.send(handle_call(job.name, job.payload, job.meta))
        except EncodeError as exc:  # nothing was written: the worker serves on
            log.error("message %s cannot be sent to a worker of task %s: %s",
                      job.meta.get("id"), self.task, exc)
            job.done(Outcome.refused(EncodeError(f"the message cannot be encoded for its "
                                                 f"worker: {exc}")))
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
            window.popleft().done(Outcome.failed(exc, self._took(), str(self.conn.pid)))
        else:
            window.popleft().done(Outcome.handled(result, self._took(), str(self.conn.pid)))
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
        with self.conn.held():  # a call the pool is running on this idle worker ends first
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


def _last_lines(text: str) -> str:
    """At most the last STDERR_TAIL_LINES lines of `text`."""
    return "\n".join(text.splitlines()[-STDERR_TAIL_LINES:])


def _begin(job: Job) -> None:
    if job.started is not None:
        job.started()


def _lose(window: deque[Job], error: YPTaskError, held: Job | None, *,
          head_unread: bool) -> None:
    """Settle the jobs of a worker that is gone: the oldest unanswered one may have
    started (a spent attempt) unless it is known to be `head_unread`; the ones behind it,
    and `held`, were never read."""
    if window:
        head = window.popleft()
        head.done(Outcome.unstarted(error) if head_unread else Outcome.lost(error))
    for job in (*window, *([held] if held is not None else [])):
        job.done(Outcome.unstarted(error))
    window.clear()


def _tell(ref: Any, message: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)
