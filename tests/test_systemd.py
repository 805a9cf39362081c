"""A node under systemd: the unit files, the sd_notify messages, and `systemctl reload`.

systemd itself cannot run here (no service manager is PID 1 in a test), so the
units are checked by `systemd-analyze verify`, and the notify socket is one the
test binds, as systemd would: a datagram socket named by `$NOTIFY_SOCKET`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO, TEST_WORKERS, NodeProcess, read_records, wait_for

from yptask.cli.main import build_parser
from yptask.cli.readiness import Readiness
from yptask.client import Client

UNITS = {"yptask.service": "yptask.service", "yptask@.service": "yptask@demo.service"}
INSTALLED_YPTASK = "/opt/yptask/bin/yptask"  # where the units expect the command
DEADLINE_S = 60.0


# ---------------------------------------------------------------- the unit files

def systemd_analyze() -> str:
    """The systemd-analyze command; skipped without it, except in CI (a failure there)."""
    found = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
    if not Path(found).exists():
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is not installed; CI must verify the unit files")
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return found


def unit_lines(unit: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in (REPO / "conf" / unit).read_text().splitlines()
            if line.startswith(key + "=")]


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_the_unit_file_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    # Given the unit, its command pointed at this environment's `yptask` (verify wants
    # ExecStart's program to exist)
    analyze = systemd_analyze()
    command = shutil.which("yptask") or str(Path(sys.executable).with_name("yptask"))
    assert Path(command).exists(), "the yptask command is not installed"
    text = (REPO / "conf" / unit).read_text()
    assert INSTALLED_YPTASK in text
    (tmp_path / unit).write_text(text.replace(INSTALLED_YPTASK, command))
    # When systemd-analyze verifies it (an instance, for the template)
    done = subprocess.run([analyze, "verify", "--man=no", str(tmp_path / UNITS[unit])],
                          capture_output=True, text=True, timeout=DEADLINE_S, check=False)
    # Then it passes, without a word about the unit: a setting systemd does not take
    # is only a warning, so a warning is a failure here
    said = [line for line in (done.stdout + done.stderr).splitlines() if "yptask" in line]
    assert done.returncode == 0 and not said, done.stdout + done.stderr


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_the_units_commands_are_ones_the_cli_takes(unit: str) -> None:
    # Given the unit's ExecStart and ExecReload, with its specifiers and variables filled
    filled = {"%S": "/var/lib", "%i": "demo", "${YPTASK_HTTP}": "127.0.0.1:8700"}
    for key, command in (("ExecStart", "node"), ("ExecReload", "restart")):
        (line,) = unit_lines(unit, key)
        for name, value in filled.items():
            line = line.replace(name, value)
        argv = shlex.split(line)
        # Then each runs the installed `yptask`, and its arguments are ones the CLI parses
        assert argv[0] == INSTALLED_YPTASK and argv[1] == command
        args = build_parser().parse_args(argv[1:])
        assert args.data_dir == Path("/var/lib/yptask" + ("/demo" if "@" in unit else ""))
        if command == "restart":
            assert args.all and args.quiet and args.url == "http://127.0.0.1:8700/rpc"
        else:
            assert args.http == ("127.0.0.1", 8700)


def test_the_units_ask_for_what_a_draining_node_needs() -> None:
    for unit in UNITS:
        assert unit_lines(unit, "Type") == ["notify"]
        assert unit_lines(unit, "NotifyAccess") == ["main"]
        # SIGTERM to the node alone: it stops its workers once their messages finish
        assert unit_lines(unit, "KillSignal") == ["SIGTERM"]
        assert unit_lines(unit, "KillMode") == ["mixed"]
        assert unit_lines(unit, "StateDirectory") == [
            "yptask/%i" if "@" in unit else "yptask"]


# ---------------------------------------------------------------- the notify socket

class NotifySocket:
    """A datagram socket standing for systemd's: a path, or an abstract '@name'."""

    def __init__(self, folder: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"yptask-test-{uuid.uuid4().hex}"
            self.sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        else:
            self.address = str(folder / "notify")
            self.sock.bind(self.address)
        self.received: list[dict[str, str]] = []

    def until(self, key: str, timeout_s: float = DEADLINE_S) -> dict[str, str]:
        """Read messages until one carries `key`; return it (AssertionError past the
        deadline)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key} within {timeout_s:g} s; got {self.received}")
            self.sock.settimeout(left)
            try:
                datagram = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in datagram.decode().splitlines())
            self.received.append(fields)
            if key in fields:
                return fields

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A folder with a short path: a Unix socket's path is at most 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="yptask-sd-") as folder:
        yield Path(folder)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_comes_once_the_node_serves_and_stopping_on_sigterm(
        short_tmp: Path, abstract: bool) -> None:
    # Given a notify socket and a node told of it, started in the background
    notify = NotifySocket(short_tmp, abstract)
    node = NodeProcess(short_tmp / "node", ECHO_TASK, name="sd1",
                       env={"NOTIFY_SOCKET": notify.address})
    failed: list[BaseException] = []

    def start() -> None:
        try:
            node.start()
        except BaseException as exc:  # said by the main thread
            failed.append(exc)

    starting = threading.Thread(target=start)
    starting.start()
    try:
        # When READY=1 arrives
        ready = notify.until("READY")
        # Then the node answers at once at the address its status names: READY=1 came
        # only once it served
        assert ready["READY"] == "1"
        status = ready["STATUS"]
        assert status.startswith("serving: JSON-RPC http://127.0.0.1:")
        url = status.split()[2].rstrip(",")
        token = (node.data_dir / "admin-token").read_text().strip()
        answer = Client(url, admin_token=token, timeout_s=DEADLINE_S).status()
        assert answer["node"] == "sd1" and answer["tasks"]["echo"]["workers"] == {"sd1": 1}
        # and the one message before it said the node was starting
        assert [m.get("STATUS", "").split(":")[0] for m in notify.received] == [
            "starting", "serving"]
        starting.join(DEADLINE_S)
        assert not failed, failed
        # And the workers cannot speak for the node: the socket is not in their environment
        (pid,) = answer["tasks"]["echo"]["pids"]
        assert b"NOTIFY_SOCKET=" not in Path(f"/proc/{pid}/environ").read_bytes()
        # When the node is told to stop
        node.send_signal(signal.SIGTERM)
        # Then it says STOPPING=1 and stops cleanly
        stopping = notify.until("STOPPING")
        assert stopping["STOPPING"] == "1" and stopping["STATUS"].startswith("stopping")
        assert node.proc is not None and node.proc.wait(timeout=DEADLINE_S) == 0
    finally:
        starting.join(DEADLINE_S)
        node.stop()
        notify.close()


def test_without_notify_socket_nothing_is_sent_and_a_bad_one_is_logged(
        short_tmp: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Without $NOTIFY_SOCKET every message is a no-op
    environ: dict[str, str] = {}
    assert not Readiness.from_environment(environ).ready("serving")
    # An address that is neither a path nor '@name' is logged, and nothing is sent
    caplog.set_level(logging.WARNING, logger="yptask.cli.readiness")
    environ = {"NOTIFY_SOCKET": "vsock:2:1234"}
    assert not Readiness.from_environment(environ).enabled and environ == {}
    assert "neither a path nor an abstract socket name" in caplog.text
    # A socket nobody listens on: the send fails, is logged, and raises nothing
    gone = Readiness.from_environment({"NOTIFY_SOCKET": str(short_tmp / "nobody")})
    assert gone.enabled and gone.ready("serving") is False
    assert "could not tell the service manager READY=1" in caplog.text


def test_a_node_whose_manager_does_not_listen_serves_and_says_so(short_tmp: Path) -> None:
    # Given a node told of a notify socket nobody binds
    with NodeProcess(short_tmp / "node", ECHO_TASK, name="sd3",
                     env={"NOTIFY_SOCKET": str(short_tmp / "nobody")}) as node:
        # Then it serves all the same, and its log says what it could not tell
        assert node.call("sd.echo", {"n": 1}) == {"n": 1}
        assert "could not tell the service manager READY=1" in node.log()
        assert node.signal(signal.SIGTERM) == 0
    assert "could not tell the service manager STOPPING=1" in node.log()


def test_a_status_of_several_lines_stays_one_field(short_tmp: Path) -> None:
    notify = NotifySocket(short_tmp, abstract=False)
    try:
        assert Readiness.from_environment({"NOTIFY_SOCKET": notify.address}).status(
            "two\nlines\nREADY=1")
        assert notify.until("STATUS") == {"STATUS": "two lines READY=1"}
    finally:
        notify.close()


# ---------------------------------------------------------------- systemctl reload

ECHO_TASK = """
[[task]]
name = "echo"
worker_class = "yptask.tasks.echo:Echo"
messages = ["*.echo"]
"""

RELOAD_TASKS = ECHO_TASK + """
[[task]]
name = "slow"
worker_class = "sample:Sample"
messages = ["*.record_slowly"]
env = {{ PYTHONPATH = "{workers}" }}
settings = {{ record_path = "{record}" }}
nodes = {{ "*" = 2 }}
"""


def yptask(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """`yptask ARGS` with none of our YPTASK_ settings, as a unit's ExecReload runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("YPTASK_")}
    return subprocess.Popen(["yptask", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def test_reload_restarts_every_tasks_workers_and_loses_no_cast(tmp_path: Path) -> None:
    # Given a node with two tasks, one of them slow, and casts to it in flight
    record = tmp_path / "slow.jsonl"
    with NodeProcess(tmp_path, RELOAD_TASKS.format(workers=TEST_WORKERS, record=record),
                     name="sd2") as node:
        before = {name: set(entry["pids"]) for name, entry in node.rpc("status")["tasks"].items()}
        assert sorted(before) == ["echo", "slow"] and len(before["slow"]) == 2
        accepted = node.cast_batch("sd.record_slowly",
                                   [{"seconds": 0.2, "n": n} for n in range(10)])
        wait_for(lambda: node.rpc("status")["tasks"]["slow"]["in_flight"], what="in flight")
        # When the unit's reload command runs, while more casts arrive
        reload = yptask("restart", "--all", "--quiet", "--url", node.url,
                        "--data-dir", str(node.data_dir), cwd=tmp_path)
        try:
            n = 10
            while reload.poll() is None:
                accepted += node.cast_batch("sd.record_slowly",
                                            [{"seconds": 0.05, "n": n + i} for i in range(5)])
                n += 5
                with contextlib.suppress(subprocess.TimeoutExpired):
                    reload.wait(0.1)  # the next batch in 0.1 s, or none once it ended
            out, err = reload.communicate(timeout=DEADLINE_S)
        finally:
            if reload.poll() is None:
                reload.kill()
                reload.communicate()
        # Then it succeeds and says each task restarted
        assert reload.returncode == 0, err
        assert [line.split(":")[0] for line in out.splitlines()] == [
            "restarted echo", "restarted slow"]
        # and every task runs new workers: none of the pids from before
        after = {name: set(entry["pids"]) for name, entry in node.rpc("status")["tasks"].items()}
        assert {name: len(pids) for name, pids in after.items()} == {"echo": 1, "slow": 2}
        assert all(not before[name] & after[name] for name in before), (before, after)
        # and every cast was handled once, none interrupted
        records = wait_for(lambda: len(read_records(record)) >= len(accepted)
                           and read_records(record), what="every cast handled")
        assert sorted(r["id"] for r in records) == sorted(accepted)
        assert all(r["attempt"] == 1 for r in records)


def test_restart_wants_one_task_or_all(tmp_path: Path) -> None:
    for args in (["restart"], ["restart", "--all", "echo"]):
        done = yptask(*args, "--url", "127.0.0.1:9", cwd=tmp_path)
        _, err = done.communicate(timeout=DEADLINE_S)
        assert done.returncode == 2 and "name one TASK, or give --all" in err
