"""The journal's SQLite file: its schema, how it is opened, and the transaction of each write.

WAL mode, so readers (`journal.IdReader`) run beside the one writing thread;
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
    done_at REAL                    -- set when its last delivery ends; kept for dedupe
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
    db.executescript(SCHEMA)
    return db


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
