"""The audit log: every change an operator made, on any node, kept by every node.

A change is any method `yptask.access.policy.kind_of` calls one (task and timer
definitions, restarts, pauses, replays, cancels, forgetting a node), from any
surface: each transport reports it here once it ran (`record`), and a change a
viewer was refused (`Forbidden`) too. Casts and calls are not changes.

Each entry says when, on which node, who (role, how they showed it, from which
address), the method, its target (a task or timer name, a message id) and its
outcome ("ok" or the error class). Entries live in the replicated config map
under `AUDIT_KEY` (`MILLIS-NODE-N`), so every node has every node's entries and
anti-entropy heals gaps; the map keeps them within `AUDIT_RETENTION`. Writing
one never fails the change it records: an error is logged.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from yptask.access.policy import current_caller, current_publisher
from yptask.store.config_map import AUDIT_KEY, ConfigMap

__all__ = ["MAX_TARGET_CHARS", "AuditLog", "target_of"]

log = logging.getLogger(__name__)

MAX_TARGET_CHARS = 200  # a target is what a caller sent: kept short


def target_of(args: list[Any] | tuple[Any, ...]) -> str | None:
    """What a change was about, from its arguments: a definition's name, or its first
    argument (a name, a message id), cut short."""
    if not args:
        return None
    first = args[0]
    if isinstance(first, dict):
        first = first.get("name")
    if first is None:
        return None
    return (first if isinstance(first, str) else repr(first))[:MAX_TARGET_CHARS]


class AuditLog:
    """One node's writer and reader of the cluster's audit log."""

    def __init__(self, node: str, config: ConfigMap,
                 wall: Callable[[], float] = time.time) -> None:
        self.node = node
        self._config = config
        self._wall = wall
        self._serial = itertools.count()

    async def record(self, method: str, args: list[Any] | tuple[Any, ...], outcome: str = "ok",
                     result: Any = None) -> None:
        """Keep one change of the request being served (its caller is `current_caller`)."""
        try:
            now = self._wall()
            key = f"{AUDIT_KEY}{int(now * 1000):013d}-{self.node}-{next(self._serial)}"
            await self._config.put([(key, self._entry(now, method, args, outcome, result))])
        except Exception:
            log.exception("could not write the audit entry of %s", method)

    def _entry(self, now: float, method: str, args: list[Any] | tuple[Any, ...], outcome: str,
               result: Any) -> dict[str, Any]:
        caller, app = current_caller.get(), current_publisher.get()
        role: str
        if caller is not None:
            role, via, who, address = caller.role, caller.via, caller.who, caller.address
        elif app is not None:
            role, via, who, address = "publisher", "token", f"publisher app {app}", ""
        else:  # a surface that checks no credentials (a node run in-process)
            role, via, who, address = "admin", "unchecked", "in-process", ""
        entry: dict[str, Any] = {
            "at": round(now, 3), "node": self.node, "role": role, "via": via, "who": who,
            "address": address, "method": method, "target": target_of(args),
            "outcome": outcome}
        if isinstance(result, int) and not isinstance(result, bool):
            entry["count"] = result  # dead.replay: how many messages went back
        return entry

    async def list(self, limit: int = 100, before: str | None = None,
                   target: str | None = None) -> list[dict[str, Any]]:
        """The newest entries first: at most `limit`, older than the entry `before` (an
        `id` a previous page ended with), about `target` only if given."""
        entries = await self._config.newest(
            AUDIT_KEY, below=None if before is None else AUDIT_KEY + before, limit=limit,
            where=None if target is None else ("target", target))
        return [{"id": e.key[len(AUDIT_KEY):], **(e.value or {})} for e in entries]
