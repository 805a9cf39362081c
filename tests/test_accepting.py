"""The manual degrade switch: a task with `accepting = false` refuses new casts and calls.

What it had journaled before is still delivered; a cast for several tasks is
refused whole (nothing of it stored), as back-pressure refuses one; switched
back on, it takes casts again. Tried on a real node in this process and, for the
replication, on a cluster of two node processes.
"""

from __future__ import annotations

from typing import Any

import pytest
from support import SeededNode, read_records, recording_task, until, wait_for

from yptask.errors import NotAccepting, Overloaded

pytestmark = pytest.mark.timeout(180)


async def _state(node: Any, task: str) -> dict[str, Any]:
    return (await node.status())["tasks"][task]


async def _set_accepting(node: Any, task: str, accepting: bool) -> None:
    await node.put_task({**(await node.task(task)), "accepting": accepting})


async def test_a_task_not_accepting_refuses_casts_and_calls_and_delivers_what_it_had(node):
    # Given a paused echo task holding one journaled message
    await node.pause("echo")
    await node.cast("x.echo", {"n": 1})
    await until(lambda: _queued(node, "echo", 1), what="the message journaled")
    # When it is switched off
    await _set_accepting(node, "echo", False)
    # Then new casts and calls for it are refused, with its name, as a retryable overload
    with pytest.raises(NotAccepting, match="task echo is not accepting") as refused:
        await node.cast("x.echo", {"n": 2})
    assert isinstance(refused.value, Overloaded)
    with pytest.raises(NotAccepting):
        await node.call("x.echo", {"n": 3})
    assert (await _state(node, "echo"))["accepting"] is False
    # while what it had journaled is still delivered
    await node.resume("echo")
    await until(lambda: _handled(node, "echo", 1), what="the journaled message handled")
    assert (await _state(node, "echo"))["queued"] == 0
    # and the other task takes its casts as before
    assert (await node.cast("sample.whoami", {}))["tasks"] == ["sample"]
    # When it is switched back on, it takes casts again
    await _set_accepting(node, "echo", True)
    assert (await node.cast("x.echo", {"n": 4}))["tasks"] == ["echo"]
    assert await node.call("x.echo", 5) == 5


async def test_a_cast_for_several_tasks_is_refused_whole_when_one_is_not_accepting(node):
    # Given two tasks subscribed to one name (echo: *.echo, sample: sample.*)
    await _set_accepting(node, "sample", False)
    before = (await _state(node, "echo"))["handled"]
    # When a message both subscribe to is cast
    with pytest.raises(NotAccepting, match="task sample"):
        await node.cast("sample.echo", {"n": 1})
    # Then nothing of it was stored: echo handles nothing new
    assert await node.call("x.echo", 1) == 1  # the node serves on
    assert (await _state(node, "echo"))["handled"] == before + 1  # that call only
    assert (await _state(node, "echo"))["queued"] == 0


def test_a_switch_made_on_one_node_holds_on_the_other(tmp_path):
    records = tmp_path / "rec.jsonl"
    tasks = recording_task("rec", "*.record", records)
    with SeededNode(tmp_path, "a", tasks, None) as first, \
            SeededNode(tmp_path, "b", tasks, first.link) as second:
        wait_for(lambda: len(second.rpc("nodes")) == 2, what="the two nodes linked")
        definition = first.rpc("tasks.get", "rec")
        first.rpc("tasks.put", {**definition, "accepting": False})
        wait_for(lambda: second.rpc("status")["tasks"]["rec"]["accepting"] is False,
                 what="the switch replicated to node b")
        refused = second.answer("cast", "x.record", {"n": 1})
        assert refused["error"]["code"] == -32018, refused
        assert "not accepting" in refused["error"]["message"]
        second.rpc("tasks.put", {**definition, "accepting": True})
        wait_for(lambda: first.rpc("status")["tasks"]["rec"]["accepting"] is True,
                 what="switched back on at node a")
        [message_id] = first.cast_batch("x.record", [{"n": 2}])
        wait_for(lambda: [r["id"] for r in read_records(records)] == [message_id],
                 what="the new cast handled")


async def _queued(node: Any, task: str, n: int) -> bool:
    return bool((await _state(node, task))["queued"] == n)


async def _handled(node: Any, task: str, n: int) -> bool:
    return bool((await _state(node, task))["handled"] >= n)
