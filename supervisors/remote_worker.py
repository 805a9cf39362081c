"""The remote worker actor: one of a remote task's workers, delivering through a backend.

A task whose workers are an endpoint (`url`, `fastcgi`) has, per node, as many
of these actors as its `workers` count there: so many messages are in flight
to the endpoint at once. Each holds one `RemoteBackend` (one connection) and
runs one job at a time in its own thread, no pipelining: it offers itself to
its task's pool (with a connection the pool cannot claim, so every call comes
to it as a `Job`), runs the job, then pulls the next ones from the pool until
there are none, and offers itself again.

What becomes of a job: a success is handled; an answer that is a failure
(`HandlerError`) and no answer in time (`CallTimeout`) spend the attempt (the
backend drops its connection, the actor serves on); a message that cannot be
encoded is refused (dead-lettered at once). An endpoint that cannot be reached
(`WorkerUnreachable`) spends no attempt: the job is put back and the actor
crashes on purpose, so that its supervisor's restart intensity and backoff
apply (and `status` shows the task in backoff) rather than every waiting
message burning its attempts while the endpoint is down. Anything unexpected
settles the job held before it propagates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yptask.config.tasks import TaskDef
from yptask.errors import (
    CallTimeout,
    EncodeError,
    HandlerError,
    WorkerExited,
    WorkerStartFailed,
    WorkerUnreachable,
    YPTaskError,
)
from yptask.supervision.child import ChildLink, Supervised
from yptask.supervision.policy import ExitReason
from yptask.workers.job import Job, Outcome
from yptask.workers.port import NOT_CLAIMABLE, PoolPort
from yptask.workers.remote import RemoteBackend, backend_for

__all__ = ["RemoteWorkerActor", "RemoteWorkerConfig"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteWorkerConfig:
    """What one remote worker actor needs: its task, and how to make its backend."""

    task: TaskDef
    worker_id: str
    backend: Callable[[TaskDef], RemoteBackend] = backend_for


class RemoteWorkerActor(Supervised):
    """One worker of a remote task: one message at a time to its endpoint."""

    def __init__(self, config: RemoteWorkerConfig, pool: PoolPort, *,
                 link: ChildLink | None = None) -> None:
        super().__init__(link=link)
        self.config = config
        self.task = config.task.name
        self.endpoint = config.task.url or config.task.fastcgi
        self.pool = pool
        self.backend: RemoteBackend | None = None
        self.handled = 0
        self._sent = False  # whether the job being run may have reached the endpoint

    def init(self) -> None:
        try:
            self.backend = self.config.backend(self.config.task)
        except YPTaskError as exc:  # expected (no FastCGI here, say): one line, no traceback
            log.warning("worker of task %s could not start: %s", self.task, exc)
            raise WorkerStartFailed(f"the workers of task {self.task} cannot start: {exc}",
                                    task=self.task, exit="not started") from None
        log.info("remote worker started: %s -> %s", self.config.worker_id, self.endpoint)
        self.pool.worker_ready(self.actor_ref, NOT_CLAIMABLE)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Job):
            try:
                self._run_jobs(message)
            except WorkerUnreachable:  # logged, its job put back: crash on purpose
                self.crash()
                return None
            self.pool.worker_ready(self.actor_ref, NOT_CLAIMABLE)
        return None

    def _run_jobs(self, first: Job) -> None:
        """Run `first`, then claimed deliveries for as long as there are any."""
        job: Job | None = first
        try:
            while job is not None:
                self._run(job)
                job = None  # settled
                job = self.pool.pull(self.actor_ref)
        except BaseException as exc:
            # Whatever went wrong, the job held is settled: put back if the endpoint never
            # got it, else its attempt is spent.
            if job is not None:
                error = exc if isinstance(exc, YPTaskError) else \
                    WorkerExited(f"remote worker actor failed: {exc!r}")
                job.done(Outcome.lost(error) if self._sent and not isinstance(
                    exc, WorkerUnreachable) else Outcome.unstarted(error))
            raise

    def _run(self, job: Job) -> None:
        """Deliver one job and settle it. An endpoint that cannot be reached, or anything
        unexpected, is raised (`_run_jobs` settles the job)."""
        assert self.backend is not None
        self._sent = False
        deadline = job.meta.get("deadline")
        if deadline is not None and deadline <= time.time():  # the pool expires it
            job.done(Outcome.unstarted(CallTimeout("its deadline passed before a worker "
                                                   "was free to take it")))
            return
        if job.started is not None:
            job.started()
        self._sent = True  # from here on the endpoint may have it
        began = time.monotonic()
        try:
            result = self.backend.handle(job.name, job.payload, job.meta, job.timeout_s)
        except WorkerUnreachable as exc:
            log.warning("task %s: endpoint %s unreachable; message %s put back, worker "
                        "restarting: %s", self.task, self.endpoint, job.meta.get("id"), exc)
            raise  # a crash on purpose: the supervisor's intensity and backoff apply
        except EncodeError as exc:
            log.error("message %s cannot be sent to task %s's endpoint: %s",
                      job.meta.get("id"), self.task, exc)
            job.done(Outcome.refused(exc))
        except (HandlerError, CallTimeout) as exc:
            job.done(Outcome.failed(exc, time.monotonic() - began, self.config.worker_id))
        else:
            job.done(Outcome.handled(result, time.monotonic() - began, self.config.worker_id))
        self.handled += 1

    def terminate(self, reason: ExitReason) -> None:
        if self.backend is not None:
            self.backend.close()
