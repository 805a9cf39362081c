"""Workers that cannot start: the cause is shown, logged once per start, and fails a call fast.

Three kinds of broken worker, each run by a real node process: a worker class whose
module raises at import, a command that prints to stderr and exits 3, and a command
that does not exist. Their cause (exit status, last stderr lines) must reach `status`,
`yptask tasks` and the log, and a call to them must fail with it instead of waiting
out its timeout.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import CHROMIUM, TEST_WORKERS, NodeProcess, read_records, require_browser, wait_for

from yptask.errors import ChildStartFailed, WorkerStartFailed, wire_code
from yptask.supervision.child import ChildLink, Supervised
from yptask.supervision.policy import BackoffPolicy, ChildSpec, SupervisorFlags
from yptask.supervision.state import Phase, SupervisorState
from yptask.supervision.supervisor import Supervisor

BROKEN_IMPORT = {"name": "broken_import", "messages": ["import.*"],
                 "worker_class": "broken_import:Broken", "env": {"PYTHONPATH": str(TEST_WORKERS)}}
EXITS_3 = {"name": "exits3", "messages": ["exits3.*"],
           "command": ["sh", "-c", "echo starting >&2; echo 'cannot open /etc/app.conf' >&2; "
                                   "exit 3"]}
MISSING = {"name": "missing", "messages": ["missing.*"],
           "command": ["/nonexistent/yptask-worker-xyz"]}
BROKEN = {"broken_import": ("status 1", "BROKEN_DATABASE_URL is not set"),
          "exits3": ("status 3", "cannot open /etc/app.conf"),
          "missing": ("status 127", "/nonexistent/yptask-worker-xyz")}
START_FAILED_CODE = wire_code(WorkerStartFailed).jsonrpc_code


def toml(*tasks: dict[str, Any]) -> str:
    """Task definitions as TOML (values as JSON, which TOML reads for these)."""
    return "".join("[[task]]\n" + "".join(f"{key} = {json.dumps(value)}\n"
                                          for key, value in task.items() if key != "env")
                   + "".join(f"env.{key} = {json.dumps(value)}\n"
                             for key, value in task.get("env", {}).items())
                   for task in tasks)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    running = NodeProcess(tmp_path_factory.mktemp("start-failure"),
                          toml(BROKEN_IMPORT, EXITS_3, MISSING), name="s1")
    try:
        running.start()
        yield running
    finally:
        running.stop()


def start_error(node: NodeProcess, task: str) -> dict[str, Any] | None:
    error: dict[str, Any] | None = node.rpc("status")["tasks"][task].get("start_error")
    return error


def post(node: NodeProcess, method: str, *params: Any) -> dict[str, Any]:
    """The whole JSON-RPC answer, errors included."""
    answer: dict[str, Any] = node.post(json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
    return answer


def yptask(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YPTASK_")}
    env.update(YPTASK_URL=node.url, YPTASK_DATA_DIR=str(node.tmp / "data"))
    return subprocess.run(["yptask", *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=node.tmp, check=False)


@pytest.mark.parametrize("task", sorted(BROKEN))
def test_status_shows_why_the_workers_cannot_start(node: NodeProcess, task: str) -> None:
    exit_, cause = BROKEN[task]
    # Given a task whose workers cannot start, when status is asked
    error = wait_for(lambda: start_error(node, task), timeout_s=30, what=f"{task}'s cause")
    # Then it has the exit status and the last lines of the worker's stderr
    assert error["exit"] == exit_, error
    assert cause in error["stderr_tail"], error
    assert error["stderr_log"] == str(node.tmp / "data" / "logs" / f"{task}.stderr.log")
    assert isinstance(error["at"], float)
    # And the task is backing off, not running
    wait_for(lambda: node.rpc("status")["tasks"][task]["state"] == "backoff", timeout_s=30,
             what=f"{task} in backoff")


def test_yptask_tasks_shows_the_exit_and_the_last_stderr_line(node: NodeProcess) -> None:
    for task in BROKEN:
        wait_for(lambda task=task: start_error(node, task), timeout_s=30, what=task)
    rows = {r["name"]: r for r in json.loads(yptask(node, "tasks", "--json").stdout)}
    assert "cannot open /etc/app.conf" in rows["exits3"]["start_error"]["stderr_tail"]
    text = yptask(node, "tasks").stdout
    # one short line under the task's row: the exit and the last line it wrote
    assert re.search(r"exits3 .*backoff|exits3 .*starting", text), text
    assert "cannot start: status 3: cannot open /etc/app.conf" in text, text
    assert "cannot start: status 127: " in text, text
    status = yptask(node, "status").stdout
    assert "cannot start: status 1: RuntimeError: BROKEN_DATABASE_URL is not set" in status, \
        status


def test_the_log_has_one_warning_per_failed_start_and_no_traceback(node: NodeProcess) -> None:
    log_file = node.tmp / "node.log"

    def counts() -> tuple[int, int] | None:
        text = log_file.read_text()
        started = len(re.findall(r"worker started: pid \d+ sh -c echo starting", text))
        failed = re.findall(r"WARNING .*worker of task exits3 could not start: .*", text)
        # every start seen has its one line, and there were a few
        return (started, len(failed)) if started >= 2 and started == len(failed) else None

    wait_for(counts, timeout_s=30, what="failed starts with one line each")
    text = log_file.read_text()
    line = re.search(r"WARNING .*worker of task exits3 could not start: .*", text)
    assert line is not None
    assert "status 3" in line.group(0) and "cannot open /etc/app.conf" in line.group(0)
    assert str(node.tmp / "data" / "logs" / "exits3.stderr.log") in line.group(0)
    assert "Traceback" not in text, text[-3000:]


@pytest.mark.timeout(30)  # far below the call's own timeout of 60 s
def test_a_call_fails_fast_with_the_cause(node: NodeProcess) -> None:
    wait_for(lambda: start_error(node, "exits3"), timeout_s=20, what="exits3's cause")
    answer = post(node, "call", "exits3.work", {}, 60)
    assert answer["error"]["code"] == START_FAILED_CODE, answer
    assert "status 3" in answer["error"]["message"], answer
    assert "cannot open /etc/app.conf" in answer["error"]["message"], answer
    # And `yptask call` says so in one line
    done = yptask(node, "call", "exits3.work", "{}", "--timeout", "60")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot start: status 3; last stderr line: cannot open /etc/app.conf" in done.stderr
    # A cast is still accepted: it waits in the journal for the task to be fixed
    assert post(node, "cast", "exits3.work", {})["result"]["id"]


@pytest.mark.timeout(30)
def test_a_call_to_a_task_just_created_fails_once_its_first_start_fails(
        node: NodeProcess) -> None:
    # Given a new task whose worker cannot start, called before its first start failed
    node.rpc("tasks.put", {"name": "exits3_new", "messages": ["new3.*"], "command": [
        "sh", "-c", "echo 'cannot open /etc/app.conf' >&2; exit 3"]})
    answer = post(node, "call", "new3.work", {}, 60)
    # Then the call fails with the cause, not after its 60 s
    assert answer["error"]["code"] == START_FAILED_CODE, answer
    assert "cannot open /etc/app.conf" in answer["error"]["message"], answer


def test_fixing_the_task_clears_the_cause_and_delivers_what_waited(
        node: NodeProcess, tmp_path: Path) -> None:
    record = tmp_path / "record.jsonl"
    broken = {**BROKEN_IMPORT, "name": "fixme", "messages": ["fixme.*"],
              "settings": {"record_path": str(record)}}
    node.rpc("tasks.put", broken)
    wait_for(lambda: start_error(node, "fixme"), timeout_s=30, what="fixme's cause")
    # Given a cast accepted while the workers could not start
    node.rpc("cast", "fixme.record", {"n": 1})
    # When the task is put again with a working class
    node.rpc("tasks.put", {**broken, "worker_class": "sample:Sample"})
    # Then the cause is gone, the task runs, and the message is delivered
    wait_for(lambda: node.rpc("status")["tasks"]["fixme"]["state"] == "running",
             timeout_s=30, what="fixme running")
    assert start_error(node, "fixme") is None
    wait_for(lambda: read_records(record), timeout_s=30, what="the waiting cast delivered")
    assert node.rpc("call", "fixme.record", {"n": 2}, 60) == "recorded"


@pytest.mark.timeout(120)
def test_the_console_status_view_shows_why(tmp_path: Path) -> None:
    require_browser()
    from playwright.sync_api import sync_playwright

    from yptask.access.passwords import hash_password

    (tmp_path / "node.toml").write_text(
        f'[node]\nconsole_password_hash = "{hash_password("pw-start-failure")}"\n')
    node = NodeProcess(tmp_path, toml(EXITS_3), "s2",
                       cluster=["--config", str(tmp_path / "node.toml"), "--no-mdns"])
    try:
        node.start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox"])
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(node.url.removesuffix("/rpc") + "/")
                page.fill("#password", "pw-start-failure")
                page.click("#login")
                page.wait_for_selector("#overview-tasks tr[data-task=exits3]")
                page.click("nav a[data-view=status]")
                # the view refreshes itself: the cause appears once the first start failed
                cause = page.wait_for_selector(
                    "#status-table [data-start-error]:has-text('cannot open /etc/app.conf')",
                    timeout=60_000)
                assert cause is not None
                assert "status 3" in (cause.text_content() or "")
                assert "exits3.stderr.log" in (cause.get_attribute("title") or "")
                assert not errors, errors
            finally:
                browser.close()
    finally:
        node.stop()


# ------------------------------------------------------------------ the generic supervisor


class Starter(Supervised):
    """A child whose start fails, as an expected failure, while `broken` is set."""

    def __init__(self, broken: threading.Event, *, link: ChildLink | None = None) -> None:
        super().__init__(link=link)
        self.broken = broken

    def init(self) -> None:
        if self.broken.is_set():
            raise ChildStartFailed("the config file is missing")


def test_a_supervisor_keeps_why_a_start_failed_until_one_starts(
        caplog: pytest.LogCaptureFixture) -> None:
    broken = threading.Event()
    broken.set()
    # a backoff long enough that only the replacement of its children can end it
    flags = SupervisorFlags(intensity=1, period_s=60.0,
                            backoff=BackoffPolicy(initial_s=60.0, max_s=60.0))
    caplog.set_level(logging.DEBUG)
    sup = Supervisor.start([ChildSpec("w1", Starter, (broken,))], flags, name="starters")
    try:
        proxy = sup.proxy()

        def state() -> SupervisorState:
            result: SupervisorState = proxy.state().get(timeout=5)
            return result

        # Given a child whose start keeps failing: the supervisor backs off, saying why
        wait_for(lambda: state().phase is Phase.BACKOFF, timeout_s=10, what="backoff")
        assert isinstance(state().start_error, ChildStartFailed)
        assert "the config file is missing" in str(state().start_error)
        # and an expected start failure is no traceback in the log
        assert not [r for r in caplog.records if r.exc_info], caplog.text
        # When it is replaced by a child that starts
        broken.clear()
        proxy.start_child(ChildSpec("w2", Starter, (broken,))).get(timeout=5)
        assert state().start_error is None
        proxy.terminate_child("w1").get(timeout=5)
        # Then nothing is left to retry: the backoff is over
        assert state().phase is Phase.RUNNING
        assert state().running == 1
    finally:
        sup.stop(timeout=10)


def test_an_unexpected_start_failure_still_logs_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    class Crasher(Supervised):
        def init(self) -> None:
            raise ValueError("a bug")

    caplog.set_level(logging.ERROR)
    sup = Supervisor.start([ChildSpec("c1", Crasher)],
                           SupervisorFlags(intensity=0, period_s=60.0), name="crashers")
    try:
        wait_for(lambda: [r for r in caplog.records if r.exc_info], timeout_s=10,
                 what="the traceback")
        error = sup.proxy().state().get(timeout=5).start_error
        assert isinstance(error, ValueError)
    finally:
        sup.stop(timeout=10)
