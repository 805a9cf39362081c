"""Group commit: one thread owns the journal and batches concurrent writes into one transaction.

The event loop never touches SQLite. Coroutines hand their operation to the
journal thread with an asyncio future; the thread runs operations in order,
and every run of consecutive appends (or acks) waiting in its queue becomes
ONE transaction, so a hundred concurrent casts cost one commit (one fsync),
not a hundred. A message that makes that transaction fail fails alone: the
batch is written again with each message under its own savepoint, and only
the one at fault gets the error. Each future is completed on its own loop with
`call_soon_threadsafe`, and a cast is answered only after its commit.

Acks and the marks of started deliveries travel together (nobody waits on
them), so a message handled within one batch costs no mark at all. A write
nobody waits on (an ack, a mark, a failure, a release) that SQLite refuses
for a reason that can pass (a full disk, an I/O error) is kept and written
again, in order, with a growing pause, until it goes through: a node whose
disk frees up carries on by itself. Other writes go on meanwhile, and fail
or succeed on their own. What is still refused at close stays in flight in
the journal, and is delivered again after a restart.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from yptask.histogram import COMMIT_BUCKETS_S, Histogram, HistogramView
from yptask.store.journal import Attempt, Envelope, Journal

__all__ = ["JournalThread"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
MAX_BATCH = 1000
ACK_LINGER_S = 0.002
# A refused write nobody waits on is tried again after this pause, doubled each time up to
# the cap: a disk that frees up is noticed within the cap, and a full one costs little.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 2.0
# Errors after which the same write may go through later.
PASSING = (sqlite3.OperationalError, OSError)


@dataclass
class _Op:
    loop: asyncio.AbstractEventLoop | None  # None: fire and forget, from any thread
    future: asyncio.Future[Any] | None
    # "append", or "ack" and "start" (batched with neighbours of their family); "call": alone
    kind: str
    # an append's [(envelope, tasks), ...] (one request's messages); an ack's or a start's
    # (message id, task)
    item: Any = None
    call: Callable[[Journal], Any] | None = None
    attempt: Attempt | None = None  # an ack's entry in the attempt history

    @property
    def family(self) -> str:
        return "ack" if self.kind == "start" else self.kind


_RETRY = _Op(None, None, "retry")  # from `_next`: time to write the refused writes again


class JournalThread:
    """Runs every journal operation on one thread; appends and acks are group-committed."""

    def __init__(self, journal: Journal, *, name: str = "journal") -> None:
        self.journal = journal
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        # writes nobody waits on that the journal refused, to write again, in order (all
        # three are the journal thread's own)
        self._refused: deque[_Op] = deque()
        self._retry_in_s = RETRY_FIRST_S
        self._retry_at = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.commits = 0  # transactions of appends, for benchmarks and status
        # how long each group commit (of appends, or of acks and marks) took, since start
        self._commit_seconds = Histogram(COMMIT_BUCKETS_S)
        self._commit_seconds_lock = threading.Lock()  # read at scrape time, by another thread

    def commit_seconds(self) -> HistogramView:
        """The durations of the group commits so far (for Prometheus)."""
        with self._commit_seconds_lock:
            return self._commit_seconds.view()

    async def append(self, envelope: Envelope, tasks: list[str]) -> bool:
        """Store a message for its tasks; True once committed, False if its id was known.
        Raises the error that kept it out of the journal."""
        added = (await self.append_many([(envelope, tasks)]))[0]
        if isinstance(added, Exception):
            raise added
        return added

    async def append_many(self, messages: Sequence[tuple[Envelope, Iterable[str]]]
                          ) -> list[bool | Exception]:
        """Store messages for their tasks, committed together with whatever else is
        waiting; per message, True if new, False if its id was known, or the error
        that kept that one message out (the others are stored all the same)."""
        added: list[bool | Exception] = await self._submit("append", messages)
        return added

    async def ack(self, message_id: str, task: str) -> None:
        """Forget a handled delivery; acks waiting together share one transaction."""
        await self._submit("ack", (message_id, task))

    def ack_nowait(self, message_id: str, task: str, attempt: Attempt | None = None) -> None:
        """Queue an ack from any thread, without waiting for its commit; `attempt`, the
        handled attempt to keep in the history, is written in the same transaction."""
        self._queue.put(_Op(None, None, "ack", (message_id, task), attempt=attempt))

    def start_nowait(self, message_id: str, task: str) -> None:
        """Queue, from any thread, the mark that a handler started on a claimed delivery
        (its attempt is spent); an ack of it committed in the same batch makes it moot."""
        self._queue.put(_Op(None, None, "start", (message_id, task)))

    def run_nowait(self, call: Callable[[Journal], Any]) -> None:
        """Queue `call(journal)` from any thread, without waiting; errors are logged."""
        self._queue.put(_Op(None, None, "call", None, call))

    async def run(self, call: Callable[[Journal], _T]) -> _T:
        """Run `call(journal)` on the journal thread and return its result."""
        result: _T = await self._submit("call", None, call)
        return result

    async def _submit(self, kind: str, item: Any, call: Callable[[Journal], Any] | None = None
                      ) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Op(loop, future, kind, item, call))
        return await future

    def close(self, timeout_s: float = 10.0) -> bool:
        """Finish the queued operations, then close the journal; False if that took longer
        than `timeout_s` (the thread is left to finish)."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("journal thread did not finish within %s s", timeout_s)
            return False
        return True

    def _run(self) -> None:
        op = self._next()
        while op is not None:  # None: close
            if op is _RETRY:
                self._retry()
                op = self._next()
            elif self._refused and op.future is None:  # behind the refused ones, in order
                self._refused.append(op)
                op = self._next()
            elif op.call is not None:
                _settle(op, op.call, self.journal, self._refuse)
                op = self._next()
            else:
                batch, ahead, has_ahead = self._gather(op)
                self._commit(batch)
                op = ahead if has_ahead else self._next()
        if self._refused:  # one last try, then what is left stays in flight in the journal
            self._retry()
        if self._refused:
            log.error("journal: %d write(s) still refused at close are not made; their "
                      "deliveries stay in flight and are delivered again after a restart",
                      len(self._refused))
        self.journal.close()

    def _next(self) -> _Op | None:
        """The next operation queued; `_RETRY` when refused writes are due again."""
        if not self._refused:
            return self._queue.get()
        wait = self._retry_at - time.monotonic()
        try:
            return self._queue.get(timeout=wait) if wait > 0 else _RETRY
        except queue.Empty:
            return _RETRY

    def _gather(self, op: _Op) -> tuple[list[_Op], _Op | None, bool]:
        """`op` and the operations of its family queued right behind it, as one batch; and
        the operation that ended the batch, if one did (run it next, in order)."""
        batch = [op]
        # Nobody waits on an ack: let acks gather a moment, one commit for many.
        linger_until = time.monotonic() + ACK_LINGER_S if op.family == "ack" else 0.0
        while len(batch) < MAX_BATCH:
            try:
                wait = linger_until - time.monotonic()
                nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if (nxt is None or nxt.family != op.family
                    or (self._refused and nxt.future is None)):
                return batch, nxt, True  # run it after this batch, in order
            batch.append(nxt)
        return batch, None, False

    def _commit(self, batch: list[_Op]) -> None:
        started = time.perf_counter()
        try:
            if batch[0].kind == "append":
                added = iter(self._append([message for op in batch for message in op.item]))
                results: list[Any] = [[next(added) for _ in op.item] for op in batch]
                self.commits += 1
            else:
                self._ack(batch)
                results = [None] * len(batch)
        except Exception as exc:
            if not (isinstance(exc, PASSING) and self._refuse(batch, exc)):
                log.exception("journal %s of %d item(s) failed", batch[0].kind, len(batch))
            _answer_all(batch, [exc] * len(batch), _set_exception)
            return
        elapsed = time.perf_counter() - started
        with self._commit_seconds_lock:
            self._commit_seconds.observe(elapsed)
        _answer_all(batch, results, _set_result)

    def _ack(self, batch: list[_Op]) -> None:
        self.journal.ack_many([op.item for op in batch if op.kind == "ack"],
                              started=[op.item for op in batch if op.kind == "start"],
                              attempts=[op.attempt for op in batch if op.attempt is not None])

    def _refuse(self, batch: list[_Op], exc: BaseException) -> bool:
        """Keep the writes of `batch` nobody waits on, to write them again; True if it has
        any (the caller need not log the error)."""
        unawaited = [op for op in batch if op.future is None]
        if not unawaited:
            return False
        if not self._refused:
            log.warning("journal: %d write(s) refused (%s); writing them again until they go "
                        "through (free some disk space if it is full)", len(unawaited), exc)
            self._retry_in_s = RETRY_FIRST_S
            self._retry_at = time.monotonic() + self._retry_in_s
        self._refused.extend(unawaited)
        return True

    def _retry(self) -> None:
        """Write the refused writes again, oldest first; stop at the first refused again, and
        pause longer before the next try."""
        while self._refused:
            head = self._refused[0]
            # acks and marks: as many as are in a row, together; a call alone
            batch = [head] if head.call is not None else list(itertools.takewhile(
                lambda op: op.call is None, itertools.islice(self._refused, MAX_BATCH)))
            try:
                if head.call is None:
                    self._ack(batch)
                else:
                    head.call(self.journal)
            except PASSING as exc:
                self._retry_in_s = min(RETRY_MAX_S, self._retry_in_s * 2)
                self._retry_at = time.monotonic() + self._retry_in_s
                log.debug("journal: writing again refused (%s); next try in %.2f s", exc,
                          self._retry_in_s)
                return
            except Exception:
                log.exception("journal: a write tried again failed; it is not made")
            for _ in batch:
                self._refused.popleft()
        log.info("journal: the refused writes went through")

    def _append(self, messages: list[tuple[Envelope, list[str]]]) -> list[bool | Exception]:
        """One transaction for every message; if it fails, one again with each message
        on its own savepoint, so only the message at fault gets the error."""
        try:
            return list(self.journal.append(messages))
        except Exception as exc:
            if len(messages) == 1:
                return [exc]
            log.warning("journal append of %d messages failed; storing each on its own",
                        len(messages), exc_info=True)
            return self.journal.append_each(messages)


