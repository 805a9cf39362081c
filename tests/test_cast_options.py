"""The options a cast carries reach its handler: priority (or the task's default), its
deadline, its trace and its parent, over JSON-RPC, BERT-RPC and the Python client.

Against a real node process; the handler (tests/workers/sample.py `record`) writes
down the meta it was given. What each option does to delivery (the lottery, expiry,
delay) is tested with that control; this is what the handler sees.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import TEST_WORKERS, read_records, wait_for
from test_ingress import Bert, IngressNode

from yptask.ingress.trace import span_of
from yptask.wire.bertrpc import Reply

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[IngressNode]:
    records = tmp_path / "rec.jsonl"
    node = IngressNode(tmp_path, f"""
[[task]]
name = "rec"
worker_class = "sample:Sample"
messages = ["*.record"]
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
settings = {{ record_path = "{records}" }}
default_priority = 3
""")
    try:
        node.start()
        yield node
    finally:
        node.stop()


def handled(node: IngressNode, message_id: str) -> dict[str, Any]:
    """The meta the handler of `message_id` was given."""
    found = wait_for(lambda: next((r for r in read_records(node.tmp / "rec.jsonl")
                                   if r["id"] == message_id), None),
                     what=f"message {message_id} handled")
    return found["meta"]


def test_a_cast_without_a_priority_gets_its_tasks_default_and_one_with_keeps_its_own(node):
    plain = node.cast("upai.record", {"n": 1})["id"]
    urgent = node.cast("upai.record", {"n": 2}, priority=7)["id"]
    lowest = node.cast("upai.record", {"n": 3}, priority=0)["id"]
    assert handled(node, plain)["priority"] == 3
    assert handled(node, urgent)["priority"] == 7
    assert handled(node, lowest)["priority"] == 0


def test_a_ttl_becomes_the_deadline_the_handler_sees(node):
    before = time.time()
    message_id = node.cast("upai.record", {"n": 1}, ttl_s=600)["id"]
    after = time.time()
    meta = handled(node, message_id)
    assert before + 600 <= meta["deadline"] <= after + 600
    absolute = time.time() + 900
    assert handled(node, node.cast("upai.record", {}, deadline=absolute)["id"]
                   )["deadline"] == absolute


def test_a_given_trace_is_kept_with_this_message_as_the_next_parent_span(node):
    parent = node.cast("upai.record", {"n": 0})["id"]
    message_id = node.cast("upai.record", {"n": 1}, traceparent=TRACEPARENT,
                                    parent=parent)["id"]
    meta = handled(node, message_id)
    assert meta["trace_id"] == TRACE
    assert meta["traceparent"] == f"00-{TRACE}-{span_of(message_id)}-01"
    assert meta["parent_id"] == parent


def test_a_cast_without_a_trace_starts_one_of_its_own(node):
    first = handled(node, node.cast("upai.record", {"n": 1})["id"])
    second = handled(node, node.cast("upai.record", {"n": 2})["id"])
    for meta in (first, second):
        assert re.fullmatch(r"[0-9a-f]{32}", meta["trace_id"]) and meta["trace_id"].strip("0")
        assert "parent_id" not in meta
    assert first["trace_id"] != second["trace_id"]


async def test_bert_rpc_casts_take_the_same_options(node):
    conn = await Bert.connect(node)
    try:
        reply = await conn.call("upai.record", {"n": 1}, {"priority": 8, "ttl_s": 60,
                                                          "traceparent": TRACEPARENT})
    finally:
        await conn.close()
    assert isinstance(reply, Reply), reply
    meta = handled(node, reply.result["id"])
    assert (meta["priority"], meta["trace_id"]) == (8, TRACE)
    assert meta["deadline"] > time.time()
