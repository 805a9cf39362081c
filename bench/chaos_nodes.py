"""The chaos run's nodes (bench/chaos.py): each a restartable `yptask node` process,
and what the harness measures over all three (membership and config settling, the
timer leader, the dead letters).

Each node is a yptask.testing.NodeProcess on ports fixed before its first start,
so that a node killed and started again comes back with the same name, ports and
data, as a node on a real host does; c2 and c3 know c1 by that link address.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import socket
import threading
import time
import urllib.error
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from chaos_check import DeadLetter

from yptask.cluster.mesh import ClusterSettings
from yptask.errors import YPTaskError
from yptask.testing import NodeProcess, wait_for
from yptask.timers.schedule import TimerDef

HEARTBEAT_S = 0.5
DOWN_AFTER_S = 2.0
# not a node setting: the cluster's own default is what the nodes run with
SYNC_EVERY_S: float = inspect.signature(ClusterSettings).parameters["sync_every_s"].default
RPC_TIMEOUT_S = 3.0
NAMESPACE_PORTS = (8700, 8701, 8702)  # alone in its namespace, a node takes the usual ports
# what a timer is, as against its state (last fire, leader, ...) that timers.list adds
TIMER_FIELDS = frozenset(f.name for f in fields(TimerDef))
# what a request to a node that is dying, paused, cut off or refusing raises
RPC_FAILED = (OSError, urllib.error.URLError, ValueError, KeyError, RuntimeError, YPTaskError)


class ChaosNode(NodeProcess):
    """One node process of the run; restartable with the same name, ports and data."""

    def __init__(self, folder: Path, name: str, address: str, prefix: list[str], *,
                 join: str | None, settings: str, tasks: str) -> None:
        ports = _free_ports(address, 3) if not prefix else list(NAMESPACE_PORTS)
        link = f"{address}:{ports[2]}"
        super().__init__(folder, tasks, name, config=settings, prefix=prefix,
                         http=f"{address}:{ports[0]}", bert=f"{address}:{ports[1]}", link=link,
                         cluster=["--no-mdns", *(["--join", join] if join else [])],
                         log_level="WARNING", stop_timeout_s=30, rpc_timeout_s=RPC_TIMEOUT_S)
        # known before the first start: the others join this one by it
        self.url = f"http://{address}:{ports[0]}/rpc"
        self.link = link


def _free_ports(address: str, count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((address, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def leader_of(rows: Any) -> str | None:
    """The timer leader as `timers.list` names it (a name, or a mapping with one); None
    if no node holds the timer lease now."""
    for row in rows if isinstance(rows, list) else []:
        for key in ("leader", "leader_node", "fired_by", "node"):
            value = row.get(key) if isinstance(row, dict) else None
            if isinstance(value, dict):
                value = value.get("name") or value.get("node")
            if isinstance(value, str) and value:
                return value
    return None


def settling_s(settled: Callable[[], bool], timeout_s: float, interval_s: float) -> float | None:
    """Seconds until `settled()` holds (a failed request counts as not yet); None if it
    does not within `timeout_s`."""
    def quietly() -> bool:
        with contextlib.suppress(*RPC_FAILED):
            return settled()
        return False

    start = time.monotonic()
    try:
        wait_for(quietly, timeout_s, interval_s=interval_s)
    except AssertionError:  # not in time: a figure too, not a failure of the harness
        return None
    return time.monotonic() - start


class Cluster:
    """The run's nodes, the one cut off if any, and the measurements over them."""

    def __init__(self, nodes: list[ChaosNode]) -> None:
        self.nodes = nodes
        self.cut: int | None = None  # the node partitioned off, if any
        self.lock = threading.Lock()  # node faults and the threads that pick a node

    def live(self) -> list[ChaosNode]:
        return [n for n in self.nodes if n.live]

    def members_settle(self, timeout_s: float = 15.0) -> float | None:
        """Seconds until every live node lists every live node alive; None if not in time."""
        def everyone_listed() -> bool:
            live = [n for i, n in enumerate(self.nodes) if n.live and i != self.cut]
            names = {n.name for n in live}
            return all(names <= {m["name"] for m in n.rpc("nodes") if m.get("state") == "alive"}
                       for n in live)

        return settling_s(everyone_listed, timeout_s, 0.02)

    def config_settle(self, timeout_s: float = 30.0) -> float | None:
        """Seconds until every node holds the same task and timer definitions."""
        def the_same() -> bool:
            views = [json.dumps([n.rpc("tasks.list"), [
                {k: v for k, v in t.items() if k in TIMER_FIELDS}
                for t in n.rpc("timers.list")]], sort_keys=True) for n in self.nodes]
            return len(set(views)) == 1

        return settling_s(the_same, timeout_s, 0.05)

    def leader(self) -> int | None:
        """The index of the node that leads the timers, as the first live node to answer
        says; None if none does."""
        for node in self.live():
            with contextlib.suppress(*RPC_FAILED):
                name = leader_of(node.rpc("timers.list"))
                found = [j for j, n in enumerate(self.nodes) if n.name == name]
                if found:
                    return found[0]
        return None

    def dead_letters(self) -> list[DeadLetter]:
        letters = []
        for node in self.nodes:
            with contextlib.suppress(*RPC_FAILED):
                letters += [DeadLetter(d["id"], d["task"], d["attempt"], node.name,
                                       d.get("error_class", ""))
                            for d in node.rpc("dead.list", limit=100_000)]
        return letters
