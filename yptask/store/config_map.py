"""The config map: the one owner of the replicated map's keys, reads and writes.

Every node of a cluster keeps the same map (yptask.store.replicated): task
definitions, timer definitions and their state, the timer lease's roster, and
the audit log (write-once entries, bounded by `AUDIT_RETENTION`).
This module names those keys, does every read and write off the event loop
(SQLite), pushes local writes to the peers, and tells its listeners of every
change through one route, whether it was written here or merged from a peer:
a listener never needs to know where a change came from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from yptask.store.replicated import Entry, ReplicatedStore, Retention, Version

__all__ = ["AUDIT_KEY", "AUDIT_RETENTION", "TASK_KEY", "TIMER_KEY", "TIMER_STATE_KEY",
           "VOTER_KEY", "ConfigMap", "Listener"]

TASK_KEY = "task:"  # task definitions
TIMER_KEY = "timer:"  # timer definitions
TIMER_STATE_KEY = "timer_state:"  # {"last_fire", "last_error", "last_error_at"} per timer
VOTER_KEY = "voter:"  # the timer lease's roster: every node that votes, {"since": wall}
AUDIT_KEY = "audit:"  # the audit log (yptask.access.audit): MILLIS-NODE-N -> one change
# Every node keeps the newest 2 000 entries of the log, none older than 90 days.
# Every entry is in each anti-entropy digest, encoded on the event loop (about 7 us an entry
# per peer every sync): 2 000 keep that near 14 ms; a digest per prefix would lift the bound.
AUDIT_RETENTION = Retention(AUDIT_KEY, max_entries=2_000, max_age_s=90 * 86400.0)

Listener = Callable[[list[Entry]], Awaitable[None]]
Push = Callable[[list[Entry]], Awaitable[None]]  # to every peer; returns once each answered


class ConfigMap:
    """The replicated config map of one node: reads, writes, merges, and their listeners."""

    def __init__(self, store: ReplicatedStore,
                 retention: Sequence[Retention] = (AUDIT_RETENTION,)) -> None:
        self._store = store
        for bound in retention:
            store.bound(bound)
        self._listeners: list[Listener] = []
        self._push: Push | None = None  # None: no peers (before the cluster starts)
        self._pushes: set[asyncio.Task[None]] = set()

    def listen(self, listener: Listener) -> None:
        """Have `listener` told of every change from now on, local or remote, in order."""
        self._listeners.append(listener)

    def push_with(self, push: Push) -> None:
        """Send local writes to the peers with `push` (the cluster's)."""
        self._push = push

    async def seed_once(self, values: dict[str, dict[str, Any]]) -> None:
        """Write `values` if this map was never written (a node's first start)."""
        await asyncio.to_thread(self._store.seed_once, values)

    async def get(self, key: str) -> Entry | None:
        return await asyncio.to_thread(self._store.get, key)

    async def values(self, prefix: str) -> dict[str, dict[str, Any]]:
        """The live values under `prefix`, by the rest of their key."""
        return await asyncio.to_thread(self._store.values, prefix)

    async def newest(self, prefix: str, *, below: str | None = None, limit: int = 100,
                     where: tuple[str, str] | None = None) -> list[Entry]:
        """The live entries under `prefix`, greatest key first (ReplicatedStore.newest)."""
        return await asyncio.to_thread(self._store.newest, prefix, below=below, limit=limit,
                                       where=where)

    async def snapshot(self, *prefixes: str) -> list[dict[str, dict[str, Any]]]:
        """The values under each prefix, read together (one trip off the loop)."""
        return await asyncio.to_thread(lambda: [self._store.values(p) for p in prefixes])

    async def put(self, items: Sequence[tuple[str, dict[str, Any] | None]], *,
                  wait: bool = False) -> list[Entry]:
        """Write `items` (None: delete), push them to the peers and tell the listeners.

        With `wait`, return only once every peer took them or failed (for writes that
        must leave before the node does); otherwise they are pushed in the background
        (anti-entropy repairs a push that is lost).
        """
        store = self._store
        entries = await asyncio.to_thread(lambda: [store.put(k, v) for k, v in items])
        if self._push is not None:
            if wait:
                await self._push(entries)
            else:
                push = asyncio.ensure_future(self._push(entries))
                self._pushes.add(push)
                push.add_done_callback(self._pushes.discard)
        await self._changed(entries)
        return entries

    async def merge(self, entries: list[Entry]) -> None:
        """Take a peer's entries (those newer than ours win) and tell the listeners."""
        if entries:
            await self._changed(await asyncio.to_thread(self._store.merge, entries))

    async def digest(self) -> dict[str, Version]:
        return await asyncio.to_thread(self._store.digest)

    async def newer_than(self, digest: dict[str, Version]) -> list[Entry]:
        return await asyncio.to_thread(self._store.newer_than, digest)

    async def close(self) -> None:
        """Wait for the pushes under way, then close the store."""
        await asyncio.gather(*self._pushes, return_exceptions=True)
        self._store.close()

    async def _changed(self, entries: list[Entry]) -> None:
        if not entries:
            return
        for listener in self._listeners:  # an error reaches the writer (or the peer)
            await listener(entries)
