"""The chaos run's faults (bench/chaos.py), each kind on its own schedule and thread.

- workers: kill -9 of a worker of a live node, every `worker_every_s`;
- nodes, in turn every `node_every_s`: kill -9 (and restart) of a node, of the
  timer leader, SIGSTOP/SIGCONT of the leader for longer than `down_after_s`, a
  partition of the leader (where the network can cut one); each with its times
  in `timeline`, and the settling it is followed by measured into the history;
- config, every `config_every_s`: a task edit (`tasks.put` with a changed
  setting) or `yptask restart <task>`, in turn.

A fault is always undone before its thread looks at the stop event again, so
every node is whole when the run ends.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

from chaos_check import History
from chaos_net import Loopback, Namespaces
from chaos_nodes import DOWN_AFTER_S, RPC_FAILED, ChaosNode, Cluster

NODE_FAULTS = ("kill", "kill leader", "pause leader", "partition leader")
TASKS = ("chaos", "flaky", "ticks")
RESTART_PAUSE_S = 1.5  # a killed node stays down this long before it starts again


class Faults:
    """The fault schedules of one run: what they did (`counts`, `timeline`), and why a
    config fault was refused (`refusals`, the first reason per kind)."""

    def __init__(self, cluster: Cluster, net: Loopback | Namespaces, history: History,
                 stop: threading.Event, *, worker_every_s: float, node_every_s: float,
                 config_every_s: float) -> None:
        self.cluster, self.net, self.history, self.stop = cluster, net, history, stop
        self.worker_every_s, self.node_every_s = worker_every_s, node_every_s
        self.config_every_s = config_every_s
        self.counts: Counter[str] = Counter()
        self.refusals: dict[str, str] = {}
        self.timeline: list[dict[str, Any]] = []  # each node fault: what, where, when
        self.rng = random.Random(7)

    @property
    def node_kinds(self) -> list[str]:
        return [k for k in NODE_FAULTS
                if not (k.startswith("partition") and self.net.why_no_partition)]

    # ---------------------------------------------------------------- workers

    def kill_workers(self) -> None:
        while not self.stop.wait(self.worker_every_s):
            with self.cluster.lock:
                live = self.cluster.live()
            if not live:
                continue
            with contextlib.suppress(*RPC_FAILED):
                tasks = self.rng.choice(live).rpc("status")["tasks"]
                pids = [p for t in tasks.values() for p in t.get("pids", [])]
                if pids:
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                    self.counts["worker kill -9"] += 1

    # ---------------------------------------------------------------- nodes

    def node_faults(self) -> None:
        kinds = self.node_kinds
        turn = 0
        while not self.stop.wait(self.node_every_s):
            kind = kinds[turn % len(kinds)]
            turn += 1
            target = self._pick(leader=kind != "kill")
            if target is None:
                continue
            began = time.time()
            if kind.startswith("kill"):
                self._kill_and_restart(target)
            elif kind.startswith("pause"):
                self._pause(target)
            else:
                self._partition(target)
            self.counts[f"node {kind}"] += 1
            self.timeline.append({"fault": kind, "node": self.cluster.nodes[target].name,
                                  "from": began, "to": time.time()})

    def _kill_and_restart(self, target: int) -> None:
        node = self.cluster.nodes[target]
        with self.cluster.lock:
            node.kill()
        self._edit_elsewhere(target)  # for it to catch up on when back
        self.stop.wait(RESTART_PAUSE_S)
        node.start()
        self.history.joins_s.append((f"{node.name} restarted", self.cluster.members_settle()))
        self.history.converged_s.append((f"{node.name} restarted",
                                         self.cluster.config_settle()))

    def _pause(self, target: int) -> None:
        node = self.cluster.nodes[target]
        with self.cluster.lock:
            node.pause(True)
        time.sleep(DOWN_AFTER_S + 1.0)  # a fault is always undone, even at the end
        with self.cluster.lock:
            node.pause(False)

    def _partition(self, target: int) -> None:
        self.net.cut(target, off=True)
        self.cluster.cut = target
        self._edit_elsewhere(target)
        time.sleep(DOWN_AFTER_S + 2.0)
        self.net.cut(target, off=False)
        self.cluster.cut = None
        self.history.converged_s.append((f"{self.cluster.nodes[target].name} cut off and back",
                                         self.cluster.config_settle()))

    def _edit_elsewhere(self, away: int) -> None:
        others = [n for i, n in enumerate(self.cluster.nodes) if i != away and n.live]
        if others:
            self.config_fault("task edit", self.rng.choice(others), "chaos")

    def _pick(self, *, leader: bool) -> int | None:
        """A node to fault (the timer leader, or any), only while all are live."""
        live = [i for i, n in enumerate(self.cluster.nodes) if n.live]
        if len(live) < len(self.cluster.nodes):
            return None
        if not leader:
            return self.rng.choice(live)
        found = self.cluster.leader()
        if found is None:
            self.counts["leader not found"] += 1
        return found

    # ---------------------------------------------------------------- config

    def config_faults(self) -> None:
        turn = 0
        while not self.stop.wait(self.config_every_s):
            live = self.cluster.live()
            if live:
                self.config_fault(("task edit", "yptask restart")[turn % 2],
                                  self.rng.choice(live), TASKS[turn % 3])
                turn += 1

    def config_fault(self, kind: str, node: ChaosNode, task: str) -> None:
        """A task edit (`tasks.put` with a changed setting) or `yptask restart`, on `node`."""
        try:
            if kind == "task edit":
                definition = node.rpc("tasks.get", name=task)
                settings = definition["settings"]
                settings["edition"] = settings.get("edition", 0) + 1
                node.rpc("tasks.put", definition=definition)
            else:
                done = subprocess.run(
                    [sys.executable, "-P", "-m", "yptask", "restart", task, "--quiet", "--json",
                     "--url", node.url], capture_output=True, text=True, timeout=60,
                    check=False, env={**os.environ, "YPTASK_ADMIN_TOKEN": node.admin_token})
                if done.returncode != 0:
                    raise RuntimeError(done.stderr.strip()[-200:])
            self.counts[kind] += 1
        except (*RPC_FAILED, subprocess.TimeoutExpired) as exc:
            # e.g. the node died under it: not a violation, but said
            self.counts[f"{kind} refused"] += 1
            self.refusals.setdefault(kind, f"{kind} on {node.name} refused: {exc}")
