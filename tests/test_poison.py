"""Poison messages: a payload that cannot be sent to a worker is refused at ingress, and
one that gets past it anyway (written straight into the journal) ends as a dead letter
with its error, never stuck in flight, while the node and its other messages carry on.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from support import TEST_WORKERS, NodeProcess, read_records, until, wait_for

from yptask.errors import EncodeError
from yptask.store.journal import Envelope, Journal
from yptask.wire.codec import DEFAULT_MAX_DEPTH

TASKS = """
[[task]]
name = "rec"
worker_class = "sample:Sample"
messages = ["*.record", "*.echo"]
env = {{ PYTHONPATH = "{workers}" }}
settings = {{ record_path = "{record}" }}
max_attempts = 3
retry_backoff_s = 0.05
"""


def nested(levels: int) -> Any:
    """A payload `levels` lists deep around a number."""
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


async def test_the_deepest_payload_accepted_is_handled_and_one_deeper_is_refused(node):
    # Given the deepest payload the node accepts (found by casting ever shallower ones)
    depth = DEFAULT_MAX_DEPTH + 1
    while True:
        depth -= 1
        try:
            cast = await node.cast("deep.echo", nested(depth))
            break
        except EncodeError:
            assert depth > 1, "no payload was accepted"
    # Then it is handled: acked, not in flight, not dead
    async def handled() -> bool:
        echo = (await node.status())["tasks"]["echo"]
        return echo["handled"] == 1 and echo["in_flight"] == echo["queued"] == 0
    await until(handled, timeout_s=20, what=f"message {cast['id']} handled")
    assert await node.dead_letters() == []
    # and a call with it is answered with it
    assert await node.call("deep.echo", nested(depth)) == nested(depth)
    # And one level deeper is refused at ingress, saying how deep a payload may be
    for publish in (node.cast, node.call):
        with pytest.raises(EncodeError, match=f"deeper than the {depth} levels a worker takes"):
            await publish("deep.echo", nested(depth + 1))


def test_a_message_that_cannot_be_sent_to_a_worker_is_dead_lettered_and_the_rest_carry_on(
        tmp_path):
    records = tmp_path / "rec.jsonl"
    node = NodeProcess(tmp_path, TASKS.format(workers=TEST_WORKERS, record=records))
    try:
        node.start()
        assert node.rpc("call", "upai.echo", 1) == 1
        node.stop()
        # Given a message too deep for a worker's packet, written into the journal past
        # the ingress checks, ahead of a good one
        journal = Journal(tmp_path / "data" / "journal.db")
        try:
            journal.append([
                (Envelope("poison", "upai.record", nested(DEFAULT_MAX_DEPTH), time.time()),
                 ["rec"]),
                (Envelope("fine", "upai.record", {"n": 1}, time.time()), ["rec"])])
        finally:
            journal.close()
        log_before = (tmp_path / "node.log").read_text()
        # When the node starts again
        node.start()
        # Then the poison message is dead-lettered with a clear error, at once
        (letter,) = wait_for(lambda: node.rpc("dead.list"), timeout_s=30,
                             what="the poison message dead-lettered")
        assert (letter["id"], letter["error_class"], letter["attempt"]) == (
            "poison", "EncodeError", 1)
        assert "nested deeper" in letter["error"] and "worker" in letter["error"]
        # and the good one is handled, by a worker that never crashed
        (record,) = wait_for(lambda: read_records(records), what="the good message handled")
        assert record["id"] == "fine"
        status = node.rpc("status")["tasks"]["rec"]
        assert (status["queued"], status["in_flight"], status["state"]) == (0, 0, "running")
        assert status["pids"] == [record["pid"]]
        assert node.rpc("call", "upai.echo", 2) == 2
        log = (tmp_path / "node.log").read_text()[len(log_before):]
        assert "(crashed)" not in log and "failed to start" not in log
    finally:
        node.stop()
