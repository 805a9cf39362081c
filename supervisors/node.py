"""The node's root of the supervision tree: one task supervisor per task, and what they publish.

`NodeTree` is everything the node does with its actors. It starts the root
supervisor with a child per task, adds and removes task supervisors, tells one
to resize or roll, and keeps what each publishes (its state, a failed start) so
that status and calls read it without asking an actor. Asks to the actors run
in threads; the ones nobody waits on are kept until they end, and logged if
they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import pykka

from yptask.config.tasks import TaskDef
from yptask.errors import UnknownTask, WorkerStartFailed
from yptask.supervision.policy import ChildSpec, SupervisorFlags
from yptask.supervision.state import Phase, Registry, SupervisorState
from yptask.supervision.supervisor import Supervisor
from yptask.supervisors.task import NodePlace, TaskSupervisor
from yptask.workers.exits import ExitWatch
from yptask.workers.port import PoolPort

__all__ = ["ASK_TIMEOUT_S", "NodeTree"]

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 120.0  # an admin operation waits at most this for the actors
NODE_FLAGS = SupervisorFlags(intensity=10, period_s=60.0)
T = TypeVar("T")


class NodeTree:
    """The root supervisor of one node and the states its task supervisors publish."""

    def __init__(self, place: NodePlace, exits: ExitWatch, pool_of: Callable[[str], PoolPort],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.place = place
        self._exits = exits
        self._pool_of = pool_of  # a task's pool: created before its supervisor, lives as long
        self._loop = loop
        self._root: pykka.ActorProxy[Supervisor] | None = None
        self._registry: Registry | None = None
        self._proxies: dict[str, Any] = {}  # actor urn -> proxy
        # task -> (urn, state) its supervisor last published: status reads it, never asks
        self._states: dict[str, tuple[str, SupervisorState]] = {}
        # task -> resolved when a start of its workers fails: calls waiting for one give up
        self._start_failures: dict[str, asyncio.Future[None]] = {}
        self._asks: set[asyncio.Task[None]] = set()  # asks to the actors nobody waits on

    async def start(self, tasks: list[TaskDef]) -> None:
        """Start the root with a supervisor per task; return once every one has started."""
        specs = [self._task_child(task) for task in tasks]
        root = Supervisor.start(specs, NODE_FLAGS, name=f"node {self.place.name}")
        self._root = root.proxy()
        # The first answer comes once every child has started; the registry is thread-safe.
        self._registry = await asyncio.to_thread(ask, self._root.registry)

    async def stop(self) -> None:
        """Stop every supervisor (workers finish their current message), then the root; then
        close the workers' log files."""
        if self._root is not None:
            root = self._root.actor_ref
            await asyncio.to_thread(lambda: root.stop(block=True, timeout=ASK_TIMEOUT_S))
        await asyncio.gather(*self._asks, return_exceptions=True)  # answered by now
        await asyncio.to_thread(self.place.logs.close)  # what the workers wrote last

    # ------------------------------------------------------------------ changes

    async def add(self, task: TaskDef) -> None:
        """Start a supervisor for a new task; its workers start in the background."""
        assert self._root is not None
        await asyncio.to_thread(ask, self._root.start_child(
            self._task_child(task, start_in_background=True)))

    def remove(self, name: str) -> None:
        """Stop a task's supervisor: its workers finish their current message, it last."""
        assert self._root is not None
        self.in_background(self._root.terminate_child(name), f"deleting task {name}")

    def supervisor(self, name: str) -> pykka.ActorProxy[TaskSupervisor]:
        """The running supervisor of task `name` (UnknownTask if it has none)."""
        assert self._registry is not None
        ref = self._registry.whereis(name)
        if ref is None:
            raise UnknownTask(f"task {name!r} has no running supervisor on node "
                              f"{self.place.name}")
        proxy = self._proxies.get(ref.actor_urn)
        if proxy is None:  # building a proxy inspects the actor: keep one per incarnation
            proxy = self._proxies[ref.actor_urn] = ref.proxy()
        return proxy

    async def wait(self, answer: pykka.Future[T]) -> T:
        """The answer of an ask to the actors, awaited off the loop."""
        return await asyncio.to_thread(ask, answer)

    def in_background(self, answer: pykka.Future[Any], what: str,
                      failed: Callable[[Exception], None] | None = None) -> None:
        """Let an ask to the actors end without waiting for it; log it (and tell `failed`)
        if it fails."""
        async def wait() -> None:
            try:
                await asyncio.to_thread(ask, answer)
            except Exception as exc:  # the supervisor restarts or backs off on its own
                log.error("%s failed: %s", what, exc)
                if failed is not None:
                    failed(exc)

        waiting = self._loop.create_task(wait(), name=what)
        self._asks.add(waiting)
        waiting.add_done_callback(self._asks.discard)

    # ------------------------------------------------------------------ what they publish

    def state(self, name: str) -> dict[str, Any]:
        """A task's state from what its supervisor last published: a supervisor busy
        starting a slow worker is never asked."""
        assert self._registry is not None
        if self._registry.whereis(name) is None:
            return {"state": "stopped", "workers": 0}
        state = self._published(name)
        if state is None:  # started, not yet published
            return {"state": "starting", "workers": 0}
        if state.phase is Phase.BACKOFF:
            return {"state": "backoff", "workers": state.running}
        if state.starting:
            return {"state": "starting", "workers": state.running}
        return {"state": "running" if state.running else "idle", "workers": state.running}

    def start_error(self, name: str) -> WorkerStartFailed | None:
        """Why the last start of a worker of task `name` failed, until one starts again."""
        state = self._published(name)
        error = None if state is None else state.start_error
        if error is None or isinstance(error, WorkerStartFailed):
            return error
        return WorkerStartFailed.of(name, "not started", reason=str(error))  # not a worker's

    async def once_started(self, name: str, live_workers: Callable[[], int],
                           run: Awaitable[T]) -> T:
        """Await `run`, a call waiting for a worker of task `name`; raise
        `WorkerStartFailed` instead as soon as its workers are seen unable to start."""
        running = asyncio.ensure_future(run)
        try:
            while (error := self._start_failure(name, live_workers())) is None:
                failed = self._start_failures.get(name)
                if failed is None:
                    failed = self._start_failures[name] = self._loop.create_future()
                await asyncio.wait((running, failed), return_when=asyncio.FIRST_COMPLETED)
                if running.done():
                    return running.result()
            raise error
        finally:
            running.cancel()  # nothing, if it is done

    def _start_failure(self, name: str, live_workers: int) -> WorkerStartFailed | None:
        """Why no worker of task `name` can start here, while none runs; else None."""
        state = self._published(name)
        if state is None or state.running or live_workers:
            return None
        return self.start_error(name)

    def _task_child(self, task: TaskDef, *, start_in_background: bool = False) -> ChildSpec:
        """The spec of a task's supervisor: at the node's start its workers start before the
        node is ready; a task created later answers its creator first."""
        return ChildSpec(id=task.name, start=TaskSupervisor,
                         args=(task, self.place, self._pool_of(task.name), self._exits),
                         kwargs={"publish": partial(self._published_by, task.name),
                                 "start_in_background": start_in_background},
                         shutdown_s=ASK_TIMEOUT_S, start_timeout_s=ASK_TIMEOUT_S)

    def _published_by(self, task: str, urn: str, state: SupervisorState) -> None:  # any thread
        before = self._states.get(task)
        self._states[task] = (urn, state)  # one atomic store
        if state.start_error is not None and (before is None
                                              or before[1].start_error is not state.start_error):
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(self._start_failed, task)

    def _start_failed(self, task: str) -> None:
        """A start of `task`'s workers failed: wake the calls waiting for one."""
        failed = self._start_failures.pop(task, None)
        if failed is not None and not failed.done():
            failed.set_result(None)

    def _published(self, name: str) -> SupervisorState | None:
        """What the running supervisor of task `name` last published (None: nothing yet)."""
        assert self._registry is not None
        ref = self._registry.whereis(name)
        urn, state = self._states.get(name, ("", None))
        return state if ref is not None and urn == ref.actor_urn else None


def ask(future: pykka.Future[T]) -> T:
    """The answer of an ask to the actors (in a thread: it blocks)."""
    return future.get(timeout=ASK_TIMEOUT_S)
