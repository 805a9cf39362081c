"""The node: one `yptask node` process. Owns its store, journal, supervision tree and transports.

Everything a publisher or an admin does goes through one `Node` method, on the
event loop: `cast`, `call`, and the admin operations. The node passes its
parts explicitly (no module-level state), so several nodes can run in one
test process. Blocking work never runs on the loop: SQLite goes through the
journal thread or `asyncio.to_thread`, and asks to actors run in threads.

Start order: store and journal, then the supervision tree (task supervisors,
each starting its workers), then the delivery loops, then HTTP. Stop is the
reverse, gracefully: no new requests, no new claims, workers finish their
current message (its outcome is still acked), then the journal closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import time
from dataclasses import replace
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import pykka

from yptask import codec
from yptask.bert_endpoint import BertEndpoint
from yptask.config import NodeConfig, TaskDef, load_tasks, validate_message_name
from yptask.dispatch import TaskPool
from yptask.errors import (
    CallTimeout,
    ConfigError,
    EncodeError,
    NodeStopping,
    NoSubscriber,
    UnknownTask,
)
from yptask.group_commit import JournalThread
from yptask.journal import Envelope, Journal
from yptask.supervision import ChildSpec, Registry, Supervisor, SupervisorFlags
from yptask.supervisors.task import NodePlace, TaskSupervisor
from yptask.supervisors.worker import ProcessGone, WorkerHooks
from yptask.task_store import TaskStore

__all__ = ["Node"]

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 120.0  # an admin operation waits at most this for the actors
NODE_FLAGS = SupervisorFlags(intensity=10, period_s=60.0)
PRUNE_EVERY_S = 60.0
MAX_CACHED_NAMES = 10_000  # message names whose subscribers are remembered


class Node:
    """One running node. Create with `await Node.start(config)`; end with `await node.stop()`."""

    def __init__(self, config: NodeConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.name = config.name
        self.loop = loop
        self.data_dir = config.data_dir.resolve()
        self.log_dir = (config.log_dir or self.data_dir / "logs").resolve()
        self.tasks: dict[str, TaskDef] = {}
        self._subscriptions: dict[str, list[str]] = {}  # message name -> its tasks; see tasks
        self.pools: dict[str, TaskPool] = {}
        self.stopping = False
        self.http_url = ""
        self.bert_address = ""
        self._bert: BertEndpoint | None = None
        self._pruner: asyncio.Task[None] | None = None
        self.started_at = time.time()
        self._store: TaskStore | None = None
        self._journal: JournalThread | None = None
        self._tree: pykka.ActorProxy[Supervisor] | None = None
        self._registry: Registry | None = None
        self._proxies: dict[str, Any] = {}  # actor urn -> proxy
        self._worker_pids: dict[int, str] = {}  # live worker process -> its task
        self._new_id = _MessageIds()
        self._runner: Any = None  # aiohttp AppRunner
        self._http_socket: socket.socket | None = None
        self._hooks = WorkerHooks(ready=self._worker_ready, watch=self._watch_worker,
                                  retire=self._retire_worker, pull=self._pull_job)

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def start(cls, config: NodeConfig, tasks: list[TaskDef] | None = None) -> Node:
        """Start a node. `tasks` seed its store at first start (default: the config's file)."""
        node = cls(config, asyncio.get_running_loop())
        try:
            await node._start(tasks)
        except BaseException:
            await node.stop()
            raise
        return node

    async def _start(self, seed: list[TaskDef] | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._store = TaskStore(self.data_dir / "tasks.db")
        if seed is None:
            seed = await asyncio.to_thread(load_tasks, self._seed_file())
        await asyncio.to_thread(self._store.seed_once, seed)
        journal = await asyncio.to_thread(Journal, self.data_dir / "journal.db",
                                          synchronous=self.config.journal_sync)
        self._journal = JournalThread(journal, name=f"journal {self.name}")
        self._bind_http()
        for task in await asyncio.to_thread(self._store.all):
            self.tasks[task.name] = task
            self.pools[task.name] = self._pool(task)
        specs = [self._task_child(task) for task in self.tasks.values()]
        tree = Supervisor.start(specs, NODE_FLAGS, name=f"node {self.name}")
        self._tree = tree.proxy()
        # The first answer comes once every child has started; the registry is thread-safe.
        self._registry = await asyncio.to_thread(self._ask, self._tree.registry)
        for pool in self.pools.values():
            pool.start()
        self._pruner = self.loop.create_task(self._prune_forever(), name="prune journal")
        await self._start_http()
        self._bert = BertEndpoint(self)
        await self._bert.start(self.config.bert_host, self.config.bert_port)
        self.bert_address = self._bert.address
        log.info("node %s ready: %s, BERT-RPC %s", self.name, self.http_url, self.bert_address)

    async def _prune_forever(self) -> None:
        """Forget done messages once their ids are past the dedupe window, so the journal
        keeps only what is pending, dead, or recent enough to dedupe against."""
        assert self._journal is not None
        window = self.config.dedupe_window_s
        while True:
            pruned = await self._journal.run(partial(Journal.prune, older_than_s=window))
            if pruned:
                log.info("journal: forgot %d done message(s) older than %.0f s", pruned, window)
            await asyncio.sleep(PRUNE_EVERY_S)

    def _seed_file(self) -> Path:
        if self.config.tasks_file is not None:
            return self.config.tasks_file
        return Path(str(resources.files("yptask.conf") / "tasks.toml"))

    def _bind_http(self) -> None:
        """Take the HTTP port first: a port in use fails the start before any worker runs,
        and workers learn the node's URL (YPTASK_URL) when they start."""
        self._http_socket = socket.create_server((self.config.http_host, self.config.http_port))
        host, port = self._http_socket.getsockname()[:2]
        self.http_url = f"http://{host}:{port}"

    async def _start_http(self) -> None:
        from aiohttp import web

        from yptask.web.app import make_app

        assert self._http_socket is not None
        self._runner = web.AppRunner(make_app(self), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self._http_socket).start()

    async def stop(self) -> None:
        """Stop gracefully: HTTP first, then claims, then workers (finishing), then the journal."""
        if self.stopping:
            return
        self.stopping = True
        if self._pruner is not None:
            self._pruner.cancel()
        if self._bert is not None:
            await self._bert.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        elif self._http_socket is not None:  # bound, never served
            self._http_socket.close()
        for pool in self.pools.values():
            await pool.stop_claiming()
        if self._tree is not None:
            tree = self._tree.actor_ref
            await asyncio.to_thread(lambda: tree.stop(block=True, timeout=ASK_TIMEOUT_S))
        for pool in self.pools.values():
            await pool.close()
        if self._journal is not None:
            await asyncio.to_thread(self._journal.close)
        if self._store is not None:
            self._store.close()
        log.info("node %s stopped", self.name)

    # ------------------------------------------------------------------ publishing

    async def cast(self, name: str, msg: Any, *, id: str | None = None,
                   priority: int = 0) -> dict[str, Any]:
        """Journal a message for every subscribed task; return once it is committed."""
        self._check_running()
        self._check_message(name, msg)
        if id is not None and (not isinstance(id, str) or not 0 < len(id) <= 128):
            raise ConfigError("a message id must be a string of 1 to 128 characters")
        subscribed = self._subscribers(name)
        envelope = Envelope(id or self._new_id(), name, msg, time.time(), priority)
        assert self._journal is not None
        added = await self._journal.append(envelope, subscribed)
        if added:
            for task in subscribed:
                self.pools[task].notify()
        return {"id": envelope.id, "tasks": subscribed, "duplicate": not added}

    async def call(self, name: str, msg: Any, *, timeout_s: float = 30.0) -> Any:
        """Have one worker of a subscribed task handle `msg` now; return its result."""
        self._check_running()
        self._check_message(name, msg)
        subscribed = [self.tasks[task] for task in self._subscribers(name)]
        if not subscribed:
            raise NoSubscriber(f"no task subscribes to {name!r}")
        local = [t for t in subscribed if t.workers_on(self.name) > 0]
        if not local:
            raise NoSubscriber(f"task(s) {', '.join(t.name for t in subscribed)} subscribe to "
                               f"{name!r} but run no worker on node {self.name}")
        task = max(local, key=lambda t: self.pools[t.name].free_workers)
        meta = {"id": self._new_id(), "attempt": 1, "published_at": time.time(), "priority": 0}
        try:
            outcome = await asyncio.wait_for(
                self.pools[task.name].run(name, msg, meta, task.message_timeout_s), timeout_s)
        except TimeoutError:
            raise CallTimeout(f"no answer to {name!r} from task {task.name} within "
                              f"{timeout_s} s") from None
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

    def _subscribers(self, name: str) -> list[str]:
        """The tasks subscribed to a message name, in name order (cached per name)."""
        subscribed = self._subscriptions.get(name)
        if subscribed is None:
            if len(self._subscriptions) >= MAX_CACHED_NAMES:  # publishers choose the names
                self._subscriptions.clear()
            subscribed = sorted(t.name for t in self.tasks.values() if t.subscribes_to(name))
            self._subscriptions[name] = subscribed
        return subscribed

    def _check_running(self) -> None:
        if self.stopping:
            raise NodeStopping(f"node {self.name} is stopping; send to another node or retry")

    def _check_message(self, name: str, msg: Any) -> None:
        validate_message_name(name)
        try:
            size = len(codec.encode(msg))
            json.dumps(msg, allow_nan=False)  # the journal keeps payloads as JSON
        except (EncodeError, TypeError, ValueError) as exc:
            raise EncodeError(f"message payload cannot travel to a worker: {exc}") from None
        if size > self.config.max_payload_bytes:
            raise ConfigError(f"message payload is {size} bytes encoded, over the node's limit "
                              f"of {self.config.max_payload_bytes}")

    # ------------------------------------------------------------------ tasks

    async def list_tasks(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in sorted(self.tasks.values(), key=lambda t: t.name)]

    async def get_task(self, name: str) -> dict[str, Any]:
        return self._task(name).to_dict()

    async def put_task(self, definition: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a task definition; its workers follow at once."""
        self._check_running()
        task = TaskDef.from_dict(definition)
        old = self.tasks.get(task.name)
        if old is not None:
            task = replace(task, restart_generation=max(task.restart_generation,
                                                        old.restart_generation))
        assert self._store is not None and self._tree is not None
        await asyncio.to_thread(self._store.put, task)
        self.tasks[task.name] = task
        self._subscriptions.clear()
        if old is None:  # the supervisor first, so the pool finds it when it needs workers
            pool = self._pool(task)
            self.pools[task.name] = pool
            await asyncio.to_thread(self._ask, self._tree.start_child(self._task_child(task)))
            pool.start()
        else:
            self.pools[task.name].task = task
            supervisor = self._task_supervisor(task.name)
            if replace(old, nodes=task.nodes) == task:  # only the worker counts changed
                await asyncio.to_thread(self._ask, supervisor.resize(task.workers_on(self.name)))
            else:  # anything else takes new workers
                await asyncio.to_thread(self._ask, supervisor.rolling_restart(task))
        log.info("task %s %s", task.name, "created" if old is None else "updated")
        return task.to_dict()

    async def delete_task(self, name: str) -> None:
        """Delete a task: its workers finish their current message and stop."""
        self._check_running()
        self._task(name)
        assert self._store is not None and self._tree is not None
        await asyncio.to_thread(self._store.delete, name)
        del self.tasks[name]
        self._subscriptions.clear()
        await asyncio.to_thread(self._ask, self._tree.terminate_child(name))
        await self.pools.pop(name).close()
        log.info("task %s deleted", name)

    async def restart_task(self, name: str) -> dict[str, Any]:
        """Rolling restart: each worker is replaced by one running the code now on disk."""
        self._check_running()
        task = self._task(name)
        task = replace(task, restart_generation=task.restart_generation + 1)
        assert self._store is not None
        await asyncio.to_thread(self._store.put, task)
        self.tasks[name] = self.pools[name].task = task
        replaced = await asyncio.to_thread(self._ask,
                                           self._task_supervisor(name).rolling_restart(task))
        return {"task": name, "generation": task.restart_generation, "replaced": replaced,
                "workers": task.workers_on(self.name)}

    def _pool(self, task: TaskDef) -> TaskPool:
        assert self._journal is not None
        return TaskPool(task, self.name, self._journal, self.loop,
                        lambda: self._task_supervisor(task.name))

    def _task(self, name: str) -> TaskDef:
        task = self.tasks.get(name)
        if task is None:
            raise UnknownTask(f"no task named {name!r}; `yptask tasks` lists them")
        return task

    def _task_child(self, task: TaskDef) -> ChildSpec:
        place = NodePlace(self.name, self.data_dir, self.log_dir, self.http_url + "/rpc")
        return ChildSpec(id=task.name, start=TaskSupervisor, args=(task, place, self._hooks),
                         shutdown_s=ASK_TIMEOUT_S, start_timeout_s=ASK_TIMEOUT_S)

    def _task_supervisor(self, name: str) -> pykka.ActorProxy[TaskSupervisor]:
        assert self._registry is not None
        ref = self._registry.whereis(name)
        if ref is None:
            raise UnknownTask(f"task {name!r} has no running supervisor on node {self.name}")
        proxy = self._proxies.get(ref.actor_urn)
        if proxy is None:  # building a proxy inspects the actor: keep one per incarnation
            proxy = self._proxies[ref.actor_urn] = ref.proxy()
        return proxy

    # ------------------------------------------------------------------ status

    async def status(self) -> dict[str, Any]:
        """Per task: workers (and their pids), state, queue depth, in flight, handled, failed."""
        assert self._journal is not None
        tasks = {}
        for name, pool in self.pools.items():
            queued, inflight = await self._journal.run(partial(Journal.depth, task=name))
            state = await asyncio.to_thread(self._supervisor_state, name)
            tasks[name] = {"workers": {self.name: state["workers"]}, "state": state["state"],
                           "queued": queued, "in_flight": inflight, "handled": pool.handled,
                           "failed": pool.failed,
                           "pids": sorted(p for p, t in self._worker_pids.items() if t == name)}
        return {"node": self.name, "uptime_s": round(time.time() - self.started_at, 1),
                "tasks": tasks}

    def _supervisor_state(self, name: str) -> dict[str, Any]:
        try:
            supervisor = self._task_supervisor(name)
            state = supervisor.state().get(timeout=ASK_TIMEOUT_S)
            workers = len(supervisor.worker_ids().get(timeout=ASK_TIMEOUT_S))
        except (UnknownTask, pykka.ActorDeadError):
            return {"state": "stopped", "workers": 0}
        if state.phase.value == "backoff":
            return {"state": "backoff", "workers": workers}
        return {"state": "running" if workers else "idle", "workers": workers}

    async def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        assert self._journal is not None
        letters = await self._journal.run(lambda j: j.dead_letters(limit))
        return [{"id": d.message.id, "name": d.message.name, "payload": d.message.payload,
                 "task": d.task, "attempt": d.attempt, "error_class": d.error_class,
                 "error": d.error, "traceback": d.traceback, "died_at": d.died_at}
                for d in letters]

    async def replay(self, message_id: str, task: str | None = None) -> int:
        """Requeue a dead letter (for one task, or for every task it died in)."""
        assert self._journal is not None
        letters = [d for d in await self.dead_letters(limit=10**6)
                   if d["id"] == message_id and task in (None, d["task"])]
        replayed = 0
        for letter in letters:
            if await self._journal.run(partial(Journal.replay, message_id=message_id,
                                               task=letter["task"])):
                replayed += 1
                if letter["task"] in self.pools:
                    self.pools[letter["task"]].notify()
        return replayed

    # ------------------------------------------------------------------ worker hooks

    def _worker_ready(self, task: str, ref: Any) -> None:  # any thread
        pool = self.pools.get(task)
        if pool is not None:
            pool.worker_ready(ref)

    def _pull_job(self, task: str, ref: Any) -> Any:  # actor thread
        pool = self.pools.get(task)
        return None if pool is None else pool.pull(ref)

    def _retire_worker(self, task: str, ref: Any) -> None:  # actor thread
        pool = self.pools.get(task)
        if pool is not None:
            pool.retire(ref)

    def _watch_worker(self, task: str, pid: int, ref: Any) -> None:  # actor thread
        self.loop.call_soon_threadsafe(self._add_pid_watch, task, pid, ref)

    def _add_pid_watch(self, task: str, pid: int, ref: Any) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            _tell(ref, ProcessGone(pid))
            return
        self._worker_pids[pid] = task

        def exited() -> None:
            self.loop.remove_reader(pidfd)
            os.close(pidfd)
            self._worker_pids.pop(pid, None)
            _tell(ref, ProcessGone(pid))

        self.loop.add_reader(pidfd, exited)

    @staticmethod
    def _ask(future: pykka.Future[Any]) -> Any:
        return future.get(timeout=ASK_TIMEOUT_S)


def _tell(ref: Any, message: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


class _MessageIds:
    """Message ids that sort by time and are unique across nodes and restarts.

    12 hex digits of milliseconds, 10 random hex digits drawn once per node start,
    then a counter: far cheaper per cast than a uuid4 (a getrandom call each).
    """

    def __init__(self) -> None:
        self._prefix = os.urandom(5).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{int(time.time() * 1000):012x}{self._prefix}{next(self._counter) & 0xFFFFFFFF:08x}"
