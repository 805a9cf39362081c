"""Helpers shared by the tests: paths, worker commands and environments."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from yptask.tasks.runner import runner_argv

REPO = Path(__file__).resolve().parents[1]
TEST_WORKERS = REPO / "tests" / "workers"
ERLANG_WORKER = REPO / "workers" / "erlang" / "echo_worker.escript"

# Task definitions shared by the tests that start a node (see the `node` fixture).
# A node alone on loopback: every port chosen by the kernel, no mDNS.
ALONE = {"http_port": 0, "bert_port": 0, "link_port": 0, "mdns": False}
ECHO = {"name": "echo", "messages": ["*.echo"], "worker_class": "yptask.tasks.echo:Echo"}
SAMPLE = {"name": "sample", "messages": ["sample.*"], "worker_class": "sample:Sample",
          "env": {"PYTHONPATH": str(TEST_WORKERS)}}


def worker_env() -> dict[str, str]:
    """The environment of a test worker: ours, plus the test task modules on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TEST_WORKERS),
                                                      env.get("PYTHONPATH")]))
    return env


def python_worker_argv(task_class: str = "sample:Sample", *, stdio: bool = False) -> list[str]:
    return runner_argv(task_class, stdio=stdio)


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def require_browser() -> None:
    """Skip without Playwright and Chromium, except in CI, where their absence is a failure."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        why = "playwright is not installed (pip install playwright)"
    else:
        why = "" if Path(CHROMIUM).exists() else "no chromium (apt-get install chromium)"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser tests: {why}")
        pytest.skip(why)


def require_erlang() -> None:
    """Skip without Erlang, except in CI, where its absence is a failure."""
    if shutil.which("escript") is None:
        if os.environ.get("CI"):
            pytest.fail("escript is not installed; CI must run the Erlang tests")
        pytest.skip("escript is not installed (apt-get install erlang-base)")


T = TypeVar("T")
POLL_INTERVAL_S = 0.05


def wait_for(predicate: Callable[[], T], timeout_s: float = 60.0, what: str = "it") -> T:
    """Poll `predicate` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_INTERVAL_S)
    return value


async def until(predicate: Callable[[], Any], timeout_s: float = 30.0,
                what: str = "condition") -> Any:
    """Poll a predicate (plain, or returning a coroutine) on the event loop until it is
    truthy; return its value, or fail after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(POLL_INTERVAL_S)


class NodeProcess:
    """A `yptask node` subprocess on free loopback ports, in its own folder.

    `tasks` is the TOML of its task definitions; its log is `tmp/node.log`. The
    process is stopped by its PID (`stop`, or `signal`), never by name.
    """

    def __init__(self, tmp: Path, tasks: str, name: str = "p1", *,
                 cluster: list[str] | None = None) -> None:
        """`cluster`: extra arguments for a node that joins others (default: alone, no mDNS)."""
        self.tmp = tmp
        self.name = name
        (tmp / "tasks.toml").write_text(tasks)
        self.argv = ["yptask", "node", "--name", name, "--data-dir", str(tmp / "data"),
                     "--http", "127.0.0.1:0", "--bert", "127.0.0.1:0", "--link", "127.0.0.1:0",
                     "--tasks", str(tmp / "tasks.toml"), *(cluster or ["--no-mdns"])]
        self.link = ""
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> None:
        # cwd outside the checkout, so the installed package is what runs
        with open(self.tmp / "node.log", "a") as log:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=log,
                                         text=True, cwd=self.tmp)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the node prints its addresses once ready
            if found := re.search(r"JSON-RPC\s+(\S+)", line):
                self.url = found.group(1)
            elif found := re.search(r"link\s+(\S+)", line):
                self.link = found.group(1)
                return
        raise AssertionError(f"node exited before it was ready ({self.proc.wait()}); "
                             f"its log: {(self.tmp / 'node.log').read_text()[-2000:]}")

    def signal(self, signum: int) -> int:
        """Send a signal; return the exit status once the node has exited."""
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=60)

    def stop(self) -> None:
        """Stop gracefully if running; kill after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def rpc(self, method: str, *params: object) -> Any:
        answer = self.answer(method, *params)
        assert "error" not in answer, answer
        return answer["result"]

    def answer(self, method: str, *params: object) -> dict[str, Any]:
        """The whole JSON-RPC answer to one request: its result, or its error."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        return dict(self._post(body))

    def cast_batch(self, name: str, payloads: list[dict[str, Any]]) -> list[str]:
        """Cast many messages in one JSON-RPC batch; return their ids."""
        answers = self._post(json.dumps([
            {"jsonrpc": "2.0", "id": i, "method": "cast", "params": [name, p]}
            for i, p in enumerate(payloads)]))
        return [a["result"]["id"] for a in sorted(answers, key=lambda a: a["id"])]

    @property
    def admin_token(self) -> str:
        """The node's admin token, which it keeps in its data dir."""
        return (self.tmp / "data" / "admin-token").read_text().strip()

    def _post(self, body: str) -> Any:
        request = urllib.request.Request(self.url, body.encode(), {
            "Content-Type": "application/json", "Authorization": f"Bearer {self.admin_token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())


def recording_task(name: str, messages: str, records: Path) -> str:
    """A task on every node whose `record` handler appends each delivery to `records`."""
    return f"""
[[task]]
name = "{name}"
worker_class = "sample:Sample"
messages = ["{messages}"]
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
settings = {{ record_path = "{records}" }}
nodes = {{ "*" = 1 }}
"""


class SeededNode(NodeProcess):
    """A node of a test cluster joined by a seed's link address only (no mDNS); `settings`
    are extra lines of its [node] table."""

    def __init__(self, tmp: Path, name: str, tasks: str, join: str | None, *,
                 cluster: str = "test", settings: str = "") -> None:
        folder = tmp / name
        folder.mkdir(exist_ok=True)
        (folder / "node.toml").write_text(
            f'[node]\ncluster = "{cluster}"\ncookie = "cookie-{cluster}-123"\nmdns = false\n'
            f'heartbeat_s = 0.25\n{settings}')
        args = ["--config", str(folder / "node.toml"), *(["--join", join] if join else [])]
        super().__init__(folder, tasks, name, cluster=args)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The deliveries the sample task's `record` handlers wrote to `path`."""
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
