"""Trace ids end to end: every cast and call belongs to a W3C trace, and `trace` shows
the tree of messages one request caused, on every node, with how each ended.

Against real node processes: a cast or call that brings a traceparent (a
parameter, or the HTTP header) joins that trace, one that brings none (or a
header that cannot be parsed) starts its own; a handler's casts and calls carry
its trace on, with its message as their parent; a dead letter, a failure and
its log line name the trace; and on a cluster of two the trace view merges
both nodes' journals and calls, naming where each ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import subprocess
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from support import TEST_WORKERS, NodeProcess, SeededNode, wait_for

from yptask.delivery import traces
from yptask.errors import YPTaskError
from yptask.ingress.publisher import MessageIds
from yptask.ingress.trace import new_trace_id, own_trace_id, span_of
from yptask.store.journal import Envelope, Journal
from yptask.wire.bertrpc import Call, ErrorReply, Reply, decode_packet, frame

pytestmark = pytest.mark.timeout(240)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"
HEX32 = re.compile(r"[0-9a-f]{32}")


def tracer_task(name: str, messages: list[str], records: Path, nodes: str = '"*" = 1') -> str:
    return f"""
[[task]]
name = "{name}"
worker_class = "tracer:Tracer"
messages = {json.dumps(messages)}
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
settings = {{ record_path = "{records}" }}
max_attempts = 1
nodes = {{ {nodes} }}
"""


def _answers(node: SeededNode, name: str) -> bool:
    try:
        node.call(name, {"probe": True}, timeout=5)
    except YPTaskError:
        return False
    return True


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def record_of(path: Path, name: str, **meta: Any) -> dict[str, Any] | None:
    return next((r for r in records(path) if r["name"] == name
                 and all(r["meta"].get(k) == v for k, v in meta.items())), None)


def post(node: NodeProcess, body: Any, traceparent: str) -> Any:
    headers = {**node.headers, "traceparent": traceparent}
    request = urllib.request.Request(node.url, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def message(trace: dict[str, Any], mid: str) -> dict[str, Any]:
    return next(m for m in trace["messages"] if m["id"] == mid)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trace")
    path = tmp / "rec.jsonl"
    # a handler's call goes to another task: its own one worker is busy with the caller
    proc = NodeProcess(tmp, tracer_task("tracer", ["tr.start", "tr.child", "tr.fail"], path)
                       + tracer_task("asker", ["tr.ask"], path))
    with proc:
        proc.records = path  # type: ignore[attr-defined]
        yield proc


def test_a_cast_keeps_its_traceparent_and_one_without_gets_a_fresh_trace(node):
    given = node.cast("tr.child", {"n": 1}, traceparent=TRACEPARENT)["id"]
    fresh = node.cast("tr.child", {"n": 2})["id"]
    seen = wait_for(lambda: record_of(node.records, "child", id=fresh), what="fresh handled")
    kept = wait_for(lambda: record_of(node.records, "child", id=given), what="given handled")
    assert kept["meta"]["trace_id"] == TRACE
    assert kept["meta"]["traceparent"] == f"00-{TRACE}-{span_of(given)}-01"
    assert HEX32.fullmatch(seen["meta"]["trace_id"]) and seen["meta"]["trace_id"] != TRACE
    assert node.rpc("trace", given)["trace_id"] == TRACE


def test_a_handler_casts_and_calls_on_in_its_trace_with_its_message_as_parent(node):
    first = node.cast("tr.start", {"call": True}, traceparent=TRACEPARENT)["id"]
    child = wait_for(lambda: record_of(node.records, "child", parent_id=first),
                     what="the child handled")
    asked = wait_for(lambda: record_of(node.records, "ask", parent_id=first),
                     what="the call handled")
    assert child["meta"]["trace_id"] == asked["meta"]["trace_id"] == TRACE
    def shown() -> dict[str, Any] | None:
        trace = node.rpc("trace", child["id"])
        return trace if message(trace, child["id"])["tasks"][0]["state"] == "handled" else None

    trace = wait_for(shown, what="the child shown handled")
    assert trace["trace_id"] == TRACE
    root = message(trace, first)
    assert root["parent_id"] is None and root["kind"] == "cast" and root["node"] == "p1"
    assert message(trace, child["id"])["parent_id"] == first
    call = message(trace, asked["id"])
    assert call["kind"] == "call" and call["parent_id"] == first
    assert call["tasks"][0]["state"] == "handled" and call["tasks"][0]["node"] == "p1"


def test_a_call_takes_a_traceparent_and_a_parent(node):
    meta = node.rpc("call", "tr.ask", {}, 30, TRACEPARENT, "some-parent")
    assert meta["trace_id"] == TRACE and meta["parent_id"] == "some-parent"
    fresh = node.call("tr.ask", {})
    assert HEX32.fullmatch(fresh["trace_id"]) and fresh["trace_id"] != TRACE


def test_a_call_over_bert_rpc_takes_its_trace_in_an_options_map(node):
    given = {"traceparent": TRACEPARENT, "parent": "bert-parent"}
    with_map, with_timeout, plain, bad = asyncio.run(_bert_calls(node, [
        ["tr.ask", {}, {"timeout": 30, **given}], ["tr.ask", {}, 30, given],
        ["tr.ask", {}, 30], ["tr.ask", {}, 30, {"timeout": 5}]]))
    for answer in (with_map, with_timeout):
        assert isinstance(answer, Reply), answer
        assert answer.result["trace_id"] == TRACE
        assert answer.result["parent_id"] == "bert-parent"
    assert isinstance(plain, Reply) and plain.result["trace_id"] != TRACE
    assert isinstance(bad, ErrorReply) and "timeout" in bad.detail


async def _bert_calls(node: NodeProcess, calls: list[list[Any]]) -> list[Any]:
    host, port = node.bert_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    answers = []
    try:
        for args in calls:
            writer.write(frame(Call("yptask", "call", args)))
            await writer.drain()
            header = await reader.readexactly(4)
            answers.append(decode_packet(await reader.readexactly(
                struct.unpack(">I", header)[0])))
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


def test_a_bad_traceparent_parameter_is_refused_naming_it(node):
    for method, params in (("cast", {"name": "tr.child", "msg": {}, "traceparent": "00-xyz"}),
                           ("call", {"name": "tr.ask", "msg": {}, "traceparent": "00-xyz"}),
                           ("call", {"name": "tr.ask", "msg": {}, "parent": 12})):
        error = node.answer(method, **params)["error"]
        assert error["code"] == -32602
        wanted = "'parent'" if "parent" in params else "'traceparent'"
        assert wanted in error["message"], error


def test_the_http_header_is_the_trace_of_what_brings_none_and_a_bad_one_starts_a_new(node):
    header = f"00-{'ab' * 16}-00f067aa0ba902b7-01"
    answers = post(node, [{"jsonrpc": "2.0", "id": 1, "method": "cast",
                           "params": {"name": "tr.child", "msg": {}}},
                          {"jsonrpc": "2.0", "id": 2, "method": "cast",
                           "params": {"name": "tr.child", "msg": {},
                                      "traceparent": TRACEPARENT}},
                          {"jsonrpc": "2.0", "id": 3, "method": "call",
                           "params": ["tr.ask", {}]}], header)
    by_id = {a["id"]: a["result"] for a in answers}
    assert node.rpc("trace", by_id[1]["id"])["trace_id"] == "ab" * 16
    assert node.rpc("trace", by_id[2]["id"])["trace_id"] == TRACE
    assert by_id[3]["trace_id"] == "ab" * 16
    bad = post(node, {"jsonrpc": "2.0", "id": 1, "method": "cast",
                      "params": ["tr.child", {}]}, "not-a-traceparent")
    new = node.rpc("trace", bad["result"]["id"])["trace_id"]
    assert HEX32.fullmatch(new) and new not in (TRACE, "ab" * 16)


def test_a_failure_and_its_dead_letter_carry_the_trace(node):
    mid = node.cast("tr.fail", {}, traceparent=TRACEPARENT, parent="the-cause")["id"]
    dead = wait_for(lambda: next((d for d in node.rpc("dead.list") if d["id"] == mid), None),
                    what="the dead letter")
    assert dead["trace_id"] == TRACE and dead["parent_id"] == "the-cause"
    failure = next(f for f in node.rpc("failures.list") if f["id"] == mid)
    assert failure["trace_id"] == TRACE and failure["parent_id"] == "the-cause"
    wait_for(lambda: any(mid in line and TRACE in line for line in node.log().splitlines()),
             what="the failure's log line naming the trace")
    task = message(node.rpc("trace", mid), mid)["tasks"][0]
    assert task["state"] == "dead" and task["error_class"] == "ValueError"


def test_trace_is_for_admins_and_checks_its_id(node):
    answer = node.batch([("trace", [TRACE])], admin=False)[0]
    assert answer["error"]["code"] != 0 and "result" not in answer
    error = node.answer("trace", 5)["error"]
    assert error["code"] == -32602 and "'id'" in error["message"]
    assert node.rpc("trace", "f" * 32)["messages"] == []


# ---------------------------------------------------------------- a cluster of two


def test_yptask_trace_on_two_nodes_shows_where_each_message_ran(tmp_path):
    path = tmp_path / "rec.jsonl"
    tasks = (tracer_task("starter", ["tr.start"], path, '"n1" = 1')
             + tracer_task("childs", ["tr.child", "tr.ask"], path, '"n2" = 1'))
    first = SeededNode(tmp_path, "n1", tasks, None)
    with first:
        second = SeededNode(tmp_path, "n2", tasks, first.link)
        with second:
            for each in (first, second):
                wait_for(lambda each=each: len(each.rpc("nodes")) == 2,
                         what=f"{each.name} linked")
            wait_for(lambda: second.rpc("status")["tasks"]["childs"]["workers"].get("n2"),
                     what="the child task's worker up on n2")
            # and n1's link to n2 up (its handler's call goes over it, with one attempt)
            wait_for(lambda: _answers(first, "tr.ask"), what="a call from n1 answered on n2")
            root = first.cast("tr.start", {"call": True})["id"]
            child = wait_for(lambda: record_of(path, "child", parent_id=root),
                             what="the child handled on n2")
            asked = wait_for(lambda: record_of(path, "ask", parent_id=root),
                             what="the call handled on n2")
            assert child["node"] == asked["node"] == "n2"

            def shown() -> dict[str, Any] | None:
                trace = first.rpc("trace", root)
                done = {m["id"]: m for m in trace["messages"]
                        if all(t["state"] == "handled" for t in m["tasks"])}
                return trace if {root, child["id"], asked["id"]} <= done.keys() else None

            trace = wait_for(shown, what="the whole trace handled, seen from n1")
            assert message(trace, root)["node"] == "n1"
            assert message(trace, child["id"])["node"] == "n2"
            assert message(trace, child["id"])["tasks"][0]["node"] == "n2"
            assert message(trace, asked["id"])["node"] == "n2"  # a call sent over the link
            assert message(trace, asked["id"])["parent_id"] == root
            assert second.rpc("trace", child["id"])["trace_id"] == trace["trace_id"]
            env = {k: v for k, v in os.environ.items() if not k.startswith("YPTASK_")}
            done = subprocess.run(["yptask", "trace", trace["trace_id"], "--url", first.url,
                                   "--data-dir", str(first.data_dir)], capture_output=True,
                                  text=True, timeout=60, env=env, check=False)
            assert done.returncode == 0, done.stderr
            lines = done.stdout.splitlines()
            assert lines[0] == f"trace {trace['trace_id']}"
            root_line = next(i for i, x in enumerate(lines)
                             if x.startswith(f"cast tr.start {root}"))
            assert "starter on n1: handled" in lines[root_line + 1]
            child_line = next(i for i, x in enumerate(lines) if f"tr.child {child['id']}" in x)
            assert lines[child_line].startswith("  cast tr.child")  # under its parent
            assert "childs on n2: handled" in lines[child_line + 1]
            assert any(x.startswith(f"  call tr.ask {asked['id']}") for x in lines)
            missing = subprocess.run(["yptask", "trace", "no-such-id", "--url", first.url,
                                      "--data-dir", str(first.data_dir)], capture_output=True,
                                     text=True, timeout=60, env=env, check=False)
            assert missing.returncode != 0 and "no-such-id" in missing.stderr


def test_fresh_trace_ids_are_valid_unique_and_grow_with_time():
    # they add to the end of the journal's trace index, instead of a page each anywhere
    ids = [new_trace_id() for _ in range(20_000)]  # over more than one millisecond
    first = ids[0]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) and int(i, 16) for i in ids)
    assert len(set(ids)) == len(ids)
    prefixes = [i[:12] for i in ids]
    assert prefixes == sorted(prefixes)
    assert int(first[:12], 16) <= int(time.time() * 1000)


def test_a_cast_that_starts_its_trace_stores_none_and_is_found_by_it(tmp_path):
    # A node-made id is its own trace id, stored as NULL: no trace index entry per cast
    root_id = MessageIds()()
    trace_id = own_trace_id(root_id)
    assert trace_id is not None and re.fullmatch(r"[0-9a-f]{32}", trace_id)
    assert own_trace_id("order-42") is None  # a publisher's id gets a fresh trace id instead
    journal = Journal(tmp_path / "journal.db")
    try:
        journal.append([(Envelope(root_id, "a.b", {}, 1.0, trace_id=trace_id), ["t"]),
                        (Envelope("child", "a.c", {}, 2.0, trace_id=trace_id,
                                  parent_id=root_id), ["t"]),
                        (Envelope(MessageIds()(), "a.d", {}, 3.0), ["t"])])  # no trace
        stored = dict(journal.read(lambda db: db.execute(
            "SELECT id, trace_id FROM messages").fetchall()))
        assert stored[root_id] is None and stored["child"] == trace_id
        # read back with its trace, and found by it with its child
        claimed = {d.message.id: d.message.trace_id for d in journal.claim("t", limit=3)}
        assert claimed[root_id] == trace_id and claimed["child"] == trace_id
        casts = journal.read(partial(traces._casts, trace_id=trace_id, node="n1"))
        assert [m["id"] for m in casts] == [root_id, "child"]
        assert journal.read(partial(traces._trace_of, message_id=root_id)) == trace_id
    finally:
        journal.close()
