"""The task supervisor: one per task on a node; keeps that task's worker actors running.

A `Supervisor` (one_for_one; restarts beyond the intensity put the task into
a visible backoff) whose children are `WorkerActor`s, each handed the task's
pool (as a `PoolPort`) and the node's exit watch, or, for a task whose workers
are an endpoint (`url`, `fastcgi`), `RemoteWorkerActor`s, which start no
process. It follows its task's
definition live: `resize()` adds or drains workers, and `rolling_restart()`
replaces them one at a time, new before old, so no message in flight is
interrupted and capacity never drops to zero.

A task created while the node runs starts its workers in the background (a
worker whose setup is slow does not hold up the admin request); at the node's
start they start before the node says it is ready. It publishes its state on
every change, so the node's status never waits on it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from yptask.config.tasks import TaskDef
from yptask.supervision.child import ChildLink
from yptask.supervision.policy import BackoffPolicy, ChildSpec, SupervisorFlags
from yptask.supervision.state import Registry, SupervisorState
from yptask.supervision.supervisor import Supervisor
from yptask.supervisors.remote_worker import RemoteWorkerActor, RemoteWorkerConfig
from yptask.supervisors.worker import WorkerActor, WorkerConfig
from yptask.tasks.runner import RUNNER_PATH, runner_argv
from yptask.workers.exits import ExitWatch
from yptask.workers.log_files import LogSettings
from yptask.workers.output import WorkerLogs
from yptask.workers.port import PoolPort
from yptask.workers.process import WorkerSpec

__all__ = ["NodePlace", "TaskSupervisor", "import_path", "worker_spec"]

log = logging.getLogger(__name__)

SETUP_TIMEOUT_S = 30.0
TASK_FLAGS = SupervisorFlags(intensity=5, period_s=10.0,  # intensity: see TaskDef
                             backoff=BackoffPolicy(initial_s=1.0, factor=2.0, max_s=60.0))


def _flags(task: TaskDef) -> SupervisorFlags:
    """The task's restart intensity, with the node's backoff."""
    return replace(TASK_FLAGS, intensity=task.max_restarts, period_s=task.restart_period_s)


@dataclass(frozen=True)
class NodePlace:
    """Where a node runs its workers: its name, folders, and the URL workers publish to."""

    name: str
    data_dir: Path  # the workers' working directory
    log_dir: Path  # their stdout and stderr files
    rpc_url: str  # the node's JSON-RPC endpoint, as YPTASK_URL for BaseTask.cast/call
    # The writer of the workers' log files (rotated), for all of this node's workers.
    logs: WorkerLogs = field(default_factory=WorkerLogs, compare=False, repr=False)


def worker_spec(task: TaskDef, node: NodePlace) -> WorkerSpec:
    """Return how to start one worker of `task` on this node."""
    argv = list(task.command) or runner_argv(task.worker_class, stdio=task.use_stdio)
    env = {**os.environ, **task.env, "YPTASK_NODE": node.name, "YPTASK_TASK": task.name,
           "YPTASK_URL": node.rpc_url}
    if task.debug:
        env["YPTASK_LOG_LEVEL"] = "DEBUG"
    cwd = node.data_dir / task.cwd  # "" is the data dir itself
    env.update(import_path(task, cwd, env.get("PYTHONPATH", "")))
    node.log_dir.mkdir(parents=True, exist_ok=True)
    logs = LogSettings(max_bytes=int(task.log_max_mb * 1024 * 1024), keep=task.log_keep,
                       json=task.log_format == "json", node=node.name, task=task.name)
    return WorkerSpec(
        argv, use_stdio=task.use_stdio, env=env, cwd=str(cwd),
        stdout_path=str(node.log_dir / (task.stdout or f"{task.name}.stdout.log")),
        stderr_path=str(node.log_dir / (task.stderr or f"{task.name}.stderr.log")), logs=logs)


def import_path(task: TaskDef, cwd: Path, pythonpath: str) -> dict[str, str]:
    """The variables that put a task's `python_path` (and its `cwd`, if it has one) first
    on its Python workers' sys.path: PYTHONPATH for any Python program, and RUNNER_PATH
    for the runner, which adds it once `yptask` is imported (under `-P`, see runner_argv)."""
    folders = [str(cwd / folder) for folder in task.python_path]
    if not folders and not task.cwd:
        return {}
    path = {RUNNER_PATH: os.pathsep.join([*([str(cwd)] if task.cwd else []), *folders])}
    if folders:
        path["PYTHONPATH"] = os.pathsep.join(filter(None, [*folders, pythonpath]))
    return path


class TaskSupervisor(Supervisor):
    """Supervises the worker actors of one task on this node."""

    def __init__(self, task: TaskDef, node: NodePlace, pool: PoolPort, exits: ExitWatch, *,
                 link: ChildLink | None = None, start_in_background: bool = False,
                 publish: Callable[[str, SupervisorState], None] | None = None) -> None:
        self.task = task
        self.node = node
        self.node_name = node.name
        self.pool = pool  # the task's pool, for as long as the task lives
        self.exits = exits
        self._serial = 0
        children = [self._child_spec() for _ in range(task.workers_on(node.name))]
        super().__init__(children, _flags(task), name=f"task {task.name}", registry=Registry(),
                         link=link, start_in_background=start_in_background, publish=publish)

    def _child_spec(self) -> ChildSpec:
        self._serial += 1
        task = self.task
        child_id = f"{task.name}/g{task.restart_generation}/w{self._serial}"
        if task.remote:  # a message in flight ends within its timeout; no process to stop
            return ChildSpec(id=child_id, start=RemoteWorkerActor,
                             args=(RemoteWorkerConfig(task, child_id), self.pool),
                             shutdown_s=task.message_timeout_s + 5.0, start_timeout_s=10.0)
        info = {"task": task.name, "node": self.node_name, "settings": dict(task.settings),
                "worker": self._serial, "generation": task.restart_generation}
        spec = worker_spec(task, self.node)
        # Stopping waits for the message in flight, then the worker's own shutdown.
        shutdown_s = task.message_timeout_s + task.shutdown_timeout_s + 5.0
        return ChildSpec(
            id=child_id, start=WorkerActor,
            args=(WorkerConfig(task.name, spec, info, SETUP_TIMEOUT_S, task.shutdown_timeout_s,
                               logs=self.node.logs), self.pool, self.exits),
            shutdown_s=shutdown_s, start_timeout_s=SETUP_TIMEOUT_S + 5.0)

    def worker_ids(self) -> list[str]:
        """The ids of this task's worker children, oldest first."""
        return [child.id for child in self.which_children()]

    def resize(self, count: int) -> int:
        """Start or drain workers until `count` run; return the new count."""
        ids = self.worker_ids()
        for _ in range(count - len(ids)):
            self.start_child(self._child_spec())
        for child_id in ids[count:] if count < len(ids) else []:
            self._retire(child_id)
        return len(self.worker_ids())

    def ensure(self, count: int) -> int:
        """Spawn on demand: start workers until `count` run (at most the definition's count)."""
        wanted = min(count, self.task.workers_on(self.node_name))
        for _ in range(wanted - len(self.worker_ids())):
            self.start_child(self._child_spec())
        return len(self.worker_ids())

    def reap(self, urn: str) -> bool:
        """Stop the worker whose actor is `urn` (idle past the task's max idle time)."""
        for child in self.which_children():
            if child.ref is not None and child.ref.actor_urn == urn:
                log.info("worker reaped: %s (idle over %s s)", child.id, self.task.max_idle_s)
                self.terminate_child(child.id)
                return True
        return False

    def rolling_restart(self, task: TaskDef) -> int:
        """Replace every worker, one at a time, new before old; return how many were replaced."""
        self.task = task
        self.flags = _flags(task)
        old = self.worker_ids()
        for child_id in old:
            self.start_child(self._child_spec())
            self._retire(child_id)
        wanted = task.workers_on(self.node_name)
        self.resize(wanted)
        log.info("task %s restarted: %d worker(s) replaced, generation %d", task.name,
                 len(old), task.restart_generation)
        return len(old)

    def _retire(self, child_id: str) -> None:
        ref = self.registry.whereis(child_id)
        if ref is not None:
            self.pool.retire(ref)  # the pool hands it no more jobs
        self.terminate_child(child_id)

