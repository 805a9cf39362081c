"""The node: one `yptask node` process. Owns its store, journal, supervision tree and transports.

Everything a publisher or an admin does goes through one `Node` method, on the
event loop: `cast`, `call`, and the admin operations. The node passes its
parts explicitly (no module-level state), so several nodes can run in one
test process. Blocking work never runs on the loop: SQLite goes through the
journal thread or `asyncio.to_thread`, and asks to actors run in threads.
Admin requests never wait on a worker: a task's supervisor is told what to
change and does it in the background, and `status` reads the state each
supervisor publishes instead of asking it.

Start order: store and journal, then the supervision tree (task supervisors,
each starting its workers), then the delivery loops, then HTTP and BERT-RPC,
then the cluster (links, forwarding, timers). Stop is the reverse, gracefully:
no new requests, no new claims, workers finish their current message (its
outcome is still acked), then the journal closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

import pykka

from yptask import __version__
from yptask.access.secrets import ADMIN_TOKEN_FILE, COOKIE_FILE, read_or_make
from yptask.cluster.client_ids import IDS_REQUEST, KNOWN, PENDING, Claims, ClientIds
from yptask.cluster.membership import Change
from yptask.cluster.mesh import Cluster, ClusterSettings
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef, load_tasks, validate_message_name
from yptask.connection_limits import caps
from yptask.delivery.forwarding import Forwarder
from yptask.delivery.pool import TaskPool
from yptask.endpoints.bert import BertEndpoint
from yptask.errors import (
    CallTimeout,
    ConfigError,
    EncodeError,
    IdPending,
    JournalError,
    NodeStopping,
    NoSubscriber,
    Overloaded,
    ProtocolError,
    UnknownTask,
    UnknownTimer,
    WorkerStartFailed,
    YPTaskError,
)
from yptask.ingress import checks as ingress
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Envelope, Journal
from yptask.store.replicated import Entry, HybridClock, ReplicatedStore
from yptask.supervision import (
    ChildSpec,
    Phase,
    Registry,
    Supervisor,
    SupervisorFlags,
    SupervisorState,
)
from yptask.supervisors.task import NodePlace, TaskSupervisor
from yptask.supervisors.worker import Outcome, ProcessGone, WorkerHooks
from yptask.timers.leader import TIMER_KEY, TIMER_STATE_KEY, TimerRunner, timer_rows
from yptask.timers.schedule import TimerDef
from yptask.workers.process import payload_size

__all__ = ["Node"]

JOURNAL_ID_FILE = "journal-id"  # the id of the journal this node last ran with
TIMER_BALLOT_FILE = "timer-ballot"  # whom this node granted the timer lease (timer_lease)

log = logging.getLogger(__name__)

ASK_TIMEOUT_S = 120.0  # an admin operation waits at most this for the actors
NODE_FLAGS = SupervisorFlags(intensity=10, period_s=60.0)
PRUNE_EVERY_S = 60.0
LOAD_EVERY_S = 1.0
RECONCILE_EVERY_S = 1.0  # the running tasks are compared with the stored ones this often
LINK_GRACE_S = 2.0  # a call sent to another node waits this much longer than its timeout
MAX_CACHED_NAMES = 10_000  # message names whose subscribers are remembered
TASK_KEY = "task:"  # task definitions in the replicated config map


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
        self.admin_token = ""  # see yptask.access.secrets; read at start
        self._cluster_cookie = b""  # read at start, before any worker runs
        self.bert_address = ""
        self._bert: BertEndpoint | None = None
        self._pruner: asyncio.Task[None] | None = None
        self.started_at = time.time()
        self._store: ReplicatedStore | None = None
        self.cluster: Cluster | None = None
        self.forwarders: dict[str, Forwarder] = {}
        self.timers: TimerRunner | None = None
        self._ids: ClientIds | None = None  # from the cluster's start: before, alone
        self._loads: asyncio.Task[None] | None = None
        self._reconciler: asyncio.Task[None] | None = None
        self._queued: dict[str, int] = {}  # task -> deliveries waiting here, for heartbeats
        self._journal_bytes = 0  # the journal's size on disk, measured with the queues
        self.boot = os.urandom(8).hex()  # this run of this node: peers see a restart by it
        self._config_lock = asyncio.Lock()
        self._journal: JournalThread | None = None
        self._tree: pykka.ActorProxy[Supervisor] | None = None
        self._registry: Registry | None = None
        self._proxies: dict[str, Any] = {}  # actor urn -> proxy
        # task -> (urn, state) its supervisor last published: status reads it, never asks
        self._supervisor_states: dict[str, tuple[str, SupervisorState]] = {}
        # task -> resolved when a start of its workers fails: calls waiting for one give up
        self._start_failures: dict[str, asyncio.Future[None]] = {}
        self._asks: set[asyncio.Task[None]] = set()  # asks to the actors nobody waits on
        # task -> why the workers of its stored definition could not start (until the next)
        self._apply_errors: dict[str, str] = {}
        self._worker_pids: dict[int, str] = {}  # live worker process -> its task
        self._new_id = _MessageIds()
        self._runner: Any = None  # HTTPServer
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
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.admin_token = read_or_make(self.data_dir / ADMIN_TOKEN_FILE, "admin token")
        # What can still refuse the start is checked before any worker runs.
        self._cluster_cookie = self._cookie()
        self._check_ports()
        self._store = ReplicatedStore(self.data_dir / "config.db", HybridClock(self.name))
        if seed is None:
            seed = await asyncio.to_thread(load_tasks, self._seed_file())
        await asyncio.to_thread(self._store.seed_once,
                                {TASK_KEY + task.name: task.to_dict() for task in seed})
        journal = await asyncio.to_thread(self._open_journal)
        self._journal = JournalThread(journal, name=f"journal {self.name}")
        self._bind_http()
        for name, value in (await asyncio.to_thread(self._store.values, TASK_KEY)).items():
            try:
                task = TaskDef.from_dict(value)
            except ConfigError as exc:
                log.error("stored task %s is invalid here, not started: %s", name, exc)
                continue
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
        self.cluster = cluster = Cluster(self._cluster_settings(), self, self._store, self.boot)
        self.timers = TimerRunner(self.name, self._store, cast=self._cast_tick,
                                  peers=lambda: [m.name for m in cluster.up()],
                                  ask=cluster.request, publish=cluster.publish_now,
                                  ballot=self.data_dir / TIMER_BALLOT_FILE,
                                  lease_s=self.config.timer_lease_s,
                                  known_here=self._known_ids,
                                  settle_s=self._timer_settle_s())
        cluster.serve("lease", self.timers.on_ask)
        cluster.serve("lease_release", self.timers.on_release)
        cluster.serve("tick_known", self._on_tick_known)
        self._ids = ClientIds(self.name, self._journal, lambda: [m.name for m in cluster.up()],
                              cluster.request, wait_s=self.config.client_id_wait_s,
                              pending_s=self.config.client_id_pending_s)
        cluster.serve(IDS_REQUEST, self._ids.answer)
        await cluster.start()
        for task in self.tasks.values():
            self._start_forwarder(task)
        self._loads = self.loop.create_task(self._measure_load_forever(), name="measure load")
        self._reconciler = self.loop.create_task(self._reconcile_forever(), name="reconcile")
        await self.timers.start()
        log.info("node %s ready: %s, BERT-RPC %s, link %s", self.name, self.http_url,
                 self.bert_address, self.cluster.link_address)

    async def _known_ids(self, ids: list[str]) -> set[str]:
        """Those of `ids` this node's journal knows (journaled here, within the window)."""
        assert self._journal is not None
        known: set[str] = await self._journal.run(partial(Journal.known_client_ids, ids=ids))
        return known

    async def _on_tick_known(self, peer: str, args: list[Any]) -> list[str]:
        """A new timer leader asks which of these tick ids this node journaled."""
        if not (len(args) == 1 and isinstance(args[0], list)
                and all(isinstance(i, str) for i in args[0]) and len(args[0]) <= 100):
            raise ProtocolError(f"node {peer} sent a malformed tick_known request")
        return sorted(await self._known_ids(list(args[0])))

    def _timer_settle_s(self) -> float:
        """A node that may have peers hears of them, and of their timer leader, before it
        stands for the lease: its links are up and its peers' heartbeats in by then."""
        c = self.config
        return max(c.timer_lease_s, c.down_after_s) if c.join or c.mdns else 0.0

    def _cluster_settings(self) -> ClusterSettings:
        c = self.config
        seeds = tuple((host, int(port)) for host, _, port in (s.rpartition(":") for s in c.join))
        return ClusterSettings(
            cluster=c.cluster, name=self.name, cookie=self._cluster_cookie, link_host=c.link_host,
            link_port=c.link_port, http_url=self.http_url, seeds=seeds, mdns=c.mdns,
            service_type=c.mdns_type, heartbeat_s=c.heartbeat_s,
            suspect_after_s=c.down_after_s / 2, down_after_s=c.down_after_s,
            version=__version__, max_connections=caps(c).link,
            handshake_timeout_s=c.link_handshake_timeout_s,
            allow_from=c.allow_from)

    def _cookie(self) -> bytes:
        """The cluster cookie: from the config, its file, or a random one kept in the data dir."""
        if self.config.cookie is not None:
            return self.config.cookie.encode()
        path = self.config.cookie_file or self.data_dir / COOKIE_FILE
        return read_or_make(path, "cluster cookie", make=self.config.cookie_file is None).encode()

    async def _prune_forever(self) -> None:
        """Forget done messages once their ids are past the dedupe window, so the journal
        keeps only what is pending, dead, or recent enough to dedupe against."""
        assert self._journal is not None
        window = self.config.dedupe_window_s
        while True:
            try:
                pruned = await self._journal.run(partial(Journal.prune, older_than_s=window))
                pruned += await self._journal.run(partial(Journal.forget_client_ids,
                                                          older_than_s=window))
            except Exception:  # the store failed (a full disk): try again at the next round
                log.exception("pruning the journal failed; trying again in %.0f s",
                              PRUNE_EVERY_S)
            else:
                if pruned:
                    log.info("journal: forgot %d done message(s) and client id(s) older than "
                             "%.0f s", pruned, window)
            await asyncio.sleep(PRUNE_EVERY_S)

    def _seed_file(self) -> Path:
        if self.config.tasks_file is not None:
            return self.config.tasks_file
        return Path(str(resources.files("yptask.conf") / "tasks.toml"))

    def _open_journal(self) -> Journal:
        """The journal, checked: not damaged, and the one this node last ran with (an
        emptied or replaced journal would silently lose what the node had accepted)."""
        path = self.data_dir / "journal.db"
        fix = ("restore it from a backup; or move it aside (with its -wal and -shm files) "
               "and start with --accept-new-journal (accept_new_journal = true) to go on "
               "with an empty one, losing what it held")
        try:
            journal = Journal(path, synchronous=self.config.journal_sync)
            problem = journal.problem()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"the journal {path} is damaged ({exc}): {fix}") from None
        if problem is not None:
            journal.close()
            raise ConfigError(f"the journal {path} is damaged ({problem}): {fix}")
        marker = self.data_dir / JOURNAL_ID_FILE
        known = marker.read_text().strip() if marker.exists() else None
        if known is not None and (not journal.has_identity() or journal.identity() != known):
            if not self.config.accept_new_journal:
                journal.close()
                raise ConfigError(
                    f"the journal {path} was emptied or replaced since this node last ran: "
                    f"the messages it had accepted and not finished are not in it. Restore "
                    f"it from a backup; or start with --accept-new-journal "
                    f"(accept_new_journal = true) to go on with this one")
            log.warning("the journal %s is not the one this node last ran with: going on "
                        "with it (accept_new_journal); what the old one held is lost", path)
        marker.write_text(journal.identity() + "\n")
        return journal

    def _check_ports(self) -> None:
        """Refuse to start, naming the option, if the BERT-RPC or link port is taken (they
        are bound later, once the workers run; HTTP is bound at once, see _bind_http)."""
        c = self.config
        for option, host, port in (("--bert", c.bert_host, c.bert_port),
                                   ("--link", c.link_host, c.link_port)):
            if port == 0:
                continue
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
                try:
                    probe.bind((host, port))
                except OSError as exc:
                    raise _in_use(option, host, port, exc) from None

    def _bind_http(self) -> None:
        """Take the HTTP port first: a port in use fails the start before any worker runs,
        and workers learn the node's URL (YPTASK_URL) when they start."""
        host, port = self.config.http_host, self.config.http_port
        try:
            self._http_socket = socket.create_server((host, port))
        except OSError as exc:
            raise _in_use("--http", host, port, exc) from None
        host, port = self._http_socket.getsockname()[:2]
        self.http_url = f"http://{host}:{port}"

    async def _start_http(self) -> None:
        from yptask.endpoints.http_server import HTTPLimits, HTTPServer
        from yptask.web.app import make_app

        assert self._http_socket is not None
        c = self.config
        self._runner = HTTPServer(make_app(self, self.admin_token), HTTPLimits(
            caps(c).http, head_timeout_s=c.http_head_timeout_s,
            keepalive_timeout_s=c.http_keepalive_timeout_s))
        await self._runner.start(self._http_socket)

    async def stop(self) -> None:
        """Stop gracefully: timers, forwarding and links, then HTTP, then claims, then workers
        (finishing), then the journal. What waits to be forwarded stays journaled here."""
        if self.stopping:
            return
        self.stopping = True
        for background in (self._pruner, self._loads, self._reconciler):
            if background is not None:
                background.cancel()
        if self.timers is not None:
            await self.timers.stop()
        if self._ids is not None:
            await self._ids.close()
        for forwarder in self.forwarders.values():
            await forwarder.close()
        if self.cluster is not None:
            await self.cluster.stop()
        if self._bert is not None:
            await self._bert.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        elif self._http_socket is not None:  # bound, never served
            self._http_socket.close()
        for pool in self.pools.values():
            await pool.stop_claiming()
        log.info("node %s: no new claims; waiting for the workers' current messages", self.name)
        if self._tree is not None:
            tree = self._tree.actor_ref
            await asyncio.to_thread(lambda: tree.stop(block=True, timeout=ASK_TIMEOUT_S))
        await asyncio.gather(*self._asks, return_exceptions=True)  # answered by now
        for pool in self.pools.values():
            await pool.close()
        if self._journal is not None:
            await asyncio.to_thread(self._journal.close)
        if self._store is not None:
            self._store.close()
        log.info("node %s stopped", self.name)

    # ------------------------------------------------------------------ publishing

    async def cast(self, name: str, msg: Any, *, id: str | None = None, priority: int = 0,
                   ticks: bool = False) -> dict[str, Any]:
        """Journal a message for every subscribed task; return once it is committed."""
        self._check_running()
        result = (await self.cast_many([(name, msg, id, priority)], ticks=ticks))[0]
        if isinstance(result, YPTaskError):
            raise result
        return result

    async def cast_many(self, casts: list[tuple[Any, Any, Any, Any]], *, ticks: bool = False
                        ) -> list[dict[str, Any] | YPTaskError]:
        """Journal many casts, (name, msg, id, priority) each, in one group commit.

        Every field is checked here, by the rules of `yptask.ingress.checks`, whatever
        surface it came from. Answers each in order: its result as `cast` gives it,
        or the error that refused it (a refused cast stores nothing; the others
        are not affected, even when the journal itself refuses one of them).
        Only the timer leader casts `ticks`, with ids publishers may not use. Given
        ids (ticks' too) are first claimed at their home nodes (yptask.cluster.client_ids).
        """
        self._check_running()
        answers: list[dict[str, Any] | YPTaskError] = []
        accepted: list[tuple[Envelope, list[str]]] = []
        results: list[tuple[int, dict[str, Any]]] = []  # (place in answers, the answer)
        given: list[str] = []  # the ids the casts came with (a publisher's, a tick's)
        for given_name, msg, given_id, given_priority in casts:
            try:
                name = ingress.check_name(given_name)
                id = ingress.check_id(given_id, tick=ticks)
                priority = ingress.check_priority(given_priority)
                self._check_message(name, msg, journaled=True)
                payload_json = _journal_text(msg)
                subscribed = self._subscribers(name)
                self._check_room(subscribed)
            except YPTaskError as exc:
                answers.append(exc)
                continue
            envelope = Envelope(id or self._new_id(), name, msg, time.time(), priority,
                                payload_json=payload_json)
            accepted.append((envelope, subscribed))
            results.append((len(answers), {"id": envelope.id, "tasks": subscribed}))
            answers.append(results[-1][1])
            if id:
                given.append(id)
        claims = None
        if given and self._ids is not None:
            claims = await self._ids.claim(given)
            accepted, results = _claimed(claims, accepted, results, answers)
        assert self._journal is not None
        added = await self._journal.append_many(accepted) if accepted else []
        if claims is not None:
            assert self._ids is not None
            stored = [(envelope.id, not isinstance(new, Exception))
                      for (envelope, _), new in zip(accepted, added, strict=True)]
            self._ids.settle(claims, taken=[i for i, ok in stored if ok],
                             released=[i for i, ok in stored if not ok])
        notified: set[str] = set()
        for (envelope, subscribed), new, (place, result) in zip(accepted, added, results,
                                                                strict=True):
            if isinstance(new, Exception):  # the others of its group commit are stored
                answers[place] = _journal_refused(envelope, new)
                continue
            result["duplicate"] = not new
            if not new:
                continue
            for task in subscribed:
                self._queued[task] = self._queued.get(task, 0) + 1  # until the next measure
                notified.add(task)
        for task in notified:
            self.pools[task].notify()
            if task in self.forwarders:
                self.forwarders[task].notify()
        return answers

    async def call(self, name: str, msg: Any, *, timeout_s: float = 30.0,
                   here_only: bool = False) -> Any:
        """Have one worker of a subscribed task handle `msg` now; return its result.

        A task with workers here is preferred; otherwise the call goes to a live node
        that runs one (unless `here_only`: it came from another node already).
        """
        self._check_running()
        self._check_message(name, msg)
        subscribed = [self.tasks[task] for task in self._subscribers(name)]
        if not subscribed:
            raise NoSubscriber(f"no task subscribes to {name!r}")
        local = [t for t in subscribed if t.workers_on(self.name) > 0]
        if not local:
            peer = None if here_only else self._peer_running(subscribed)
            if peer is None:
                raise NoSubscriber(f"task(s) {', '.join(t.name for t in subscribed)} subscribe "
                                   f"to {name!r} but run no worker on a live node")
            assert self.cluster is not None
            return await self.cluster.request(peer, "call", [name, msg, timeout_s],
                                              timeout_s + LINK_GRACE_S)
        task = max(local, key=lambda t: self.pools[t.name].free_workers)
        pool = self.pools[task.name]
        meta = {"id": self._new_id(), "attempt": 1, "published_at": time.time(), "priority": 0}
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: no task per call
                if pool.free_workers or pool.live_workers:  # the cheap test first
                    outcome = await pool.run(name, msg, meta, task.message_timeout_s)
                else:  # no worker runs: one must start first, and may not be able to
                    outcome = await self._run_once_started(task, pool.run(
                        name, msg, meta, task.message_timeout_s))
        except TimeoutError:
            raise CallTimeout(f"no answer to {name!r} from task {task.name} within "
                              f"{timeout_s} s") from None
        if outcome.error is not None:
            raise outcome.error
        return outcome.result

    async def _run_once_started(self, task: TaskDef, run: Awaitable[Outcome]) -> Outcome:
        """Await `run`, a call waiting for a worker of `task`; raise `WorkerStartFailed`
        instead as soon as the task's workers are seen unable to start."""
        running = asyncio.ensure_future(run)
        try:
            while (error := self._start_failure(task.name)) is None:
                failed = self._start_failures.get(task.name)
                if failed is None:
                    failed = self._start_failures[task.name] = self.loop.create_future()
                await asyncio.wait((running, failed), return_when=asyncio.FIRST_COMPLETED)
                if running.done():
                    return running.result()
            raise error
        finally:
            running.cancel()  # nothing, if it is done

    def _start_failure(self, name: str) -> WorkerStartFailed | None:
        """Why no worker of task `name` can start here, while none runs; else None."""
        state, pool = self._published(name), self.pools.get(name)
        if state is None or state.running or pool is None or pool.live_workers:
            return None
        return self._start_error(name)

    def _start_error(self, name: str) -> WorkerStartFailed | None:
        """Why the last start of a worker of task `name` failed, until one starts again."""
        state = self._published(name)
        error = None if state is None else state.start_error
        if error is None or isinstance(error, WorkerStartFailed):
            return error
        return WorkerStartFailed.of(name, "not started", reason=str(error))  # not a worker's

    def _subscribers(self, name: str) -> list[str]:
        """The tasks subscribed to a message name, in name order (cached per name)."""
        subscribed = self._subscriptions.get(name)
        if subscribed is None:
            if len(self._subscriptions) >= MAX_CACHED_NAMES:  # publishers choose the names
                self._subscriptions.clear()
            subscribed = sorted(t.name for t in self.tasks.values() if t.subscribes_to(name))
            self._subscriptions[name] = subscribed
        return subscribed

    def _peer_running(self, tasks: list[TaskDef]) -> str | None:
        """A live peer that runs a worker of one of `tasks` (the least loaded), or None."""
        if self.cluster is None:
            return None
        runners = [m for m in self.cluster.up()
                   if any(t.workers_on(m.name) > 0 for t in tasks)]
        if not runners:
            return None
        return min(runners, key=lambda m: sum(
            int(m.load.get(t.name, {}).get("in_flight", 0)) for t in tasks)).name

    def _check_room(self, tasks: list[str]) -> None:
        """Back-pressure: refuse a cast rather than let a queue or the journal grow unbounded."""
        limit_mb = self.config.max_journal_mb
        if self._journal_bytes > limit_mb * 1024 * 1024:
            raise Overloaded(f"node {self.name}: its journal is {self._journal_bytes >> 20} MB, "
                             f"over max_journal_mb ({limit_mb:g}); retry later or elsewhere")
        for task in tasks:
            waiting, limit = self._queued.get(task, 0), self.tasks[task].max_queue
            if waiting >= limit:
                raise Overloaded(f"task {task} has {waiting} messages waiting on node "
                                 f"{self.name}, at its max_queue ({limit}); retry later")

    def _check_running(self) -> None:
        if self.stopping:
            raise NodeStopping(f"node {self.name} is stopping; send to another node or retry")

    def _check_message(self, name: str, msg: Any, *, journaled: bool = False) -> None:
        """Refuse a message that cannot reach a worker (or, `journaled`, the journal)."""
        validate_message_name(name)
        ingress.check_payload(msg, "cast" if journaled else "call", journaled=journaled)
        try:
            size = payload_size(msg)  # as deep as the packet that delivers it puts it
        except EncodeError as exc:
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
        """Create or replace a task definition, on every node; its workers follow at once.

        Answers once the definition is stored and the task's supervisor is told: the
        workers start (or are replaced) in the background, as the task's status shows.
        The answer is the stored definition with `changed`: false when it equals the one
        already stored, which is then neither stored again nor applied (no restart).
        """
        self._check_running()
        task = TaskDef.from_dict(definition)
        old = self.tasks.get(task.name)
        if old is not None:
            task = replace(task, restart_generation=max(task.restart_generation,
                                                        old.restart_generation))
            assert self._store is not None
            entry = await asyncio.to_thread(self._store.get, TASK_KEY + task.name)
            stored = None if entry is None else entry.value
            if stored is not None and _as_stored(stored) == _as_stored(task.to_dict()):
                log.info("task %s unchanged, nothing stored", task.name)
                return {**stored, "changed": False}
        await self._write_task(task.name, task)
        return {**task.to_dict(), "changed": True}

    async def delete_task(self, name: str) -> None:
        """Delete a task, on every node: its workers finish their current message and stop."""
        self._check_running()
        self._task(name)
        await self._write_task(name, None)

    # ------------------------------------------------------------------ timers

    async def list_timers(self) -> list[dict[str, Any]]:
        """Every timer with its last fire, next fire, last error and the leader firing it."""
        assert self._store is not None
        lease = ({"leader": self.timers.leader(), "epoch": self.timers.epoch()}
                 if self.timers is not None else {"leader": "", "epoch": 0})
        return await asyncio.to_thread(timer_rows, self._store, lease)

    async def get_timer(self, name: str) -> dict[str, Any]:
        for row in await self.list_timers():
            if row["name"] == name:
                return row
        raise UnknownTimer(f"no timer named {name!r}; `yptask timers` lists them")

    async def put_timer(self, definition: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a timer, on every node; the leader fires it from the next tick."""
        self._check_running()
        timer = TimerDef.from_dict(definition)
        assert self._store is not None
        store = self._store

        def write() -> list[Entry]:
            entries = [store.put(TIMER_KEY + timer.name, timer.to_dict())]
            state = store.get(TIMER_STATE_KEY + timer.name)
            if state is None or state.value is None:  # new: its ticks count from now
                entries.append(store.put(TIMER_STATE_KEY + timer.name,
                                         {"last_fire": time.time()}))
            return entries

        entries = await asyncio.to_thread(write)
        if self.cluster is not None:
            self.cluster.publish(entries)
        log.info("timer %s saved", timer.name)
        return await self.get_timer(timer.name)

    async def delete_timer(self, name: str) -> None:
        """Delete a timer, on every node."""
        self._check_running()
        await self.get_timer(name)
        assert self._store is not None
        store = self._store
        entries = await asyncio.to_thread(lambda: [store.put(TIMER_KEY + name, None),
                                                   store.put(TIMER_STATE_KEY + name, None)])
        if self.cluster is not None:
            self.cluster.publish(entries)
        log.info("timer %s deleted", name)

    async def _cast_tick(self, name: str, payload: Any, message_id: str) -> None:
        await self.cast(name, payload, id=message_id, ticks=True)

    async def restart_task(self, name: str) -> dict[str, Any]:
        """Rolling restart, on every node: each worker is replaced by one running the code
        now on disk (a new restart generation in the replicated definition)."""
        self._check_running()
        task = self._task(name)
        task = replace(task, restart_generation=task.restart_generation + 1)
        replaced = await self._write_task(name, task, wait=True)
        return {"task": name, "generation": task.restart_generation, "replaced": replaced,
                "workers": task.workers_on(self.name)}

    async def _write_task(self, name: str, task: TaskDef | None, *, wait: bool = False) -> int:
        """Store a definition (None: delete) in the replicated map, apply it here, push it
        to the peers; return how many local workers were replaced (with `wait`, see
        `_apply_task`)."""
        assert self._store is not None
        value = None if task is None else task.to_dict()
        entry = await asyncio.to_thread(self._store.put, TASK_KEY + name, value)
        if self.cluster is not None:  # the peers apply it while this node does
            self.cluster.publish([entry])
        return await self._apply_task(name, task, wait=wait)

    async def apply_config(self, changed: list[Entry]) -> None:
        """Apply definitions written on other nodes (the cluster calls this)."""
        for entry in changed:
            if not entry.key.startswith(TASK_KEY):
                continue
            name = entry.key[len(TASK_KEY):]
            try:
                task = None if entry.value is None else TaskDef.from_dict(entry.value)
            except ConfigError as exc:
                log.error("task %s from node %s is invalid here, left as it was: %s", name,
                          entry.version.node, exc)
                continue
            await self._apply_task(name, task)

    async def _apply_task(self, name: str, task: TaskDef | None, *, wait: bool = False) -> int:
        """Make this node run `task` as defined (None: not at all).

        The task's supervisor is told, and its workers start, stop or are replaced in
        the background: no admin request waits on a slow worker. With `wait` (a
        restart), return once the workers are replaced, with how many were.
        """
        waiting: pykka.Future[Any] | None = None
        async with self._config_lock:  # one change at a time, in the order they came
            # What is stored now wins over what the caller read: two changes stored in one
            # order (a peer's merge, a local edit) may reach this lock in the other.
            assert self._store is not None
            stored = await asyncio.to_thread(self._store.get, TASK_KEY + name)
            # (one invalid here stays unapplied: the caller's, checked, is applied instead)
            with contextlib.suppress(ConfigError):
                if stored is not None:
                    task = None if stored.value is None else TaskDef.from_dict(stored.value)
            old = self.tasks.get(name)
            assert self._tree is not None
            if old is not None and task is not None and _same_definition(old, task):
                return 0  # e.g. our own edit gossiped back: nothing to do
            if task is None:
                if old is None:
                    return 0
                del self.tasks[name]
                self._subscriptions.clear()
                await self.pools.pop(name).close()
                if name in self.forwarders:
                    await self.forwarders.pop(name).close()
                # its workers finish their current message and stop, its supervisor last
                self._in_background(self._tree.terminate_child(name), f"deleting task {name}")
                log.info("task %s deleted", name)
                return 0
            self.tasks[name] = task
            self._subscriptions.clear()
            self._apply_errors.pop(name, None)  # a new definition: its own outcome counts
            if old is None:  # the supervisor first, so the pool finds it when it needs workers
                pool = self._pool(task)
                self.pools[name] = pool
                await asyncio.to_thread(self._ask, self._tree.start_child(
                    self._task_child(task, start_in_background=True)))
                pool.start()
                self._start_forwarder(task)
            else:
                self.pools[name].task = task
                if name in self.forwarders:
                    self.forwarders[name].task = task
                    self.forwarders[name].notify()
                supervisor = self._task_supervisor(name)
                if _same_definition(replace(old, nodes=task.nodes), task):  # only the counts
                    change = supervisor.resize(task.workers_on(self.name))
                else:  # anything else takes new workers
                    change = supervisor.rolling_restart(task)
                if wait:
                    waiting = change
                else:
                    self._in_background(change, f"applying task {name}",
                                        failed=partial(self._apply_failed, name, task))
            log.info("task %s %s", name, "created" if old is None else "updated")
        # A restart is waited for outside the lock: the next change (a peer's edit) is
        # applied meanwhile, not held up for as long as the workers take to roll.
        return 0 if waiting is None else int(await asyncio.to_thread(self._ask, waiting))

    def _in_background(self, answer: pykka.Future[Any], what: str,
                       failed: Callable[[Exception], None] | None = None) -> None:
        """Let an ask to the actors end without waiting for it; log it (and tell `failed`)
        if it fails."""
        async def wait() -> None:
            try:
                await asyncio.to_thread(self._ask, answer)
            except Exception as exc:  # the supervisor restarts or backs off on its own
                log.error("%s failed: %s", what, exc)
                if failed is not None:
                    failed(exc)

        ask = self.loop.create_task(wait(), name=what)
        self._asks.add(ask)
        ask.add_done_callback(self._asks.discard)

    def _apply_failed(self, name: str, task: TaskDef, exc: Exception) -> None:
        """The workers of `task`'s stored definition could not start: status says so (the
        workers of the definition before it, if any, serve on)."""
        if self.tasks.get(name) is task:  # not replaced by a newer definition since
            self._apply_errors[name] = str(exc)

    def _pool(self, task: TaskDef) -> TaskPool:
        assert self._journal is not None
        return TaskPool(task, self.name, self._journal, self.loop,
                        lambda: self._task_supervisor(task.name))

    def _task(self, name: str) -> TaskDef:
        task = self.tasks.get(name)
        if task is None:
            raise UnknownTask(f"no task named {name!r}; `yptask tasks` lists them")
        return task

    def _task_child(self, task: TaskDef, *, start_in_background: bool = False) -> ChildSpec:
        """The spec of a task's supervisor: at the node's start its workers start before the
        node is ready; a task created later answers its creator first."""
        place = NodePlace(self.name, self.data_dir, self.log_dir, self.http_url + "/rpc")
        return ChildSpec(id=task.name, start=TaskSupervisor, args=(task, place, self._hooks),
                         kwargs={"publish": partial(self._supervisor_published, task.name),
                                 "start_in_background": start_in_background},
                         shutdown_s=ASK_TIMEOUT_S, start_timeout_s=ASK_TIMEOUT_S)

    def _supervisor_published(self, task: str, urn: str, state: SupervisorState) -> None:
        before = self._supervisor_states.get(task)
        self._supervisor_states[task] = (urn, state)  # any thread: one atomic store
        if state.start_error is not None and (before is None
                                              or before[1].start_error is not state.start_error):
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self.loop.call_soon_threadsafe(self._start_failed, task)

    def _start_failed(self, task: str) -> None:
        """A start of `task`'s workers failed: wake the calls waiting for one."""
        failed = self._start_failures.pop(task, None)
        if failed is not None and not failed.done():
            failed.set_result(None)

    def _published(self, name: str) -> SupervisorState | None:
        """What the running supervisor of task `name` last published (None: nothing yet)."""
        assert self._registry is not None
        ref = self._registry.whereis(name)
        urn, state = self._supervisor_states.get(name, ("", None))
        return state if ref is not None and urn == ref.actor_urn else None

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
        """Per task: workers (and their pids), state, queue depth, in flight, handled, failed,
        and while its workers cannot start, why (`start_error`)."""
        assert self._journal is not None
        tasks = {}
        for name, pool in self.pools.items():
            queued, inflight = await self._journal.run(partial(Journal.depth, task=name))
            state = self._supervisor_state(name)
            workers = {self.name: state["workers"], **self._workers_elsewhere(name)}
            if name in self._apply_errors:  # stored, but its workers could not start
                state = {**state, "state": "update failed", "error": self._apply_errors[name]}
            tasks[name] = {**pool.metrics.summary(), "workers": workers, "state": state["state"],
                           "queued": queued, "in_flight": inflight, "handled": pool.handled,
                           "failed": pool.failed,
                           "pids": sorted(p for p, t in self._worker_pids.items() if t == name),
                           **({"error": state["error"]} if "error" in state else {}),
                           **_start_error_view(self._start_error(name))}
        return {"node": self.name, "uptime_s": round(time.time() - self.started_at, 1),
                "tasks": tasks, "client_ids": {} if self._ids is None else self._ids.status()}

    def _workers_elsewhere(self, task: str) -> dict[str, int]:
        """Workers of `task` on the other live nodes, as their last heartbeats said."""
        if self.cluster is None:
            return {}
        counts = {}
        for member in self.cluster.up():
            load = member.load.get(task)
            if isinstance(load, dict) and isinstance(load.get("workers"), int):
                counts[member.name] = load["workers"]
        return counts

    def _supervisor_state(self, name: str) -> dict[str, Any]:
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

    async def failures(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent failed attempts on this node, newest first, with tracebacks."""
        rows = [f for pool in self.pools.values() for f in pool.metrics.recent_failures()]
        return sorted(rows, key=lambda f: f["at"], reverse=True)[:limit]

    async def metrics(self, step_s: int = 10, span_s: int = 600) -> dict[str, Any]:
        """Per task, points every `step_s` over the last `span_s`: rates and latency."""
        return {name: pool.metrics.series(step_s, span_s) for name, pool in self.pools.items()}

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

    # ------------------------------------------------------------------ cluster hooks

    async def nodes(self) -> list[dict[str, Any]]:
        """The cluster's members as this node sees them, itself first."""
        return [] if self.cluster is None else self.cluster.members()

    async def forget_node(self, name: str) -> dict[str, Any]:
        """Take a node that is gone for good off the timer lease's roster, on every node, so
        that the majority the lease needs is counted without it."""
        self._check_running()
        assert self.timers is not None and self.cluster is not None
        if name == self.name or self.cluster.membership.is_up(name):
            raise ConfigError(f"node {name} is alive: only a node that is gone can be "
                              "forgotten (a node stopped cleanly leaves by itself)")
        if not await self.timers.forget(name):
            raise ConfigError(f"node {name} is not on the roster; `yptask nodes` lists the "
                              "members")
        log.info("node %s forgotten: the timer lease no longer counts it", name)
        return {"forgotten": name}

    def load(self) -> dict[str, Any]:
        """What this node's heartbeats say about its tasks."""
        return {name: {"workers": pool.live_workers, "in_flight": pool.in_flight,
                       "queued": self._queued.get(name, 0)}
                for name, pool in self.pools.items()}

    async def link_request(self, peer: str, kind: str, args: list[Any]) -> Any:
        """Answer a request another node sent over its link."""
        if kind == "deliver":
            return await self._accept_forwarded(peer, args)
        if kind == "call" and len(args) == 3 and isinstance(args[0], str) \
                and isinstance(args[2], (int, float)):
            return await self.call(args[0], args[1], timeout_s=float(args[2]), here_only=True)
        raise ProtocolError(f"node {peer} sent a malformed {kind} request")

    def member_changed(self, change: Change) -> None:
        """A peer joined, restarted, went down or came back: forward to whoever runs what."""
        for forwarder in self.forwarders.values():
            forwarder.notify()

    def _start_forwarder(self, task: TaskDef) -> None:
        if self.cluster is None or self._journal is None:
            return  # the cluster starts them once it runs
        cluster = self.cluster
        forwarder = Forwarder(task, self.name, self._journal, cluster.up, cluster.request)
        self.forwarders[task.name] = forwarder
        forwarder.start()

    async def _reconcile_forever(self) -> None:
        """Make what runs here match what is stored, every RECONCILE_EVERY_S: a change whose
        apply was lost or overtaken (a peer's merge crossing a local edit, a node paused
        mid-push) still takes effect, so the nodes' definitions converge."""
        assert self._store is not None
        store = self._store
        while True:
            await asyncio.sleep(RECONCILE_EVERY_S)
            try:
                stored = await asyncio.to_thread(store.values, TASK_KEY)
                for name in sorted(set(stored) | set(self.tasks)):
                    value, running = stored.get(name), self.tasks.get(name)
                    try:
                        task = None if value is None else TaskDef.from_dict(value)
                    except ConfigError:
                        continue  # said when it arrived; what runs goes on
                    if (task is None and running is None) or (
                            task is not None and running is not None
                            and _same_definition(task, running)):
                        continue
                    log.warning("task %s here differed from its stored definition; applying "
                                "the stored one", name)
                    await self._apply_task(name, task)
            except Exception:  # a store error: log it, and look again next round
                log.exception("comparing the running tasks with the stored ones failed")

    async def _measure_load_forever(self) -> None:
        """Keep each task's queue depth fresh for the heartbeats (peers pick by it) and for
        back-pressure, with the journal's size on disk."""
        assert self._journal is not None
        files = [self.data_dir / name for name in ("journal.db", "journal.db-wal")]
        while True:
            try:
                for name in list(self.pools):
                    queued, _ = await self._journal.run(partial(Journal.depth, task=name))
                    self._queued[name] = queued
                self._journal_bytes = sum(f.stat().st_size for f in files if f.exists())
            except Exception:  # the store failed: the figures stay as they were a moment
                log.exception("measuring the queues failed; trying again")
            await asyncio.sleep(LOAD_EVERY_S)

    async def _accept_forwarded(self, peer: str, args: list[Any]) -> int:
        """Journal deliveries a peer forwards for one of our tasks; answer once committed."""
        if not (len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], list)):
            raise ProtocolError(f"node {peer} sent a malformed deliver request")
        task, terms = args
        pool = self.pools.get(task)
        if pool is None:
            raise UnknownTask(f"node {self.name} has no task {task!r} (yet)")
        self._check_room([task])  # the sender keeps them, and tries again later
        envelopes = [_envelope(term, peer) for term in terms]
        assert self._journal is not None
        new = await self._journal.run(partial(Journal.accept_forwarded, envelopes=envelopes,
                                              task=task))
        if new:
            pool.notify()
        return int(new)

    # ------------------------------------------------------------------ worker hooks

    def _worker_ready(self, task: str, ref: Any, conn: Any) -> None:  # any thread
        pool = self.pools.get(task)
        if pool is not None:
            pool.worker_ready(ref, conn)

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


