"""The journal's queries about time: deliveries that expired, and those waiting to be due.

Run by `yptask.store.journal.Journal` (in its thread, inside its transactions): a
delivery past its deadline is moved to the dead letters as "Expired" instead of
reaching a worker; a delivery whose `not_before` is later than now (a delayed cast,
or a retry after a failed attempt) is "scheduled", and its pool wakes when it is due.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

__all__ = ["EXPIRED", "expire", "expired_text", "next_due", "waiting"]

EXPIRED = "Expired"  # the error class of an expired delivery's dead letter


def expired_text(deadline: float, now: float) -> str:
    """The error of an expired delivery's dead letter: when it expired, how late it was."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(deadline))
    return (f"expired at {stamp}.{int(deadline * 1000) % 1000:03d}Z (deadline {deadline:.3f}),"
            f" {max(0.0, now - deadline):.3f} s before a worker could take it")


def expire(db: sqlite3.Connection, deliveries: list[tuple[str, str, float]], now: float) -> int:
    """Move deliveries, (message id, task, deadline), to the dead letters as expired."""
    gone = 0
    for message_id, task, deadline in deliveries:
        gone += db.execute(
            "INSERT OR REPLACE INTO dead_letters SELECT message_id, task, attempt, ?, ?, '', ?"
            " FROM deliveries WHERE message_id = ? AND task = ?",
            (EXPIRED, expired_text(deadline, now), now, message_id, task)).rowcount
        db.execute("DELETE FROM deliveries WHERE message_id = ? AND task = ?",
                   (message_id, task))
    return gone


def next_due(db: sqlite3.Connection, task: str, now: float) -> float | None:
    """The earliest `not_before` later than `now` of a queued delivery of `task`, or None."""
    row = db.execute("SELECT MIN(not_before) FROM deliveries WHERE task = ? AND"
                     " state = 'queued' AND not_before > ?", (task, now)).fetchone()
    return None if row[0] is None else float(row[0])


def waiting(db: sqlite3.Connection, limit: int, now: float) -> list[dict[str, Any]]:
    """Queued deliveries due later than `now`, soonest first, as `scheduled.list` rows
    (without the node): a "retry" has failed an attempt before, a "delayed" one has not."""
    rows = db.execute(
        "SELECT m.id, m.name, d.task, d.not_before, d.attempt, d.priority, d.last_error"
        " FROM deliveries d JOIN messages m ON m.id = d.message_id WHERE"
        " d.state = 'queued' AND d.not_before > ? ORDER BY d.not_before, d.seq LIMIT ?",
        (now, limit)).fetchall()
    return [{"id": mid, "name": name, "task": task, "not_before": not_before,
             "attempt": attempt, "priority": priority,
             "kind": "retry" if attempt or error else "delayed"}
            for mid, name, task, not_before, attempt, priority, error in rows]
