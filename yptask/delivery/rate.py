"""A task's rate limit: the token buckets that decide when a delivery may start.

The limit (`rate_limit`, e.g. "100/s") holds for the whole cluster. Each node
runs its own buckets and takes a share of the limit: the limit times its
demand over the cluster's demand, where a node's demand is what waits for the
task there (queued + in flight). Peers' demand comes from their heartbeats
(`Member.load`, about once a second), so a node with nothing waiting takes no
share and the others take all of it. A node that sees no peer with demand
takes the whole limit.

With `rate_limit_key`, every distinct value of that payload key (dotted for a
nested one; a payload without it counts as the key null) has a bucket of its
own, with the same share. A delivery whose key's bucket is empty is set aside
(here, out of the pool's backlog) until its token is due, so other keys go on.

Deliveries and calls both take tokens: a call waits for its token (within its
own timeout). Nothing here spins: an empty bucket says when its next token is
due and the pool is woken then.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from yptask.cluster.membership import Member
from yptask.config.tasks import TaskDef, parse_rate
from yptask.store.records import Delivery

__all__ = ["Bucket", "RateGate", "demand_of", "key_of", "node_share"]

log = logging.getLogger(__name__)

BURST_S = 1.0  # a bucket holds this many seconds' worth of its rate (at least one token):
# enough that a loop late by a few hundred ms (a busy machine) loses no token
SHARE_EVERY_S = 0.25  # the node's share is worked out again at most this often
MAX_ASIDE = 4096  # set aside at most this many; past it, the throttled head waits in place
MAX_KEYS = 10_000  # past this many keyed buckets, the full ones (idle keys) are dropped
_NO_KEY = object()  # a payload without the key: one bucket, shown as null


def key_of(payload: Any, path: tuple[str, ...]) -> Any:
    """The value of the dotted key `path` in `payload`, or None where it is missing."""
    value = payload
    for part in path:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    try:
        hash(value)
    except TypeError:  # a list or a map as the key's value: one bucket per its text
        return repr(value)
    return value


def demand_of(load: dict[str, Any]) -> int:
    """A node's demand for a task from its heartbeat's figures: queued in its journal,
    claimed and waiting in its pool, and in flight."""
    counts = [load.get(field, 0) for field in ("queued", "waiting", "in_flight")]
    return sum(max(0, n) for n in counts if isinstance(n, int) and not isinstance(n, bool))


def node_share(task: TaskDef, node_name: str, demand_here: int, peers: list[Member]) -> float:
    """This node's fraction of the task's limit: its demand over the cluster's.

    A peer counts if the task runs workers there by its definition; its demand is
    what its last heartbeat said waits or runs there (see `demand_of`).
    """
    total = 0
    for member in peers:
        load = member.load.get(task.name) if isinstance(member.load, dict) else None
        if isinstance(load, dict) and task.workers_on(member.name) > 0:
            total += demand_of(load)
    if total == 0:
        return 1.0
    return demand_here / (demand_here + total)


class Bucket:
    """A token bucket: `rate` tokens a second, holding at most `burst`. Not thread-safe."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        # one token to start with, not a full burst: nodes that start together (or a
        # node's share not yet known) would otherwise begin with a burst each
        self.tokens, self.at = min(1.0, burst), now

    def refill(self, now: float) -> None:
        if now > self.at:  # a clock read before the bucket was made adds nothing
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
            self.at = now

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        self.refill(now)
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)

    def take(self, now: float) -> float:
        """Take a token: 0.0 if taken, else the seconds until one is due."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        if self.rate <= 0:
            return SHARE_EVERY_S  # no share now: look again when the share may have changed
        return (1.0 - self.tokens) / self.rate

    @property
    def full(self) -> bool:
        return self.tokens >= self.burst


class RateGate:
    """The rate limit of one task on this node. Thread-safe (worker threads and the loop).

    It shares the pool's `backlog` (the deliveries claimed here): a delivery that must
    wait stays at the backlog's head, or is set aside here and put back at the head when
    its token is due, and the pool's loop is woken (`signal`) then.
    """

    def __init__(self, task: Callable[[], TaskDef], node_name: str, backlog: deque[Delivery],
                 *, peers: Callable[[], list[Member]], demand: Callable[[], int],
                 loop: asyncio.AbstractEventLoop, signal: Callable[[], None]) -> None:
        self._task = task  # the task's definition in effect (a change is followed)
        self.node_name = node_name
        self._backlog = backlog
        self._peers = peers  # the live peers, with their last heartbeat's load
        self._demand = demand  # what waits for the task here, besides the claimed
        self._loop, self._signal = loop, signal
        self._lock = threading.Lock()
        self._buckets: dict[Any, Bucket] = {}
        self._aside: list[tuple[float, int, Delivery]] = []  # (due, order, delivery)
        self._order = itertools.count()
        self._shape: tuple[str, str] = ("", "")
        self._limit: tuple[float, float] | None = None
        self._path: tuple[str, ...] = ()
        self._share, self._share_at = 1.0, -1.0
        self._woken_for = 0.0  # the wake-up already asked for (monotonic), 0: none
        self._last_waited: str | None = None
        self.waited = 0  # deliveries (and calls) that waited for a token

    @property
    def task(self) -> TaskDef:
        return self._task()

    # ------------------------------------------------------------------ the pool's side

    def next(self, pop: Callable[[], Delivery | None]) -> Delivery | None:
        """The next delivery that may start now: the first `pop` (the backlog's next) gives
        whose token is there. Without a limit, just what `pop` gives.

        None: nothing may start now (the pool is woken when the next token is due), or
        nothing is left.
        """
        if not self.task.rate_limit:
            if self._aside:  # the limit was lifted: what was set aside goes first
                with self._lock:
                    self._put_back(float("inf"))
            return pop()
        with self._lock:
            return self._next(pop, time.monotonic())

    def drain(self) -> list[Delivery]:
        """Hand back every set-aside delivery (the pool puts them back in the journal)."""
        with self._lock:
            aside = [delivery for _, _, delivery in sorted(self._aside)]
            self._aside.clear()
            return aside

    async def admit(self, payload: Any) -> None:
        """A call waits here for its token (its caller's timeout bounds the wait)."""
        counted = False
        while self.task.rate_limit:
            with self._lock:
                self._follow(time.monotonic())
                delay = self._bucket(self._key(payload)).take(time.monotonic())
                if delay > 0 and not counted:
                    self.waited += 1
                    counted = True
            if delay <= 0:
                return
            await asyncio.sleep(delay)

    @property
    def set_aside(self) -> int:
        return len(self._aside)

    @property
    def waiting(self) -> int:
        """Deliveries claimed here and not yet handed to a worker."""
        return len(self._backlog) + len(self._aside)

    def view(self) -> dict[str, Any]:
        """What status shows: the limit, its key, this node's share, who waited."""
        return {"rate_limit": self.task.rate_limit, "rate_limit_key": self.task.rate_limit_key,
                "rate_share": round(self._share, 3), "rate_waited": self.waited,
                "rate_set_aside": len(self._aside)}

    # ------------------------------------------------------------------ inside the lock

    def _next(self, pop: Callable[[], Delivery | None], now: float) -> Delivery | None:
        self._follow(now)
        self._put_back(now)
        while (delivery := pop()) is not None:
            delay = self._bucket(self._key(delivery.message.payload)).take(now)
            if delay <= 0:
                return delivery
            self._waited(delivery)
            if not self._path or len(self._aside) >= MAX_ASIDE:  # it keeps its place
                self._backlog.appendleft(delivery)
                self._ask_wake(now, delay)
                return None
            heapq.heappush(self._aside, (now + delay, next(self._order), delivery))
        if self._aside:
            self._ask_wake(now, self._aside[0][0] - now)
        return None

    def _put_back(self, now: float) -> None:
        """Set-aside deliveries due by `now` go back to the head of the backlog."""
        due = []
        while self._aside and self._aside[0][0] <= now:
            due.append(heapq.heappop(self._aside)[2])
        self._backlog.extendleft(reversed(due))  # soonest first

    def _woken(self) -> None:  # on the loop, when a token is due
        with self._lock:
            self._put_back(time.monotonic())
        self._signal()

    def _follow(self, now: float) -> None:
        """Keep up with the definition (a new limit or key) and with this node's share."""
        shape = (self.task.rate_limit, self.task.rate_limit_key)
        if shape != self._shape:
            self._shape = shape
            self._limit = parse_rate(shape[0])
            self._path = tuple(shape[1].split(".")) if shape[1] else ()
            self._buckets.clear()
            self._share_at = -1.0
        if now - self._share_at < SHARE_EVERY_S:
            return
        self._share_at = now
        try:
            share = node_share(self.task, self.node_name, self._demand() + self.waiting,
                               self._peers())
        except Exception:  # the peers' view is advice: keep the share we had
            log.exception("task %s: working out this node's rate share failed", self.task.name)
            return
        if share != self._share:
            self._share = share
            rate, burst = self._rate()
            for bucket in self._buckets.values():
                bucket.set_rate(rate, burst, now)

    def _rate(self) -> tuple[float, float]:
        assert self._limit is not None
        count, per_s = self._limit
        rate = count / per_s * self._share
        return rate, max(1.0, rate * BURST_S)

    def _key(self, payload: Any) -> Any:
        return key_of(payload, self._path) if self._path else _NO_KEY

    def _bucket(self, key: Any) -> Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_KEYS:  # a full bucket is as good as a new one
                for idle in [k for k, b in self._buckets.items() if b.full]:
                    del self._buckets[idle]
            rate, burst = self._rate()
            bucket = self._buckets[key] = Bucket(rate, burst, time.monotonic())
        return bucket

    def _waited(self, delivery: Delivery) -> None:
        if delivery.message.id != self._last_waited:  # counted once however often it tries
            self._last_waited = delivery.message.id
            self.waited += 1

    def _ask_wake(self, now: float, delay: float) -> None:
        due = now + max(delay, 0.001)
        if self._woken_for and now < self._woken_for <= due:
            return  # a wake-up comes sooner already
        self._woken_for = due
        self._loop.call_soon_threadsafe(self._loop.call_later, due - now, self._woken)
