"""The journal: every accepted message and its deliveries, durable in SQLite (WAL mode).

A message is written once with one delivery row per subscribed task. A
delivery is `queued` until its task claims it (`inflight`), `started` once a
handler is known to have begun on it, then deleted on ack, requeued with a
retry time on failure, or moved to the dead letters after the task's max
attempts. An attempt is spent only by a handler: when a delivery is marked
started, or when it fails without having been marked (its outcome proves it
started). A claim spends none, so a delivery claimed and put back, or left
claimed by a node that stopped or died, keeps its attempts. A node that
restarts turns every claimed delivery back to `queued`: one a handler had
started comes again as its next attempt, the others as the same attempt.

Message ids are unique: a publisher that sends an id twice gets the first
message and no second delivery, for as long as the id is remembered (the
dedupe window, after the message is done).

A cancelled id (`cancel`) is kept for the dedupe window: no delivery of it is
made again (cast or forwarded), and one running at the cancel is dropped if it fails.

This class is synchronous and not thread-safe: one thread owns it (see
`yptask.store.group_commit` for the writer that batches concurrent casts into
one transaction). Its tables, and how the SQLite file is opened, are in
`yptask.store.journal_db`; what it hands out (Envelope, Delivery, DeadLetter) in
`yptask.store.records`.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from yptask.ingress.trace import own_trace_id
from yptask.store import messages, schedule
from yptask.store.claim import claim_rows
from yptask.store.id_reader import IdReader, known_client_ids
from yptask.store.journal_db import Transaction, connect
from yptask.store.records import Attempt, DeadLetter, Delivery, Envelope

# Envelope, Delivery, DeadLetter and IdReader are re-exported: where callers have met them.
__all__ = ["Attempt", "DeadLetter", "Delivery", "Envelope", "IdReader", "Journal"]

T = TypeVar("T")


class Journal:
    """The node's durable message store. Owned by one thread."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self._db = connect(self.path, synchronous)
        self.recover()

    def close(self) -> None:
        self._db.close()

    def problem(self) -> str | None:
        """What SQLite's quick check finds wrong with the journal, or None."""
        rows = [row[0] for row in self._db.execute("PRAGMA quick_check").fetchall()]
        return None if rows == ["ok"] else "; ".join(map(str, rows[:3]))

    def identity(self) -> str:
        """The journal's own random id, made when it is first asked for: a node that finds
        another id (or none) than it remembers is looking at another or an emptied journal."""
        with self._transaction():
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (uuid.uuid4().hex,))
            return str(self._db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()[0])

    def has_identity(self) -> bool:
        return self._db.execute("SELECT 1 FROM meta WHERE key = 'id'").fetchone() is not None

    # ------------------------------------------------------------------ write

    def append(self, batch: Iterable[tuple[Envelope, Iterable[str]]]) -> list[bool]:
        """Store messages with their subscribed tasks in ONE transaction (group commit).

        Returns, per message, True if it was new and False if its id was
        already known (then nothing is stored and nothing delivered again).
        """
        with self._transaction():
            return [self._insert(envelope, tasks) for envelope, tasks in batch]

    def append_each(self, batch: Iterable[tuple[Envelope, Iterable[str]]]
                    ) -> list[bool | Exception]:
        """Like `append`, but a message that fails is left out alone, with its error.

        Still one transaction: each message is written under a savepoint of its own,
        rolled back if SQLite (or binding its values) refuses it, so one bad message
        never fails the others it is committed with. If an error ends the whole
        transaction instead (SQLite rolls back on some), or the commit fails, each
        message is written again in a transaction of its own.
        """
        batch = list(batch)
        added: list[bool | Exception] = []
        try:
            with self._transaction():
                for envelope, tasks in batch:
                    self._db.execute("SAVEPOINT message")
                    try:
                        added.append(self._insert(envelope, tasks))
                    except Exception as exc:
                        if not self._db.in_transaction:
                            raise  # SQLite has ended the whole transaction
                        self._db.execute("ROLLBACK TO message")
                        added.append(exc)
                    self._db.execute("RELEASE message")
        except Exception:
            return [self._append_alone(envelope, tasks) for envelope, tasks in batch]
        return added

    def _append_alone(self, envelope: Envelope, tasks: Iterable[str]) -> bool | Exception:
        try:
            with self._transaction():
                return self._insert(envelope, tasks)
        except Exception as exc:
            return exc

    def _insert(self, envelope: Envelope, tasks: Iterable[str]) -> bool:
        """Write one message and its deliveries; False if its id was known (nothing written)."""
        if self._insert_message(envelope) != 1:
            return False
        priorities = tasks if isinstance(tasks, Mapping) else {}
        rows = [] if self.cancelled(envelope.id) else [
            (envelope.id, task, priorities.get(task, envelope.priority), envelope.not_before)
            for task in dict.fromkeys(tasks)]
        self._db.executemany(
            "INSERT INTO deliveries (message_id, task, priority, not_before)"
            " VALUES (?, ?, ?, ?)", rows)
        # so that the same message forwarded here later is not taken again
        self._db.executemany("INSERT OR IGNORE INTO received VALUES (?, ?)",
                             [row[:2] for row in rows])
        if not rows:
            self._mark_done([envelope.id])
        return True

    def accept_forwarded(self, envelopes: Iterable[Envelope], task: str) -> int:
        """Store deliveries another node forwarded for `task`, in ONE transaction.

        Each (message, task) is taken once, whether it was cast here or forwarded: a
        sender that resends after losing our answer, or a tick two timer leaders both
        fired, gets no second delivery, for as long as the message is remembered.
        Returns how many were new.
        """
        new = 0
        with self._transaction():
            for envelope in envelopes:
                if self.cancelled(envelope.id):
                    continue  # the sender acks it all the same: it is gone everywhere
                if not self._db.execute("INSERT OR IGNORE INTO received VALUES (?, ?)",
                                        (envelope.id, task)).rowcount:
                    continue
                new += 1
                self._insert_message(envelope)
                self._db.execute("UPDATE messages SET done_at = NULL WHERE id = ?",
                                 (envelope.id,))
                self._db.execute(
                    "INSERT OR IGNORE INTO deliveries (message_id, task, priority, not_before)"
                    " VALUES (?, ?, ?, ?)", (envelope.id, task, envelope.priority,
                                             envelope.not_before))
        return new

    def _insert_message(self, envelope: Envelope) -> int:
        """Write a message (not its deliveries); 0 if its id was known (nothing written)."""
        return self._db.execute(
            "INSERT OR IGNORE INTO messages (id, name, payload, published_at, priority,"
            " deadline, trace_id, parent_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (envelope.id, envelope.name, envelope.payload_text(), envelope.published_at,
             envelope.priority, envelope.deadline,
             # its own trace (own_trace_id) is not stored: derived again when read
             None if envelope.trace_id == f"{envelope.id}00" else envelope.trace_id,
             envelope.parent_id)).rowcount

    def claim(self, task: str, limit: int = 1, now: float | None = None, *,
              tickets: Sequence[int] | None = None, rng: random.Random | None = None,
              min_priority: int = 0) -> list[Delivery]:
        """Take up to `limit` ready deliveries of `task`, in ONE transaction.

        With `tickets` (one per priority, see yptask.delivery.lottery) the levels waiting
        share the claim by lottery, each level's oldest first, returned in the order drawn;
        without, strictly highest priority first, then oldest (what forwarding sends on).
        Only deliveries of `min_priority` or higher are taken.
        Each carries the attempt it is if a handler starts on it: the claim spends none.
        """
        now = time.time() if now is None else now
        with self._transaction():
            rows = claim_rows(self._db, _ENVELOPE_COLUMNS, task, limit=limit, now=now,
                              tickets=tickets, rng=rng, min_priority=min_priority)
            self._db.executemany(
                "UPDATE deliveries SET state = 'inflight' WHERE seq = ?",
                [(row[0],) for row in rows])
        return [Delivery(_envelope(row[2:]), task, row[1] + 1) for row in rows]

    def ack(self, message_id: str, task: str) -> None:
        """Forget a delivery its task has handled."""
        self.ack_many([(message_id, task)])

    def ack_many(self, deliveries: list[tuple[str, str]],
                 started: Iterable[tuple[str, str]] = (),
                 attempts: Iterable[Attempt] = ()) -> None:
        """Forget handled deliveries, (message id, task) pairs, and mark `started` ones (a
        handler began on them: their attempt is spent), in one transaction; with them, the
        `attempts` to keep in the history."""
        done = set(deliveries)
        with self._transaction():
            self._record(attempts)
            # one acked in the same breath needs no mark: it is deleted below
            self._db.executemany(
                "UPDATE deliveries SET state = 'started', attempt = attempt + 1"
                " WHERE message_id = ? AND task = ? AND state = 'inflight'",
                [pair for pair in started if pair not in done])
            self._forget(deliveries)

    def fail(self, message_id: str, task: str, *, max_attempts: int, retry_after_s: float,
             error_class: str, error: str, traceback: str = "",
             now: float | None = None, record: Attempt | None = None) -> bool:
        """Record a failed attempt: requeue it after `retry_after_s`, or dead-letter it.

        The attempt is spent here unless the delivery was marked started already, and
        `record` (if given) is kept in the history, in the same transaction.
        Returns True if it was dead-lettered (its attempts are used up).
        """
        now = time.time() if now is None else now
        with self._transaction():
            self._record([] if record is None else [record])
            row = self._db.execute(
                "SELECT attempt + (state != 'started') FROM deliveries"
                " WHERE message_id = ? AND task = ?", (message_id, task)).fetchone()
            if row is None:
                return False
            if self.cancelled(message_id):  # cancelled while it ran: no retry, dropped
                self._forget([(message_id, task)])
                return False
            if row[0] < max_attempts:
                self._db.execute(
                    "UPDATE deliveries SET state = 'queued', attempt = ?, not_before = ?,"
                    " last_error = ? WHERE message_id = ? AND task = ?",
                    (row[0], now + retry_after_s, f"{error_class}: {error}", message_id, task))
                return False
            self._db.execute(
                "INSERT OR REPLACE INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_id, task, row[0], error_class, error, traceback, now))
            self._forget([(message_id, task)])
            return True

    def cancel(self, message_id: str, now: float | None = None) -> tuple[list[str], list[str]]:
        """Cancel a message: delete its deliveries that wait (queued, delayed or waiting for
        a retry) and remember its id, so none is made again. Returns (the tasks cancelled,
        the tasks whose delivery is claimed or running: those are not stopped)."""
        with self._transaction():
            return self._cancel(message_id, time.time() if now is None else now)

    def _cancel(self, message_id: str, now: float) -> tuple[list[str], list[str]]:
        self._db.execute("INSERT OR IGNORE INTO cancelled VALUES (?, ?)", (message_id, now))
        self._any_cancelled = True
        rows = self._db.execute("SELECT task, state FROM deliveries WHERE message_id = ?"
                                " ORDER BY task", (message_id,)).fetchall()
        cancelled = [task for task, state in rows if state == "queued"]
        self._forget([(message_id, task) for task in cancelled])
        return cancelled, [task for task, state in rows if state != "queued"]

    def release(self, message_id: str, task: str) -> None:
        """Put back a claimed delivery that no worker started: its attempt is not spent."""
        self.release_many([(message_id, task)])

    def release_many(self, deliveries: list[tuple[str, str]]) -> None:
        """Put back claimed deliveries, (message id, task) pairs, none of them started. One
        marked started whose worker is known never to have read it gets its attempt back."""
        with self._transaction():
            self._db.executemany(
                "UPDATE deliveries SET state = 'queued', attempt = attempt - (state = 'started')"
                " WHERE message_id = ? AND task = ? AND state IN ('inflight', 'started')",
                deliveries)

    def replay(self, message_id: str, task: str) -> bool:
        """Move a dead letter back to the queue with a fresh attempt count."""
        with self._transaction():
            gone = self._db.execute("DELETE FROM dead_letters WHERE message_id = ? AND task = ?",
                                    (message_id, task)).rowcount
            if gone:
                self._db.execute("UPDATE messages SET done_at = NULL WHERE id = ?",
                                 (message_id,))
                self._db.execute(
                    "INSERT INTO deliveries (message_id, task, priority) SELECT id, ?, priority"
                    " FROM messages WHERE id = ?", (task, message_id))
        return bool(gone)

    def recover(self) -> int:
        """Requeue deliveries left claimed by a previous run; return how many. The attempt
        of one a handler had started is spent; the others cost none."""
        self._note_cancels()
        with self._transaction():  # those of cancelled messages were running: dropped
            gone = self._db.execute("DELETE FROM deliveries WHERE message_id IN"
                                    " (SELECT message_id FROM cancelled) RETURNING message_id")
            self._finish_if_done({row[0]: None for row in gone.fetchall()})
            return self._db.execute("UPDATE deliveries SET state = 'queued'"
                                    " WHERE state IN ('inflight', 'started')").rowcount

    def prune(self, older_than_s: float, now: float | None = None) -> int:
        """Forget done messages (and so their ids) older than the dedupe window."""
        now = time.time() if now is None else now
        with self._transaction():
            pruned = self._db.execute(
                "DELETE FROM messages WHERE done_at IS NOT NULL AND done_at < ? AND id NOT IN"
                " (SELECT message_id FROM dead_letters)", (now - older_than_s,)).rowcount
            self._db.execute("DELETE FROM cancelled WHERE cancelled_at < ?",
                             (now - older_than_s,))
            self._note_cancels()
            if pruned:
                self._db.execute("DELETE FROM received WHERE message_id NOT IN"
                                 " (SELECT id FROM messages)")
            messages.prune_attempts(self._db)
            return pruned

    # ------------------------------------------------------------------ read

    def depth(self, task: str) -> tuple[int, int]:
        """Return (queued, inflight) delivery counts of a task (inflight: claimed or started)."""
        rows = dict(self._db.execute(
            "SELECT state, COUNT(*) FROM deliveries WHERE task = ? GROUP BY state",
            (task,)).fetchall())
        return rows.get("queued", 0), rows.get("inflight", 0) + rows.get("started", 0)

    def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only `query` on this journal's connection, for a view that keeps its
        own SQL (yptask.delivery.traces). Only in the journal's thread, like the rest."""
        return query(self._db)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Return the most recent dead letters."""
        rows = self._db.execute(
            f"SELECT {_DEAD_ENVELOPE_COLUMNS}, d.task, d.attempt, d.error_class, d.error,"
            " d.traceback, d.died_at FROM dead_letters d JOIN messages m ON m.id = d.message_id"
            " ORDER BY d.died_at DESC LIMIT ?", (limit,)).fetchall()
        width = len(_ENVELOPE_FIELDS)
        return [DeadLetter(_envelope(r[:width]), *r[width:]) for r in rows]

    # ---- deadlines and schedule (the queries are in yptask.store.schedule)

    def expire_many(self, deliveries: list[tuple[str, str, float]],
                    now: float | None = None) -> int:
        """Dead-letter claimed deliveries, (message id, task, deadline), whose deadline
        passed before a worker took them (error class "Expired"); return how many."""
        with self._transaction():
            gone = schedule.expire(self._db, deliveries, time.time() if now is None else now)
            self._finish_if_done(dict.fromkeys(mid for mid, _, _ in deliveries))
        return gone

    def next_due(self, task: str, now: float | None = None) -> float | None:
        """When the next queued delivery of `task` waiting for later than `now` is due."""
        return schedule.next_due(self._db, task, time.time() if now is None else now)

    def scheduled(self, limit: int = 100, now: float | None = None) -> list[dict[str, Any]]:
        """Queued deliveries waiting for a later time (delayed casts, retries), soonest first."""
        return schedule.waiting(self._db, limit, time.time() if now is None else now)

    # ------------------------------------------------------------------ client ids

    def known_client_ids(self, ids: list[str]) -> set[str]:
        """See `IdReader.known`."""
        return known_client_ids(self._db, ids)

    def remember_client_ids(self, ids: list[str], now: float | None = None) -> None:
        """Note ids another node took, for the dedupe window."""
        now = time.time() if now is None else now
        with self._transaction():
            self._db.executemany("INSERT OR IGNORE INTO client_ids VALUES (?, ?)",
                                 [(message_id, now) for message_id in ids])

    def forget_client_ids(self, older_than_s: float, now: float | None = None) -> int:
        """Forget the ids other nodes took longer ago than the dedupe window."""
        now = time.time() if now is None else now
        with self._transaction():
            return self._db.execute("DELETE FROM client_ids WHERE taken_at < ?",
                                    (now - older_than_s,)).rowcount

    # ---- the message browser (the queries are in yptask.store.messages)

    def cancel_many(self, message_ids: Sequence[str]) -> dict[str, tuple[list[str], list[str]]]:
        """`cancel` for many messages in ONE transaction: per id, (tasks cancelled, running)."""
        with self._transaction():
            return {mid: self._cancel(mid, time.time()) for mid in message_ids}

    def change_waiting(self, action: str, deliveries: Sequence[tuple[str, str]],
                       priority: int = 0) -> list[tuple[str, str]]:
        """Apply a browser `action` (see yptask.store.messages.CHANGES) to deliveries,
        (message id, task) pairs, in ONE transaction; return the pairs it changed."""
        with self._transaction():
            changed = messages.change(self._db, action, deliveries, priority, time.time())
            self._finish_if_done(dict.fromkeys(mid for mid, _ in changed))
        return changed

    # ------------------------------------------------------------------ helpers

    def _record(self, attempts: Iterable[Attempt]) -> None:
        """Keep `attempts` in the history (yptask.store.messages reads and prunes it)."""
        self._db.executemany("INSERT INTO attempts (message_id, task, attempt, node, worker,"
                             " started_at, duration_s, outcome, error_class, error, traceback)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [attempt.row() for attempt in attempts])

    def cancelled(self, message_id: str) -> bool:
        """Was this id cancelled here (within the dedupe window)? No query while none is."""
        return self._any_cancelled and self._db.execute(
            "SELECT 1 FROM cancelled WHERE message_id = ?", (message_id,)).fetchone() is not None

    def _note_cancels(self) -> None:  # so that casts skip the lookup while nothing is cancelled
        self._any_cancelled = self._db.execute("SELECT 1 FROM cancelled").fetchone() is not None

    def _forget(self, deliveries: list[tuple[str, str]]) -> None:
        """Delete deliveries, (message id, task) pairs, and finish the messages left empty."""
        self._db.executemany("DELETE FROM deliveries WHERE message_id = ? AND task = ?",
                             deliveries)
        self._finish_if_done(dict.fromkeys(mid for mid, _ in deliveries))

    def _finish_if_done(self, message_ids: Iterable[str]) -> None:
        """Mark done those of the messages that have no delivery left."""
        now = time.time()
        self._db.executemany(
            "UPDATE messages SET done_at = ?1 WHERE id = ?2 AND NOT EXISTS"
            " (SELECT 1 FROM deliveries WHERE message_id = ?2)",
            [(now, message_id) for message_id in message_ids])

    def _mark_done(self, message_ids: list[str]) -> None:
        self._db.executemany("UPDATE messages SET done_at = ? WHERE id = ?",
                             [(time.time(), mid) for mid in message_ids])

    def _transaction(self) -> Transaction:
        return Transaction(self._db)


# An envelope as the reads select it: a delivery's priority (its task's), the message's rest.
_ENVELOPE_FIELDS = ("m.id", "m.name", "m.payload", "m.published_at", "d.priority", "m.deadline",
                    "m.trace_id", "m.parent_id")
_ENVELOPE_COLUMNS = ", ".join(_ENVELOPE_FIELDS)
_DEAD_ENVELOPE_COLUMNS = _ENVELOPE_COLUMNS.replace("d.priority", "m.priority")  # d: dead_letters


def _envelope(row: tuple[Any, ...]) -> Envelope:
    """The envelope of a row selected as _ENVELOPE_COLUMNS."""
    mid, name, payload, published, priority, deadline, trace_id, parent_id = row
    return Envelope(mid, name, json.loads(payload), published, priority, deadline,
                    trace_id or own_trace_id(mid), parent_id)
