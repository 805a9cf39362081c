"""What this node runs: the task definitions in effect here, their pools and their forwarders.

`RunningTasks` listens to the config map (yptask.store.config_map): every
change of a task definition, written here or by a peer, comes through
`on_change` and is applied one at a time, in order. Applying tells the task's
supervisor (through the `TaskTree` the node hands in) what to change and lets
it work in the background, so no admin request waits on a slow worker. Every
RECONCILE_EVERY_S it compares what runs with what is stored, so a change whose
apply was lost or overtaken still takes effect and the nodes converge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import Any, Protocol, TypeVar

from yptask.cluster.membership import Member
from yptask.config.tasks import TaskDef
from yptask.delivery.forwarding import Forwarder, Request
from yptask.delivery.pool import TaskPool
from yptask.errors import ConfigError, NotAccepting, UnknownTask, WorkerStartFailed
from yptask.store.config_map import TASK_KEY, ConfigMap
from yptask.store.group_commit import JournalThread
from yptask.store.replicated import Entry

__all__ = ["RunningTasks", "TaskTree", "same_definition"]

log = logging.getLogger(__name__)

RECONCILE_EVERY_S = 1.0  # the running tasks are compared with the stored ones this often
MAX_CACHED_NAMES = 10_000  # message names whose subscribers are remembered
T = TypeVar("T")


class TaskTree(Protocol):
    """The node's supervision tree, as the running tasks use it (supervisors/node.py)."""

    async def add(self, task: TaskDef) -> None: ...

    def remove(self, name: str) -> None: ...

    async def wait(self, answer: Any) -> Any: ...

    def supervisor(self, name: str) -> Any: ...

    def in_background(self, answer: Any, what: str,
                      failed: Callable[[Exception], None] | None = None) -> None: ...

    def state(self, name: str) -> dict[str, Any]: ...

    def start_error(self, name: str) -> WorkerStartFailed | None: ...

    async def once_started(self, name: str, live_workers: Callable[[], int],
                           run: Awaitable[T]) -> T: ...


