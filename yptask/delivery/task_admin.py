"""Task administration: list, show, create or replace, delete, and roll a task's workers.

Every change is a write to the config map (yptask.store.config_map), which
pushes it to the peers and applies it here (yptask.delivery.running) by the
same route a peer's change takes. The answer comes once the definition is
stored and the task's supervisor is told; workers follow in the background.
Each change made here is marked in the node's series (`mark`: put, restart,
pause, resume), for the plots' markers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from yptask.config.tasks import TaskDef
from yptask.delivery.running import RunningTasks, as_stored
from yptask.store.config_map import TASK_KEY, ConfigMap

__all__ = ["Mark", "TaskAdmin"]

Mark = Callable[[str, str, int], None]  # (kind, task, its restart generation)

log = logging.getLogger(__name__)


class TaskAdmin:
    """The task operations of one node's service."""

    def __init__(self, node_name: str, config: ConfigMap, running: RunningTasks,
                 check_running: Callable[[], None], mark: Mark | None = None) -> None:
        self.node_name = node_name
        self._config = config
        self._running = running
        self._check_running = check_running
        self._mark: Mark = mark or (lambda kind, task, generation: None)

    async def tasks(self) -> list[dict[str, Any]]:
        tasks = self._running.tasks
        return [t.to_dict() for t in sorted(tasks.values(), key=lambda t: t.name)]

    async def task(self, name: str) -> dict[str, Any]:
        return self._running.task(name).to_dict()

    async def put_task(self, definition: dict[str, Any], kind: str = "put") -> dict[str, Any]:
        """Create or replace a task definition, on every node; its workers follow at once.

        The answer is the stored definition with `changed`: false when it equals the one
        already stored, which is then neither stored again nor applied (no restart).
        A change is marked as `kind` (put, pause, resume).
        """
        self._check_running()
        task = TaskDef.from_dict(definition)
        old = self._running.tasks.get(task.name)
        if old is not None:
            task = replace(task, restart_generation=max(task.restart_generation,
                                                        old.restart_generation))
            entry = await self._config.get(TASK_KEY + task.name)
            stored = None if entry is None else entry.value
            if stored is not None and as_stored(stored) == as_stored(task.to_dict()):
                log.info("task %s unchanged, nothing stored", task.name)
                return {**stored, "changed": False}
        await self._config.put([(TASK_KEY + task.name, task.to_dict())])
        self._mark(kind, task.name, task.restart_generation)
        return {**task.to_dict(), "changed": True}

    async def delete_task(self, name: str) -> None:
        """Delete a task, on every node: its workers finish their current message and stop."""
        self._check_running()
        self._running.task(name)
        await self._config.put([(TASK_KEY + name, None)])

    async def pause(self, name: str, paused: bool = True) -> dict[str, Any]:
        """Pause (or resume) a task, on every node: while paused its casts are journaled and
        wait; nothing is handed to its workers, which stay up. Answers the definition."""
        self._check_running()
        task = replace(self._running.task(name), paused=paused)
        answer = await self.put_task(task.to_dict(), "pause" if paused else "resume")
        log.info("task %s %s", name, "paused" if paused else "resumed")
        return answer

    async def restart(self, name: str) -> dict[str, Any]:
        """Rolling restart, on every node: each worker is replaced by one running the code
        now on disk (a new restart generation in the replicated definition). Answers once
        this node's workers are replaced."""
        self._check_running()
        task = self._running.task(name)
        task = replace(task, restart_generation=task.restart_generation + 1)
        self._running.changes.pop(name, None)  # the change to wait for is this one's
        await self._config.put([(TASK_KEY + name, task.to_dict())])
        self._mark("restart", name, task.restart_generation)
        # Waited for outside the running tasks' lock: the next change (a peer's edit) is
        # applied meanwhile, not held up for as long as the workers take to roll.
        change = self._running.changes.pop(name, None)
        replaced = 0 if change is None else int(await self._running.tree.wait(change))
        return {"task": name, "generation": task.restart_generation, "replaced": replaced,
                "workers": task.workers_on(self.node_name)}
