"""Helpers shared by the tests: paths, worker commands and environments, and the test
flavour of the node subprocess; the node and polling helpers themselves are
yptask.testing's, re-exported here."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from yptask import testing
from yptask.tasks.runner import runner_argv
from yptask.testing import until, wait_for

__all__ = ["ALONE", "CHROMIUM", "ECHO", "ERLANG_WORKER", "REPO", "SAMPLE", "TEST_WORKERS",
           "NodeProcess", "SeededNode", "python_worker_argv", "read_records", "recording_task",
           "require_browser", "require_erlang", "until", "wait_for", "worker_env"]

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


def save_task_form(page: Any) -> None:
    """Click the console's save and wait until the form shows the outcome (saved or refused).

    Until then the console refills the form from the node, which would overwrite a field
    the test fills next."""
    page.click("#save")
    page.wait_for_selector("#task-form:not([data-busy])", state="attached")


def require_erlang() -> None:
    """Skip without Erlang, except in CI, where its absence is a failure."""
    if shutil.which("escript") is None:
        if os.environ.get("CI"):
            pytest.fail("escript is not installed; CI must run the Erlang tests")
        pytest.skip("escript is not installed (apt-get install erlang-base)")


class NodeProcess(testing.NodeProcess):
    """A test's `yptask node` subprocess (yptask.testing.NodeProcess) in the folder `tmp`,
    run by the installed `yptask` command."""

    command = ("yptask",)

    @property
    def tmp(self) -> Path:
        return self.folder


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
        super().__init__(
            tmp / name, tasks, name, cluster=["--join", join] if join else [],
            config=f'[node]\ncluster = "{cluster}"\ncookie = "cookie-{cluster}-123"\n'
                   f'mdns = false\nheartbeat_s = 0.25\n{settings}')


def read_records(path: Path) -> list[dict[str, Any]]:
    """The deliveries the sample task's `record` handlers wrote to `path`."""
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
