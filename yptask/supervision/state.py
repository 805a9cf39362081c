"""What a supervisor shows to those who must not ask it: the registry, its phase and state.

`Registry` maps a child id to the child's current ref (refs die on restart) and
is thread-safe, so callers resolve a name without an ask; `SupervisorState` is
the snapshot a supervisor publishes whenever its children or its phase change,
and keeps the error of the last failed child start until a child starts again.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass

from yptask.supervision.policy import ActorRef, Restart

__all__ = ["ChildInfo", "Phase", "Registry", "SupervisorState"]


class Phase(enum.Enum):
    """A supervisor's phase: restarting at once, or waiting out a backoff delay."""

    RUNNING = "running"
    BACKOFF = "backoff"


class Registry:
    """Child id -> the child's current ref. Thread-safe, so callers resolve without an ask."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, ActorRef] = {}

    def whereis(self, name: str) -> ActorRef | None:
        """The live ref registered under `name`, or None (not running, or restarting)."""
        with self._lock:
            ref = self._refs.get(name)
        return ref if ref is not None and ref.is_alive() else None

    def register(self, name: str, ref: ActorRef) -> None:
        with self._lock:
            self._refs[name] = ref

    def unregister(self, name: str, urn: str | None) -> None:
        """Forget `name` if it still points at the actor `urn` (a newer ref is kept)."""
        with self._lock:
            ref = self._refs.get(name)
            if ref is not None and ref.actor_urn == urn:
                del self._refs[name]


@dataclass(frozen=True)
class ChildInfo:
    """A copy of one child's entry; `ref` is None while the child waits for a restart."""

    id: str
    ref: ActorRef | None
    restart: Restart
    restarts: int


@dataclass(frozen=True)
class SupervisorState:
    """A copy of a supervisor's state; the retry fields are set only in BACKOFF."""

    name: str
    phase: Phase
    restarts: int  # restart events since start (one per one_for_all round)
    backoff_attempt: int
    next_retry_at: float | None  # on the supervisor's clock
    retry_in_s: float | None
    pending: tuple[str, ...]  # child ids waiting for the retry
    running: int = 0  # children alive now
    starting: tuple[str, ...] = ()  # child ids being started, or waiting for their first start
    start_error: Exception | None = None  # why the last child start failed, until one starts
