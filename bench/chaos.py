"""Fault injection: a steady stream of casts into a 3-node cluster while workers and nodes
are killed with `kill -9` at random and restarted.

Three `yptask node` processes on loopback run a task with 2 workers each
(every handled message is appended to one record file, with its id and time).
A publisher casts batches to the nodes in turn, each message with its own id;
a batch a dying node did not answer is sent again, same ids, to the next node
(so nothing accepted is lost, and a duplicate is possible and counted). A
killer sends SIGKILL to a random worker every `--worker-every` seconds and to a
random node every `--node-every` seconds, restarting the node a moment later.
The run is bounded in messages and in time. At the end every node is up and
the run waits for the queues to drain, then prints:

    accepted, handled, lost (must be 0), delivered more than once, and the
    longest gap between two handled messages while the stream ran.

    python bench/chaos.py [--messages 10000] [--rate 400] [--worker-every 0.4] [--node-every 6]

`run_chaos()` is also what tests/test_chaos.py runs, smaller.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WORKERS = Path(__file__).resolve().parents[1] / "tests" / "workers"
TASKS = """
[[task]]
name = "chaos"
worker_class = "sample:Sample"
messages = ["chaos.record"]
env = {{ PYTHONPATH = "{workers}" }}
settings = {{ record_path = "{records}" }}
nodes = {{ "*" = 2 }}
max_idle_s = 0
retry_backoff_s = 0.05
max_attempts = 100
"""
BATCH = 50


@dataclass
class Report:
    accepted: int = 0
    handled: int = 0
    lost: int = 0
    duplicates: int = 0
    worker_kills: int = 0
    node_kills: int = 0
    longest_gap_s: float = 0.0
    seconds: float = 0.0
    lost_ids: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"accepted {self.accepted}, handled {self.handled} distinct, lost {self.lost}, "
                f"delivered more than once {self.duplicates}",
                f"{self.worker_kills} worker kills and {self.node_kills} node kills in "
                f"{self.seconds:.0f} s; longest gap in service {self.longest_gap_s:.2f} s"]


class ChaosNode:
    """One node process of the run; restartable with the same name and data."""

    def __init__(self, folder: Path, name: str, settings: str, tasks: str) -> None:
        self.folder, self.name, self.url = folder, name, ""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "node.toml").write_text(settings)
        (folder / "tasks.toml").write_text(tasks)
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        argv = [sys.executable, "-P", "-m", "yptask", "node", "--name", self.name,
                "--config", str(self.folder / "node.toml"), "--data-dir",
                str(self.folder / "data"), "--tasks", str(self.folder / "tasks.toml"),
                "--http", "127.0.0.1:0", "--bert", "127.0.0.1:0", "--link", "127.0.0.1:0",
                "--log-level", "WARNING"]
        with open(self.folder / "node.log", "a") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True,
                                         cwd=self.folder)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if found := re.search(r"JSON-RPC\s+(\S+)", line):
                self.url = found.group(1)
            if line.strip().startswith("link"):
                return
        raise RuntimeError(f"node {self.name} did not start: see {self.folder / 'node.log'}")

    @property
    def up(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.up:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.up:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def rpc(self, method: str, *params: Any, timeout_s: float = 10) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        token = (self.folder / "data" / "admin-token").read_text().strip()
        return json.loads(_post(self.url, body.encode(), timeout_s, token))["result"]


def _post(url: str, body: bytes, timeout_s: float, admin_token: str = "") -> bytes:
    headers = {"Content-Type": "application/json"}
    if admin_token:
        headers["Authorization"] = f"Bearer {admin_token}"
    request = urllib.request.Request(url, body, headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return bytes(response.read())


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):  # a line cut by a kill mid-write
            rows.append(json.loads(line))
    return rows


def run_chaos(messages: int = 10_000, *, worker_every_s: float = 0.4,
              node_every_s: float = 6.0, max_seconds: float = 300.0, rate: float = 400.0,
              folder: Path | None = None) -> Report:
    """Run the whole experiment; return what happened."""
    own = tempfile.TemporaryDirectory(prefix="yptask-chaos-") if folder is None else None
    root = Path(own.name) if own is not None else folder
    assert root is not None
    records = root / "records.jsonl"
    settings = (f'[node]\ncluster = "chaos"\ncookie = "chaos-cookie-123"\n'
                f'mdns_type = "_ypt-{uuid.uuid4().hex[:8]}._tcp.local."\n'
                'heartbeat_s = 0.25\ndown_after_s = 2.0\n')
    tasks = TASKS.format(workers=WORKERS, records=records)
    nodes = [ChaosNode(root / name, name, settings, tasks) for name in ("c1", "c2", "c3")]
    report = Report()
    accepted: set[str] = set()
    stop = threading.Event()
    try:
        for node in nodes:
            node.start()
        killer = threading.Thread(target=_kill_forever, args=(nodes, worker_every_s,
                                                              node_every_s, stop, report))
        start = time.monotonic()
        killer.start()
        try:
            _publish(nodes, messages, accepted, start + max_seconds, rate)
        finally:
            stop.set()
            killer.join()
        streamed_until = time.time()
        report.seconds = time.monotonic() - start
        for node in nodes:  # everyone back, so what waits in a journal is delivered
            if not node.up:
                node.start()
        deadline = time.monotonic() + max_seconds
        while time.monotonic() < deadline:
            seen = {r["id"] for r in _records(records)}
            if accepted <= seen:
                break
            time.sleep(0.5)
        rows = _records(records)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["id"]] = counts.get(row["id"], 0) + 1
        report.accepted = len(accepted)
        report.handled = len(set(counts) & accepted)
        report.lost_ids = sorted(accepted - set(counts))
        report.lost = len(report.lost_ids)
        report.duplicates = sum(1 for n in counts.values() if n > 1)
        times = sorted(r["at"] for r in rows if r["at"] <= streamed_until)
        report.longest_gap_s = max((b - a for a, b in itertools.pairwise(times)),
                                   default=0.0)
        return report
    finally:
        for node in nodes:
            node.stop()
        if own is not None:
            own.cleanup()


def _publish(nodes: list[ChaosNode], messages: int, accepted: set[str],
             deadline: float, rate: float) -> None:
    """Cast `messages` at `rate` per second in batches, round robin over the live nodes;
    resend a failed batch."""
    turn = 0
    sent = 0
    start = time.monotonic()
    while sent < messages and time.monotonic() < deadline:
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:  # a steady stream, not a burst
            time.sleep(ahead)
        ids = [f"chaos-{sent + i}" for i in range(min(BATCH, messages - sent))]
        body = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "cast",
                            "params": {"name": "chaos.record", "msg": {"n": i}, "id": mid}}
                           for i, mid in enumerate(ids)]).encode()
        while time.monotonic() < deadline:
            node = nodes[turn % len(nodes)]
            turn += 1
            if not node.up:
                continue
            try:
                answers = json.loads(_post(node.url, body, 10))
            except (OSError, urllib.error.URLError, ValueError):
                continue  # it died under us: the same ids go to the next node
            taken = [ids[a["id"]] for a in answers if "result" in a]
            accepted.update(taken)
            if len(taken) == len(ids):
                break
            time.sleep(0.05)  # refused (overloaded, stopping): again, elsewhere
        sent += len(ids)


def _kill_forever(nodes: list[ChaosNode], worker_every_s: float, node_every_s: float,
                  stop: threading.Event, report: Report) -> None:
    rng = random.Random(7)
    next_node_kill = time.monotonic() + node_every_s
    dead: ChaosNode | None = None
    dead_since = 0.0
    while not stop.wait(worker_every_s):
        if dead is not None and time.monotonic() - dead_since > 1.5:
            dead.start()
            dead = None
        live = [n for n in nodes if n.up]
        if not live:
            continue
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
            pids = rng.choice(live).rpc("status", timeout_s=2)["tasks"]["chaos"]["pids"]
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
                report.worker_kills += 1
        if dead is None and time.monotonic() >= next_node_kill:
            dead = rng.choice(live)
            dead.kill()
            dead_since = time.monotonic()
            report.node_kills += 1
            next_node_kill = time.monotonic() + node_every_s
    if dead is not None:
        dead.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--worker-every", type=float, default=0.4)
    parser.add_argument("--node-every", type=float, default=6.0)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--rate", type=float, default=400.0, help="casts per second")
    args = parser.parse_args()
    print(f"yptask chaos: {args.messages} casts at {args.rate:.0f}/s into 3 nodes; "
          f"kill -9 a worker every "
          f"{args.worker_every} s, a node every {args.node_every} s")
    report = run_chaos(args.messages, worker_every_s=args.worker_every,
                       node_every_s=args.node_every, max_seconds=args.max_seconds,
                       rate=args.rate)
    for line in report.lines():
        print(f"  {line}")
    if report.lost:
        print(f"  LOST: {report.lost_ids[:20]}")
        sys.exit(1)


if __name__ == "__main__":
    main()
