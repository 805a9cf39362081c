"""The journal's claim queries: by lottery (how many deliveries wait at each priority,
then the oldest of each level drawn: yptask.delivery.lottery draws), or strictly by
priority. A claim first asks which levels wait at all: with one, it takes that level's
oldest, with no counting and no draw.

Run by `yptask.store.journal.Journal.claim` in its thread, inside its transaction. Both
queries walk the `deliveries_ready` index (task, state, priority DESC, seq) one level at
a time, and neither reads more than `limit` rows of a level: a claim costs the same with
a hundred or a million deliveries waiting.
"""

from __future__ import annotations

import functools
import random
import sqlite3
from collections.abc import Sequence
from typing import Any

from yptask.delivery.lottery import LEVELS, draw

__all__ = ["claim_rows"]

_READY = "task = ?1 AND state = 'queued' AND not_before <= ?2"


@functools.cache
def _counts_query() -> str:
    """The ready deliveries of each level, counted up to ?3 each: one row per level."""
    return " UNION ALL ".join(
        f"SELECT {level}, (SELECT COUNT(*) FROM (SELECT 1 FROM deliveries"
        f" WHERE {_READY} AND priority = {level} LIMIT ?3))" for level in range(LEVELS))


@functools.cache
def _waiting_query() -> str:
    """The levels with a ready delivery: one index probe each, one row per level."""
    return " UNION ALL ".join(
        f"SELECT {level} WHERE EXISTS (SELECT 1 FROM deliveries WHERE {_READY}"
        f" AND priority = {level})" for level in range(LEVELS))


@functools.cache
def _strict_query(columns: str) -> str:
    """The ready deliveries of levels ?3 and up, highest first, then oldest: ?4 of them."""
    return (f"SELECT d.seq, d.attempt, {columns} FROM deliveries d"
            " JOIN messages m ON m.id = d.message_id"
            " WHERE d.task = ?1 AND d.state = 'queued' AND d.not_before <= ?2"
            " AND d.priority >= ?3 ORDER BY d.priority DESC, d.seq LIMIT ?4")


@functools.cache
def _level_query(columns: str) -> str:
    """The oldest ?4 ready deliveries of level ?3, with their messages."""
    return (f"SELECT d.seq, d.attempt, {columns} FROM deliveries d"
            " JOIN messages m ON m.id = d.message_id"
            " WHERE d.task = ?1 AND d.state = 'queued' AND d.not_before <= ?2"
            " AND d.priority = ?3 ORDER BY d.seq LIMIT ?4")


def claim_rows(db: sqlite3.Connection, columns: str, task: str, *, limit: int, now: float,
               tickets: Sequence[int] | None, rng: random.Random | None,
               min_priority: int = 0) -> list[tuple[Any, ...]]:
    """Up to `limit` ready delivery rows (seq, attempt, `columns`) of `task` at levels
    `min_priority` and up: with `tickets`, the levels drawn by lottery, each level's oldest
    first, in the order drawn; without, strictly highest first, then oldest."""
    if tickets is None:
        return db.execute(_strict_query(columns), (task, now, min_priority, limit)).fetchall()
    waiting = [level for (level,) in db.execute(_waiting_query(), (task, now))
               if level >= min_priority]
    if len(waiting) < 2:  # the usual claim: one level (or none) waits, nothing to draw
        return db.execute(_level_query(columns), (task, now, waiting[0], limit)).fetchall() \
            if waiting else []
    counts = [0] * LEVELS
    for level, count in db.execute(_counts_query(), (task, now, limit)):
        if level >= min_priority:
            counts[level] = count
    drawn = draw(counts, tickets, limit, rng)
    taken: dict[int, int] = {}
    for level in drawn:
        taken[level] = taken.get(level, 0) + 1
    rows = {level: iter(db.execute(_level_query(columns), (task, now, level, k)).fetchall())
            for level, k in taken.items()}
    # a row counted may be gone by now only if another connection wrote: none does
    return [row for level in drawn if (row := next(rows[level], None)) is not None]
