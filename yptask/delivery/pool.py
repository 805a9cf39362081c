"""Delivery on the asyncio side: each task's pool of free workers and its delivery loop.

This is the narrow boundary between the event loop and the actor threads:
- worker actors announce they are free with `TaskPool.worker_ready`, called
  from their thread and moved onto the loop with `call_soon_threadsafe`;
- a job is handed to a worker actor with `tell` (never a blocking ask), and its
  outcome comes back to an asyncio future, again with `call_soon_threadsafe`.

A task's claimer keeps a backlog of claimed deliveries (a few per worker, so a
busy worker never runs dry between two claims). A worker that finishes a
message takes the next one from the backlog itself, in its own thread, and its
ack or failure goes straight to the journal thread: the event loop is not
involved per message, only once per claim. Idle workers are handed work by
the loop. A call (request/reply) goes to a free worker without the journal:
the loop has the worker's connection run it, having claimed it (the idle actor
does not touch its pipes meanwhile). `TaskPool` is the `PoolPort` its task's
worker actors are handed: it lives as long as its task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import pykka

from yptask.config.tasks import TaskDef
from yptask.delivery.claiming import BacklogClaims
from yptask.delivery.metrics import TaskMetrics
from yptask.delivery.outcomes import settle
from yptask.delivery.rate import RateGate
from yptask.delivery.schedule import DueTimes, effective_deadline, expire
from yptask.errors import CallTimeout, WorkerExited, WorkerUnreachable
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Delivery, Journal
from yptask.workers.job import BACKLOG_PER_WORKER, Ending, Job, Outcome, delivery_meta
from yptask.workers.port import Claimable, PoolPort

__all__ = ["TaskPool"]

log = logging.getLogger(__name__)

# A job whose outcome never arrives (its worker vanished with the job in its inbox)
# is given up this long after its own timeout, and redelivered.
JOB_GRACE_S = 10.0
# With nothing claimable, look again this often at most (besides at the next due time).
IDLE_POLL_S = 0.5
SPAWN_TIMEOUT_S = 60.0
MAX_CANCELLED = 1000  # cancelled ids a pool watches for at hand-out (oldest forgotten)
# Bound once: on 3.11 an enum member lookup costs about 0.2 us, and these run per message.
_HANDLED, _UNSTARTED = Ending.HANDLED, Ending.UNSTARTED


class TaskPool(PoolPort):
    """The free workers of one task on this node, and the loop that feeds them."""

    def __init__(self, task: TaskDef, node_name: str, journal: JournalThread,
                 loop: asyncio.AbstractEventLoop, supervisor: Callable[[], Any], *,
                 peers: Callable[[], list[Any]] = list, queued: Callable[[], int] = int) -> None:
        self.task = task
        self.node_name = node_name
        self.journal = journal
        self.loop = loop
        self._supervisor = supervisor  # returns a proxy of this task's supervisor (thread-safe)
        self._free: deque[Any] = deque()
        self._workers: dict[str, Any] = {}  # urn -> ref of every worker that offered itself
        self._connections: dict[str, Claimable] = {}  # urn -> its worker's connection
        self._free_since: dict[str, float] = {}
        self._spawning = False
        self._spawn_task: asyncio.Task[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._retired: set[str] = set()
        self._worker_freed = asyncio.Event()
        self._work_queued = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._backlog: deque[Delivery] = deque()  # claimed, not yet handed out (thread-safe)
        self._claims = BacklogClaims(journal, self._backlog)  # by lottery, or overtaking
        self._cancelled: dict[str, None] = {}  # ids cancelled since claimed: dropped at hand-out
        self._claim_asked = False  # a worker thread asked the loop to claim more
        self._closing = False
        self._counts = threading.Lock()
        self.handled = 0
        self.failed = 0
        self.in_flight = 0
        self.expired = 0  # deliveries dead-lettered unhandled: their deadline passed
        self.metrics = TaskMetrics()
        self._due = DueTimes()  # when the next delayed cast or retry of this task is due
        self.rate = RateGate(lambda: self.task, node_name, self._backlog, peers=peers,
                             demand=lambda: queued() + self.in_flight, loop=loop,
                             signal=self._work_queued.set)  # `rate_limit`: when each may start

    # -------------------------------------------------------------- from actor threads

    def worker_ready(self, ref: Any, conn: Claimable) -> None:
        """A worker actor is free; `conn` is its connection. Thread-safe."""
        self.loop.call_soon_threadsafe(self._add_free, ref, conn)

    def pull(self, ref: Any) -> Job | None:
        """The next claimed delivery as a job for `ref`, or None. Called in the worker's thread."""
        if self._closing or self.task.paused or ref.actor_urn in self._retired \
                or not self._backlog:
            return None
        job = self._next_job()
        if len(self._backlog) < self._low_water() and not self._claim_asked:
            self._claim_asked = True  # one wake-up of the loop, not one per pull
            self.loop.call_soon_threadsafe(self._work_queued.set)  # time to claim more
        return job

    def retire(self, ref: Any, timeout_s: float = 10.0) -> None:
        """Hand `ref` no more jobs; return once the loop knows. Call it from a thread."""
        done = asyncio.run_coroutine_threadsafe(self._retire(ref.actor_urn), self.loop)
        done.result(timeout_s)

    # -------------------------------------------------------------- on the loop

    def start(self) -> None:
        self._closing = False
        self._runner = self.loop.create_task(self._deliver_forever(),
                                             name=f"deliver {self.task.name}")
        self._reaper = self.loop.create_task(self._reap_forever(), name=f"reap {self.task.name}")

    async def stop_claiming(self) -> None:
        """Claim and hand out nothing more, reap no more; jobs already running go on.

        What stays in the backlog is claimed in the journal until `close` puts it back.
        """
        self._closing = True
        for background in (self._runner, self._reaper):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        self._runner = self._reaper = None

    async def close(self) -> None:
        """Stop claiming, and put back what is claimed and not handed out (if the journal
        refuses, it is delivered again at the next start all the same)."""
        await self.stop_claiming()
        try:
            await self._release_backlog()
        except Exception:
            log.exception("task %s: putting back claimed deliveries failed; they are "
                          "delivered again at the next start", self.task.name)

    def notify(self, priority: int | None = None) -> None:
        """New deliveries are journaled, the highest at `priority`: see BacklogClaims."""
        self._claims.notify(priority)
        self._work_queued.set()
        if not self._free:
            self._request_workers()

    def wake_at(self, due: float) -> None:
        """A delivery of this task is due at `due` (epoch s): the loop looks then."""
        if self._due.at(due):
            self._work_queued.set()  # so that the loop's wait ends by then

    @property
    def free_workers(self) -> int:
        return len(self._free)

    async def run(self, name: str, payload: Any, meta: dict[str, Any],
                  timeout_s: float) -> Outcome:
        """Run one message on a free worker of this task and return the outcome."""
        await self.rate.admit(payload)  # a call takes a token of the rate limit too
        while True:
            outcome = await self._run_on(await self._acquire(), name, payload, meta, timeout_s)
            if outcome.ending is not _UNSTARTED or isinstance(outcome.error, WorkerUnreachable):
                return outcome  # (an endpoint that cannot be reached is so for every worker)
            # the worker stopped (a restart, a reap) before it could take the call: next one

    def _add_free(self, ref: Any, conn: Claimable) -> None:
        if ref.actor_urn not in self._retired:
            self._workers[ref.actor_urn] = ref
            self._connections[ref.actor_urn] = conn
            self._free.append(ref)
            self._free_since[ref.actor_urn] = self.loop.time()
            self._worker_freed.set()
            if self._backlog:
                self._work_queued.set()  # the claimer hands it work

    async def _retire(self, urn: str) -> None:
        self._retired.add(urn)
        self._workers.pop(urn, None)
        self._connections.pop(urn, None)
        self._free_since.pop(urn, None)
        self._free = deque(r for r in self._free if r.actor_urn != urn)

    async def _acquire(self) -> Any:
        while True:
            while self._free:
                ref = self._free.popleft()
                if ref.is_alive() and ref.actor_urn not in self._retired:
                    return ref
            self._worker_freed.clear()
            self._request_workers()
            await self._worker_freed.wait()

    @property
    def live_workers(self) -> int:
        """Workers of this task that are running (idle or busy), as this pool knows them."""
        for urn in [urn for urn, ref in self._workers.items() if not ref.is_alive()]:
            del self._workers[urn]
            self._connections.pop(urn, None)
        return len(self._workers)

    def _request_workers(self) -> None:
        """Spawn on demand: ask the supervisor for one more worker than are busy now."""
        if self._spawning or self.live_workers >= self.task.workers_on(self.node_name):
            return
        self._spawning = True
        wanted = self.in_flight + 1

        def ensure() -> None:
            self._supervisor().ensure(wanted).get(timeout=SPAWN_TIMEOUT_S)

        async def spawn() -> None:
            try:
                await asyncio.to_thread(ensure)
            except Exception as exc:  # the supervisor restarts or backs off on its own
                log.warning("task %s: spawning a worker on demand failed: %s", self.task.name,
                            exc)
            finally:
                self._spawning = False

        self._spawn_task = self.loop.create_task(spawn())

    async def _reap_forever(self) -> None:
        """Stop workers idle longer than the task's max idle time (0: never)."""
        while True:
            max_idle = self.task.max_idle_s
            await asyncio.sleep(min(max_idle / 2, 1.0) if max_idle > 0 else 1.0)
            if max_idle <= 0:
                continue
            now = self.loop.time()
            idle = [r for r in self._free if now - self._free_since.get(r.actor_urn, now)
                    > max_idle]
            for ref in idle:
                self._free.remove(ref)  # no job can reach it from now on
                urn = ref.actor_urn
                self._workers.pop(urn, None)
                self._connections.pop(urn, None)
                self._free_since.pop(urn, None)
                await asyncio.to_thread(self._reap, urn)

    def _reap(self, urn: str) -> None:  # in a thread: asks the supervisor
        self._supervisor().reap(urn).get(timeout=SPAWN_TIMEOUT_S)

    async def _run_on(self, ref: Any, name: str, payload: Any, meta: dict[str, Any],
                      timeout_s: float) -> Outcome:
        """Run a call on the idle worker `ref` (calls are counted in handled/failed like casts).

        The loop has the connection run it when it can claim it (the usual case: the actor
        thread waits for jobs and does not touch the pipes), which spares two thread
        wake-ups; otherwise the job goes to the actor.
        """
        conn = self._connections.get(ref.actor_urn)
        if conn is not None and conn.claim():
            exchange = self.loop.create_task(
                self._exchange(ref, conn, name=name, payload=payload, meta=meta,
                               timeout_s=timeout_s))
            return await asyncio.shield(exchange)
        return await self._tell_job(ref, name, payload, meta, timeout_s)

    async def _exchange(self, ref: Any, conn: Claimable, *, name: str, payload: Any,
                        meta: dict[str, Any], timeout_s: float) -> Outcome:
        """A call on an idle worker's claimed connection, run by the loop.

        A task of its own: a caller who stops waiting leaves the worker to answer, and
        the worker is free again once it has.
        """
        self._started()
        outcome = await conn.handle_claimed(name, payload, meta, timeout_s)
        if not outcome.worker_lost:
            self._add_free(ref, conn)  # its actor never knew: the worker is free again
        self._ended(outcome)
        return outcome

    async def _tell_job(self, ref: Any, name: str, payload: Any, meta: dict[str, Any],
                        timeout_s: float) -> Outcome:
        """Have the worker's actor run the call in its thread."""
        future: asyncio.Future[Outcome] = self.loop.create_future()
        settled = threading.Lock()

        def done(outcome: Outcome) -> None:  # in the worker's thread, or here
            if settled.acquire(blocking=False):  # the first outcome wins
                self._ended(outcome)
                self.loop.call_soon_threadsafe(_settle, future, outcome)

        self._started()
        try:
            ref.tell(Job(name, payload, meta, timeout_s, done))
        except pykka.ActorDeadError:
            done(Outcome.unstarted(WorkerExited("the worker stopped before taking the job")))
        try:
            async with asyncio.timeout(timeout_s + JOB_GRACE_S):
                return await future
        except TimeoutError:
            lost = Outcome.lost(CallTimeout(f"no outcome within {timeout_s} s"))
            done(lost)
            return lost

    def _started(self) -> None:
        with self._counts:
            self.in_flight += 1

    def _ended(self, outcome: Outcome) -> None:
        """Count the outcome of a call or a delivery. Any thread."""
        ending = outcome.ending
        with self._counts:
            self.in_flight -= 1
            if ending is _HANDLED:
                self.handled += 1
            elif ending is not _UNSTARTED:
                self.failed += 1
        if ending is not _UNSTARTED:
            self.metrics.record(ok=ending is _HANDLED, latency_s=outcome.duration_s)

    async def _deliver_forever(self) -> None:
        task = self.task.name
        while not self._closing:  # besides the cancel: see the wait below
            self._work_queued.clear()  # whatever set it is looked at below
            self._claim_asked = False
            try:
                if self.task.paused or self.task.workers_on(self.node_name) == 0:
                    await self._release_backlog()  # held in the journal, or sent elsewhere
                else:
                    await self._claims.claim(self.task, self._low_water())
            except Exception:  # the journal failed: this loop carries on, and tries again
                log.exception("task %s: claiming deliveries failed; trying again", task)
            while self._backlog and self._free:  # work for idle workers
                ref = self._free.popleft()
                if ref.is_alive() and ref.actor_urn not in self._retired:
                    if (job := self._next_job()) is None:  # what was left had expired
                        self._free.appendleft(ref)
                        break
                    self._hand(ref, job)
            if self._backlog and not self._free:
                self._request_workers()
            # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that comes
            # as the event is set, and this loop would never end.
            with contextlib.suppress(TimeoutError):
                # until a signal, or the next delayed cast or retry is due
                async with asyncio.timeout(await self._due.wait_s(self.journal, task,
                                                                  IDLE_POLL_S)):
                    await self._work_queued.wait()

    async def _release_backlog(self) -> None:
        """Put back what was claimed for workers this node no longer runs."""
        released = []
        self._backlog.extend(self.rate.drain())  # held back by the rate limit
        while (delivery := self._pop()) is not None:
            released.append((delivery.message.id, delivery.task))
        if released:
            await self.journal.run(partial(Journal.release_many, deliveries=released))

    def drop_cancelled(self, message_id: str) -> bool:
        """A message was cancelled: drop it if it is claimed here and not yet handed out;
        is it? (Cheap on the hot path: one dict lookup per hand-out, while any is pending.)"""
        self._cancelled[message_id] = None
        if len(self._cancelled) > MAX_CANCELLED:  # ids whose delivery ran already
            self._cancelled.pop(next(iter(self._cancelled)), None)
        return any(d.message.id == message_id for d in self._backlog.copy())

    def _pop(self) -> Delivery | None:
        """The next claimed delivery, or None; cancelled ones are forgotten on the way."""
        while True:
            try:
                delivery = self._backlog.popleft()
            except IndexError:
                return None
            mid = delivery.message.id
            if not self._cancelled or mid not in self._cancelled:
                return delivery
            self._cancelled.pop(mid, None)
            self.journal.ack_nowait(delivery.message.id, delivery.task)  # deletes it

    def _low_water(self) -> int:
        """Below this many claimed deliveries, claim more (up to twice as many)."""
        return max(1, len(self._workers)) * BACKLOG_PER_WORKER // 2

    def _next_job(self) -> Job | None:
        """The job of the next claimed delivery neither cancelled nor expired, or None.
        Any thread."""
        while (delivery := self.rate.next(self._pop)) is not None:  # the rate limit's turn
            if (job := self._job(delivery)) is not None:
                return job
        return None

    def _job(self, delivery: Delivery) -> Job | None:
        """A job for one claimed delivery, its outcome settled in whichever thread ends it;
        None if its deadline has passed (it is dead-lettered as expired, never handed out)."""
        message = delivery.message
        deadline = effective_deadline(message, self.task)
        if deadline is not None and deadline <= time.time():
            with self._counts:
                self.expired += 1  # neither handled nor failed
            expire(self.journal, delivery, deadline)
            return None
        meta = delivery_meta(message.id, delivery.attempt, message.published_at,
                             message.priority, deadline=deadline,
                             trace_id=message.trace_id, parent_id=message.parent_id)
        settled = threading.Lock()

        def done(outcome: Outcome) -> None:
            if settled.acquire(blocking=False):  # the first outcome wins
                self._settle_delivery(delivery, outcome)

        with self._counts:
            self.in_flight += 1
        return Job(message.name, message.payload, meta, self.task.message_timeout_s, done,
                   partial(self.journal.start_nowait, message.id, delivery.task))

    def _hand(self, ref: Any, job: Job) -> None:
        """Tell an idle worker a job; if it never comes back (the worker vanished), redeliver."""
        try:
            ref.tell(job)
        except pykka.ActorDeadError:
            job.done(Outcome.lost(WorkerExited("the worker stopped before taking the job")))
            return
        lost = Outcome.lost(CallTimeout("the job got no outcome; its worker vanished"))
        self.loop.call_later(job.timeout_s + JOB_GRACE_S, job.done, lost)

    def _settle_delivery(self, delivery: Delivery, outcome: Outcome) -> None:
        """Count and settle a job's outcome (yptask.delivery.outcomes); any thread."""
        self._ended(outcome)
        again = settle(self.journal, self.task, self.metrics, delivery, outcome,
                       node=self.node_name)
        if again is not None:  # put back, or a retry: the loop looks again then
            self.loop.call_soon_threadsafe(self.wake_at, again)


def _settle(future: asyncio.Future[Outcome], outcome: Outcome) -> None:
    if not future.done():
        future.set_result(outcome)
