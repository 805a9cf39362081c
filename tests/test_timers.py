"""Timers on a node: saved and fired, edited live, deleted, failures shown; in one process.

The cluster behaviour (one firing node, failover) is in test_cluster_timers.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from support import ALONE, TEST_WORKERS, until

from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.errors import ConfigError, UnknownTimer
from yptask.ingress.cast import CastRequest
from yptask.node import Node


@pytest.fixture
async def node(tmp_path):
    task = TaskDef.from_dict({"name": "rec", "messages": ["tick.*"],
                              "worker_class": "sample:Sample",
                              "env": {"PYTHONPATH": str(TEST_WORKERS)},
                              "settings": {"record_path": str(tmp_path / "rec.jsonl")}})
    started = await Node.start(NodeConfig(name="solo", data_dir=tmp_path / "data",
                                          max_payload_bytes=256, **ALONE), tasks=[task])
    yield started
    await started.stop()


def records(tmp_path) -> list[dict]:
    path = tmp_path / "rec.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


EVERY_SECOND = {"name": "beat", "cron": "* * * * * *", "message": "tick.record",
                "payload": {"v": 1}, "misfire": "fire_all"}


async def test_a_timer_fires_each_tick_once_and_follows_edits_and_deletes(node, tmp_path):
    saved = await node.put_timer(EVERY_SECOND)
    assert saved["next_fire"] > saved["last_fire"] and saved["leader"] == "solo"
    await until(lambda: len(records(tmp_path)) >= 2, what="two ticks")
    ids = [r["id"] for r in records(tmp_path)]
    assert all(i.startswith("timer:beat:") for i in ids) and len(set(ids)) == len(ids)
    row = await node.timer("beat")
    assert row["last_fire"] is not None and row["next_fire"] > row["last_fire"]
    # An edit takes effect on the next tick, without a restart
    await node.put_timer({**EVERY_SECOND, "payload": {"v": 2}})
    await until(lambda: records(tmp_path)[-1]["payload"] == {"v": 2}, what="the new payload")
    # A delete stops it
    await node.delete_timer("beat")
    with pytest.raises(UnknownTimer):
        await node.timer("beat")
    await asyncio.sleep(1.5)  # let a tick in flight land
    count = len(records(tmp_path))
    await asyncio.sleep(1.5)
    assert len(records(tmp_path)) == count
    ticks = sorted(float(r["id"].rsplit(":", 1)[1]) for r in records(tmp_path))
    assert len(set(ticks)) == len(ticks)  # no tick twice


async def test_a_tick_that_cannot_be_cast_shows_as_the_last_error_and_is_retried(node):
    await node.put_timer({**EVERY_SECOND, "payload": {"blob": "x" * 400}})  # over 256 bytes
    row = await until(lambda: _with_error(node), what="the error")
    assert "over the node's limit" in row["last_error"]


async def _with_error(node: Node):
    row = await node.timer("beat")
    return row if row["last_error"] else None


async def test_impossible_timers_are_refused_at_save(node):
    with pytest.raises(ConfigError, match="'cron'"):
        await node.put_timer({**EVERY_SECOND, "cron": "0 0 31 2 *"})
    assert await node.timers() == []


async def test_publishers_cannot_forge_a_tick(node, tmp_path):
    """A cast with a tick's id is refused: it could squat a tick and replace its payload."""
    with pytest.raises(ConfigError, match="timer:"):
        await node.cast("tick.record", {"forged": True}, id="timer:beat:1700000000.000")
    saved = await node.put_timer(EVERY_SECOND)
    forged = f"timer:beat:{saved['next_fire'] + 1:.3f}"
    (refused,) = await node.cast_many([CastRequest("tick.record", {"forged": True}, forged)])
    assert isinstance(refused, ConfigError) and "timer:" in str(refused)
    await until(lambda: any(r["id"] == forged for r in records(tmp_path)), timeout_s=15)
    assert all(r["payload"] == {"v": 1} for r in records(tmp_path))
