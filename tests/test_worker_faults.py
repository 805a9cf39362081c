"""Workers that misbehave around their lifecycle: children that ignore SIGTERM and would
outlive a stopped worker, and a setup that hangs, which must not hold up admin requests.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from support import ALONE, TEST_WORKERS, NodeProcess, until, wait_for

from yptask.config import NodeConfig
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


def _kill(pid: int) -> None:
    """End a child a failed test left behind (it is ours: we read its pid from its worker)."""
    if pid and running(pid):
        os.kill(pid, signal.SIGKILL)
