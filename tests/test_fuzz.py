"""Fuzzing the node's surfaces: JSON-RPC bodies, BERT-RPC frames, inter-node link bytes.

Hypothesis draws hostile input (bounded: a fixed number of examples, no
deadline games); one real node in this process takes it all over real
sockets. No input may crash it, hang it or get an answer that is not a clear
error: after every example the node must still answer a plain call.
"""

from __future__ import annotations

import asyncio
import json
import struct

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ALONE, ECHO

from yptask import codec
from yptask.bertrpc import Call, Reply, decode_packet, frame
from yptask.config import NodeConfig, TaskDef
from yptask.node import Node

EXAMPLES = 60
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = (st.none() | st.booleans() | st.integers() | st.text(max_size=20)
           | st.floats(allow_nan=False, allow_infinity=False))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=12)
requests = st.fixed_dictionaries(
    {}, optional={"jsonrpc": st.sampled_from(["2.0", "1.0", 2]) | st.text(max_size=4),
                  "method": st.sampled_from(["cast", "call", "status", "tasks.get", "nope"])
                  | json_values,
                  "params": json_values, "id": json_values, "extra": json_values})
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    requests.map(lambda r: json.dumps(r).encode()),
    st.lists(requests, max_size=5).map(lambda rs: json.dumps(rs).encode()))


@pytest.fixture
async def node(tmp_path_factory):
    started = await Node.start(
        NodeConfig(name="fuzzed", data_dir=tmp_path_factory.mktemp("fuzz") / "data", **ALONE),
        tasks=[TaskDef.from_dict({**ECHO, "max_idle_s": 0})])
    yield started
    await started.stop()


def framed(term: object) -> bytes:
    body = codec.encode(term)
    return struct.pack(">I", len(body)) + body


async def still_serves(node: Node) -> None:
    assert await node.call("upai.echo", {"still": "here"}, timeout_s=10) == {"still": "here"}


async def exchange(address: str, data: bytes) -> bytes:
    """Send bytes to a TCP port; return what came back before it closed or went quiet."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(5):
            return await reader.read()
    except (ConnectionError, TimeoutError):
        return b""
    finally:
        writer.close()


@FUZZ
@given(body=bodies)
async def test_json_rpc_bodies_get_json_answers(node, body):
    async with aiohttp.ClientSession() as session, session.post(
            node.http_url + "/rpc", data=body,
            headers={"Content-Type": "application/json"}) as response:
        assert response.status in (200, 204)
        if response.status == 200:
            answer = json.loads(await response.text())
            for item in answer if isinstance(answer, list) else [answer]:
                assert item["jsonrpc"] == "2.0" and ("result" in item) != ("error" in item)
                if "error" in item:
                    assert isinstance(item["error"]["code"], int) and item["error"]["message"]
    await still_serves(node)


frames = st.one_of(
    st.binary(max_size=200),  # anything at all
    st.binary(max_size=200).map(lambda b: struct.pack(">I", len(b)) + b),  # framed garbage
    st.binary(max_size=100).map(lambda b: struct.pack(">I", len(b) + 1) + b"\x83" + b),
    json_values.map(lambda v: frame(Call("yptask", "cast", ["fuzz.record", v]))),
    st.tuples(st.text(max_size=8), st.text(max_size=8), json_values).map(
        lambda t: frame(Call(t[0] or "m", t[1] or "f", [t[2]]))))


@FUZZ
@given(data=frames)
async def test_bert_rpc_frames_get_bert_answers_or_a_closed_connection(node, data):
    back = await exchange(node.bert_address, data)
    offset = 0
    while offset + 4 <= len(back):  # every answer is a well-formed packet
        (length,) = struct.unpack(">I", back[offset:offset + 4])
        decode_packet(back[offset + 4:offset + 4 + length])
        offset += 4 + length
    await still_serves(node)


@FUZZ
@given(data=st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=100).map(lambda b: struct.pack(">I", len(b)) + b),
    json_values.map(lambda v: framed((codec.Atom("yptask_hello"), 1, "yptask", "x", "b", v)))))
async def test_the_link_port_refuses_strangers_and_serves_on(node, data):
    assert node.cluster is not None
    await exchange(node.cluster.link_address, data)
    assert node.cluster.members()[0]["name"] == "fuzzed"
    await still_serves(node)


async def test_a_call_still_works_after_all_that(node):
    # (also a plain check that the fixture's node serves at all)
    answer = await exchange(node.bert_address,
                            frame(Call("yptask", "call", ["upai.echo", {"x": 1}, 5])))
    assert decode_packet(answer[4:]) == Reply({"x": 1})
