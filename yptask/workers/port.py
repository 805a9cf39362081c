"""The port a worker actor reaches its task's pool through (`TaskPool` satisfies it).

Handed to a task's supervisor when the node creates the task, and by it to each
worker actor, so that workers and their pool talk directly, not through the node.
Every method is called from the actor's thread. `Claimable` is what the pool
needs of the connection a worker offers with itself: a process worker's
`WorkerConnection`, or a remote worker's `NOT_CLAIMABLE`.
"""

from __future__ import annotations

from typing import Any, Protocol

from yptask.workers.job import Job, Outcome

__all__ = ["NOT_CLAIMABLE", "Claimable", "PoolPort"]


class Claimable(Protocol):
    """A free worker's connection, on which the pool may run a call from the loop."""

    def claim(self) -> bool:
        """Take the connection for one call (`handle_claimed`); False if it cannot be."""

    async def handle_claimed(self, name: str, payload: Any, meta: dict[str, Any],
                             timeout_s: float) -> Outcome:
        """Run one message on the claimed connection and release it; the outcome."""


class _NotClaimable:
    """A connection the loop never runs a call on: every job goes to its actor."""

    def claim(self) -> bool:
        return False

    async def handle_claimed(self, name: str, payload: Any, meta: dict[str, Any],
                             timeout_s: float) -> Outcome:
        raise AssertionError("a connection that cannot be claimed was not claimed")


NOT_CLAIMABLE: Claimable = _NotClaimable()


class PoolPort(Protocol):
    """What a worker actor tells its task's pool, and asks it."""

    def worker_ready(self, ref: Any, conn: Claimable) -> None:
        """The worker of actor `ref` is free for a job; while it is idle the pool may run a
        call on `conn` itself, once it has claimed it."""

    def pull(self, ref: Any) -> Job | None:
        """The next claimed delivery for the worker of `ref`, or None."""

    def retire(self, ref: Any) -> None:
        """Hand the worker of `ref` no more jobs; return once the pool knows."""