class RunningTasks:
    """The tasks this node runs, kept equal to the stored definitions."""

    def __init__(self, node_name: str, journal: JournalThread, config: ConfigMap,
                 tree: TaskTree) -> None:
        self.node_name = node_name
        self.tree = tree
        self.tasks: dict[str, TaskDef] = {}
        self.pools: dict[str, TaskPool] = {}
        self.forwarders: dict[str, Forwarder] = {}
        # task -> why the workers of its stored definition could not start (until the next)
        self.apply_errors: dict[str, str] = {}
        # task -> the rolling change its last definition started (a restart waits for it)
        self.changes: dict[str, Any] = {}
        self._journal = journal
        self._config = config
        self._subscriptions: dict[str, list[str]] = {}  # message name -> its tasks
        self._lock = asyncio.Lock()  # one change at a time, in the order they came
        self._forwarding: tuple[Callable[[], list[Member]], Request] | None = None
        # task -> its deliveries queued in the journal here (yptask.delivery.load measures
        # them): with the peers' heartbeats, the share of a rate limit this node takes
        self.queued: dict[str, int] = {}
        self._reconciler: asyncio.Task[None] | None = None

    async def load(self) -> list[TaskDef]:
        """Read the stored definitions (before the tree starts): the tasks to start with."""
        for name, value in (await self._config.values(TASK_KEY)).items():
            try:
                task = TaskDef.from_dict(value)
            except ConfigError as exc:
                log.error("stored task %s is invalid here, not started: %s", name, exc)
                continue
            self.tasks[task.name] = task
            self.pools[task.name] = self._pool(task)
        return list(self.tasks.values())

    def start(self) -> None:
        """Start delivering (the tree runs), and follow the stored definitions."""
        for pool in self.pools.values():
            pool.start()
        self._config.listen(self.on_change)
        self._reconciler = asyncio.get_running_loop().create_task(
            self._reconcile_forever(), name="reconcile")

    def forward_with(self, peers: Callable[[], list[Member]], request: Request) -> None:
        """The cluster runs: move each task's deliveries to peers while none runs here."""
        self._forwarding = (peers, request)
        for task in self.tasks.values():
            self._start_forwarder(task)

    async def stop_following(self) -> None:
        """No more changes applied, no more forwarding (the node is stopping)."""
        if self._reconciler is not None:
            self._reconciler.cancel()
        for forwarder in self.forwarders.values():
            await forwarder.close()

    async def stop_claiming(self) -> None:
        for pool in self.pools.values():
            await pool.stop_claiming()

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()

    def task(self, name: str) -> TaskDef:
        task = self.tasks.get(name)
        if task is None:
            raise UnknownTask(f"no task named {name!r}; `yptask tasks` lists them")
        return task

    def subscribers(self, name: str) -> list[str]:
        """The tasks subscribed to a message name, in name order (cached per name)."""
        subscribed = self._subscriptions.get(name)
        if subscribed is None:
            if len(self._subscriptions) >= MAX_CACHED_NAMES:  # publishers choose the names
                self._subscriptions.clear()
            subscribed = sorted(t.name for t in self.tasks.values() if t.subscribes_to(name))
            self._subscriptions[name] = subscribed
        return subscribed

    def check_accepting(self, tasks: list[str], publisher: str | None = None) -> None:
        """Refuse a message for a task an admin switched off (`accepting = false`), or off
        for the `publisher` application that sends it (`refuse_tokens`)."""
        for name in tasks:
            task = self.tasks[name]
            if not task.accepting:
                raise NotAccepting(f"task {name} is not accepting messages (an admin set "
                                   "accepting = false); retry later, or ask for it back on")
            if publisher is not None and publisher in task.refuse_tokens:
                raise NotAccepting(f"task {name} is not accepting messages from {publisher!r} "
                                   "(an admin listed it in refuse_tokens); retry later")

    def notify(self, task: str, priority: int | None = None) -> None:
        """New deliveries of `task` are journaled here, the highest of them at `priority`
        (if known): its pool and forwarder look now."""
        if task in self.pools:
            self.pools[task].notify(priority)
        if task in self.forwarders:
            self.forwarders[task].notify()

    def peers_changed(self) -> None:
        """A peer joined, restarted, went down or came back: forward to whoever runs what."""
        for forwarder in self.forwarders.values():
            forwarder.notify()

    # ------------------------------------------------------------------ applying changes

    async def on_change(self, entries: list[Entry]) -> None:
        """Apply the task definitions among changed config entries (ours or a peer's)."""
        for entry in entries:
            if not entry.key.startswith(TASK_KEY):
                continue
            name = entry.key[len(TASK_KEY):]
            try:
                task = None if entry.value is None else TaskDef.from_dict(entry.value)
            except ConfigError as exc:
                log.error("task %s from node %s is invalid here, left as it was: %s", name,
                          entry.version.node, exc)
                continue
            await self.apply(name, task)

    async def apply(self, name: str, task: TaskDef | None) -> None:
        """Make this node run `task` as defined (None: not at all).

        The task's supervisor is told, and its workers start, stop or are replaced in
        the background; the change is kept in `changes` for a restart to wait on.
        """
        async with self._lock:
            # What is stored now wins over what the caller read: two changes stored in one
            # order (a peer's merge, a local edit) may reach this lock in the other.
            stored = await self._config.get(TASK_KEY + name)
            # (one invalid here stays unapplied: the caller's, checked, is applied instead)
            with contextlib.suppress(ConfigError):
                if stored is not None:
                    task = None if stored.value is None else TaskDef.from_dict(stored.value)
            old = self.tasks.get(name)
            if old is not None and task is not None and same_definition(old, task):
                return  # e.g. our own edit gossiped back: nothing to do
            if task is None:
                if old is not None:
                    await self._delete(name)
                return
            self.tasks[name] = task
            self._subscriptions.clear()
            self.apply_errors.pop(name, None)  # a new definition: its own outcome counts
            if old is None:
                await self._create(task)
            else:
                self._update(old, task)
            log.info("task %s %s", name, "created" if old is None else "updated")

    async def _create(self, task: TaskDef) -> None:
        # the supervisor first, so the pool finds it when it needs workers
        pool = self.pools[task.name] = self._pool(task)
        await self.tree.add(task)
        pool.start()
        self._start_forwarder(task)

    def _update(self, old: TaskDef, task: TaskDef) -> None:
        name = task.name
        self.pools[name].task = task
        self.pools[name].notify()  # resumed, perhaps: deliver what waits
        if name in self.forwarders:
            self.forwarders[name].task = task
            self.forwarders[name].notify()
        supervisor = self.tree.supervisor(name)
        if same_definition(replace(old, nodes=task.nodes, paused=task.paused,
                                   accepting=task.accepting, refuse_tokens=task.refuse_tokens,
                                   rate_limit=task.rate_limit,
                                   rate_limit_key=task.rate_limit_key), task):
            # only the counts, paused, accepting or the limits: the workers serve on
            change = supervisor.resize(task.workers_on(self.node_name))
        else:  # anything else takes new workers
            change = supervisor.rolling_restart(task)
        self.changes[name] = change
        self.tree.in_background(change, f"applying task {name}",
                                failed=partial(self._apply_failed, name, task))

    async def _delete(self, name: str) -> None:
        del self.tasks[name]
        self.changes.pop(name, None)
        self._subscriptions.clear()
        await self.pools.pop(name).close()
        if name in self.forwarders:
            await self.forwarders.pop(name).close()
        self.tree.remove(name)
        log.info("task %s deleted", name)

    def _apply_failed(self, name: str, task: TaskDef, exc: Exception) -> None:
        """The workers of `task`'s stored definition could not start: status says so (the
        workers of the definition before it, if any, serve on)."""
        if self.tasks.get(name) is task:  # not replaced by a newer definition since
            self.apply_errors[name] = str(exc)

    async def _reconcile_forever(self) -> None:
        """Make what runs here match what is stored: a change whose apply was lost or
        overtaken (a peer's merge crossing a local edit, a node paused mid-push) still
        takes effect, so the nodes' definitions converge."""
        while True:
            await asyncio.sleep(RECONCILE_EVERY_S)
            try:
                stored = await self._config.values(TASK_KEY)
                for name in sorted(set(stored) | set(self.tasks)):
                    value, running = stored.get(name), self.tasks.get(name)
                    try:
                        task = None if value is None else TaskDef.from_dict(value)
                    except ConfigError:
                        continue  # said when it arrived; what runs goes on
                    if (task is None and running is None) or (
                            task is not None and running is not None
                            and same_definition(task, running)):
                        continue
                    log.warning("task %s here differed from its stored definition; applying "
                                "the stored one", name)
                    await self.apply(name, task)
            except Exception:  # a store error: log it, and look again next round
                log.exception("comparing the running tasks with the stored ones failed")

    def _pool(self, task: TaskDef) -> TaskPool:
        return TaskPool(task, self.node_name, self._journal, asyncio.get_running_loop(),
                        lambda: self.tree.supervisor(task.name), peers=self._peers,
                        queued=lambda: self.queued.get(task.name, 0))

    def _peers(self) -> list[Member]:
        """The live peers as their heartbeats tell them (none before the cluster runs)."""
        return [] if self._forwarding is None else self._forwarding[0]()

    def _start_forwarder(self, task: TaskDef) -> None:
        if self._forwarding is None:
            return  # the cluster starts them once it runs
        peers, request = self._forwarding
        forwarder = Forwarder(task, self.node_name, self._journal, peers, request)
        self.forwarders[task.name] = forwarder
        forwarder.start()


def as_stored(definition: dict[str, Any]) -> str:
    """A definition as the JSON that compares it: unlike ==, which takes 1, 1.0 and True
    for one value, a value that changes only its type is a change. The order of a map's
    keys is not (JSON objects have none, and a browser may reorder them)."""
    return json.dumps(definition, sort_keys=True)


def same_definition(a: TaskDef, b: TaskDef) -> bool:
    return as_stored(a.to_dict()) == as_stored(b.to_dict())
