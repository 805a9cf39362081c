"""`yptask node` as a real process: ready line, graceful stop, and nothing lost to kill -9."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading

import pytest
from support import TEST_WORKERS, NodeProcess, python_worker_argv, read_records, wait_for

TASKS = """
[[task]]
name = "rec"
worker_class = "sample:Sample"
messages = ["*.record", "*.record_slowly", "*.echo"]
env = {{ PYTHONPATH = "{workers}" }}
settings = {{ record_path = "{record}" }}
nodes = {{ "*" = 2 }}
"""


class RecordingNode(NodeProcess):
    """A node process whose task `rec` records what it handles."""

    def records(self) -> list[dict]:
        return read_records(self.tmp / "rec.jsonl")


@pytest.fixture
def node_process(tmp_path):
    node = RecordingNode(tmp_path, TASKS.format(workers=TEST_WORKERS,
                                                record=tmp_path / "rec.jsonl"))
    yield node
    if node.proc is not None and node.proc.poll() is None:
        node.proc.kill()
        node.proc.wait()


@pytest.mark.smoke
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_node_serves_then_stops_gracefully_on_sigterm_and_sighup(node_process, signum):
    node_process.start()
    assert node_process.rpc("call", "upai.echo", {"a": "é"}) == {"a": "é"}
    node_process.rpc("cast", "upai.record_slowly", {"seconds": 0.5, "n": 1})
    wait_for(lambda: node_process.rpc("status")["tasks"]["rec"]["in_flight"], what="in flight")
    # the message running when the signal comes is finished, and the node exits 0
    assert node_process.signal(signum) == 0
    assert [r["payload"]["n"] for r in node_process.records()] == [1]


def test_a_node_whose_stdout_is_gone_still_stops_gracefully(node_process):
    # Given a node whose reader of stdout went away (a supervisor that died, a closed pipe)
    node_process.start()
    node_process.rpc("cast", "upai.record_slowly", {"seconds": 0.5, "n": 1})
    wait_for(lambda: node_process.rpc("status")["tasks"]["rec"]["in_flight"], what="in flight")
    assert node_process.proc is not None and node_process.proc.stdout is not None
    node_process.proc.stdout.close()
    # When it is told to stop, its "stopping" line cannot be written
    # Then it still finishes what runs and exits, instead of hanging on its threads
    assert node_process.signal(signal.SIGTERM, timeout_s=60) == 0
    assert [r["payload"]["n"] for r in node_process.records()] == [1]


def test_kill_9_of_workers_mid_message_redelivers_and_loses_nothing(node_process):
    # Given two messages being handled by the task's two workers (their handlers running:
    # a message handed to a worker that has not read it yet would come back unspent)
    node_process.start()
    started = node_process.tmp / "started"
    ids = node_process.cast_batch("upai.record_slowly", [
        {"seconds": 2, "n": i, "started_path": str(started)} for i in (1, 2)])
    wait_for(lambda: started.exists() and len(started.read_text().split()) == 2,
             what="both handlers running")
    status = node_process.rpc("status")["tasks"]["rec"]
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


def test_a_task_defined_by_command_survives_a_restart_and_reads_back(tmp_path):
    # Given a node whose task is defined by a command (a worker in any language; here
    # the Python runner started as a plain command), made with tasks.put
    node = NodeProcess(tmp_path, "", "cmd1")
    node.start()
    try:
        command = python_worker_argv("yptask.tasks.echo:Echo")
        stored = node.rpc("tasks.put", {"name": "byargv", "messages": ["argv.echo"],
                                        "command": command})
        assert stored["command"] == command
        # What the node gives back is a definition it takes again (the CLI's apply does so)
        assert node.rpc("tasks.put", node.rpc("tasks.get", "byargv"))["command"] == command
        assert node.rpc("call", "argv.echo", {"n": 1}) == {"n": 1}
        # When the node restarts, the task is still defined and its workers run
        assert node.signal(signal.SIGTERM) == 0
        node.start()
        assert node.rpc("tasks.get", "byargv")["command"] == command
        assert node.rpc("call", "argv.echo", {"n": 2}) == {"n": 2}
        assert "invalid here" not in (tmp_path / "node.log").read_text()
    finally:
        node.stop()


@pytest.mark.parametrize("option", ["--bert", "--link"])
def test_a_port_in_use_is_refused_before_any_worker_starts(tmp_path, option):
    # Given a port another program holds
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = RecordingNode(tmp_path, TASKS.format(workers=TEST_WORKERS,
                                                    record=tmp_path / "rec.jsonl"))
        argv = [a for a in node.argv]
        argv[argv.index(option) + 1] = f"127.0.0.1:{port}"
        # When a node is told to listen there
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                              check=False)
    # Then it refuses at once, naming the option, and no worker was ever started
    assert done.returncode == 69, done.stderr[-2000:]
    assert f"{option} 127.0.0.1:{port}" in done.stderr and "in use" in done.stderr
    assert "worker started" not in done.stderr


def test_a_bad_cookie_is_refused_before_any_worker_starts(tmp_path):
    cookie = tmp_path / "short.cookie"
    cookie.write_text("short\n")
    node = RecordingNode(tmp_path, TASKS.format(workers=TEST_WORKERS,
                                                record=tmp_path / "rec.jsonl"))
    done = subprocess.run([*node.argv, "--cookie-file", str(cookie)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path, check=False)
    assert done.returncode == 78
    assert "shorter than 8" in done.stderr and "worker started" not in done.stderr


def _journal_files(node: NodeProcess) -> list:
    data = node.tmp / "data"
    return [data / "journal.db", data / "journal.db-wal", data / "journal.db-shm"]


@pytest.mark.parametrize("damage", ["emptied", "garbled"])
def test_a_damaged_or_emptied_journal_is_refused_at_start(node_process, damage):
    # Given a node that has run, and so has a journal
    node_process.start()
    node_process.rpc("call", "upai.echo", 1)
    assert node_process.signal(signal.SIGTERM) == 0
    # When its journal is emptied (or garbled) while it is stopped
    main, *side = _journal_files(node_process)
    for path in side:
        path.unlink(missing_ok=True)
    if damage == "emptied":
        main.write_bytes(b"")
    else:
        main.write_bytes(b"\x00garbage" * 512)
    done = subprocess.run(node_process.argv, capture_output=True, text=True, timeout=60,
                          cwd=node_process.tmp, check=False)
    # Then it refuses to start, saying what happened and what to do
    assert done.returncode == 78, done.stderr[-2000:]
    assert ("emptied or replaced" if damage == "emptied" else "damaged") in done.stderr
    assert "--accept-new-journal" in done.stderr
    # And told to go on with a new journal, it starts and serves
    node_process.argv.append("--accept-new-journal")
    for path in _journal_files(node_process):
        if damage == "garbled":
            path.unlink(missing_ok=True)
    node_process.start()
    assert node_process.rpc("call", "upai.echo", 2) == 2
    node_process.stop()
