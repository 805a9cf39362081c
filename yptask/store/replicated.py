"""The replicated config map: task (and timer) definitions every node of a cluster shares.

Each key ("task:indexer") holds a value (a definition as plain data) or a
tombstone (deleted), stamped with a `Version` from a hybrid logical clock:
wall-clock milliseconds, a counter, and the writing node's name. The version
orders every pair of writes the same way on every node, so merging is "keep
the greater version" (last writer wins, the node name breaking exact ties),
and any order of merges converges to the same map.

Nodes exchange digests (key -> version) to find what the other lacks (anti-
entropy), and push each local write to every peer at once. The map is kept in
SQLite beside the journal, so it survives restarts: a node that was away
catches up at its next exchange. Seed entries (a node's first-start examples)
carry version zero, so any real edit anywhere wins over them.

A prefix may be bounded (`Retention`, for write-once logs such as the audit
log): its keys begin with their time in milliseconds, and a node keeps only
the newest `max_entries` of them, none older than `max_age_s`. Pruning drops
rows outright (no tombstones), and a merge refuses an entry the bound would
drop at once, so a peer that still holds it cannot bring it back: the nodes
agree on the newest entries of everything they have seen.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yptask.errors import ProtocolError

__all__ = ["Entry", "HybridClock", "ReplicatedStore", "Retention", "Version",
           "digest_from_term", "digest_to_term"]

MILLIS_DIGITS = 13  # a bounded prefix's keys: PREFIX + zero-padded wall milliseconds + ...
# A bound's count is enforced every this many local writes under it (counting is a scan
# of the prefix), and at every merge: in between a node may hold a few entries more,
# never fewer, and a merge's cut is always the bound's.
PRUNE_EVERY_WRITES = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    millis INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    node TEXT NOT NULL,
    value TEXT                  -- JSON; NULL for a tombstone
);
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, order=True)
class Version:
    """When and where a value was written; greater versions win."""

    millis: int
    counter: int
    node: str

    def to_term(self) -> list[Any]:
        return [self.millis, self.counter, self.node]

    @classmethod
    def from_term(cls, term: Any) -> Version:
        if not (isinstance(term, list) and len(term) == 3 and _is_int(term[0])
                and _is_int(term[1]) and isinstance(term[2], str)):
            raise ProtocolError(f"a version is [millis, counter, node], got {term!r:.80}")
        return cls(term[0], term[1], term[2])


@dataclass(frozen=True)
class Entry:
    """One key of the map: its value (None: deleted) and the version that wrote it."""

    key: str
    version: Version
    value: dict[str, Any] | None

    def to_term(self) -> list[Any]:
        return [self.key, self.version.to_term(), self.value]

    @classmethod
    def from_term(cls, term: Any) -> Entry:
        if not (isinstance(term, list) and len(term) == 3 and isinstance(term[0], str)
                and (term[2] is None or isinstance(term[2], dict))):
            raise ProtocolError(f"an entry is [key, version, value], got {term!r:.80}")
        return cls(term[0], Version.from_term(term[1]), term[2])


@dataclass(frozen=True)
class Retention:
    """The bound of one prefix of write-once, time-keyed entries."""

    prefix: str
    max_entries: int
    max_age_s: float

    def horizon(self, now_s: float) -> str:
        """The smallest key not yet too old at `now_s`."""
        millis = max(0, int((now_s - self.max_age_s) * 1000))
        return f"{self.prefix}{millis:0{MILLIS_DIGITS}d}"


class HybridClock:
    """Versions that grow with the wall clock and never go back, even if it does."""

    def __init__(self, node: str, wall: Callable[[], float] = time.time) -> None:
        self.node = node
        self.wall = self._wall = wall
        self._last = Version(0, 0, node)
        self._lock = threading.Lock()

    def now(self) -> Version:
        """A version for a local write: greater than every version seen so far."""
        with self._lock:
            millis = int(self._wall() * 1000)
            if millis > self._last.millis:
                self._last = Version(millis, 0, self.node)
            else:
                self._last = Version(self._last.millis, self._last.counter + 1, self.node)
            return self._last

    def observe(self, version: Version) -> None:
        """Move past a version written elsewhere, so our next write orders after it."""
        with self._lock:
            if (version.millis, version.counter) > (self._last.millis, self._last.counter):
                self._last = Version(version.millis, version.counter, self.node)


class ReplicatedStore:
    """The map, in SQLite. Thread-safe (one lock); each call is one transaction."""

    def __init__(self, path: str | Path, clock: HybridClock) -> None:
        self.clock = clock
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._retention: list[Retention] = []
        self._writes_since_prune = 0
        for entry in self.entries():  # a restarted node writes after what it wrote before
            clock.observe(entry.version)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def bound(self, retention: Retention) -> None:
        """Keep `retention`'s prefix within its bound from now on (pruned at once)."""
        self._retention.append(retention)
        self.prune()

    def prune(self) -> int:
        """Drop what the bounded prefixes keep no more; return how many went."""
        dropped = 0
        with self._lock:
            for retention in self._retention:
                dropped += self._prune(retention)
        return dropped

    def _prune(self, retention: Retention, *, count: bool = True) -> int:
        low, high = retention.prefix, retention.prefix + "\U0010ffff"
        gone = self._db.execute("DELETE FROM entries WHERE key >= ? AND key < ?",
                                (low, retention.horizon(self.clock.wall()))).rowcount
        if not count:
            return gone
        return gone + self._db.execute(
            "DELETE FROM entries WHERE key >= ? AND key < ? AND key < (SELECT key FROM entries"
            " WHERE key >= ? AND key < ? ORDER BY key DESC LIMIT 1 OFFSET ?)",
            (low, high, low, high, retention.max_entries - 1)).rowcount

    def _cuts(self) -> list[tuple[str, str]]:
        """(prefix, smallest key kept) of each bound: a key under the prefix and below the
        cut would be pruned as soon as it was written."""
        cuts = []
        for retention in self._retention:
            low, high = retention.prefix, retention.prefix + "\U0010ffff"
            oldest_kept = self._db.execute(
                "SELECT key FROM entries WHERE key >= ? AND key < ? ORDER BY key DESC LIMIT 1"
                " OFFSET ?", (low, high, retention.max_entries - 1)).fetchone()
            cut = retention.horizon(self.clock.wall())
            cuts.append((low, cut if oldest_kept is None else max(cut, oldest_kept[0])))
        return cuts

    def seed_once(self, values: dict[str, dict[str, Any]]) -> bool:
        """Store first-start values (version zero) unless this store was ever seeded."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM store_meta WHERE key = 'seeded'").fetchone():
                    return False
                seed = Version(0, 0, self.clock.node)
                self._db.executemany(
                    "INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?)",
                    [(key, seed.millis, seed.counter, seed.node, json.dumps(value))
                     for key, value in values.items()])
                self._db.execute("INSERT INTO store_meta VALUES ('seeded', '1')")
                return True
            finally:
                self._db.execute("COMMIT")

    def put(self, key: str, value: dict[str, Any] | None) -> Entry:
        """Write a value (None: delete) here, with a fresh version; return the entry."""
        with self._lock:  # stamp and write together: two writes land in version order
            entry = Entry(key, self.clock.now(), value)
            self._write([entry])
            for retention in self._retention:
                if key.startswith(retention.prefix):
                    self._writes_since_prune += 1
                    count = self._writes_since_prune >= PRUNE_EVERY_WRITES
                    if count:
                        self._writes_since_prune = 0
                    self._prune(retention, count=count)
        return entry

    def merge(self, entries: Iterable[Entry]) -> list[Entry]:
        """Keep each entry that is newer than ours; return those that changed the map."""
        newest: dict[str, Entry] = {}
        for entry in entries:
            self.clock.observe(entry.version)
            if entry.key not in newest or entry.version > newest[entry.key].version:
                newest[entry.key] = entry
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cuts = self._cuts()
                changed = [entry for key, entry in newest.items()
                           if ((current := self._version(key)) is None
                               or entry.version > current)
                           and not any(key.startswith(p) and key < cut for p, cut in cuts)]
                self._write(changed)
                for retention in self._retention:
                    self._prune(retention)
            finally:
                self._db.execute("COMMIT")
        return changed

    def get(self, key: str) -> Entry | None:
        with self._lock:
            row = self._db.execute("SELECT key, millis, counter, node, value FROM entries"
                                   " WHERE key = ?", (key,)).fetchone()
        return None if row is None else _entry(row)

    def entries(self, prefix: str = "") -> list[Entry]:
        """Every entry (tombstones included) whose key starts with `prefix`, by key."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, millis, counter, node, value FROM entries WHERE key >= ? AND"
                " key < ? ORDER BY key", (prefix, prefix + "\U0010ffff")).fetchall()
        return [_entry(row) for row in rows]

    def newest(self, prefix: str, *, below: str | None = None, limit: int = 100,
               where: tuple[str, str] | None = None) -> list[Entry]:
        """The live entries under `prefix`, newest (greatest key) first: those with keys
        below `below`, and with `where` = (field, text), those whose value has it."""
        query = ("SELECT key, millis, counter, node, value FROM entries WHERE key >= ? AND"
                 " key < ? AND value IS NOT NULL")
        args: list[Any] = [prefix, min(below, prefix + "\U0010ffff") if below is not None
                           else prefix + "\U0010ffff"]
        if where is not None:
            query += " AND json_extract(value, '$.' || ?) = ?"
            args += list(where)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY key DESC LIMIT ?",
                                    [*args, limit]).fetchall()
        return [_entry(row) for row in rows]

    def values(self, prefix: str) -> dict[str, dict[str, Any]]:
        """The live values under `prefix`, by key without the prefix."""
        return {e.key[len(prefix):]: e.value for e in self.entries(prefix) if e.value is not None}

    def digest(self) -> dict[str, Version]:
        """Key -> version of everything here: what a peer compares against its own (the
        values are not read: a digest of thousands of audit entries stays cheap)."""
        with self._lock:
            rows = self._db.execute("SELECT key, millis, counter, node FROM entries").fetchall()
        return {key: Version(millis, counter, node) for key, millis, counter, node in rows}

    def newer_than(self, digest: dict[str, Version]) -> list[Entry]:
        """The entries a peer with `digest` lacks or holds an older version of."""
        wanted = [key for key, version in self.digest().items()
                  if key not in digest or version > digest[key]]
        found: list[Entry] = []
        with self._lock:
            for start in range(0, len(wanted), 500):  # SQLite's bound on parameters
                chunk = wanted[start:start + 500]
                found += [_entry(row) for row in self._db.execute(
                    "SELECT key, millis, counter, node, value FROM entries WHERE key IN"
                    f" ({','.join('?' * len(chunk))}) ORDER BY key", chunk)]
        return sorted(found, key=lambda entry: entry.key)

    def _version(self, key: str) -> Version | None:
        row = self._db.execute("SELECT millis, counter, node FROM entries WHERE key = ?",
                               (key,)).fetchone()
        return None if row is None else Version(*row)

    def _write(self, entries: list[Entry]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
            [(e.key, e.version.millis, e.version.counter, e.version.node,
              None if e.value is None else json.dumps(e.value)) for e in entries])


def digest_to_term(digest: dict[str, Version]) -> list[Any]:
    return [[key, version.to_term()] for key, version in digest.items()]


def digest_from_term(term: Any) -> dict[str, Version]:
    if not isinstance(term, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)
            for pair in term):
        raise ProtocolError(f"a digest is a list of [key, version], got {term!r:.80}")
    return {key: Version.from_term(version) for key, version in term}


def _entry(row: tuple[Any, ...]) -> Entry:
    key, millis, counter, node, value = row
    return Entry(key, Version(millis, counter, node), None if value is None else json.loads(value))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
