"""Fault injection with a checker over histories: three nodes, a stream of casts, an
every-second timer, and faults, each on its own schedule; then properties, each with
its figure.

The run (in the spirit of Jepsen): three `yptask node` processes join by seeds
only (no mDNS; c2 and c3 `--join` c1), each in its own network namespace where
`ip netns` works (else on loopback, without partitions, and the run says so).
Three tasks use tests/workers/recorder.py, which writes down every handler
run: `chaos` and `flaky` both subscribe to the casts (`flaky` fails the
payloads marked to fail, so they are dead-lettered), `ticks` takes the ticks
of a `* * * * * *` timer with `misfire = "fire_all"`, one worker on every node.
A publisher casts batches, each message with its own id, round robin; every
accepted cast is written down with the tasks the node named, the node and the
time; a batch a node did not answer goes again, same ids, to the next node.

Faults while the stream runs: kill -9 of a worker; in turn, kill -9 (and
restart) of a node, of the timer leader, SIGSTOP/SIGCONT of the leader for
longer than `down_after_s`, a partition of the leader; and a task edit
(`tasks.put` with a changed setting) or `yptask restart <task>`. Then every
node is back, the run waits for things to settle and checks (bench/chaos_check.py):

    every accepted cast handled by each task subscribed when it was accepted
    every timer tick handled exactly once, cluster-wide, none missed
    config converged within 2 x sync_every_s after the faults
    every node lists every live member within 3 heartbeats of a (re)join
    no dead letter with fewer real handler runs than max_attempts

    python bench/chaos.py [--minutes 10] [--rate 200] [--loopback] [--keep DIR]

With --keep, DIR holds the history to read after: casts.jsonl (accepted casts),
records.jsonl (handler runs), faults.jsonl (node faults, with their times) and
each node's log.

Exit status 1 if any property is violated. `run_chaos()` is what tests/test_chaos.py runs,
shorter. This module is the run's orchestration; the nodes and what is measured
on them are bench/chaos_nodes.py, the stream of casts bench/chaos_load.py, the
fault schedules bench/chaos_faults.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos_check import History, Property, check, expected_ticks, handled_ticks, lost, table
from chaos_faults import Faults
from chaos_load import Publisher
from chaos_net import Loopback, Namespaces, namespaces_unavailable
from chaos_nodes import DOWN_AFTER_S, HEARTBEAT_S, SYNC_EVERY_S, ChaosNode, Cluster

WORKERS = Path(__file__).resolve().parents[1] / "tests" / "workers"
TIMER = {"name": "chaos-tick", "cron": "* * * * * *", "message": "chaos.tick",
         "misfire": "fire_all"}
MAX_ATTEMPTS = {"chaos": 100, "flaky": 3, "ticks": 100}
TASK = """
[[task]]
name = "{name}"
worker_class = "recorder:Recorder"
messages = ["{message}"]
env = {{ PYTHONPATH = "{workers}" }}
settings = {{ record_path = "{records}", edition = 0, fail_marked = {fail} }}
nodes = {{ "*" = {workers_per_node} }}
max_idle_s = 0
retry_backoff_s = 0.05
max_attempts = {max_attempts}
"""
# (task, message, workers per node)
TASKS = (("chaos", "chaos.record", 2), ("flaky", "chaos.record", 1), ("ticks", "chaos.tick", 1))


@dataclass
class Report:
    properties: list[Property] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def violations(self) -> list[str]:
        return [f"{p.name}: {p.figure}" for p in self.properties if not p.ok]

    def lines(self) -> list[str]:
        faults = ", ".join(f"{kind} {n}" for kind, n in sorted(self.faults.items()))
        return [f"faults in {self.seconds:.0f} s: {faults}", *self.notes, "",
                *table(self.properties)]


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line cut by a kill mid-write
            rows.append(json.loads(line))
    return rows


class Run:
    """One experiment: the nodes, the history being written, the load and the faults."""

    def __init__(self, root: Path, net: Loopback | Namespaces, *, rate: float,
                 worker_every_s: float, node_every_s: float, config_every_s: float) -> None:
        self.root, self.net = root, net
        self.records = root / "records.jsonl"
        settings = (f'[node]\ncluster = "chaos-{uuid.uuid4().hex[:8]}"\n'
                    f'cookie = "chaos-cookie-{uuid.uuid4().hex}"\n'
                    f"heartbeat_s = {HEARTBEAT_S}\ndown_after_s = {DOWN_AFTER_S}\n")
        tasks = "".join(TASK.format(name=name, message=message, workers=WORKERS,
                                    records=self.records, workers_per_node=per_node,
                                    max_attempts=MAX_ATTEMPTS[name],
                                    fail="true" if name == "flaky" else "false")
                        for name, message, per_node in TASKS)
        nodes: list[ChaosNode] = []
        for i, name in enumerate(("c1", "c2", "c3")):
            join = nodes[0].link if nodes else None
            nodes.append(ChaosNode(root / name, name, net.addresses[i], net.prefix(i),
                                   join=join, settings=settings, tasks=tasks))
        self.cluster = Cluster(nodes)
        self.nodes = nodes
        self.history = History(max_attempts=dict(MAX_ATTEMPTS), tick_task="ticks",
                               converge_limit_s=2 * SYNC_EVERY_S, join_limit_s=3 * HEARTBEAT_S)
        self.stop = threading.Event()
        self.publisher = Publisher(nodes, self.history, self.stop, rate)
        self.faults = Faults(self.cluster, net, self.history, self.stop,
                             worker_every_s=worker_every_s, node_every_s=node_every_s,
                             config_every_s=config_every_s)

    def settled(self) -> bool:
        """Whether every accepted delivery and every expected tick is done by now."""
        now = replace(self.history, runs=_records(self.records),
                      dead=self.cluster.dead_letters())
        handled = handled_ticks(now)
        return not lost(now) and all(t in handled for t in expected_ticks(now, handled))

    def run(self, seconds: float, settle_s: float) -> Report:
        report = Report(faults=self.faults.counts)
        if self.net.why_no_partition:
            report.notes.append(f"partition skipped: {self.net.why_no_partition}")
        for node in self.nodes:
            node.start()
        self.history.joins_s.append(("the cluster formed", self.cluster.members_settle()))
        self.nodes[0].rpc("timers.put", definition=TIMER)
        report.seconds = self._faults_for(seconds)
        self.history.ticks_until = float(int(time.time())) - 2  # shortly before the stop
        for node in self.nodes:  # everyone back
            if not node.running:
                node.start()
        self.history.converged_s.append(("the faults stopped", self.cluster.config_settle()))
        self._settle(settle_s)
        self.history.runs = _records(self.records)
        self.history.dead = self.cluster.dead_letters()
        self._write_history()
        report.notes += self.faults.refusals.values()
        report.properties = check(self.history)
        report.notes += self._where_lost()
        return report

    def _where_lost(self) -> list[str]:
        """What the cluster says of a few lost deliveries (their trace: each node's state of
        each task, its attempt and error), so that a failed run says where they stopped."""
        notes = []
        for mid, task in lost(self.history)[:3]:
            seen = "no live node answered"
            for node in self.cluster.live():
                with contextlib.suppress(Exception):
                    messages = node.rpc("trace", mid)["messages"]
                    states = [t for m in messages if m["id"] == mid for t in m.get("tasks", [])]
                    seen = json.dumps(states) if states else "unknown to every node"
                    break
            notes.append(f"lost {mid} for {task}: {seen}")
        return notes

    def _faults_for(self, seconds: float) -> float:
        """Run the load and the fault schedules for `seconds`, and longer if need be
        (at most twice that) for each kind of node fault to happen once; how long."""
        threads = [threading.Thread(target=target, name=target.__name__) for target in
                   (self.publisher.publish, self.faults.kill_workers, self.faults.node_faults,
                    self.faults.config_faults)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            self.stop.wait(seconds)
            while time.monotonic() - start < 2 * seconds and not all(  # each kind once
                    self.faults.counts[f"node {kind}"] for kind in self.faults.node_kinds):
                time.sleep(0.2)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()
        return time.monotonic() - start

    def _settle(self, settle_s: float) -> None:
        """Wait, at most `settle_s`, for every delivery and tick to be done."""
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            began = time.monotonic()
            if self.settled():
                break
            time.sleep(max(0.5, time.monotonic() - began))  # a long run's history is big

    def _write_history(self) -> None:
        (self.root / "casts.jsonl").write_text("".join(
            json.dumps(c.__dict__) + "\n" for c in self.history.casts))
        (self.root / "faults.jsonl").write_text("".join(
            json.dumps(f) + "\n" for f in self.faults.timeline))


def run_chaos(seconds: float = 30.0, *, rate: float = 100.0, worker_every_s: float = 0.5,
              node_every_s: float = 2.0, config_every_s: float = 4.0, settle_s: float = 60.0,
              loopback: bool = False, folder: Path | None = None) -> Report:
    """Run the whole experiment for `seconds` of faults; return the checked report.

    `settle_s` bounds the wait for the last deliveries once the faults stop (it ends as
    soon as all are done): a delivery whose worker or node was killed on it ten times
    waits 0.05 s x 2**9 = 26 s for its next attempt, so half a minute can be too short."""
    own = tempfile.TemporaryDirectory(prefix="yptask-chaos-") if folder is None else None
    root = Path(own.name) if own is not None else folder
    assert root is not None
    why = "asked for loopback" if loopback else namespaces_unavailable()
    net: Loopback | Namespaces = Loopback(3) if why else Namespaces(3)
    if why:
        net.why_no_partition = f"no network namespaces ({why})"
    try:
        with net:
            run = Run(root, net, rate=rate, worker_every_s=worker_every_s,
                      node_every_s=node_every_s, config_every_s=config_every_s)
            try:
                return run.run(seconds, settle_s)
            finally:
                for node in run.nodes:
                    node.stop()
    finally:
        if own is not None:
            own.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="of faults")
    parser.add_argument("--rate", type=float, default=200.0, help="casts per second")
    parser.add_argument("--worker-every", type=float, default=0.5)
    parser.add_argument("--node-every", type=float, default=5.0)
    parser.add_argument("--config-every", type=float, default=4.0)
    parser.add_argument("--loopback", action="store_true", help="no namespaces, no partitions")
    parser.add_argument("--keep", type=Path, help="keep logs and histories in this folder")
    args = parser.parse_args()
    print(f"yptask chaos: {args.minutes:g} min of faults on 3 nodes, {args.rate:.0f} casts/s")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        if any(args.keep.iterdir()):  # an old run's history and journals would mix in
            sys.exit(f"--keep {args.keep}: the folder is not empty; give a new one")
    report = run_chaos(args.minutes * 60, rate=args.rate, worker_every_s=args.worker_every,
                       node_every_s=args.node_every, config_every_s=args.config_every,
                       settle_s=120, loopback=args.loopback, folder=args.keep)
    print("\n".join(report.lines()))
    sys.exit(1 if report.violations else 0)


if __name__ == "__main__":
    main()
