"""Fuzzing the node's surfaces: JSON-RPC bodies, BERT-RPC frames, inter-node link bytes.

Hypothesis draws hostile input (bounded: a fixed number of examples, no
deadline games); one real node in this process takes it all over real
sockets. No input may crash it, hang it or get an answer that is not a clear
error: after every example the node must still answer a plain call.

Besides shapeless input, structure-aware shapes (the `shapes` section):
compressed terms around the inflation-ratio cap, text that is not valid
UTF-8 or holds lone surrogates, numbers out of every range, and payloads
nested to the depth cap and past it.
"""

from __future__ import annotations

import asyncio
import json
import struct
import zlib

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ALONE, ECHO

from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.node import Node
from yptask.wire import codec
from yptask.wire.bertrpc import Call, ErrorReply, NoReply, Reply, decode_packet, frame

EXAMPLES = 60
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
SHAPES = settings(FUZZ, max_examples=30)

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


# --------------------------------------------------------------------------- shapes
#
# Each strategy draws bytes for one surface. Some shapes are refused today and
# accepted tomorrow (or the other way): the property that holds regardless is
# that every answer is well formed and the node answers a plain call after it.

DEPTH_CAP = codec.DEFAULT_MAX_DEPTH
# A BERT-RPC call puts its payload two levels down: {call, M, F, [Name, Payload, ...]}.
PAYLOAD_DEPTH_CAP = DEPTH_CAP - 1


def compress(term: object, level: int) -> bytes:
    body = codec.encode(term)[1:]
    return b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body, level)


def packed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


@st.composite
def compressed_calls(draw: st.DrawFn) -> tuple[bytes, dict[str, str], bool]:
    """A compressed call of echo whose inflation ratio lands near the cap, on either side:
    (frame, payload, whether the codec must refuse it)."""
    head = draw(st.text(min_size=20, max_size=300))
    # text compresses poorly, a run of one letter about 1000:1, so the run's
    # length per byte of text sets the ratio
    run = draw(st.integers(20, 120)) * len(head.encode())
    payload = {"b": head + "a" * run}
    data = compress(Call("yptask", "call", ["upai.echo", payload, 10]).to_term(),
                   draw(st.integers(1, 9)))
    size = struct.unpack(">I", data[2:6])[0]
    refused = size > min(codec.DEFAULT_MAX_INFLATED, codec.DEFAULT_MAX_RATIO * len(data))
    return packed(data), payload, refused


@FUZZ
@given(case=compressed_calls())
async def test_compressed_terms_near_the_ratio_cap(node, case):
    data, payload, refused = case
    [answer] = await answers(node.bert_address, data)
    if refused:
        assert isinstance(answer, ErrorReply) and "inflates" in answer.detail
    else:
        assert answer == Reply(payload)
    await still_serves(node)


def raw_atom(raw: bytes) -> bytes:
    return bytes([codec.SMALL_ATOM_UTF8, len(raw)]) + raw


def raw_binary(raw: bytes) -> bytes:
    return struct.pack(">BI", codec.BINARY, len(raw)) + raw


def raw_call(module: bytes, function: bytes, args: list[bytes], kind: bytes = b"call"
             ) -> bytes:
    """A {call, M, F, Args} (or {cast, ...}) frame from already-encoded parts."""
    body = (b"\x83h\x04" + raw_atom(kind) + module + function
            + struct.pack(">BI", codec.LIST, len(args)) + b"".join(args) + b"j")
    return packed(body)


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


not_utf8 = st.one_of(st.binary(min_size=1, max_size=40).filter(lambda b: not is_utf8(b)),
                     st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"a\x80b"]))


def big_int(magnitude_bytes: int, negative: bool) -> bytes:
    return struct.pack(">BIB", codec.LARGE_BIG, magnitude_bytes, int(negative)) \
        + b"\x01" * magnitude_bytes


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def nested_bert(depth: int) -> bytes:
    """`depth` lists, one in another, as term bytes (the encoder would refuse to write them)."""
    return b"l\x00\x00\x00\x01" * depth + b"a\x01" + b"j" * depth


