"""The journal's SQLite file: its schema, how it is opened, and the transaction of each write.

WAL mode, so readers (`id_reader.IdReader`) run beside the one writing thread;
the fsync level is SQLite's `synchronous`, checked here; foreign keys on.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from yptask.errors import ConfigError

__all__ = ["SCHEMA", "Transaction", "connect"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    payload TEXT NOT NULL,          -- JSON
    published_at REAL NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    deadline REAL,
    done_at REAL,                   -- set when its last delivery ends; kept for dedupe
    trace_id TEXT,                  -- its W3C trace (yptask.ingress.trace)
    parent_id TEXT                  -- the message whose handler cast it, if one did
);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL REFERENCES messages(id),
    task TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,  -- the message's, here so the ready index orders by it
    attempt INTEGER NOT NULL DEFAULT 0,   -- attempts spent: handler runs started so far
    state TEXT NOT NULL DEFAULT 'queued', -- queued | inflight (claimed) | started (by a handler)
    not_before REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (message_id, task)
);
CREATE INDEX IF NOT EXISTS deliveries_ready
    ON deliveries (task, state, priority DESC, seq);
CREATE TABLE IF NOT EXISTS received (   -- every delivery this journal took, cast or forwarded
    message_id TEXT NOT NULL,
    task TEXT NOT NULL,
    PRIMARY KEY (message_id, task)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    message_id TEXT NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    error_class TEXT NOT NULL,
    error TEXT NOT NULL,
    traceback TEXT NOT NULL,
    died_at REAL NOT NULL,
    PRIMARY KEY (message_id, task)
);
CREATE INDEX IF NOT EXISTS messages_trace ON messages (trace_id) WHERE trace_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS cancelled (   -- ids cancelled here (delivery/cancel.py): never delivered
    message_id TEXT PRIMARY KEY,         -- again, even if cast or forwarded later, within the
    cancelled_at REAL NOT NULL           -- dedupe window
);
CREATE TABLE IF NOT EXISTS attempts (   -- settled attempts, newest kept (journal.prune); no
                                     -- index: one on the random ids doubled the cost of an ack
    seq INTEGER PRIMARY KEY,             -- no AUTOINCREMENT: it costs every insert a write
    message_id TEXT NOT NULL,
    task TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    node TEXT NOT NULL,
    worker TEXT,                         -- pid, or a remote worker's id
    started_at REAL NOT NULL,
    duration_s REAL,
    outcome TEXT NOT NULL,               -- handled | failed | refused | lost
    error_class TEXT,
    error TEXT,
    traceback TEXT
);
CREATE TABLE IF NOT EXISTS client_ids (  -- ids homed here, taken elsewhere (cluster/client_ids.py)
    id TEXT PRIMARY KEY,
    taken_at REAL NOT NULL
);
"""


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """Open (or create) the journal at `path` with fsync level `synchronous`, schema applied."""
    if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError(f"journal fsync level {synchronous!r}: use OFF, NORMAL, FULL "
                          "or EXTRA (SQLite's synchronous)")
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous.upper()}")
    db.execute("PRAGMA foreign_keys=ON")
    _add_columns(db)
    db.executescript(SCHEMA)
    return db


# Columns added since the first schema: a journal made before them gets them at its next open.
ADDED_COLUMNS = (("messages", "trace_id", "TEXT"), ("messages", "parent_id", "TEXT"))


def _add_columns(db: sqlite3.Connection) -> None:
    for table, column, kind in ADDED_COLUMNS:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if have and column not in have:  # an empty `have`: the table is new, SCHEMA makes it
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not exc_type:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:  # some errors end the transaction in SQLite already
            self._db.execute("ROLLBACK")