def _settle(op: _Op, call: Callable[[Journal], Any], journal: Journal,
            refuse: Callable[[list[_Op], BaseException], bool]) -> None:
    try:
        result = call(journal)
    except Exception as exc:
        if op.future is None and not (isinstance(exc, PASSING) and refuse([op], exc)):
            log.exception("journal operation failed")
        _answer(op, _set_exception, exc)
    else:
        _answer(op, _set_result, result)


def _answer(op: _Op, setter: Callable[[asyncio.Future[Any], Any], None], value: Any) -> None:
    if op.loop is not None and op.future is not None:
        op.loop.call_soon_threadsafe(setter, op.future, value)


def _answer_all(batch: list[_Op], values: list[Any],
                setter: Callable[[asyncio.Future[Any], Any], None]) -> None:
    """Settle a whole batch with one wake-up of each waiting loop, not one per future."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for op, value in zip(batch, values, strict=True):
        if op.loop is not None and op.future is not None:
            by_loop.setdefault(op.loop, []).append((op.future, value))
    for loop, settled in by_loop.items():
        loop.call_soon_threadsafe(_settle_many, settled, setter)


def _settle_many(settled: list[tuple[asyncio.Future[Any], Any]],
                 setter: Callable[[asyncio.Future[Any], Any], None]) -> None:
    for future, value in settled:
        setter(future, value)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # the caller may have been cancelled meanwhile
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