def _as_stored(definition: dict[str, Any]) -> str:
    """A definition as the JSON that compares it: unlike ==, which takes 1, 1.0 and True
    for one value, a value that changes only its type is a change. The order of a map's
    keys is not (JSON objects have none, and a browser may reorder them)."""
    return json.dumps(definition, sort_keys=True)


def _same_definition(a: TaskDef, b: TaskDef) -> bool:
    return _as_stored(a.to_dict()) == _as_stored(b.to_dict())


def _start_error_view(error: WorkerStartFailed | None) -> dict[str, Any]:
    """A task's `start_error` in its status (nothing when its last start did not fail)."""
    if error is None:
        return {}
    return {"start_error": {"error": str(error), "exit": error.exit,
                            "stderr_tail": error.stderr_tail, "stderr_log": error.stderr_log,
                            "at": error.at}}


def _envelope(term: Any, peer: str) -> Envelope:
    """A forwarded message, as `yptask.delivery.forwarding.delivery_terms` wrote it."""
    if not (isinstance(term, list) and len(term) == 6 and isinstance(term[0], str)
            and isinstance(term[1], str) and isinstance(term[3], (int, float))
            and isinstance(term[4], int)
            and (term[5] is None or isinstance(term[5], (int, float)))):
        raise ProtocolError(f"node {peer} forwarded a malformed message {term!r:.80}")
    return Envelope(term[0], term[1], term[2], float(term[3]), term[4],
                    None if term[5] is None else float(term[5]))


