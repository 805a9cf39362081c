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
shorter.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos_check import (
    Cast,
    DeadLetter,
    History,
    Property,
    check,
    expected_ticks,
    handled_ticks,
    lost,
    table,
)
from chaos_net import Loopback, Namespaces, namespaces_unavailable

from yptask.cluster.mesh import ClusterSettings
from yptask.timers.schedule import TimerDef

WORKERS = Path(__file__).resolve().parents[1] / "tests" / "workers"
HEARTBEAT_S = 0.5
DOWN_AFTER_S = 2.0
# not a node setting: the cluster's own default is what the nodes run with
SYNC_EVERY_S: float = inspect.signature(ClusterSettings).parameters["sync_every_s"].default
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
BATCH = 25
FAIL_EVERY = 20  # every 20th cast is one that `flaky` fails
RPC_TIMEOUT_S = 3.0
NODE_FAULTS = ("kill", "kill leader", "pause leader", "partition leader")
# what a timer is, as against its state (last fire, leader, ...) that timers.list adds
TIMER_FIELDS = frozenset(f.name for f in fields(TimerDef))


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


class ChaosNode:
    """One node process of the run; restartable with the same name, ports and data."""

    def __init__(self, folder: Path, name: str, address: str, prefix: list[str], *,
                 join: str | None, settings: str, tasks: str) -> None:
        self.folder, self.name, self.address, self.prefix = folder, name, address, prefix
        self.ports = _free_ports(address, 3) if not prefix else [8700, 8701, 8702]
        self.url = f"http://{address}:{self.ports[0]}/rpc"
        self.link = f"{address}:{self.ports[2]}"
        self.join = join
        self.paused = False
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "node.toml").write_text(settings)
        (folder / "tasks.toml").write_text(tasks)
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        argv = [*self.prefix, sys.executable, "-P", "-m", "yptask", "node", "--name", self.name,
                "--config", str(self.folder / "node.toml"), "--data-dir",
                str(self.folder / "data"), "--tasks", str(self.folder / "tasks.toml"),
                "--http", f"{self.address}:{self.ports[0]}",
                "--bert", f"{self.address}:{self.ports[1]}",
                "--link", self.link, "--no-mdns", "--log-level", "WARNING"]
        if self.join:
            argv += ["--join", self.join]
        with open(self.folder / "node.log", "a") as log:
            # `ip netns exec` execs the node, so this PID is the node's
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True,
                                         cwd=self.folder)
        watchdog = threading.Timer(60, self.kill)  # a node that never gets ready
        watchdog.start()
        try:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.strip().startswith("link"):
                    return
        finally:
            watchdog.cancel()
        raise RuntimeError(f"node {self.name} did not start: see {self.folder / 'node.log'}")

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def live(self) -> bool:
        return self.up and not self.paused

    def kill(self) -> None:
        if self.up:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
        self.paused = False

    def pause(self, paused: bool) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)
        self.paused = paused

    def stop(self) -> None:
        if self.paused:
            self.pause(False)
        if self.up:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def token(self) -> str:
        return (self.folder / "data" / "admin-token").read_text().strip()

    def rpc(self, method: str, params: Any = None, timeout_s: float = RPC_TIMEOUT_S) -> Any:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
        answer = json.loads(_post(self.url, json.dumps(body).encode(), timeout_s, self.token))
        if "error" in answer:
            raise RuntimeError(f"{self.name} {method}: {answer['error']}")
        return answer["result"]


