"""Delayed casts: `delay_s` / `at` journal a message at once and deliver it no sooner than
its time, even across a kill -9 of the node; what waits (delayed casts and retries) is
listed by `scheduled.list`, `Client.scheduled` and `yptask scheduled`.

Against real node processes; the handler (tests/workers/sample.py `record`) writes down
when it ran each delivery. Lateness is logged, never asserted tightly. The pool's
wake-up at the due time is tried on its own (`DueTimes`) with a journal that answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import TEST_WORKERS, NodeProcess, read_records, wait_for

from yptask.client import Client
from yptask.delivery.schedule import DUE_MARGIN_S, DueTimes
from yptask.errors import ConfigError

pytestmark = pytest.mark.timeout(180)

log = logging.getLogger(__name__)


def _task(records: Path, extra: str = "") -> str:
    return f"""
[[task]]
name = "rec"
worker_class = "sample:Sample"
messages = ["*.record", "*.fail", "*.crash_first"]
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
settings = {{ record_path = "{records}" }}
nodes = {{ "*" = 1 }}
{extra}
"""


def _handled(records: Path, message_id: str) -> dict[str, Any] | None:
    return next((r for r in read_records(records) if r["id"] == message_id), None)


def test_a_delayed_cast_is_handled_not_before_its_time(tmp_path):
    records = tmp_path / "rec.jsonl"
    with NodeProcess(tmp_path, _task(records)) as node:
        # When a message is cast 1.5 s ahead, and another for an absolute time
        answer = node.cast("x.record", {"n": 1}, delay_s=1.5)
        at = time.time() + 2.0
        absolute = node.cast("x.record", {"n": 2}, at=at)
        assert absolute["not_before"] == pytest.approx(at)
        # Then it is journaled at once, and waits
        assert answer["not_before"] > time.time()
        assert node.rpc("status")["tasks"]["rec"]["queued"] == 2
        assert read_records(records) == []
        # and is handled once due, not before
        for cast in (answer, absolute):
            record = wait_for(lambda c=cast: _handled(records, c["id"]), what="handled")
            assert record["at"] >= cast["not_before"]
            assert record["attempt"] == 1
            log.info("delayed cast handled %.3f s after it was due",
                     record["at"] - cast["not_before"])
            assert record["at"] - cast["not_before"] < 5.0  # generous: not a timing test


def test_a_delayed_cast_survives_a_kill_of_the_node_before_it_is_due(tmp_path):
    records = tmp_path / "rec.jsonl"
    node = NodeProcess(tmp_path, _task(records))
    with node:
        # Given a message cast 4 s ahead
        answer = node.cast("x.record", {"n": 1}, delay_s=4)
        # When the node is killed outright before it is due, and started again on its data
        node.kill()
        assert time.time() < answer["not_before"]
        node.start()
        # Then it is still listed, and delivered once due, once
        assert [r["id"] for r in node.rpc("scheduled.list")] == [answer["id"]]
        record = wait_for(lambda: _handled(records, answer["id"]), what="handled after restart")
        assert record["at"] >= answer["not_before"]
        log.info("delayed cast handled %.3f s after it was due (after a kill -9)",
                 record["at"] - answer["not_before"])
        later = node.cast("x.record", {"n": 2})["id"]  # a second run would show by then
        wait_for(lambda: _handled(records, later), what="a later cast handled")
        assert [r["id"] for r in read_records(records)] == [answer["id"], later]
        assert node.rpc("scheduled.list") == []


def test_what_waits_is_listed_delayed_casts_and_retries(tmp_path):
    records = tmp_path / "rec.jsonl"
    with NodeProcess(tmp_path, _task(records, "retry_backoff_s = 60\nmax_attempts = 3")) as node:
        # Given a delayed cast, and a message that failed and waits for its retry
        later = node.cast("x.record", {"n": 1}, delay_s=300, priority=5)
        failing = node.cast("x.fail", {"reason": "on purpose"})
        rows = wait_for(lambda: len(rows := node.rpc("scheduled.list")) == 2 and rows,
                        what="both listed")
        # Then both are listed, soonest first, with what they are
        retry, delayed = rows
        assert (retry["id"], retry["kind"], retry["task"], retry["node"]) == (
            failing["id"], "retry", "rec", "p1")
        assert retry["attempt"] == 1
        assert (delayed["id"], delayed["kind"], delayed["name"], delayed["priority"]) == (
            later["id"], "delayed", "x.record", 5)
        assert delayed["not_before"] == pytest.approx(later["not_before"])
        assert delayed["attempt"] == 0
        assert node.rpc("scheduled.list", limit=1) == [retry]
        # by the Python client too
        client = Client(node.url, admin_token=node.admin_token)
        assert [r["id"] for r in client.scheduled()] == [failing["id"], later["id"]]
        # and the limit is checked, naming it
        with pytest.raises(ConfigError, match="limit"):
            node.rpc("scheduled.list", limit=0)


def test_yptask_scheduled_from_the_command_line(tmp_path):
    records = tmp_path / "rec.jsonl"
    with NodeProcess(tmp_path, _task(records)) as node:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("YPTASK_")}
            return subprocess.run(["yptask", *args, "--url", node.url, "--data-dir",
                                   str(node.data_dir)], capture_output=True, text=True,
                                  timeout=60, env=env, check=False)

        empty = cli("scheduled")
        assert empty.returncode == 0, empty.stderr
        assert "nothing scheduled" in empty.stdout
        answer = node.cast("x.record", {"n": 1}, delay_s=300)
        listed = cli("scheduled")
        assert listed.returncode == 0, listed.stderr
        assert answer["id"] in listed.stdout and "delayed" in listed.stdout
        as_json = cli("scheduled", "--json", "--limit", "5")
        assert as_json.returncode == 0, as_json.stderr
        assert [r["id"] for r in json.loads(as_json.stdout)] == [answer["id"]]


def test_a_cast_with_both_at_and_delay_s_is_refused_naming_them(tmp_path):
    records = tmp_path / "rec.jsonl"
    with NodeProcess(tmp_path, _task(records)) as node:
        with pytest.raises(ConfigError, match="delay_s") as refused:
            node.cast("x.record", {"n": 1}, delay_s=5, at=time.time() + 5)
        assert "at" in str(refused.value)
        assert node.rpc("scheduled.list") == []
        assert node.rpc("status")["tasks"]["rec"]["queued"] == 0


class _Journal:
    """Answers `next_due` as a journal thread would (the due time it was given)."""

    def __init__(self, due: float | None) -> None:
        self.due = due
        self.asked = 0

    async def run(self, call: Any) -> Any:
        self.asked += 1
        return self.due


def test_the_loop_sleeps_until_the_next_due_time_it_learns_not_a_fixed_poll():
    async def scenario() -> None:
        due = DueTimes()
        journal = _Journal(time.time() + 0.2)
        # After a start the journal is asked, and the wait ends at its due time
        wait = await due.wait_s(journal, "rec", 0.5)  # type: ignore[arg-type]
        assert journal.asked == 1
        assert 0.1 < wait <= 0.2 + DUE_MARGIN_S
        # A due time learnt later and sooner (a delayed cast, a retry) shortens the wait
        assert due.at(time.time() + 0.05)
        assert not due.at(time.time() + 10)
        assert await due.wait_s(journal, "rec", 0.5) <= 0.05 + DUE_MARGIN_S  # type: ignore[arg-type]
        assert journal.asked == 1  # known: not asked again
        # Once it has passed, the loop claims first (no wait), then asks for the next one
        due.next = time.time() - 0.01
        assert await due.wait_s(journal, "rec", 0.5) == 0.0  # type: ignore[arg-type]
        journal.due = None  # nothing else waits
        assert await due.wait_s(journal, "rec", 0.5) == 0.5  # type: ignore[arg-type]
        assert journal.asked == 2 and due.next == math.inf

    asyncio.run(scenario())


def test_a_retry_is_delivered_once_its_backoff_has_passed(tmp_path):
    records = tmp_path / "rec.jsonl"
    with NodeProcess(tmp_path, _task(records, "retry_backoff_s = 1.5")) as node:
        # Given a message whose first attempt kills its worker
        answer = node.cast("x.crash_first", {"n": 1})
        record = wait_for(lambda: _handled(records, answer["id"]), what="the retry handled")
        assert record["attempt"] == 2
        rows = [r for r in node.rpc("failures.list") if r.get("id") == answer["id"]]
        assert rows, "the first attempt's failure is listed"
        assert record["at"] >= rows[0]["at"] + 1.5
        log.info("retry handled %.3f s after it was due", record["at"] - rows[0]["at"] - 1.5)
