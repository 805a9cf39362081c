"""The node's history file: per-task series, deploy markers and the timer ledger, for a day.

A SQLite file of its own (`history.db` in the data dir), not a table of the
journal: the journal's size counts against `max_journal_mb` (back-pressure),
its file is checked at start, and its one thread group-commits every cast, so
a day-long query or a write of every task's sample would hold casts up. Here
nothing is a message: losing the file loses no work, so it is written with
`synchronous=NORMAL` (WAL), on its own thread (one, so SQLite is never
touched from two), and one that cannot be opened is put aside and started
anew. Every call is queued to that thread: from the event loop with `run`,
fire-and-forget with `submit` (errors logged).

Tables: `series` (one row per task per 10 s: handled, failed, peak queue and
in flight, p50/p99 ms), `events` (restart, put, pause, resume, node_start),
`ledger` (each timer tick decided here: fired, missed, skipped, ...). Series
and events are kept for `KEEP_S`; the ledger keeps `LEDGER_PER_TIMER` rows
of each timer, none older than `LEDGER_KEEP_S`.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["HISTORY_FILE", "KEEP_S", "LEDGER_PER_TIMER", "History", "LedgerRow", "Sample"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

HISTORY_FILE = "history.db"
KEEP_S = 86_400  # series and events
LEDGER_PER_TIMER = 10_000
LEDGER_KEEP_S = 7 * 86_400

# (task, t, handled, failed, queued, in_flight, p50_ms, p99_ms)
Sample = tuple[str, int, int, int, int, int, float | None, float | None]
# (timer, tick, outcome, reason, message id, node, epoch, at)
LedgerRow = tuple[str, float, str, str | None, str | None, str, int, float]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    task TEXT NOT NULL, t INTEGER NOT NULL, handled INTEGER NOT NULL, failed INTEGER NOT NULL,
    queued INTEGER NOT NULL, in_flight INTEGER NOT NULL, p50_ms REAL, p99_ms REAL,
    PRIMARY KEY (task, t)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    t REAL NOT NULL, kind TEXT NOT NULL, task TEXT, generation INTEGER);
CREATE INDEX IF NOT EXISTS events_by_t ON events (t);
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, timer TEXT NOT NULL, tick REAL NOT NULL,
    outcome TEXT NOT NULL, reason TEXT, message_id TEXT, node TEXT NOT NULL,
    epoch INTEGER NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_by_timer ON ledger (timer, tick);
"""

# A restart within one 10 s interval writes its row again: the counts add up.
_ADD_SAMPLE = """
INSERT INTO series VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (task, t) DO UPDATE SET handled = handled + excluded.handled,
    failed = failed + excluded.failed, queued = excluded.queued,
    in_flight = excluded.in_flight, p50_ms = coalesce(excluded.p50_ms, p50_ms),
    p99_ms = max(coalesce(excluded.p99_ms, p99_ms), coalesce(p99_ms, excluded.p99_ms))
"""

# One task's steps: counts summed, queue and in flight at their peak, p50 weighted by the
# messages of each row, p99 the worst (rows keep percentiles, not their histograms). One
# query per task reads its rows by the primary key's range (a day of 20 tasks: ~0.2 s).
_SERIES = """
SELECT (t / :step) * :step AS start, sum(handled), sum(failed), max(queued),
       max(in_flight),
       sum(p50_ms * (handled + failed)) / nullif(sum(CASE WHEN p50_ms IS NOT NULL
                                                     THEN handled + failed END), 0),
       max(p99_ms)
FROM series WHERE task = :task AND t >= :since GROUP BY start ORDER BY start
"""


