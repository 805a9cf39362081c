"""The journal's queries for the message browser: every delivery this journal holds or still
remembers, in one state each, filtered and paged; one message whole; the bulk changes.

A delivery's state is read from where the journal keeps it:

- `deliveries`: queued (due now), delayed (due later, never tried), retrying (due later
  after a failed attempt), inflight (claimed or started by a handler);
- `dead_letters`: dead, or expired (its error class is "Expired");
- `received` with neither of those: done (handled here, or forwarded to a peer that took
  it), or cancelled (its id is in `cancelled`); kept as long as the message is, the dedupe
  window after it is done.

The reads run on a read-only connection of their own (`read_only`), beside the journal's
thread (WAL lets them), so a long listing never holds up a commit; the writes run in the
journal's thread, inside its transactions. The list walks newest first by (published_at,
id, task), so a cursor (the last row's key) pages stably while new messages arrive.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yptask.store.schedule import EXPIRED

__all__ = ["CHANGES", "MAX_ATTEMPTS_KEPT", "MessageFilter", "attempts", "change", "count",
           "message", "prune_attempts", "read_only", "rows"]

MAX_ATTEMPTS_KEPT = 100_000  # the attempt history keeps this many, newest
PREVIEW_CHARS = 200

# What each bulk change may touch: a delivery that waits, or a dead letter.
CHANGES = {"retry_now", "delete", "priority", "replay"}

_ITEMS = f"""
WITH items (message_id, task, state, priority, not_before, attempt) AS (
  SELECT d.message_id, d.task,
         CASE WHEN d.state != 'queued' THEN 'inflight'
              WHEN d.not_before <= :now THEN 'queued'
              WHEN d.attempt > 0 OR d.last_error IS NOT NULL THEN 'retrying'
              ELSE 'delayed' END,
         d.priority, NULLIF(d.not_before, 0), d.attempt
  FROM deliveries d
  UNION ALL
  SELECT l.message_id, l.task,
         CASE WHEN l.error_class = '{EXPIRED}' THEN 'expired' ELSE 'dead' END,
         NULL, NULL, l.attempt
  FROM dead_letters l
  UNION ALL
  SELECT r.message_id, r.task,
         CASE WHEN EXISTS (SELECT 1 FROM cancelled c WHERE c.message_id = r.message_id)
              THEN 'cancelled' ELSE 'done' END,
         NULL, NULL, NULL  -- its attempt: from the history, for the page only (`rows`)
  FROM received r
  WHERE NOT EXISTS (SELECT 1 FROM deliveries d
                    WHERE d.message_id = r.message_id AND d.task = r.task)
    AND NOT EXISTS (SELECT 1 FROM dead_letters l
                    WHERE l.message_id = r.message_id AND l.task = r.task)
)
SELECT i.message_id, m.name, i.task, i.state, COALESCE(i.priority, m.priority),
       m.published_at, i.not_before, m.deadline, i.attempt, m.trace_id,
       substr(m.payload, 1, {PREVIEW_CHARS})
FROM items i JOIN messages m ON m.id = i.message_id
"""

_COLUMNS = ("id", "name", "task", "state", "priority", "published_at", "not_before",
            "deadline", "attempt", "trace_id", "payload_preview")


@dataclass(frozen=True)
class MessageFilter:
    """What a list or a bulk change selects; every field checked already (None: any)."""

    task: str | None = None
    states: tuple[str, ...] | None = None
    name: str | None = None  # exact, or a glob with '*'
    priority: int | None = None
    since: float | None = None  # published at or after (epoch s)
    until: float | None = None  # published before
    where: tuple[tuple[str, Any], ...] = ()  # (JSON path, value): equal in the payload
    ids: tuple[str, ...] | None = None
    after: tuple[float, str, str] | None = field(default=None)  # the cursor's key

    def sql(self, now: float) -> tuple[str, dict[str, Any]]:
        """The WHERE clause and its parameters."""
        clauses: list[str] = []
        params: dict[str, Any] = {"now": now}
        for column, value, key in (("i.task", self.task, "task"),
                                   ("COALESCE(i.priority, m.priority)", self.priority, "prio")):
            if value is not None:
                clauses.append(f"{column} = :{key}")
                params[key] = value
        if self.name is not None:
            clauses.append("m.name GLOB :name" if "*" in self.name else "m.name = :name")
            params["name"] = self.name
        if self.states is not None:
            names = [f":state{n}" for n in range(len(self.states))]
            clauses.append(f"i.state IN ({', '.join(names)})")
            params.update(zip((n[1:] for n in names), self.states, strict=True))
        if self.since is not None:
            clauses.append("m.published_at >= :since")
            params["since"] = self.since
        if self.until is not None:
            clauses.append("m.published_at < :until")
            params["until"] = self.until
        for n, (path, value) in enumerate(self.where):
            params[f"path{n}"] = path
            # a payload that is no valid JSON text (none should be) matches nothing
            if value is None:
                clauses.append(f"CASE WHEN json_valid(m.payload) THEN"
                               f" json_type(m.payload, :path{n}) END = 'null'")
            else:
                clauses.append(f"CASE WHEN json_valid(m.payload) THEN"
                               f" json_extract(m.payload, :path{n}) END = :value{n}")
                params[f"value{n}"] = value
        if self.ids is not None:  # as one JSON list: no bound on SQLite's parameters
            clauses.append("i.message_id IN (SELECT value FROM json_each(:ids))")
            params["ids"] = json.dumps(self.ids)
        if self.after is not None:
            clauses.append("(m.published_at, i.message_id, i.task) < (:at, :aid, :atask)")
            params["at"], params["aid"], params["atask"] = self.after
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to the journal at `path`, for one thread (closed by it)."""
    return sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, isolation_level=None)


