"""`yptask node` as a real process: ready line, graceful stop, and nothing lost to kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from support import TEST_WORKERS

TASKS = """
[[task]]
name = "rec"
worker_class = "sample:Sample"
messages = ["*.record", "*.record_slowly", "*.echo"]
env = {{ PYTHONPATH = "{workers}" }}
settings = {{ record_path = "{record}" }}
nodes = {{ "*" = 2 }}
"""


class NodeProcess:
    """A `yptask node` subprocess on a free port, in its own data folder."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        tasks = tmp_path / "tasks.toml"
        tasks.write_text(TASKS.format(workers=TEST_WORKERS, record=tmp_path / "rec.jsonl"))
        self.argv = ["yptask", "node", "--name", "p1", "--data-dir", str(tmp_path / "data"),
                     "--http", "127.0.0.1:0", "--bert", "127.0.0.1:0", "--tasks", str(tasks)]
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> None:
        # cwd outside the checkout, so the installed package is what runs
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, cwd=self.tmp_path)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the node prints its addresses once ready
            found = re.search(r"JSON-RPC\s+(\S+)", line)
            if found:
                self.url = found.group(1)
                return
        raise AssertionError(f"node exited before it was ready ({self.proc.wait()})")

    def rpc(self, method: str, *params: object) -> object:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        request = urllib.request.Request(self.url, body.encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        assert "error" not in answer, answer
        return answer["result"]

    def cast_batch(self, name: str, payloads: list[dict]) -> list[str]:
        """Cast many messages in one JSON-RPC batch; return their ids."""
        body = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "cast", "params": [name, p]}
                           for i, p in enumerate(payloads)])
        request = urllib.request.Request(self.url, body.encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answers = json.loads(response.read())
        return [a["result"]["id"] for a in sorted(answers, key=lambda a: a["id"])]

    def signal(self, signum: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=60)

    def records(self) -> list[dict]:
        path = self.tmp_path / "rec.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def node_process(tmp_path):
    node = NodeProcess(tmp_path)
    yield node
    if node.proc is not None and node.proc.poll() is None:
        node.proc.kill()
        node.proc.wait()


def wait_for(predicate, timeout_s: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


@pytest.mark.smoke
def test_node_serves_then_stops_gracefully_on_sigterm(node_process):
    node_process.start()
    assert node_process.rpc("call", "upai.echo", {"a": "é"}) == {"a": "é"}
    node_process.rpc("cast", "upai.record_slowly", {"seconds": 0.5, "n": 1})
    wait_for(lambda: node_process.rpc("status")["tasks"]["rec"]["in_flight"], what="in flight")
    assert node_process.signal(signal.SIGTERM) == 0
    assert [r["payload"]["n"] for r in node_process.records()] == [1]


def test_kill_9_of_workers_mid_message_redelivers_and_loses_nothing(node_process):
    # Given two messages being handled by the task's two workers
    node_process.start()
    ids = node_process.cast_batch("upai.record_slowly", [{"seconds": 2, "n": i} for i in (1, 2)])
    status = wait_for(lambda: (s := node_process.rpc("status")["tasks"]["rec"])["in_flight"] == 2
                      and s, what="both in flight")
    # When both worker processes are killed without warning
    for pid in status["pids"]:
        os.kill(pid, signal.SIGKILL)
    # Then both messages are handled once more, by new workers, on their second attempt
    records = wait_for(lambda: len(node_process.records()) >= 2 and node_process.records(),
                       what="redelivery")
    assert sorted((r["id"], r["attempt"]) for r in records) == sorted((i, 2) for i in ids)
    assert not {r["pid"] for r in records} & set(status["pids"])
    assert node_process.signal(signal.SIGTERM) == 0


def test_kill_9_of_the_node_loses_no_accepted_message(node_process):
    # Given a node that has accepted 1 000 messages, some handled and most not
    node_process.start()
    accepted = []
    for start in range(0, 1000, 100):
        accepted += node_process.cast_batch(
            "upai.record_slowly", [{"seconds": 0.002, "n": i} for i in range(start, start + 100)])
    assert len(set(accepted)) == 1000
    wait_for(lambda: len(node_process.records()) >= 20, what="some handled")
    # When the node is killed without warning, and started again on the same data
    node_process.signal(signal.SIGKILL)
    node_process.start()
    # Then every accepted message is handled, at least once
    wait_for(lambda: set(accepted) <= {r["id"] for r in node_process.records()},
             what="every accepted message handled")
    redelivered = [r for r in node_process.records() if r["attempt"] > 1]
    assert all(r["id"] in accepted for r in redelivered)
    assert node_process.signal(signal.SIGTERM) == 0


def test_restart_under_a_steady_stream_loses_nothing_and_interrupts_nothing(node_process):
    # Given a steady stream of 2 000 casts
    node_process.start()
    accepted: list[str] = []

    def publish() -> None:
        for start in range(0, 2000, 50):
            accepted.extend(node_process.cast_batch(
                "upai.record_slowly",
                [{"seconds": 0.001, "n": i} for i in range(start, start + 50)]))

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        wait_for(lambda: len(accepted) >= 200, what="the stream to flow")
        # When the task is restarted twice while the stream flows
        for generation in (1, 2):
            result = node_process.rpc("tasks.restart", "rec")
            assert result["generation"] == generation and result["replaced"] == 2
    finally:
        publisher.join(timeout=120)
    # Then every message is handled, none of them twice: no handler was interrupted
    assert len(accepted) == 2000
    records = wait_for(lambda: len(node_process.records()) >= 2000 and node_process.records(),
                       what="all 2 000 handled")
    assert sorted(r["id"] for r in records) == sorted(accepted)
    assert all(r["attempt"] == 1 for r in records)
    assert node_process.signal(signal.SIGTERM) == 0


def test_a_bad_config_is_refused_with_a_clear_message(tmp_path):
    bad = tmp_path / "node.toml"
    bad.write_text("[node]\nhttp_port = 'eighty'\n")
    done = subprocess.run(["yptask", "node", "--config", str(bad)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, check=False)
    assert done.returncode == 78
    assert "http_port" in done.stderr and "port number" in done.stderr
    assert not os.path.exists(tmp_path / "yptask-data")