class History:
    """The history file of one node, behind its one thread."""

    def __init__(self, path: Path, *, node: str = "") -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"history {node}".strip())
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self.run(self._open)

    def run(self, call: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """Queue `call(*args)` on the history thread now (calls run in the order queued);
        await the answer for its result."""
        return asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    def submit(self, call: Callable[..., Any], *args: Any) -> None:
        """Queue `call(*args)` without waiting (from any thread); an error is logged."""
        try:
            self._executor.submit(call, *args).add_done_callback(_log_failure)
        except RuntimeError:  # closed: the node is stopping, the write is moot
            log.debug("history closed; %s not written", getattr(call, "__name__", call))

    def close(self) -> None:
        """Finish what is queued, then close the file (blocking: call off the loop)."""
        try:
            self._executor.submit(self._close)
        except RuntimeError:
            return
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ on the thread

    def _open(self) -> None:
        try:
            self._db = _connect(self.path)
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.broken-{int(time.time())}")
            log.warning("history file %s cannot be read (%s): moved to %s, starting anew",
                        self.path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.path}{suffix}")
                if source.exists():
                    source.rename(f"{aside}{suffix}")
            self._db = _connect(self.path)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the history file is not open")
        return self._db

    def add_samples(self, samples: Sequence[Sample]) -> None:
        """Every task's sample of one interval, in one transaction."""
        with self.db:
            self.db.executemany(_ADD_SAMPLE, samples)

    def add_event(self, t: float, kind: str, task: str | None, generation: int | None
                  ) -> None:
        with self.db:
            self.db.execute("INSERT INTO events VALUES (?, ?, ?, ?)", (t, kind, task,
                                                                      generation))

    def add_ledger(self, rows: Sequence[LedgerRow]) -> None:
        with self.db:
            self.db.executemany("INSERT INTO ledger (timer, tick, outcome, reason, message_id,"
                                " node, epoch, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def series(self, tasks: Sequence[str], since: int, step: int) -> list[tuple[Any, ...]]:
        """(task, step start, handled, failed, queued, in_flight, p50_ms, p99_ms) per task
        of `tasks` and step from `since` on."""
        return [(task, *row) for task in tasks for row in self.db.execute(
            _SERIES, {"task": task, "since": since, "step": step}).fetchall()]

    def events(self, since: float) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT t, kind, task, generation FROM events WHERE t >= ? "
                               "ORDER BY t", (since,)).fetchall()
        return [{"t": t, "kind": kind, "task": task,
                 **({"generation": generation} if generation is not None else {})}
                for t, kind, task, generation in rows]

    def ledger(self, timer: str, limit: int, before: float | None) -> list[dict[str, Any]]:
        """The newest `limit` decisions on `timer`'s ticks (before the tick `before`)."""
        rows = self.db.execute(
            "SELECT tick, outcome, reason, message_id, node, epoch, at FROM ledger "
            "WHERE timer = ? AND tick < ? ORDER BY tick DESC, seq DESC LIMIT ?",
            (timer, float("inf") if before is None else before, limit)).fetchall()
        return [{"tick": tick, "outcome": outcome, "reason": reason, "id": message_id,
                 "node": node, "epoch": epoch, "at": at}
                for tick, outcome, reason, message_id, node, epoch, at in rows]

    def prune(self, now: float) -> None:
        """Forget series and events older than KEEP_S, and the ledger past its bounds (a
        scan of the series: a day of 20 tasks costs ~20 ms, so once a minute will do)."""
        with self.db:
            self.db.execute("DELETE FROM series WHERE t < ?", (int(now) - KEEP_S,))
            self.db.execute("DELETE FROM events WHERE t < ?", (now - KEEP_S,))
            self.db.execute("DELETE FROM ledger WHERE at < ?", (now - LEDGER_KEEP_S,))
            for (timer,) in self.db.execute("SELECT DISTINCT timer FROM ledger").fetchall():
                self.db.execute("DELETE FROM ledger WHERE timer = ? AND seq <= (SELECT seq "
                                "FROM ledger WHERE timer = ? ORDER BY seq DESC LIMIT 1 "
                                "OFFSET ?)", (timer, timer, LEDGER_PER_TIMER))


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False)  # used by the history thread only
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


def _log_failure(future: Future[Any]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("history: a write failed: %s", exc, exc_info=exc)