def _in_use(option: str, host: str, port: int, exc: OSError) -> OSError:
    """The error of a port the node cannot listen on, naming the option that sets it."""
    return OSError(exc.errno, f"{option} {host}:{port} cannot be listened on: "
                              f"{exc.strerror or exc} (in use by another program?); give "
                              f"{option} another HOST:PORT, or 0 for any free port")


def _tell(ref: Any, message: Any) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


def _claimed(claims: Claims, accepted: list[tuple[Envelope, list[str]]],
             results: list[tuple[int, dict[str, Any]]], answers: list[Any]
             ) -> tuple[list[tuple[Envelope, list[str]]], list[tuple[int, dict[str, Any]]]]:
    """The casts still to store once their ids' homes have answered: an id taken already
    is answered as a duplicate, one another node is taking is refused (retryable)."""
    kept: list[tuple[Envelope, list[str]]] = []
    kept_results: list[tuple[int, dict[str, Any]]] = []
    for (envelope, subscribed), (place, result) in zip(accepted, results, strict=True):
        verdict = claims.verdicts.get(envelope.id)
        if verdict == KNOWN:
            result["duplicate"] = True
        elif verdict == PENDING:
            answers[place] = IdPending(
                f"id {envelope.id!r} is being taken by another cast, not yet stored: retry "
                f"in a moment (it is then either taken by you or a duplicate)")
        else:
            kept.append((envelope, subscribed))
            kept_results.append((place, result))
    return kept, kept_results


def _journal_refused(envelope: Envelope, exc: Exception) -> YPTaskError:
    """The answer to a cast the journal refused after every check passed (logged here)."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:  # the disk is full
        log.error("the journal is full: message %r (%s) refused: %s", envelope.id,
                  envelope.name, exc)
        return Overloaded("the node's journal is full (its disk has no room left): the "
                          "message was not stored; retry later or on another node")
    reference = uuid.uuid4().hex[:12]
    log.error("the journal refused message %r (%s), reference %s", envelope.id, envelope.name,
              reference, exc_info=exc)
    return JournalError(f"Internal error: the journal could not store this message, so it was "
                        f"not accepted; the node's log has the details under reference "
                        f"{reference}", reference)


def _journal_text(msg: Any) -> str:
    """A cast's payload as the journal keeps it: JSON (a call's payload is never journaled)."""
    try:
        return json.dumps(msg, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EncodeError(f"message payload cannot travel as JSON to the journal: {exc}") from None


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
