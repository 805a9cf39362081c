"""The node's task definitions, kept in SQLite: the truth after the first start.

At first start the store is seeded from a TOML file (the example tasks unless
the config names another); afterwards edits made through the API are what
counts, and they survive restarts. A deleted task leaves a tombstone, so the
seed is never applied twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from yptask.config import TaskDef

__all__ = ["TaskStore"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    name TEXT PRIMARY KEY,
    definition TEXT,            -- JSON; NULL for a deleted task (tombstone)
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class TaskStore:
    """Task definitions by name. Thread-safe (one lock); each call is one transaction."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def seed_once(self, tasks: list[TaskDef]) -> bool:
        """Store `tasks` if the store was never seeded; return True if it was seeded now."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if self._db.execute("SELECT 1 FROM store_meta WHERE key = 'seeded'").fetchone():
                return False
            self._db.executemany(
                "INSERT OR REPLACE INTO tasks (name, definition, updated_at) VALUES (?, ?, ?)",
                [(t.name, json.dumps(t.to_dict()), time.time()) for t in tasks])
            self._db.execute("INSERT INTO store_meta VALUES ('seeded', '1')")
            return True

    def all(self) -> list[TaskDef]:
        with self._lock:
            rows = self._db.execute("SELECT definition FROM tasks WHERE definition IS NOT NULL"
                                    " ORDER BY name").fetchall()
        return [TaskDef.from_dict(json.loads(row[0])) for row in rows]

    def put(self, task: TaskDef) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO tasks (name, definition, updated_at) VALUES (?, ?, ?)",
                (task.name, json.dumps(task.to_dict()), time.time()))

    def delete(self, name: str) -> None:
        with self._lock:
            self._db.execute("UPDATE tasks SET definition = NULL, updated_at = ? WHERE name = ?",
                             (time.time(), name))
