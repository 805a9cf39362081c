"""Workers that misbehave around their lifecycle: children that ignore SIGTERM and would
outlive a stopped worker, and a setup that hangs, which must not hold up admin requests.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from support import ALONE, TEST_WORKERS, NodeProcess, until, wait_for

from yptask.config.node import NodeConfig
from yptask.node import Node

FAULTS = {"name": "faults", "messages": ["faults.*"], "worker_class": "faults:Faults",
          "env": {"PYTHONPATH": str(TEST_WORKERS)}}


def running(pid: int) -> bool:
    """True while `pid` is a live process (a zombie waiting to be reaped is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


async def test_deleting_a_task_kills_what_its_workers_left_in_their_process_group(tmp_path):
    node = await Node.start(NodeConfig(name="f1", data_dir=tmp_path / "data", **ALONE),
                            tasks=[])
    child = 0
    try:
        await node.put_task(FAULTS)
        # Given a worker that started a child which ignores SIGTERM
        child = await node.call("faults.stubborn_child", {})
        assert running(child)
        # When the task is deleted
        await node.delete_task("faults")
        # Then the child is gone with its worker
        await until(lambda: not running(child), timeout_s=20, what=f"child {child} gone")
    finally:
        await node.stop()
        _kill(child)


def test_stopping_the_node_kills_what_its_workers_left_in_their_process_group(tmp_path):
    node = NodeProcess(tmp_path, "")
    child = 0
    try:
        node.start()
        node.rpc("tasks.put", FAULTS)
        child = node.rpc("call", "faults.stubborn_child", {})
        assert running(child)
        node.stop()
        wait_for(lambda: not running(child), timeout_s=20, what=f"child {child} gone")
    finally:
        node.stop()
        _kill(child)


def test_a_hung_setup_holds_up_neither_tasks_put_nor_status(tmp_path):
    gate, marker = tmp_path / "gate", tmp_path / "ready"
    node = NodeProcess(tmp_path, "")
    try:
        node.start()
        # Given a task whose worker's setup waits (for the gate file)
        task = {**FAULTS, "settings": {"setup_gate": str(gate), "ready_marker": str(marker),
                                       "setup_wait_s": 25}}
        # When it is created, then status is asked
        assert node.rpc("tasks.put", task)["name"] == "faults"
        status = node.rpc("status")["tasks"]["faults"]
        # Then both answered while the setup still runs, and the status says so
        assert not marker.exists()
        assert (status["state"], status["workers"]) == ("starting", {"p1": 0}), status
        # And once the setup is done, the task runs
        gate.touch()
        wait_for(lambda: node.rpc("status")["tasks"]["faults"]["state"] == "running",
                 timeout_s=20, what="the task running")
        assert marker.exists()
        assert node.rpc("call", "faults.echo", "up") == "up"
        # And an edit whose new workers hang in setup does not hold them up either
        second_gate = tmp_path / "gate2"
        marker.unlink()
        edited = {**task, "settings": {**task["settings"], "setup_gate": str(second_gate)}}
        node.rpc("tasks.put", edited)
        wait_for(lambda: node.rpc("status")["tasks"]["faults"]["state"] == "starting",
                 timeout_s=20, what="the new worker starting")
        assert not marker.exists()
        assert node.rpc("call", "faults.echo", "still up") == "still up"  # the old one serves
        second_gate.touch()
        wait_for(lambda: marker.exists() and node.rpc("status")["tasks"]["faults"]["state"]
                 == "running", timeout_s=20, what="the edited task running")
    finally:
        gate.touch()
        (tmp_path / "gate2").touch()
        node.stop()


def test_a_hung_setup_does_not_hold_up_tasks_delete(tmp_path):
    gate, marker = tmp_path / "gate", tmp_path / "ready"
    node = NodeProcess(tmp_path, "")
    try:
        node.start()
        # Given a task whose worker's setup waits
        node.rpc("tasks.put", {**FAULTS, "settings": {
            "setup_gate": str(gate), "ready_marker": str(marker), "setup_wait_s": 25}})
        # When it is deleted, then the task is gone while the setup still runs
        assert node.rpc("tasks.delete", "faults") is None
        assert "faults" not in node.rpc("status")["tasks"]
        assert not marker.exists()
        assert node.rpc("tasks.list") == []
    finally:
        gate.touch()
        node.stop()


def _kill(pid: int) -> None:
    """End a child a failed test left behind (it is ours: we read its pid from its worker)."""
    if pid and running(pid):
        os.kill(pid, signal.SIGKILL)
