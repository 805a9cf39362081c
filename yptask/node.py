"""The node: one `yptask node` process. Wires its parts together and starts and stops them in order.

Each concern has its own room; the node owns none of their state:

- `store.config_map.ConfigMap`: the replicated definitions, and the one route
  by which every change (local or a peer's) reaches `delivery.running`;
- `delivery.running.RunningTasks`: the tasks run here, their pools and forwarders;
- `supervisors.node.NodeTree`: the actors (task supervisors, worker actors);
- `ingress.publisher.Publisher`: casts and calls, checked once;
- `delivery.load.Load`, `delivery.status.Inspector`, `delivery.task_admin.TaskAdmin`,
  `timers.admin.TimerAdmin`: back-pressure, status, and the admin operations;
- `cluster.mesh.Cluster`, `timers.leader.TimerRunner`, `cluster.client_ids.ClientIds`:
  the peers, the timer lease, cluster-wide ids.

`Node` is the `yptask.service.Service` the transports (web/, endpoints/) call:
each operation is answered by the room that owns it. The node passes its parts
explicitly (no module-level state), so several nodes can run in one test process.

Start order: store and journal, then the supervision tree (task supervisors,
each starting its workers), then the delivery loops, then HTTP, BERT-RPC and
the Redis protocol (if set), then the cluster (links, forwarding, timers). Stop
is the reverse, gracefully: no new requests, no new claims, workers finish
their current message (its outcome is still acked), then the journal closes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from yptask import __version__
from yptask.access.audit import AuditLog
from yptask.access.policy import AccessPolicy
from yptask.access.secrets import ADMIN_TOKEN_FILE, cluster_cookie, read_or_make
from yptask.cluster.client_ids import IDS_REQUEST, ClientIds
from yptask.cluster.membership import Change
from yptask.cluster.mesh import Cluster, ClusterSettings
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef, load_tasks
from yptask.connection_limits import caps
from yptask.delivery.cancel import CANCEL_REQUEST, Cancels
from yptask.delivery.forwarding import accept_forwarded
from yptask.delivery.load import Load
from yptask.delivery.messages import Messages
from yptask.delivery.running import RunningTasks
from yptask.delivery.series import Series
from yptask.delivery.status import Inspector
from yptask.delivery.task_admin import TaskAdmin
from yptask.delivery.traces import TRACE_REQUEST, Traces
from yptask.endpoints.bert import BertEndpoint
from yptask.endpoints.ports import bind_http, check_free
from yptask.endpoints.resp import RespEndpoint
from yptask.ingress.cast import CastRequest
from yptask.ingress.publisher import Publisher
from yptask.store.config_map import TASK_KEY, ConfigMap
from yptask.store.group_commit import JournalThread
from yptask.store.history import HISTORY_FILE, History
from yptask.store.journal import Journal
from yptask.store.journal_file import JOURNAL_FILES, open_checked, prune_forever
from yptask.store.replicated import HybridClock, ReplicatedStore
from yptask.supervisors.node import NodeTree
from yptask.supervisors.task import NodePlace
from yptask.timers.admin import TimerAdmin
from yptask.timers.leader import TimerRunner
from yptask.timers.ledger import LEDGER_REQUEST, TimerLedger
from yptask.workers.exits import ExitWatch

__all__ = ["Node"]

TIMER_BALLOT_FILE = "timer-ballot"  # whom this node granted the timer lease (timers.lease)

log = logging.getLogger(__name__)


class Node:
    """One running node. Create with `await Node.start(config)`; end with `await node.stop()`."""

    def __init__(self, config: NodeConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.name = config.name
        self.loop = loop
        self.data_dir = config.data_dir.resolve()
        self.log_dir = (config.log_dir or self.data_dir / "logs").resolve()
        self.stopping = False
        self.boot = os.urandom(8).hex()  # this run of this node: peers see a restart by it
        self.http_url = ""
        self.bert_address = ""
        self.redis_address = ""  # the Redis-protocol ingress, if the node has one
        self.admin_token = ""  # see yptask.access.secrets; read at start
        self.cluster: Cluster | None = None
        self.timer_runner: TimerRunner | None = None
        self._exits = ExitWatch(loop)  # every worker's exit, and the pids of each task
        self._http_socket: socket.socket | None = None
        self._http: Any = None  # endpoints.http_server.HTTPServer, once serving
        self._bert: BertEndpoint | None = None
        self._resp: RespEndpoint | None = None
        self._access: AccessPolicy | None = None
        self._journal: JournalThread | None = None
        self._history: History | None = None  # series, markers, the timer ledger
        self._config_map: ConfigMap | None = None
        self._tree: NodeTree | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._ids: ClientIds | None = None

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
        c = self.config
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.admin_token = read_or_make(self.data_dir / ADMIN_TOKEN_FILE, "admin token")
        # What can still refuse the start is checked before any worker runs.
        cookie = cluster_cookie(c.cookie, c.cookie_file, self.data_dir)
        check_free([("--bert", c.bert_host, c.bert_port), ("--link", c.link_host, c.link_port),
                    ("redis", c.redis_host, c.redis_port)])  # off: port 0, not probed
        config_map = self._config_map = ConfigMap(
            ReplicatedStore(self.data_dir / "config.db", HybridClock(self.name)))
        if seed is None:
            seed = await asyncio.to_thread(load_tasks, self._seed_file())
        await config_map.seed_once({TASK_KEY + task.name: task.to_dict() for task in seed})
        journal = self._journal = JournalThread(await asyncio.to_thread(
            open_checked, self.data_dir, synchronous=c.journal_sync,
            accept_new=c.accept_new_journal), name=f"journal {self.name}")
        history = self._history = History(self.data_dir / HISTORY_FILE, node=self.name)
        await history.open()
        self._http_socket, self.http_url = bind_http(c.http_host, c.http_port)
        self._build(journal, config_map, history)
        await self._start_workers()
        self._pruner = self.loop.create_task(prune_forever(journal, c.dedupe_window_s),
                                             name="prune journal")
        await self._start_endpoints()
        await self._start_cluster(cookie, journal, config_map)
        log.info("node %s ready: %s, BERT-RPC %s, Redis %s, link %s", self.name, self.http_url,
                 self.bert_address, self.redis_address or "-",
                 self.cluster.link_address if self.cluster else "-")

    def _build(self, journal: JournalThread, config_map: ConfigMap, history: History) -> None:
        """The rooms, wired to each other (nothing runs yet)."""
        place = NodePlace(self.name, self.data_dir, self.log_dir, self.http_url + "/rpc")
        self._tree = NodeTree(place, self._exits, lambda task: self.running.pools[task],
                              self.loop)
        self.running = RunningTasks(self.name, journal, config_map, self._tree)
        self.load = Load(self.name, journal, self.running,
                         max_journal_mb=self.config.max_journal_mb,
                         journal_files=[self.data_dir / f for f in JOURNAL_FILES])
        self.publisher = Publisher(self.config, journal, self.running, self.load,
                                   lambda: self.stopping)
        check = self.publisher.check_running
        self.inspector = Inspector(self.name, journal, self.running, self._exits.pids,
                                   self.load.journal_view)
        inspector = self.inspector  # failures, the dead letters: its service methods
        self.failures, self.dead_letters, self.replay, self.scheduled = (
            inspector.failures, inspector.dead_letters, inspector.replay, inspector.scheduled)
        self.series = Series(history, self.running, self.load)
        tasks = self.task_admin = TaskAdmin(self.name, config_map, self.running, check,
                                            self.series.event)  # the task operations:
        self.tasks, self.task, self.put_task, self.delete_task, self.restart, self.pause = (
            tasks.tasks, tasks.task, tasks.put_task, tasks.delete_task, tasks.restart,
            tasks.pause)
        self.resume = partial(tasks.pause, paused=False)
        admin = self.timer_admin = TimerAdmin(self.name, config_map, check, TimerLedger(
            self.name, history), self._cast_tick)  # and the timer operations
        self.timers, self.timer, self.put_timer, self.delete_timer, self.timer_ledger = (
            admin.timers, admin.timer, admin.put_timer, admin.delete_timer, admin.ledger)
        self.run_timer, self.pause_timer = admin.run_now, admin.pause
        self.resume_timer = partial(admin.pause, paused=False)
        self.cancels = Cancels(self.name, journal, lambda: self.running.pools)  # and these
        self.cancel, self.message_cancelled = self.cancels.cancel, self.cancels.cancelled
        self.traces = Traces(self.name, journal, self.publisher.calls)
        self.trace = self.traces.trace
        self.messages = m = Messages(self.name, journal, self.running.notify, self.cancels)
        self.list_messages, self.get_message, self.bulk_messages = m.list_page, m.get, m.bulk
        self.audit_log = AuditLog(self.name, config_map)  # and the audit log's
        self.audit, self.audited = self.audit_log.list, self.audit_log.record

    async def _start_workers(self) -> None:
        assert self._tree is not None
        tasks = await self.running.load()
        await self._tree.start(tasks)  # returns once every task's workers started
        self.running.start()
        self.load.start()
        self.series.start()

    async def _start_endpoints(self) -> None:
        from yptask.endpoints.http_server import HTTPLimits, HTTPServer
        from yptask.endpoints.prometheus import node_registry
        from yptask.web.app import make_app

        assert self._http_socket is not None and self._journal is not None
        c = self.config
        access = self._access = AccessPolicy.from_config(c, self.admin_token)  # both surfaces
        app = make_app(self, access=access, metrics=node_registry(self, self._journal))
        self._http = HTTPServer(app, HTTPLimits(caps(c).http, head_timeout_s=c.http_head_timeout_s,
                                                keepalive_timeout_s=c.http_keepalive_timeout_s))
        await self._http.start(self._http_socket)
        self._bert = BertEndpoint(self, access)
        await self._bert.start(c.bert_host, c.bert_port)
        self.bert_address = self._bert.address
        if c.redis:
            self._resp = RespEndpoint(self, access)
            self.redis_address = await self._resp.start(c.redis_host, c.redis_port)

    async def _start_cluster(self, cookie: bytes, journal: JournalThread,
                             config_map: ConfigMap) -> None:
        c = self.config
        settings = ClusterSettings.of(c, cookie=cookie, http_url=self.http_url,
                                      version=__version__)
        self.cluster = cluster = Cluster(settings, self, config_map, self.boot)
        config_map.push_with(cluster.publish_now)
        peer_names = lambda: [m.name for m in cluster.up()]  # noqa: E731
        self.timer_runner = timers = TimerRunner(
            self.name, config_map, cast=self._cast_tick, peers=peer_names, ask=cluster.request,
            ballot=self.data_dir / TIMER_BALLOT_FILE, lease_s=c.timer_lease_s,
            known_here=self._known_ids, settle_s=self._timer_settle_s(),
            ledger=self.timer_admin.tick_ledger)
        self._ids = ids = ClientIds(self.name, journal, peer_names, cluster.request,
                                    wait_s=c.client_id_wait_s, pending_s=c.client_id_pending_s)
        for kind, handler in (("lease", timers.on_ask), ("lease_release", timers.on_release),
                              ("tick_known", timers.on_tick_known), (IDS_REQUEST, ids.answer),
                              (CANCEL_REQUEST, self.cancels.answer),
                              (TRACE_REQUEST, self.traces.answer),
                              (LEDGER_REQUEST, self.timer_admin.tick_ledger.answer)):
            cluster.serve(kind, handler)
        await cluster.start()
        self.publisher.join(ids, cluster.up, cluster.request)
        self.inspector.join(cluster.up, ids.status)
        self.traces.join(cluster.up, cluster.request)
        self.timer_admin.led_by(timers, cluster.membership.is_up, peer_names, cluster.request)
        self.running.forward_with(cluster.up, cluster.request)
        self.cancels.join(cluster.up, cluster.request, lambda: list(cluster.membership.members))
        await timers.start()

    def _timer_settle_s(self) -> float:
        """A node that may have peers hears of them (and their timer leader) before it stands."""
        c = self.config
        return max(c.timer_lease_s, c.down_after_s) if c.join or c.mdns else 0.0

    def _seed_file(self) -> Path:
        return self.config.tasks_file or Path(str(resources.files("yptask.conf") / "tasks.toml"))

    async def stop(self) -> None:
        """Stop gracefully: timers, forwarding and links, then HTTP, then claims, then workers
        (finishing), then the journal. What waits to be forwarded stays journaled here."""
        if self.stopping:
            return
        self.stopping = True
        if self._pruner is not None:
            self._pruner.cancel()
        running = getattr(self, "running", None)  # built once the journal is open
        if running is not None:
            await self.load.stop()
            await self.series.stop()
            await running.stop_following()
        if self.timer_runner is not None:
            await self.timer_runner.stop()
        if self._ids is not None:
            await self._ids.close()
        if self.cluster is not None:
            await self.cluster.stop()
        for endpoint in (self._bert, self._resp):
            if endpoint is not None:
                await endpoint.stop()
        if self._http is not None:
            await self._http.cleanup()
        elif self._http_socket is not None:  # bound, never served
            self._http_socket.close()
        if self._access is not None:
            self._access.close()  # its password thread
        if running is not None:
            await running.stop_claiming()
        log.info("node %s: no new claims; waiting for the workers' current messages", self.name)
        if self._tree is not None:
            await self._tree.stop()
        if running is not None:
            await running.close()
        if self._journal is not None:
            await asyncio.to_thread(self._journal.close)
        if self._config_map is not None:
            await self._config_map.close()
        if self._history is not None:
            await asyncio.to_thread(self._history.close)
        log.info("node %s stopped", self.name)

    # ------------------------------------------------------------------ for the cluster

    def heartbeat_load(self) -> dict[str, Any]:
        return self.load.heartbeat()

    async def link_request(self, peer: str, kind: str, args: list[Any]) -> Any:
        """Answer a request another node sent over its link (the served kinds aside)."""
        if kind == "deliver":
            assert self._journal is not None
            return await accept_forwarded(self._journal, peer, args, node_name=self.name,
                                          pools=self.running.pools,
                                          check_room=self.load.check_room)
        return await self.publisher.call_from_peer(peer, args)  # "call"

    def member_changed(self, change: Change) -> None:
        self.running.peers_changed()

    async def _known_ids(self, ids: list[str]) -> set[str]:
        """Those of `ids` this node's journal knows (journaled here, within the window)."""
        assert self._journal is not None
        known: set[str] = await self._journal.run(partial(Journal.known_client_ids, ids=ids))
        return known

    async def _cast_tick(self, name: str, payload: Any, message_id: str) -> dict[str, Any]:
        return await self.publisher.cast(name, payload, id=message_id, ticks=True)

    # ------------------------------------------------------------------ the service

    async def cast(self, name: Any, msg: Any, /, **options: Any) -> dict[str, Any]:
        return await self.publisher.cast(name, msg, **options)

    async def cast_many(self, casts: list[CastRequest]) -> list[Any]:
        return await self.publisher.cast_many(casts)

    async def call(self, name: Any, msg: Any, *, timeout_s: Any = 30.0, **trace: Any) -> Any:
        return await self.publisher.call(name, msg, timeout_s=timeout_s, **trace)

    async def status(self) -> dict[str, Any]:
        return await self.inspector.status()

    async def metrics(self, step_s: int | None = None, span_s: int = 600) -> dict[str, Any]:
        return await self.series.metrics(step_s, span_s)

    async def nodes(self) -> list[dict[str, Any]]:  # the members as seen here, itself first
        return [] if self.cluster is None else self.cluster.members()

    async def forget_node(self, name: str) -> dict[str, Any]:
        return await self.timer_admin.forget_node(name)