def _free_ports(address: str, count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((address, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _post(url: str, body: bytes, timeout_s: float, admin_token: str = "") -> bytes:
    headers = {"Content-Type": "application/json"}
    if admin_token:
        headers["Authorization"] = f"Bearer {admin_token}"
    request = urllib.request.Request(url, body, headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return bytes(response.read())


RPC_FAILED = (OSError, urllib.error.URLError, ValueError, KeyError, RuntimeError)


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line cut by a kill mid-write
            rows.append(json.loads(line))
    return rows


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


class Run:
    """One experiment: the nodes, the history being written, the fault schedules."""

    def __init__(self, root: Path, net: Loopback | Namespaces, *, rate: float,
                 worker_every_s: float, node_every_s: float, config_every_s: float) -> None:
        self.root, self.net, self.rate = root, net, rate
        self.worker_every_s, self.node_every_s = worker_every_s, node_every_s
        self.config_every_s = config_every_s
        self.records = root / "records.jsonl"
        settings = (f'[node]\ncluster = "chaos-{uuid.uuid4().hex[:8]}"\n'
                    f'cookie = "chaos-cookie-{uuid.uuid4().hex}"\n'
                    f"heartbeat_s = {HEARTBEAT_S}\ndown_after_s = {DOWN_AFTER_S}\n")
        tasks = "".join(TASK.format(name=name, message=message, workers=WORKERS,
                                    records=self.records, workers_per_node=per_node,
                                    max_attempts=MAX_ATTEMPTS[name],
                                    fail="true" if name == "flaky" else "false")
                        for name, message, per_node in (("chaos", "chaos.record", 2),
                                                        ("flaky", "chaos.record", 1),
                                                        ("ticks", "chaos.tick", 1)))
        self.nodes: list[ChaosNode] = []
        for i, name in enumerate(("c1", "c2", "c3")):
            join = self.nodes[0].link if self.nodes else None
            self.nodes.append(ChaosNode(root / name, name, net.addresses[i], net.prefix(i),
                                        join=join, settings=settings, tasks=tasks))
        self.history = History(max_attempts=dict(MAX_ATTEMPTS), tick_task="ticks",
                               converge_limit_s=2 * SYNC_EVERY_S, join_limit_s=3 * HEARTBEAT_S)
        self.faults: Counter[str] = Counter()
        self.refusals: dict[str, str] = {}  # the first reason per kind of config fault
        self.timeline: list[dict[str, Any]] = []  # each node fault: what, where, when
        self.cut: int | None = None  # the node partitioned off, if any
        self.stop = threading.Event()
        self.rng = random.Random(7)
        self.lock = threading.Lock()  # node faults and the threads that pick a node

    # ---------------------------------------------------------------- the stream

    def publish(self) -> None:
        """Cast at `rate` per second in batches, round robin; resend what was not taken."""
        sent, turn, start = 0, 0, time.monotonic()
        while not self.stop.is_set():
            ahead = sent / self.rate - (time.monotonic() - start)
            if ahead > 0 and self.stop.wait(ahead):
                break
            pending = {f"chaos-{sent + i}": {"n": sent + i, "fail": (sent + i) % FAIL_EVERY == 0}
                       for i in range(BATCH)}
            while pending and not self.stop.is_set():
                node = self.nodes[turn % len(self.nodes)]
                turn += 1
                if not node.live:
                    if not any(n.live for n in self.nodes):
                        self.stop.wait(0.05)
                    continue
                ids = list(pending)
                body = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "cast", "params": {
                    "name": "chaos.record", "msg": pending[mid], "id": mid}}
                    for i, mid in enumerate(ids)]).encode()
                try:
                    answers = json.loads(_post(node.url, body, RPC_TIMEOUT_S))
                except (OSError, urllib.error.URLError, ValueError):
                    continue  # it died or hangs: the same ids go to the next node
                now = time.time()
                for answer in answers:
                    if "result" in answer:
                        mid = ids[answer["id"]]
                        self.history.casts.append(Cast(mid, tuple(answer["result"]["tasks"]),
                                                       node.name, now))
                        del pending[mid]
                if pending:
                    self.stop.wait(0.05)  # refused (overloaded, stopping): again, elsewhere
            sent += BATCH

    # ---------------------------------------------------------------- the faults

    def kill_workers(self) -> None:
        while not self.stop.wait(self.worker_every_s):
            with self.lock:
                live = [n for n in self.nodes if n.live]
            if not live:
                continue
            with contextlib.suppress(*RPC_FAILED):
                tasks = self.rng.choice(live).rpc("status")["tasks"]
                pids = [p for t in tasks.values() for p in t.get("pids", [])]
                if pids:
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                    self.faults["worker kill -9"] += 1

    @property
    def node_kinds(self) -> list[str]:
        return [k for k in NODE_FAULTS
                if not (k.startswith("partition") and self.net.why_no_partition)]

    def node_faults(self) -> None:
        kinds = self.node_kinds
        turn = 0
        while not self.stop.wait(self.node_every_s):
            kind = kinds[turn % len(kinds)]
            turn += 1
            target = self._pick(leader=kind != "kill")
            if target is None:
                continue
            node = self.nodes[target]
            began = time.time()
            if kind.startswith("kill"):
                with self.lock:
                    node.kill()
                self._edit_elsewhere(target)  # for it to catch up on when back
                self.stop.wait(1.5)
                node.start()
                self.history.joins_s.append((f"{node.name} restarted", self.members_settle()))
                self.history.converged_s.append((f"{node.name} restarted", self.config_settle()))
            elif kind.startswith("pause"):
                with self.lock:
                    node.pause(True)
                time.sleep(DOWN_AFTER_S + 1.0)  # a fault is always undone, even at the end
                with self.lock:
                    node.pause(False)
            else:
                self.net.cut(target, off=True)
                self.cut = target
                self._edit_elsewhere(target)
                time.sleep(DOWN_AFTER_S + 2.0)
                self.net.cut(target, off=False)
                self.cut = None
                self.history.converged_s.append((f"{node.name} cut off and back",
                                                 self.config_settle()))
            self.faults[f"node {kind}"] += 1
            self.timeline.append({"fault": kind, "node": node.name, "from": began,
                                  "to": time.time()})

    def _edit_elsewhere(self, away: int) -> None:
        others = [n for i, n in enumerate(self.nodes) if i != away and n.live]
        if others:
            self._config_fault("task edit", self.rng.choice(others), "chaos")

    def _pick(self, *, leader: bool) -> int | None:
        live = [i for i, n in enumerate(self.nodes) if n.live]
        if len(live) < len(self.nodes):
            return None
        if leader:
            for i in live:
                with contextlib.suppress(*RPC_FAILED):
                    name = leader_of(self.nodes[i].rpc("timers.list"))
                    found = [j for j, n in enumerate(self.nodes) if n.name == name]
                    if found:
                        return found[0]
            self.faults["leader not found"] += 1
            return None
        return self.rng.choice(live)

    def config_faults(self) -> None:
        turn = 0
        while not self.stop.wait(self.config_every_s):
            live = [n for n in self.nodes if n.live]
            if live:
                self._config_fault(("task edit", "yptask restart")[turn % 2],
                                   self.rng.choice(live), ("chaos", "flaky", "ticks")[turn % 3])
                turn += 1

    def _config_fault(self, kind: str, node: ChaosNode, task: str) -> None:
        """A task edit (`tasks.put` with a changed setting) or `yptask restart`, on `node`."""
        try:
            if kind == "task edit":
                definition = node.rpc("tasks.get", {"name": task})
                settings = definition["settings"]
                settings["edition"] = settings.get("edition", 0) + 1
                node.rpc("tasks.put", {"definition": definition})
            else:
                done = subprocess.run(
                    [sys.executable, "-P", "-m", "yptask", "restart", task, "--quiet", "--json",
                     "--url", node.url], capture_output=True, text=True, timeout=60,
                    check=False, env={**os.environ, "YPTASK_ADMIN_TOKEN": node.token})
                if done.returncode != 0:
                    raise RuntimeError(done.stderr.strip()[-200:])
            self.faults[kind] += 1
        except (*RPC_FAILED, subprocess.TimeoutExpired) as exc:
            # e.g. the node died under it: not a violation, but said
            self.faults[f"{kind} refused"] += 1
            self.refusals.setdefault(kind, f"{kind} on {node.name} refused: {exc}")

    # ---------------------------------------------------------------- measurements

    def members_settle(self, timeout_s: float = 15.0) -> float | None:
        """Seconds until every live node lists every live node alive; None if not in time."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            live = [n for i, n in enumerate(self.nodes) if n.live and i != self.cut]
            names = {n.name for n in live}
            try:
                if all(names <= {m["name"] for m in n.rpc("nodes") if m.get("state") == "alive"}
                       for n in live):
                    return time.monotonic() - start
            except RPC_FAILED:
                pass
            time.sleep(0.02)
        return None

    def config_settle(self, timeout_s: float = 30.0) -> float | None:
        """Seconds until every node holds the same task and timer definitions."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            with contextlib.suppress(*RPC_FAILED):
                views = [json.dumps([n.rpc("tasks.list"), [
                    {k: v for k, v in t.items() if k in TIMER_FIELDS}
                    for t in n.rpc("timers.list")]], sort_keys=True) for n in self.nodes]
                if len(set(views)) == 1:
                    return time.monotonic() - start
            time.sleep(0.05)
        return None

    def settled(self) -> bool:
        """Whether every accepted delivery and every expected tick is done by now."""
        now = replace(self.history, runs=_records(self.records), dead=self.dead_letters())
        handled = handled_ticks(now)
        return not lost(now) and all(t in handled for t in expected_ticks(now, handled))

    def dead_letters(self) -> list[DeadLetter]:
        letters = []
        for node in self.nodes:
            with contextlib.suppress(*RPC_FAILED):
                letters += [DeadLetter(d["id"], d["task"], d["attempt"], node.name)
                            for d in node.rpc("dead.list", {"limit": 100_000})]
        return letters

    # ---------------------------------------------------------------- the run

    def run(self, seconds: float, settle_s: float) -> Report:
        report = Report(faults=self.faults)
        if self.net.why_no_partition:
            report.notes.append(f"partition skipped: {self.net.why_no_partition}")
        for node in self.nodes:
            node.start()
        self.history.joins_s.append(("the cluster formed", self.members_settle()))
        self.nodes[0].rpc("timers.put", {"definition": TIMER})
        threads = [threading.Thread(target=t, name=t.__name__) for t in
                   (self.publish, self.kill_workers, self.node_faults, self.config_faults)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        try:
            self.stop.wait(seconds)
            while time.monotonic() - start < 2 * seconds and not all(  # each kind once
                    self.faults[f"node {kind}"] for kind in self.node_kinds):
                time.sleep(0.2)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join()
        report.seconds = time.monotonic() - start
        self.history.ticks_until = float(int(time.time())) - 2  # shortly before the stop
        for node in self.nodes:  # everyone back
            if not node.up:
                node.start()
        self.history.converged_s.append(("the faults stopped", self.config_settle()))
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            began = time.monotonic()
            if self.settled():
                break
            time.sleep(max(0.5, time.monotonic() - began))  # a long run's history is big
        self.history.runs = _records(self.records)
        self.history.dead = self.dead_letters()
        (self.root / "casts.jsonl").write_text("".join(
            json.dumps(c.__dict__) + "\n" for c in self.history.casts))
        (self.root / "faults.jsonl").write_text("".join(
            json.dumps(f) + "\n" for f in self.timeline))
        report.notes += self.refusals.values()
        report.properties = check(self.history)
        return report


def run_chaos(seconds: float = 30.0, *, rate: float = 100.0, worker_every_s: float = 0.5,
              node_every_s: float = 2.0, config_every_s: float = 4.0, settle_s: float = 30.0,
              loopback: bool = False, folder: Path | None = None) -> Report:
    """Run the whole experiment for `seconds` of faults; return the checked report."""
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
