"""Shared by the node benchmarks: a `yptask node` subprocess, and the peers' figures.

The node runs as its own process on loopback ports, in a temporary data
folder, with two workers of a no-op task; it is stopped by its PID at the end.
The peers (Celery, Dramatiq on a private Redis) run from `../shared/peers/`
when they are installed (their venv in /tmp/peervenv, redis-server on PATH),
in the same run, so the printed ratios compare like with like.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers"
PEER_PYTHON = Path("/tmp/peervenv/bin/python")

TASKS = """
[[task]]
name = "noop"
worker_class = "yptask.tasks.echo:Echo"
messages = ["bench.echo"]
max_idle_s = {max_idle_s}
nodes = {{ "{runs_on}" = {workers} }}
"""


class BenchNode:
    """A `yptask node` subprocess with a no-op task; use as a context manager."""

    def __init__(self, workers: int = 2, journal_sync: str = "NORMAL",
                 max_idle_s: float = 0, *, name: str = "bench", cluster: str = "",
                 runs_on: str = "*", tasks: str | None = None) -> None:
        """`cluster`: extra [node] settings (TOML lines) for a node that joins others, which
        then runs the no-op task only where `runs_on` says; default: alone, no mDNS."""
        self.workers = workers
        self.max_idle_s = max_idle_s
        self.journal_sync = journal_sync
        self.name = name
        self.cluster = cluster
        self.runs_on = runs_on
        self.tasks = tasks  # task definitions (TOML) in place of the no-op task
        self.url = ""
        self.bert = ""
        self.link = ""
        self._tmp = tempfile.TemporaryDirectory(prefix="yptask-bench-")
        self._proc: subprocess.Popen[str] | None = None

    @property
    def headers(self) -> dict[str, str]:
        """What a JSON-RPC request to this node sends: its type, and the admin token."""
        token = (Path(self._tmp.name) / "data" / "admin-token").read_text().strip()
        return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> BenchNode:
        tmp = Path(self._tmp.name)
        (tmp / "tasks.toml").write_text(self.tasks or TASKS.format(
            workers=self.workers, runs_on=self.runs_on, max_idle_s=self.max_idle_s))
        (tmp / "node.toml").write_text(f'[node]\njournal_sync = "{self.journal_sync}"\n'
                                       + (self.cluster or "mdns = false\n"))
        argv = [sys.executable, "-P", "-m", "yptask", "node", "--name", self.name,
                "--config", str(tmp / "node.toml"), "--data-dir", str(tmp / "data"),
                "--tasks", str(tmp / "tasks.toml"), "--http", "127.0.0.1:0",
                "--bert", "127.0.0.1:0", "--link", "127.0.0.1:0", "--log-level", "WARNING"]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=tmp)
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if found := re.search(r"JSON-RPC\s+(\S+)", line):
                self.url = found.group(1)
            elif found := re.search(r"BERT-RPC\s+(\S+)", line):
                self.bert = found.group(1)
            elif found := re.search(r"link\s+(\S+)", line):
                self.link = found.group(1)
                return self
        raise RuntimeError("the node exited before it was ready")

    def __exit__(self, *_: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._tmp.cleanup()


def peers_available() -> bool:
    return PEER_PYTHON.exists() and shutil.which("redis-server") is not None


def run_peer(script: str, *args: str) -> dict[str, float] | None:
    """Run a peer benchmark; return its RESULT medians by label, or None if not installed."""
    if not peers_available():
        return None
    done = subprocess.run([str(PEER_PYTHON), script, *args], cwd=PEERS, capture_output=True,
                          text=True, timeout=1800, check=False)
    result = next((line for line in done.stdout.splitlines() if line.startswith("RESULT")), "")
    # "RESULT publish/s min/med/max 1/2/3; end-to-end/s 4/5/6" -> {"end-to-end/s": 5.0, ...}
    medians = {}
    for label, values in re.findall(r"([\w/-]+(?: ms)?) (?:min/med/max )?([\d.]+/[\d.]+/[\d.]+)",
                                    result):
        medians[label] = float(values.split("/")[1])
    return medians or None


def summary(samples: list[float], fmt: str = "{:.0f}") -> str:
    return " / ".join(fmt.format(v) for v in (min(samples), statistics.median(samples),
                                              max(samples)))


def peers_note() -> str:
    return ("peers: not installed here (see ../shared/peers/README.md to set them up); "
            "ratios not printed")


os.environ.setdefault("PYTHONUNBUFFERED", "1")