echo_name = raw_binary(b"upai.echo")
ten = bytes([codec.SMALL_INTEGER, 10])
bert_shapes = st.one_of(
    # text that is not UTF-8: in the name, the payload, a key; in atoms
    not_utf8.map(lambda b: raw_call(raw_atom(b"yptask"), raw_atom(b"call"),
                                    [raw_binary(b), raw_binary(b"{}"), ten])),
    not_utf8.map(lambda b: raw_call(raw_atom(b"yptask"), raw_atom(b"call"), [
        echo_name, struct.pack(">BI", codec.MAP, 1) + raw_binary(b) + raw_binary(b), ten])),
    not_utf8.map(lambda b: raw_call(raw_atom(b), raw_atom(b"call"), [echo_name])),
    not_utf8.map(lambda b: raw_call(raw_atom(b"yptask"), raw_atom(b), [echo_name])),
    # numbers out of range: bignums as payload, timeout and priority
    st.tuples(st.integers(9, 200_000), st.booleans()).map(
        lambda t: raw_call(raw_atom(b"yptask"), raw_atom(b"call"), [
            echo_name, struct.pack(">BI", codec.MAP, 1) + raw_binary(b"n") + big_int(*t),
            ten])),
    st.tuples(st.integers(9, 20_000), st.booleans()).map(
        lambda t: raw_call(raw_atom(b"yptask"), raw_atom(b"call"),
                           [echo_name, struct.pack(">BI", codec.MAP, 0), big_int(*t)])),
    st.sampled_from([2**70, -2**70, 2**63, -2**63 - 1, 10**400]).map(
        lambda n: frame(Call("yptask", "cast", ["upai.echo", {"n": 1}, {"priority": n}]))),
    # payloads nested to the depth cap, and past it, in calls and casts
    st.integers(PAYLOAD_DEPTH_CAP - 2, PAYLOAD_DEPTH_CAP + 3).map(
        lambda d: raw_call(raw_atom(b"yptask"), raw_atom(b"call"),
                           [echo_name, nested_bert(d), ten])),
    st.integers(PAYLOAD_DEPTH_CAP - 2, PAYLOAD_DEPTH_CAP + 3).map(
        lambda d: raw_call(raw_atom(b"yptask"), raw_atom(b"cast"),
                           [echo_name, nested_bert(d)], kind=b"cast")),
)


@SHAPES
@given(data=bert_shapes)
async def test_bert_shapes_get_well_formed_answers(node, data):
    for answer in await answers(node.bert_address, data):
        assert isinstance(answer, (Reply, NoReply, ErrorReply))
        if isinstance(answer, ErrorReply):
            assert len(answer.detail) < 2000
    await still_serves(node)


lone_surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                          min_size=1, max_size=4)
odd_text = st.one_of(lone_surrogates, st.text(max_size=4).flatmap(
    lambda t: lone_surrogates.map(lambda s: t + s + t)))
huge_numbers = st.sampled_from([2**70, -2**70, 2**63, -2**63 - 1, 10**400])


def rpc(method: str, params: object, id_: object = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": method,
                       "params": params}).encode()


