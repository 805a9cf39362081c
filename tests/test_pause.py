"""Pausing a task: its casts are journaled and wait, nothing reaches its workers, until resumed.

The property is tried where it can break: while other tasks go on delivering in
the same node, across a restart of the node (the pause is stored, not held in
memory), and on a second node of a cluster (the pause is replicated).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

import pytest
from support import NodeProcess, SeededNode, read_records, recording_task, until, wait_for

from yptask.errors import TaskPaused, UnknownTask

pytestmark = pytest.mark.timeout(180)


async def _state(node: Any, task: str) -> dict[str, Any]:
    return (await node.status())["tasks"][task]


async def test_a_paused_task_journals_its_casts_and_hands_out_nothing_until_resumed(node):
    # Given a node running the echo and sample tasks, with echo's workers up
    pids = await until(lambda: _pids_when_running(node, "echo"), what="echo's workers")
    # When echo is paused and a message for it is cast
    paused = await node.pause("echo")
    assert paused["paused"] is True
    assert (await node.task("echo"))["paused"] is True
    cast = await node.cast("x.echo", {"n": 1})
    assert cast["tasks"] == ["echo"]
    # Then it waits in the journal while the node goes on delivering to the other task
    await until(lambda: _queued(node, "echo", 1), what="the echo message journaled")
    for n in range(3):
        await node.cast("sample.whoami", {"n": n})
    await until(lambda: _handled(node, "sample", 3), what="the sample task handling on")
    state = await _state(node, "echo")
    assert (state["state"], state["handled"], state["queued"]) == ("paused", 0, 1)
    # and a call for it is refused with a clear error, not run
    with pytest.raises(TaskPaused, match="paused"):
        await node.call("x.echo", {"n": 2})
    # When it is resumed, the message is handled, by the same workers (none restarted)
    resumed = await node.resume("echo")
    assert resumed["paused"] is False
    await until(lambda: _handled(node, "echo", 1), what="the waiting message handled")
    assert await node.call("x.echo", 7) == 7
    assert sorted((await _state(node, "echo"))["pids"]) == pids


async def test_pausing_a_task_that_does_not_exist_says_so(node):
    with pytest.raises(UnknownTask):
        await node.pause("nope")


def test_a_pause_is_kept_across_a_restart_of_the_node(tmp_path):
    records = tmp_path / "rec.jsonl"
    node = NodeProcess(tmp_path, recording_task("rec", "*.record", records))
    with node:
        # Given a paused task with a message waiting
        node.rpc("tasks.pause", "rec")
        [message_id] = node.cast_batch("x.record", [{"n": 1}])
        # When the node stops and starts again on the same data
        assert node.signal(signal.SIGTERM) == 0
        node.start()
        # Then the task is still paused and the message still waits
        status = node.rpc("status")["tasks"]["rec"]
        assert (status["state"], status["queued"]) == ("paused", 1)
        assert read_records(records) == []
        # until it is resumed
        node.rpc("tasks.resume", "rec")
        wait_for(lambda: [r["id"] for r in read_records(records)] == [message_id],
                 what="the message handled once resumed")


def test_a_pause_made_on_one_node_holds_on_every_node(tmp_path):
    records = tmp_path / "rec.jsonl"  # the definition is the cluster's: one file for all
    tasks = recording_task("rec", "*.record", records)
    with SeededNode(tmp_path, "a", tasks, None) as first, \
            SeededNode(tmp_path, "b", tasks, first.link) as second, \
            SeededNode(tmp_path, "c", tasks, first.link) as third:
        nodes = (first, second, third)
        wait_for(lambda: all(len(n.rpc("nodes")) == 3 for n in nodes),
                 what="the three nodes linked")
        # Given a task paused on node a
        first.rpc("tasks.pause", "rec")
        # Then nodes b and c hold its casts too
        for node in (second, third):
            wait_for(lambda node=node: node.rpc("status")["tasks"]["rec"]["state"] == "paused",
                     what=f"the pause replicated to node {node.name}")
        held = [node.cast_batch("x.record", [{"on": node.name}])[0] for node in (second, third)]
        for node in (second, third):
            wait_for(lambda node=node: node.rpc("status")["tasks"]["rec"]["queued"] == 1,
                     what=f"the message journaled on node {node.name}")
        assert read_records(records) == []
        # and a resume on node c delivers both, and resumes every node
        third.rpc("tasks.resume", "rec")
        wait_for(lambda: sorted(r["id"] for r in read_records(records)) == sorted(held),
                 what="the messages handled once resumed")
        for node in (first, second):
            wait_for(lambda node=node: node.rpc("tasks.get", "rec")["paused"] is False,
                     what=f"the resume replicated to node {node.name}")


async def _pids_when_running(node: Any, task: str) -> list[int] | None:
    state = await _state(node, task)
    return sorted(state["pids"]) if state["state"] == "running" and state["pids"] else None


async def _queued(node: Any, task: str, n: int) -> bool:
    return bool((await _state(node, task))["queued"] == n)


async def _handled(node: Any, task: str, n: int) -> bool:
    return bool((await _state(node, task))["handled"] >= n)



def test_yptask_pause_and_resume_from_the_command_line(tmp_path):
    node = NodeProcess(tmp_path, recording_task("rec", "*.record", tmp_path / "rec.jsonl"))
    with node:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("YPTASK_")}
            return subprocess.run(["yptask", *args, "--url", node.url, "--data-dir",
                                   str(node.data_dir)], capture_output=True, text=True,
                                  timeout=60, env=env, check=False)

        paused = cli("pause", "rec")
        assert paused.returncode == 0, paused.stderr
        assert "task rec paused" in paused.stdout
        assert node.rpc("status")["tasks"]["rec"]["state"] == "paused"
        resumed = cli("resume", "rec", "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads(resumed.stdout)["paused"] is False
        missing = cli("pause", "nope")
        assert missing.returncode != 0 and "nope" in missing.stderr
