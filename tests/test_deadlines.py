"""Deadlines: a delivery past its deadline (the cast's ttl_s / deadline, else its task's
message_ttl_s) never reaches a worker: it is dead-lettered as Expired, counted in status,
and a call whose caller stopped waiting is never run afterwards.

Against real node processes; the handler (tests/workers/sample.py `record`) writes down
every delivery it ran, with the meta it was given.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from support import TEST_WORKERS, NodeProcess, read_records, wait_for

from yptask.errors import CallTimeout, ConfigError

pytestmark = pytest.mark.timeout(180)


def _task(records: Path, extra: str = "") -> str:
    """One worker, pipelining as it likes: a slow message holds up what comes after it."""
    return f"""
[[task]]
name = "rec"
worker_class = "sample:Sample"
messages = ["*.record", "*.record_slowly"]
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
settings = {{ record_path = "{records}" }}
nodes = {{ "*" = 1 }}
{extra}
"""


def _dead(node: NodeProcess, message_id: str) -> dict[str, Any] | None:
    return next((d for d in node.rpc("dead.list") if d["id"] == message_id), None)


def _ids(records: Path) -> list[str]:
    return [r["id"] for r in read_records(records)]


def test_a_ttl_cast_behind_a_slow_handler_expires_unhandled(tmp_path):
    records = tmp_path / "rec.jsonl"
    with NodeProcess(tmp_path, _task(records)) as node:
        # Given the task's only worker busy for 3 s
        slow = node.cast("x.record_slowly", {"seconds": 3})["id"]
        wait_for(lambda: node.rpc("status")["tasks"]["rec"]["in_flight"] == 1,
                 what="the slow message taken")
        # When a message that may wait 0.5 s at most is cast behind it, and one without
        before = time.time()
        short = node.cast("x.record", {"n": 1}, ttl_s=0.5)["id"]
        patient = node.cast("x.record", {"n": 2})["id"]
        # Then the patient one is handled after the slow one, the short one never
        wait_for(lambda: patient in _ids(records), what="the patient message handled")
        assert _ids(records) == [slow, patient]
        # and the short one is a dead letter saying it expired, and when
        letter = wait_for(lambda: _dead(node, short), what="the expired dead letter")
        assert letter["error_class"] == "Expired"
        assert "expired at" in letter["error"]
        assert letter["died_at"] >= before + 0.5
        status = node.rpc("status")["tasks"]["rec"]
        assert (status["expired"], status["handled"], status["failed"]) == (1, 2, 0)
        assert (status["queued"], status["in_flight"]) == (0, 0)


def test_a_ttl_cast_claimed_with_a_slow_one_expires_rather_than_run_late(tmp_path):
    records = tmp_path / "rec.jsonl"
    with NodeProcess(tmp_path, _task(records)) as node:
        # Given a worker that has learnt to take messages ahead into its pipe (fast ones
        # whose answers wait to be read make it write more ahead of each answer)
        warm = node.cast_batch("x.record", [{"warm": n} for n in range(400)])
        wait_for(lambda: len(read_records(records)) == len(warm), what="the warm-up handled")
        # and a slow message and a short-lived one claimed together (cast while the task
        # is paused), so that the second could be written into the pipe behind the first
        node.rpc("tasks.pause", "rec")
        slow = node.cast("x.record_slowly", {"seconds": 3})["id"]
        short = node.cast("x.record", {"n": 1}, ttl_s=1)["id"]
        node.rpc("tasks.resume", "rec")
        # Then the short one expires rather than run late, once the slow one is done
        letter = wait_for(lambda: _dead(node, short), what="the expired dead letter")
        assert letter["error_class"] == "Expired"
        wait_for(lambda: slow in _ids(records), what="the slow message handled")
        assert _ids(records) == [*warm, slow]
        assert node.rpc("status")["tasks"]["rec"]["expired"] == 1


def test_a_tasks_message_ttl_expires_what_waits_longer(tmp_path):
    records = tmp_path / "rec.jsonl"
    with NodeProcess(tmp_path, _task(records, "message_ttl_s = 1.0")) as node:
        # Given a task whose messages may wait 1 s, and its worker busy for 3 s
        slow = node.cast("x.record_slowly", {"seconds": 3})["id"]
        waiting = node.cast("x.record", {"n": 1})["id"]
        # Then the one waiting behind expires (the slow one started in time: it is handled)
        letter = wait_for(lambda: _dead(node, waiting), what="the expired dead letter")
        assert letter["error_class"] == "Expired"
        wait_for(lambda: node.rpc("status")["tasks"]["rec"]["handled"] == 1,
                 what="the slow message handled")
        assert _ids(records) == [slow]
        # and one handled in time sees the effective deadline in its meta
        before = time.time()
        quick = node.cast("x.record", {"n": 2})["id"]
        wait_for(lambda: quick in _ids(records), what="a quick message handled")
        meta = next(r["meta"] for r in read_records(records) if r["id"] == quick)
        assert before + 1.0 <= meta["deadline"] <= time.time() + 1.0
        assert node.rpc("status")["tasks"]["rec"]["expired"] == 1


def test_a_cast_with_its_own_deadline_keeps_it_over_the_tasks_ttl(tmp_path):
    records = tmp_path / "rec.jsonl"
    with NodeProcess(tmp_path, _task(records, "message_ttl_s = 1.0")) as node:
        deadline = time.time() + 600
        message_id = node.cast("x.record", {"n": 1}, deadline=deadline)["id"]
        wait_for(lambda: message_id in _ids(records), what="the message handled")
        meta = read_records(records)[0]["meta"]
        assert meta["deadline"] == pytest.approx(deadline)


def test_a_past_deadline_and_a_negative_ttl_are_refused_naming_the_field(tmp_path):
    records = tmp_path / "rec.jsonl"
    with NodeProcess(tmp_path, _task(records)) as node:
        # (InvalidParams travels under the class name ConfigError, code -32602)
        with pytest.raises(ConfigError, match=r"invalid params.*'deadline'"):
            node.cast("x.record", {"n": 1}, deadline=time.time() - 10)
        with pytest.raises(ConfigError, match=r"invalid params.*'ttl_s'"):
            node.cast("x.record", {"n": 2}, ttl_s=-1)
        assert node.rpc("status")["tasks"]["rec"]["queued"] == 0


def test_a_call_whose_caller_gave_up_waiting_for_a_busy_worker_never_runs(tmp_path):
    records = tmp_path / "rec.jsonl"
    with NodeProcess(tmp_path, _task(records)) as node:
        # Given the only worker busy for 3 s
        slow = node.cast("x.record_slowly", {"seconds": 3})["id"]
        wait_for(lambda: node.rpc("status")["tasks"]["rec"]["in_flight"] == 1,
                 what="the slow message taken")
        # When a call waits 0.5 s for it and gives up
        with pytest.raises(CallTimeout):
            node.call("x.record", {"call": 1}, timeout=0.5)
        # Then, once the worker is free again (it handles a cast after the slow one),
        after = node.cast("x.record", {"n": 2})["id"]
        wait_for(lambda: after in _ids(records), what="the cast after the slow one handled")
        last = node.cast("x.record", {"n": 3})["id"]  # one worker: a late run shows by then
        wait_for(lambda: last in _ids(records), what="a later cast handled")
        # the call was never run
        assert [r["payload"] for r in read_records(records)] == [{"seconds": 3}, {"n": 2},
                                                                 {"n": 3}]
        assert slow in _ids(records)
