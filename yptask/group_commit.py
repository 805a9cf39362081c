"""Group commit: one thread owns the journal and batches concurrent writes into one transaction.

The event loop never touches SQLite. Coroutines hand their operation to the
journal thread with an asyncio future; the thread runs operations in order,
and every run of consecutive appends (or acks) waiting in its queue becomes
ONE transaction, so a hundred concurrent casts cost one commit (one fsync),
not a hundred. A message that makes that transaction fail fails alone: the
batch is written again with each message under its own savepoint, and only
the one at fault gets the error. Each future is completed on its own loop with
`call_soon_threadsafe`, and a cast is answered only after its commit.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from yptask.journal import Envelope, Journal

__all__ = ["JournalThread"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")
MAX_BATCH = 1000
ACK_LINGER_S = 0.002


@dataclass
class _Op:
    loop: asyncio.AbstractEventLoop | None  # None: fire and forget, from any thread
    future: asyncio.Future[Any] | None
    kind: str  # "append" or "ack": batched with neighbours of its kind; "call": run alone
    # an append's [(envelope, tasks), ...] (one request's messages), an ack's (message id, task)
    item: Any = None
    call: Callable[[Journal], Any] | None = None


class JournalThread:
    """Runs every journal operation on one thread; appends and acks are group-committed."""

    def __init__(self, journal: Journal, *, name: str = "journal") -> None:
        self.journal = journal
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self.commits = 0  # transactions of appends, for benchmarks and status

    async def append(self, envelope: Envelope, tasks: list[str]) -> bool:
        """Store a message for its tasks; True once committed, False if its id was known.
        Raises the error that kept it out of the journal."""
        added = (await self.append_many([(envelope, tasks)]))[0]
        if isinstance(added, Exception):
            raise added
        return added

    async def append_many(self, messages: list[tuple[Envelope, list[str]]]
                          ) -> list[bool | Exception]:
        """Store messages for their tasks, committed together with whatever else is
        waiting; per message, True if new, False if its id was known, or the error
        that kept that one message out (the others are stored all the same)."""
        added: list[bool | Exception] = await self._submit("append", messages)
        return added

    async def ack(self, message_id: str, task: str) -> None:
        """Forget a handled delivery; acks waiting together share one transaction."""
        await self._submit("ack", (message_id, task))

    def ack_nowait(self, message_id: str, task: str) -> None:
        """Queue an ack from any thread, without waiting for its commit."""
        self._queue.put(_Op(None, None, "ack", (message_id, task)))

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

    def close(self, timeout_s: float = 10.0) -> None:
        """Finish the queued operations, then close the journal."""
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("journal thread did not finish within %s s", timeout_s)

    def _run(self) -> None:
        op = self._queue.get()
        while op is not None:  # None: close
            if op.call is not None:
                _settle(op, op.call, self.journal)
                op = self._queue.get()
                continue
            batch = [op]
            ahead: _Op | None = None
            has_ahead = False
            # Nobody waits on an ack: let acks gather a moment, one commit for many.
            linger_until = time.monotonic() + ACK_LINGER_S if op.kind == "ack" else 0.0
            while len(batch) < MAX_BATCH and not has_ahead:
                try:
                    wait = linger_until - time.monotonic()
                    nxt = (self._queue.get(timeout=wait) if wait > 0
                           else self._queue.get_nowait())
                except queue.Empty:
                    break
                if nxt is not None and nxt.kind == op.kind:
                    batch.append(nxt)
                else:  # another kind, or the close: run it after this batch, in order
                    ahead, has_ahead = nxt, True
            self._commit(batch)
            op = ahead if has_ahead else self._queue.get()
        self.journal.close()

    def _commit(self, batch: list[_Op]) -> None:
        try:
            if batch[0].kind == "append":
                added = iter(self._append([message for op in batch for message in op.item]))
                results: list[Any] = [[next(added) for _ in op.item] for op in batch]
                self.commits += 1
            else:
                self.journal.ack_many([op.item for op in batch])
                results = [None] * len(batch)
        except Exception as exc:
            log.exception("journal %s of %d item(s) failed", batch[0].kind, len(batch))
            _answer_all(batch, [exc] * len(batch), _set_exception)
            return
        _answer_all(batch, results, _set_result)

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


def _settle(op: _Op, call: Callable[[Journal], Any], journal: Journal) -> None:
    try:
        result = call(journal)
    except Exception as exc:
        if op.future is None:
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
