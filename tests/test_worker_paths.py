"""Where workers run and import from: a task's `cwd` and `python_path`.

A worker class in a module of the task's own folder, or of one of its
`python_path` folders, is importable with nothing set in the node's environment;
a `cwd` that does not exist is a start failure that says so; a command task runs
in its `cwd` and finds its modules through the PYTHONPATH the node gives it.
Real nodes (in this process) and real worker processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from support import ECHO, until

from yptask.config.tasks import TaskDef
from yptask.errors import ConfigError
from yptask.node import Node

# A task module that says where its worker runs and where it was imported from.
WHERE = '''
import os
from yptask.tasks.base import BaseTask


class Where(BaseTask):
    def handle_where(self, msg):
        return {"cwd": os.getcwd(), "file": __file__}
'''


def module(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(WHERE)
    return path


async def test_a_worker_class_in_the_tasks_cwd_is_importable(start_node, tmp_path):
    # Given a module in a folder of the data dir, named by a relative cwd
    path = module(tmp_path / "data" / "app", "where_in_cwd")
    node = await start_node({"name": "here", "messages": ["here.*"],
                             "worker_class": "where_in_cwd:Where", "cwd": "app"})
    # Then its worker imports it from there, and runs there
    answer = await node.call("here.where", {})
    assert answer == {"cwd": str(path.parent), "file": str(path)}


async def test_a_worker_class_in_a_python_path_folder_is_importable(start_node, tmp_path):
    # Given a module in lib/ under an absolute cwd, and python_path = ["lib"]
    work = tmp_path / "work"
    path = module(work / "lib", "where_in_lib")
    node = await start_node({"name": "lib", "messages": ["lib.*"],
                             "worker_class": "where_in_lib:Where", "cwd": str(work),
                             "python_path": ["lib"]})
    answer = await node.call("lib.where", {})
    assert answer == {"cwd": str(work), "file": str(path)}


async def test_without_cwd_or_python_path_the_module_is_not_found(start_node, tmp_path):
    # The same module in the data dir, with no cwd given: not on the path (as before)
    module(tmp_path / "data", "where_in_data")
    node = await start_node({"name": "nopath", "messages": ["nopath.*"],
                             "worker_class": "where_in_data:Where"})
    status = await until(lambda: _start_error(node, "nopath"), what="the start failure")
    assert "cannot import 'where_in_data'" in status["stderr_tail"], status


async def test_a_missing_cwd_is_a_start_failure_naming_it(start_node, tmp_path):
    # Given a task whose cwd does not exist, next to a working one
    node = await start_node({"name": "lost", "messages": ["lost.*"],
                             "worker_class": "yptask.tasks.echo:Echo", "cwd": "no/such/dir"},
                            ECHO)
    # Then its status says which folder is missing, and the node serves the other task
    error = await until(lambda: _start_error(node, "lost"), what="the start failure")
    missing = str(tmp_path / "data" / "no" / "such" / "dir")
    assert error["exit"] == "not started", error
    assert f"working directory {missing} does not exist" in error["error"], error
    assert await node.call("upai.echo", "still here") == "still here"
    # And once the folder exists, a restart of the worker finds it
    (tmp_path / "data" / "no" / "such" / "dir").mkdir(parents=True)
    assert await node.call("lost.echo", "found", timeout_s=60) == "found"


async def test_a_command_task_runs_in_its_cwd_with_its_python_path(start_node, tmp_path):
    # Given a command (not the runner the node picks) and a module only in python_path
    work = tmp_path / "cmd"
    path = module(work / "src", "where_for_command")
    node = await start_node({
        "name": "cmd", "messages": ["cmd.*"], "cwd": str(work), "python_path": ["src"],
        "command": [sys.executable, "-P", "-m", "yptask.tasks.runner",
                    "where_for_command:Where"]})
    answer = await node.call("cmd.where", {})
    assert answer == {"cwd": str(work), "file": str(path)}


async def _start_error(node: Node, task: str) -> dict | None:
    status = await node.status()
    error: dict | None = status["tasks"][task].get("start_error")
    return error


@pytest.mark.parametrize(("field", "value", "says"), [
    ("cwd", 3, "must be a string"),
    ("python_path", "src", "must be a list of directories"),
    ("python_path", [""], "must be a list of directories"),
    ("log_max_mb", 0, "at least 0.001"),
    ("log_keep", -1, "from 0 to 100"),
    ("log_format", "xml", 'use "text" or "json"'),
])
def test_a_bad_path_or_log_field_is_refused_naming_it(field, value, says):
    with pytest.raises(ConfigError) as refused:
        TaskDef.from_dict({**ECHO, field: value})
    assert f"'{field}'" in str(refused.value) and says in str(refused.value)


def test_the_new_fields_read_back_as_written():
    task = TaskDef.from_dict({**ECHO, "cwd": "app", "python_path": ["src", "lib"],
                              "log_max_mb": 2.5, "log_keep": 0, "log_format": "json"})
    assert TaskDef.from_dict(task.to_dict()) == task
    assert task.to_dict()["python_path"] == ["src", "lib"]
