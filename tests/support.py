"""Helpers shared by the tests: paths, worker commands and environments."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from yptask.tasks.runner import runner_argv

REPO = Path(__file__).resolve().parents[1]
TEST_WORKERS = REPO / "tests" / "workers"
ERLANG_WORKER = REPO / "workers" / "erlang" / "echo_worker.escript"

# Task definitions shared by the tests that start a node (see the `node` fixture).
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


def require_erlang() -> None:
    """Skip without Erlang, except in CI, where its absence is a failure."""
    if shutil.which("escript") is None:
        if os.environ.get("CI"):
            pytest.fail("escript is not installed; CI must run the Erlang tests")
        pytest.skip("escript is not installed (apt-get install erlang-base)")
