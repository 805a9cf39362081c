"""Shared by the node benchmarks: a `yptask node` subprocess, and the peers' figures.

The node runs as its own process (yptask.testing.NodeProcess) on loopback
ports, in a temporary data folder, with two workers of a no-op task; it is
stopped by its PID at the end.
The peers (Celery, Dramatiq on a private Redis) run from `../shared/peers/`
when they are installed (their venv in /tmp/peervenv, redis-server on PATH),
in the same run, so the printed ratios compare like with like.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from yptask.testing import NodeProcess

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


class BenchNode(NodeProcess):
    """A `yptask node` subprocess with a no-op task, in a temporary folder removed when it
    stops; use as a context manager. Its warnings go to our stderr."""

    def __init__(self, workers: int = 2, journal_sync: str = "NORMAL",
                 max_idle_s: float = 0, *, name: str = "bench", cluster: str = "",
                 runs_on: str = "*", tasks: str | None = None, settings: str = "") -> None:
        """`cluster`: extra [node] settings (TOML lines) for a node that joins others, which
        then runs the no-op task only where `runs_on` says; default: alone, no mDNS.
        `tasks`: task definitions (TOML) in place of the no-op task. `settings`: more
        [node] settings (TOML lines)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="yptask-bench-")
        super().__init__(
            Path(self._tmp.name), name=name, log_level="WARNING", capture_log=False,
            stop_timeout_s=60, rpc_timeout_s=30, cluster=[],
            tasks=tasks or TASKS.format(workers=workers, runs_on=runs_on, max_idle_s=max_idle_s),
            config=f'[node]\njournal_sync = "{journal_sync}"\n' + (cluster or "mdns = false\n")
            + settings)

    def stop(self, timeout_s: float | None = None) -> None:
        super().stop(timeout_s)
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