def rows(db: sqlite3.Connection, selected: MessageFilter, limit: int,
         now: float) -> list[dict[str, Any]]:
    """Up to `limit` deliveries `selected`, newest first, as the browser's items."""
    where, params = selected.sql(now)
    params["limit"] = limit
    found = db.execute(f"{_ITEMS}{where} ORDER BY m.published_at DESC, i.message_id DESC,"
                       " i.task DESC LIMIT :limit", params).fetchall()
    items = [dict(zip(_COLUMNS, row, strict=True)) for row in found]
    ended = [item for item in items if item["state"] in ("done", "cancelled")]
    if ended:  # one pass over the history (it has no index) for the whole page
        last = {(mid, task): attempt for mid, task, attempt in db.execute(
            "SELECT message_id, task, MAX(attempt) FROM attempts WHERE message_id IN"
            " (SELECT value FROM json_each(?)) GROUP BY message_id, task",
            (json.dumps([item["id"] for item in ended]),))}
        for item in ended:
            item["attempt"] = last.get((item["id"], item["task"]))
    return items


def count(db: sqlite3.Connection, selected: MessageFilter, up_to: int, now: float) -> int:
    """How many deliveries are `selected`, counted up to `up_to`."""
    where, params = selected.sql(now)
    params["up_to"] = up_to
    return int(db.execute(f"SELECT COUNT(*) FROM ({_ITEMS}{where} LIMIT :up_to)",
                          params).fetchone()[0])


def message(db: sqlite3.Connection, message_id: str) -> dict[str, Any] | None:
    """One message's own fields (its payload as stored, JSON text), or None."""
    row = db.execute("SELECT id, name, payload, published_at, priority, deadline, done_at,"
                     " trace_id, parent_id, EXISTS (SELECT 1 FROM cancelled"
                     " WHERE message_id = ?1) FROM messages WHERE id = ?1",
                     (message_id,)).fetchone()
    if row is None:
        return None
    keys = ("id", "name", "payload", "published_at", "priority", "deadline", "done_at",
            "trace_id", "parent_id", "cancelled")
    found = dict(zip(keys, row, strict=True))
    found["cancelled"] = bool(found["cancelled"])
    error = db.execute("SELECT task, last_error FROM deliveries WHERE message_id = ?"
                       " AND last_error IS NOT NULL", (message_id,)).fetchall()
    dead = db.execute("SELECT task, error_class, error, died_at FROM dead_letters"
                      " WHERE message_id = ?", (message_id,)).fetchall()
    found["last_errors"] = dict(error)
    found["dead"] = {task: {"error_class": cls, "error": err, "died_at": at}
                     for task, cls, err, at in dead}
    return found


def attempts(db: sqlite3.Connection, message_id: str) -> list[dict[str, Any]]:
    """The message's settled attempts the history keeps, oldest first."""
    keys = ("task", "attempt", "node", "worker", "started_at", "duration_s", "outcome",
            "error_class", "error", "traceback")
    found = db.execute(f"SELECT {', '.join(keys)} FROM attempts WHERE message_id = ?"
                       " ORDER BY seq", (message_id,)).fetchall()
    return [dict(zip(keys, row, strict=True)) for row in found]


def prune_attempts(db: sqlite3.Connection, keep: int = MAX_ATTEMPTS_KEPT) -> None:
    """Keep the newest `keep` attempts, and none of a message the journal has forgotten."""
    db.execute("DELETE FROM attempts WHERE seq <= (SELECT MAX(seq) FROM attempts) - ?"
               " OR message_id NOT IN (SELECT id FROM messages)", (keep,))


_WAITING = "state = 'queued'"

_CHANGE_SQL = {
    # due now: a retry or a delayed delivery, not one claimed meanwhile
    "retry_now": [f"UPDATE deliveries SET not_before = 0 WHERE message_id = ?2 AND task = ?3"
                  f" AND {_WAITING} AND not_before > ?1"],
    "priority": [f"UPDATE deliveries SET priority = ?4 WHERE message_id = ?2 AND task = ?3"
                 f" AND {_WAITING}"],
    # gone for good: a delivery that waits, or a dead letter, and the note that it came
    "delete": [f"DELETE FROM deliveries WHERE message_id = ?2 AND task = ?3 AND {_WAITING}",
               "DELETE FROM dead_letters WHERE message_id = ?2 AND task = ?3"],
    # as Journal.replay: the dead letter back in the queue, with a fresh attempt count
    "replay": ["DELETE FROM dead_letters WHERE message_id = ?2 AND task = ?3"],
}


def change(db: sqlite3.Connection, action: str, deliveries: Sequence[tuple[str, str]],
           priority: int, now: float) -> list[tuple[str, str]]:
    """Apply `action` to each (message id, task); return those it changed."""
    changed = []
    for message_id, task in deliveries:
        values = (now, message_id, task, priority)  # ?1 .. ?4: SQLite binds up to the highest
        if sum(db.execute(sql, values[:4 if "?4" in sql else 3]).rowcount
               for sql in _CHANGE_SQL[action]):
            changed.append((message_id, task))
    if action == "delete":
        db.executemany("DELETE FROM received WHERE message_id = ? AND task = ?", changed)
    elif action == "replay":
        db.executemany("UPDATE messages SET done_at = NULL WHERE id = ?",
                       [(mid,) for mid, _ in changed])
        db.executemany("INSERT INTO deliveries (message_id, task, priority) SELECT id, ?,"
                       " priority FROM messages WHERE id = ?",
                       [(task, mid) for mid, task in changed])
    return changed
