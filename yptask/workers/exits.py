"""The exit watch: sees each worker process exit, through a pidfd on the event loop.

One per node, created by it and handed down to every worker actor. An actor
asks it to watch its process once spawned and is told (on the loop) when that
process exits, so that an idle worker's death is noticed without a thread
blocked on it; the node asks it which pids run for a task, for its status.
Its state is touched on the loop only; `watch` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

__all__ = ["ExitWatch"]


class ExitWatch:
    """The live worker processes of one node, each with what to do once it exits."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._tasks: dict[int, str] = {}  # live worker process -> its task

    def watch(self, task: str, pid: int, exited: Callable[[], None]) -> None:
        """Call `exited` on the loop once the process `pid` of `task` has exited (at once
        if it has already). Thread-safe."""
        self.loop.call_soon_threadsafe(self._add, task, pid, exited)

    def pids(self, task: str) -> list[int]:
        """The processes of `task` that run, as far as their exits were seen."""
        return sorted(pid for pid, name in self._tasks.items() if name == task)

    def _add(self, task: str, pid: int, exited: Callable[[], None]) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            exited()
            return
        self._tasks[pid] = task

        def readable() -> None:
            self.loop.remove_reader(pidfd)
            os.close(pidfd)
            self._tasks.pop(pid, None)
            exited()

        self.loop.add_reader(pidfd, readable)