json_shapes = st.one_of(
    # lone surrogates (escaped, as json.dumps writes them) as name, id, key, value
    odd_text.map(lambda t: rpc("cast", [t, {"k": 1}])),
    odd_text.map(lambda t: rpc("cast", ["upai.echo", {t: t}])),
    odd_text.map(lambda t: rpc("call", ["upai.echo", {"k": t}, 5])),
    odd_text.map(lambda t: rpc("cast", ["upai.echo", {}], id_=t)),
    # bytes that are not UTF-8 inside a JSON string
    not_utf8.map(lambda b: b'{"jsonrpc": "2.0", "id": 1, "method": "cast", '
                           b'"params": ["upai.echo", {"k": "' + b + b'"}]}'),
    # numbers out of range
    huge_numbers.map(lambda n: rpc("cast", ["upai.echo", {"n": n}])),
    huge_numbers.map(lambda n: rpc("call", ["upai.echo", {"n": n}, n])),
    huge_numbers.map(lambda n: rpc("cast", ["upai.echo", {}], id_=n)),
    st.sampled_from([b"1e999", b"-1e999", b"1e400", b"NaN", b"Infinity"]).map(
        lambda n: b'{"jsonrpc": "2.0", "id": 1, "method": "cast", '
                  b'"params": ["upai.echo", {"n": ' + n + b'}]}'),
    # payloads nested around the depth cap, and far past it (written as text: json.dumps
    # would overflow the stack)
    st.tuples(st.integers(DEPTH_CAP - 3, DEPTH_CAP + 3) | st.just(100_000),
              st.sampled_from([b"cast", b"call"])).map(
        lambda t: b'{"jsonrpc": "2.0", "id": 1, "method": "' + t[1] + b'", "params": '
                  b'["upai.echo", {"d": ' + b"[" * t[0] + b"1" + b"]" * t[0] + b"}"
                  + (b", 5]}" if t[1] == b"call" else b"]}")),
)


@SHAPES
@given(body=json_shapes)
async def test_json_shapes_get_json_answers(node, body):
    async with aiohttp.ClientSession() as session, session.post(
            node.http_url + "/rpc", data=body,
            headers={"Content-Type": "application/json"}) as response:
        if response.status == 200:
            answer = json.loads(await response.text())
            assert answer["jsonrpc"] == "2.0" and ("result" in answer) != ("error" in answer)
    await still_serves(node)


def raw_hello(name: bytes, nonce: bytes, tag: bytes = raw_atom(b"yptask_hello")) -> bytes:
    """{Tag, 1, <<"yptask">>, Name, <<"b">>, Nonce} from already-encoded parts."""
    return (b"\x83h\x06" + tag + b"a\x01" + raw_binary(b"yptask") + name + raw_binary(b"b")
            + nonce)


@SHAPES
@given(data=st.one_of(
    # compressed hellos: within the ratio cap and past it; none gets past the handshake
    st.tuples(st.text(max_size=100), st.integers(1, 4000)).map(
        lambda t: packed(compress((codec.Atom("yptask_hello"), 1, "yptask", "x", "b",
                                   t[0] + "a" * t[1]), 9))),
    # text that is not UTF-8, as the node name and as the tag
    not_utf8.map(lambda b: packed(raw_hello(raw_binary(b), raw_binary(b"n")))),
    not_utf8.map(lambda b: packed(raw_hello(raw_binary(b"x"), raw_binary(b"n"), raw_atom(b)))),
    # a nonce nested to the depth cap and past it
    st.integers(PAYLOAD_DEPTH_CAP - 2, PAYLOAD_DEPTH_CAP + 2).map(
        lambda d: packed(raw_hello(raw_binary(b"x"), nested_bert(d)))),
    huge_numbers.map(lambda n: framed((codec.Atom("yptask_hello"), n, "yptask", "x", "b",
                                       "n")))))
async def test_link_shapes_are_refused_before_the_handshake(node, data):
    assert node.cluster is not None
    await exchange(node.cluster.link_address, data)
    assert node.cluster.members()[0]["name"] == "fuzzed"
    assert len(node.cluster.members()) == 1
    await still_serves(node)


async def answers(address: str, data: bytes) -> list[object]:
    """The packets that came back for `data`, decoded (each must be one)."""
    back = await exchange(address, data)
    got: list[object] = []
    offset = 0
    while offset + 4 <= len(back):
        (length,) = struct.unpack(">I", back[offset:offset + 4])
        got.append(decode_packet(back[offset + 4:offset + 4 + length]))
        offset += 4 + length
    return got


async def test_a_call_still_works_after_all_that(node):
    # (also a plain check that the fixture's node serves at all)
    answer = await exchange(node.bert_address,
                            frame(Call("yptask", "call", ["upai.echo", {"x": 1}, 5])))
    assert decode_packet(answer[4:]) == Reply({"x": 1})
