"""The port a worker actor reaches its task's pool through (`TaskPool` satisfies it).

Handed to a task's supervisor when the node creates the task, and by it to each
worker actor, so that workers and their pool talk directly, not through the node.
Every method is called from the actor's thread.
"""

from __future__ import annotations

from typing import Any, Protocol

from yptask.workers.connection import WorkerConnection
from yptask.workers.job import Job

__all__ = ["PoolPort"]


class PoolPort(Protocol):
    """What a worker actor tells its task's pool, and asks it."""

    def worker_ready(self, ref: Any, conn: WorkerConnection) -> None:
        """The worker of actor `ref` is free for a job; while it is idle the pool may run a
        call on `conn` itself, once it has claimed it."""

    def pull(self, ref: Any) -> Job | None:
        """The next claimed delivery for the worker of `ref`, or None."""

    def retire(self, ref: Any) -> None:
        """Hand the worker of `ref` no more jobs; return once the pool knows."""
