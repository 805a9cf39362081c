"""Ingress: every field of a cast is checked where it enters, on both surfaces.

Against a real node process on loopback, over raw HTTP and raw BERT-RPC TCP:
one publisher's bad casts never fail the good casts of others sharing their
group commit, every answer is strict JSON, a refused cast is not delivered,
and answers stay small next to the requests that draw them. The journal's
isolation of a failing element is also tested on its own, with a real SQLite
trigger making one element fail where no ingress check could see it.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import struct
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import NodeProcess, read_records, recording_task, until, wait_for

from yptask.errors import ConfigError, InvalidParams, ProtocolError, wire_code
from yptask.ingress import checks as ingress
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Envelope, Journal
from yptask.web.rpc import ANSWER_FACTOR, ANSWER_SLACK_BYTES, error_data
from yptask.wire.bertrpc import Call, ErrorReply, Reply, decode_packet, error_reply, frame

INVALID_REQUEST = wire_code(ProtocolError).jsonrpc_code
INVALID_PARAMS = wire_code(ConfigError).jsonrpc_code
BERT_INVALID_PARAMS = (wire_code(ConfigError).bert_type, wire_code(ConfigError).bert_code)


class IngressNode(NodeProcess):
    """A node process whose task `rec` records what it handles, with its BERT-RPC address."""

    @property
    def bert(self) -> tuple[str, int]:
        found = wait_for(lambda: re.search(r"BERT-RPC (\S+):(\d+),",
                                           (self.tmp / "node.log").read_text()),
                         what="the BERT-RPC address in the node's log")
        return found.group(1), int(found.group(2))

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.tmp / "rec.jsonl")


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[IngressNode]:
    # One worker (recording_task's): it handles deliveries in journal order, so once a later
    # cast is recorded every earlier accepted one is too.
    node = IngressNode(tmp_path, recording_task("rec", "*.record", tmp_path / "rec.jsonl"))
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


def _no_constant(name: str) -> Any:
    raise AssertionError(f"the answer holds {name}, which is not JSON")


def strict_json(body: bytes) -> Any:
    """Parse an answer as a strict parser would: UTF-8, no NaN/Infinity, no lone surrogate."""
    value = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    json.dumps(value, ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    return value


async def post(http: aiohttp.ClientSession, node: NodeProcess, body: bytes) -> tuple[int, bytes]:
    async with http.post(node.url, data=body,
                         headers={"Content-Type": "application/json"}) as response:
        return response.status, await response.read()


def cast_body(msg: Any, *rest: Any, id: Any = 1, **options: Any) -> bytes:
    """A cast of `msg`: params by position (`rest`), or by name if `options` are given."""
    params: Any = ({"name": "upai.record", "msg": msg, **options} if options
                   else ["upai.record", msg, *rest])
    return json.dumps({"jsonrpc": "2.0", "id": id, "method": "cast", "params": params}).encode()


class Bert:
    """One BERT-RPC TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, node: IngressNode) -> Bert:
        return cls(*await asyncio.open_connection(*node.bert))

    async def call(self, *args: Any) -> Any:
        self.writer.write(frame(Call("yptask", "cast", list(args))))
        await self.writer.drain()
        header = await self.reader.readexactly(4)
        return decode_packet(await self.reader.readexactly(struct.unpack(">I", header)[0]))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


# Bad casts over JSON-RPC: (raw body, the field its error must name).
BAD_HTTP = [
    (b'{"jsonrpc":"2.0","id":1,"method":"cast","params":["upai.record",{"bad":1},"\\ud800"]}',
     "'id'"),
    (cast_body({"bad": 2}, None, 2**70), "'priority'"),
    (cast_body({"bad": 3}, None, 10), "'priority'"),
    (cast_body({"bad": 4}, None, -1), "'priority'"),
    (cast_body({"bad": 5}, "x" * 129), "'id'"),
    (cast_body({"bad": 6}, ""), "'id'"),
    (cast_body({"bad": 7, "big": 2**70}), "msg.big"),
    (b'{"jsonrpc":"2.0","id":1,"method":"cast","params":["upai.record",{"f":[1,1e999]}]}',
     "msg.f[1]"),
    (b'{"jsonrpc":"2.0","id":1,"method":"cast","params":["upai.record",{"s":"a\\udc80"}]}',
     "msg.s"),
    (b'{"jsonrpc":"2.0","id":1,"method":"cast","params":["upai.record",{"\\ud800":1}]}',
     "msg"),
    (cast_body({"bad": 8}, priority=12), "'priority'"),
    (cast_body({"bad": 9}, ttl_s=-1), "'ttl_s'"),
    (cast_body({"bad": 10}, ttl_s=0), "'ttl_s'"),
    (cast_body({"bad": 11}, ttl_s="5"), "'ttl_s'"),
    (cast_body({"bad": 12}, ttl_s=5, deadline=2e9), "'deadline'"),
    (cast_body({"bad": 13}, deadline=1.0), "'deadline'"),  # 1970: no time near now
    (cast_body({"bad": 14}, deadline=1_700_000_000), "'deadline'"),  # passed: never deliverable
    (cast_body({"bad": 15}, delay_s=-0.5), "'delay_s'"),
    (cast_body({"bad": 16}, at=1.9e12), "'at'"),  # milliseconds, not seconds
    (cast_body({"bad": 17}, delay_s=1, at=2e9), "'at'"),
    (cast_body({"bad": 18}, delay_s=60, ttl_s=30), "'delay_s'"),  # expires before it is due
    (cast_body({"bad": 19}, traceparent="00-abc-def-01"), "'traceparent'"),
    (cast_body({"bad": 20}, traceparent="00-" + "0" * 32 + "-" + "1" * 16 + "-01"),
     "'traceparent'"),
    (cast_body({"bad": 21}, parent=5), "'parent'"),
]
# Bad casts over BERT-RPC: (cast arguments, the field its error must name).
BAD_BERT = [
    (("upai.record", {"bad": 11}, {"priority": 2**70}), "'priority'"),
    (("upai.record", {"bad": 12}, {"priority": 10}), "'priority'"),
    (("upai.record", {"bad": 13}, {"id": b"\xff\xfe"}), "'id'"),
    (("upai.record", {"bad": 14, "big": -2**64}), "msg.big"),
    (("upai.record", {"bad": 15, "s": b"\xc3"}), "msg.s"),
    (("upai.record", {"bad": 16}, {"priorty": 1}), "'priorty'"),
    (("upai.record", {"bad": 17}, {"ttl_s": -3}), "'ttl_s'"),
    (("upai.record", {"bad": 18}, {"delay_s": 10**400}), "'delay_s'"),
    (("upai.record", {"bad": 19}, {"traceparent": "nope"}), "'traceparent'"),
]


async def test_bad_casts_of_one_publisher_never_fail_the_good_casts_of_others(node_process,
                                                                             http):
    # Given publishers casting good messages over several HTTP and BERT-RPC connections
    per_publisher = 60
    bad_answers: list[tuple[str, Any, str]] = []
    good_done = asyncio.Event()

    async def http_publisher(p: int) -> list[Any]:
        async with aiohttp.ClientSession() as own:  # a connection of its own
            return [strict_json((await post(own, node_process,
                                            cast_body({"pub": p, "n": n}, id=n)))[1])
                    for n in range(per_publisher)]

    async def bert_publisher(p: int) -> list[Any]:
        conn = await Bert.connect(node_process)
        try:
            return [await conn.call("upai.record", {"pub": p, "n": n})
                    for n in range(per_publisher)]
        finally:
            await conn.close()

    # And one publisher sending bad casts over both all the while
    async def bad_publisher() -> None:
        conn = await Bert.connect(node_process)
        try:
            while not good_done.is_set() or not bad_answers:
                for body, field in BAD_HTTP:
                    bad_answers.append(("http", strict_json((await post(http, node_process,
                                                                        body))[1]), field))
                for args, field in BAD_BERT:
                    bad_answers.append(("bert", await conn.call(*args), field))
        finally:
            await conn.close()

    async def good_publishers() -> list[list[Any]]:
        try:
            return await asyncio.gather(*(http_publisher(p) for p in range(4)),
                                        *(bert_publisher(p) for p in range(4, 7)))
        finally:
            good_done.set()

    # When they all run at once
    good, _ = await asyncio.gather(good_publishers(), bad_publisher())

    # Then every good cast was accepted
    for answers in good[:4]:
        assert all("result" in a for a in answers), [a for a in answers if "result" not in a][:3]
    for answers in good[4:]:
        assert all(isinstance(a, Reply) for a in answers), \
            [a for a in answers if not isinstance(a, Reply)][:3]
    # And each bad one got a clear invalid-params error naming its field
    for surface, answer, field in bad_answers:
        if surface == "http":
            assert answer["error"]["code"] == INVALID_PARAMS, answer
            assert field in answer["error"]["message"], answer
        else:
            assert isinstance(answer, ErrorReply), answer
            assert (answer.type, answer.code) == BERT_INVALID_PARAMS, answer
            assert field in answer.detail, answer
    # And every good cast is handled, and no bad one
    wanted = {(p, n) for p in range(7) for n in range(per_publisher)}
    await until(lambda: {(r["payload"].get("pub"), r["payload"].get("n"))
                         for r in node_process.records()} >= wanted,
                what="every good cast handled")
    assert not [r for r in node_process.records() if "bad" in r["payload"]]


# ------------------------------------------------------------------ the rules, as a table


@pytest.mark.parametrize(("check", "value", "refused"), [
    (ingress.check_priority, 0, None),
    (ingress.check_priority, 9, None),
    (ingress.check_priority, 10, "'priority' must be an integer from 0 (lowest) to 9"),
    (ingress.check_priority, True, "'priority'"),
    (ingress.check_priority, 2**70, "'priority'"),
    (ingress.check_id, None, None),
    (ingress.check_id, "x" * 128, None),
    (ingress.check_id, "x" * 129, "'id' must be null or a string of 1 to 128"),
    (ingress.check_id, "", "'id'"),
    (ingress.check_id, "\ud800", "'id'"),
    (ingress.check_id, 7, "'id'"),
    (ingress.check_timeout, 0.001, None),
    (ingress.check_timeout, 86_400, None),
    (ingress.check_timeout, 86_401, "'timeout' must be a number of seconds over 0"),
    (ingress.check_timeout, 0, "'timeout'"),
    (ingress.check_timeout, float("inf"), "'timeout'"),
    (ingress.check_timeout, float("nan"), "'timeout'"),
    (ingress.check_timeout, 10**400, "'timeout'"),
    (ingress.check_name, "a" * 256, "'name' must be a message name of at most 255"),
    (ingress.check_name, 5, "'name' must be a string"),
])
def test_field_rules(check, value, refused):
    if refused is None:
        check(value)
    else:
        with pytest.raises(ConfigError, match=re.escape(refused)):
            check(value)


@pytest.mark.parametrize(("msg", "journaled", "refused"), [
    ({"a": [1, 2.5, "é", None, True, {"b": -2**63}]}, True, None),
    ({"a": [{"b": 2**63}]}, True, "msg.a[0].b is an integer 9223372036854775808, outside 64 bits"),
    ({"a": 10**5000}, True, "msg.a is an integer of 16610 bits"),
    ({"a": 10**5000}, False, None),  # a call is not journaled: the worker takes a bignum
    ({"x y": float("nan")}, False, "msg['x y'] is nan"),
    (["ok", "\udc80"], False, "msg[1] is a string with a lone surrogate"),
    ({"\ud800": 1}, False, "msg has a key with a lone surrogate"),
    ({1: "a"}, True, "msg has the key an integer 1; a journaled message's map keys are strings"),
    ({1: "a"}, False, None),
    ({"t": (1, 2)}, True, "msg.t is a tuple, which JSON does not have"),
    ({"t": (1, 2)}, False, None),
    ({"b": b"raw"}, True, "msg.b is bytes"),
])
def test_payload_rules(msg, journaled, refused):
    if refused is None:
        ingress.check_payload(msg, "cast", journaled=journaled)
    else:
        with pytest.raises(ConfigError, match=re.escape(refused)):
            ingress.check_payload(msg, "cast", journaled=journaled)


def test_a_bad_parameter_is_invalid_params_and_travels_as_it_always_did():
    # Given a field refused by the ingress rules
    refused = ingress.bad_param("cast", "id", "a string", 7)
    # Then it is its own family in-process, still a ConfigError for older callers,
    assert isinstance(refused, InvalidParams) and isinstance(refused, ConfigError)
    # and on both wires it has ConfigError's code and class name, as clients expect
    assert wire_code(refused) == wire_code(ConfigError)
    assert error_reply(refused).error_class == "ConfigError"
    assert error_data(refused) == {"error_class": "ConfigError"}


# ------------------------------------------------------------------ isolation in the journal


def poison(path: Path, action: str = "ABORT") -> None:
    """Make SQLite refuse one message name, through a connection of its own.

    ABORT undoes the statement; ROLLBACK ends the whole transaction."""
    db = sqlite3.connect(path)
    try:
        db.execute("CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.name = 'poison.me'"
                   f" BEGIN SELECT RAISE({action}, 'poisoned by the test'); END")
        db.commit()
    finally:
        db.close()


def message(mid: str, name: str = "good.one") -> tuple[Envelope, list[str]]:
    return Envelope(mid, name, {"mid": mid}, 0.0), ["t"]


@pytest.mark.parametrize("action", ["ABORT", "ROLLBACK"])
async def test_a_failing_element_fails_alone_in_its_group_commit(tmp_path, action):
    # Given a journal that refuses one message name in SQLite itself
    path = tmp_path / "journal.db"
    thread = JournalThread(Journal(path))
    try:
        poison(path, action)
        # And the journal thread held busy, so that what follows is one group commit
        release = threading.Event()
        busy = asyncio.ensure_future(thread.run(lambda _journal: release.wait(30)))
        await asyncio.sleep(0)
        # When many callers append at once, some with a poisoned message among good ones
        ops = [thread.append_many([message(f"a{i}")]) for i in range(20)]
        ops.append(thread.append_many([message("b1"), message("bad1", "poison.me"),
                                       message("b2")]))
        ops.append(thread.append_many([message("bad2", "poison.me")]))
        ops.append(thread.append_many([message("a0"), message("c1")]))  # a0: a duplicate
        gathered = asyncio.gather(*ops, return_exceptions=True)
        release.set()
        await busy
        results = await gathered
        # Then the good ones are stored and only the poisoned ones fail
        assert results[:20] == [[True]] * 20
        assert results[20][0] is True and results[20][2] is True
        assert isinstance(results[20][1], Exception) and "poisoned" in str(results[20][1])
        assert isinstance(results[21][0], Exception)
        assert results[22] == [False, True]
        stored = await thread.run(lambda journal: journal.claim("t", limit=100))
        assert sorted(d.message.id for d in stored) == sorted(
            [f"a{i}" for i in range(20)] + ["b1", "b2", "c1"])
        # And a single append of a poisoned message raises its error
        with pytest.raises(sqlite3.IntegrityError, match="poisoned"):
            await thread.append(*message("bad3", "poison.me"))
    finally:
        thread.close()


async def test_a_cast_the_journal_refuses_is_an_internal_error_and_the_others_go_through(
        node_process, http):
    # Given a node whose journal refuses one message name in SQLite itself
    poison(node_process.tmp / "data" / "journal.db")
    # When a batch holds it between two good casts
    batch = [{"jsonrpc": "2.0", "id": i, "method": "cast", "params": [name, {"i": i}]}
             for i, name in enumerate(["upai.record", "poison.me", "upai.record"])]
    status, body = await post(http, node_process, json.dumps(batch).encode())
    answers = strict_json(body)
    # Then only it is refused, with a reference to the node's log, and the others are handled
    assert status == 200
    assert "result" in answers[0] and "result" in answers[2]
    assert answers[1]["error"]["code"] == -32603
    assert answers[1]["error"]["data"]["reference"] in (node_process.tmp / "node.log").read_text()
    await until(lambda: sorted(r["payload"]["i"] for r in node_process.records()) == [0, 2],
                what="the good casts handled")


# ------------------------------------------------------------------ answers are always JSON


async def test_every_answer_is_json_and_a_refused_cast_is_not_delivered(node_process, http):
    unechoable = [b"1e999", b"-1e999", b'"\\ud800"', b'"a\\udfff"']
    bodies = [b'{"jsonrpc":"2.0","id":%s,"method":"cast","params":["upai.record",{"tag":%d}]}'
              % (id, n) for n, id in enumerate(unechoable)]
    bodies += [
        b'{"jsonrpc":"2.0","id":1e999,"method":"no.such"}',
        b'{"jsonrpc":"2.0","id":1e999,"method":"call","params":["upai.record",{"tag":90}]}',
        b'{"jsonrpc":"2.0","id":1e999,"method":"cast","params":[]}',
        b"[" + b",".join(bodies) + b"]",
    ]
    for body in bodies:
        _, answer = await post(http, node_process, body)
        # Then every answer is strict JSON
        parsed = strict_json(answer)
        # And says that the request was invalid (nothing was done)
        for each in parsed if isinstance(parsed, list) else [parsed]:
            assert each["error"]["code"] == INVALID_REQUEST, each
            assert each["id"] is None
            assert "id" in each["error"]["message"]
    # And what is answered as not done was not done: a later good cast is the first handled
    assert "result" in strict_json((await post(http, node_process, cast_body({"tag": "ok"})))[1])
    records = await until(node_process.records, what="the good cast handled")
    assert [r["payload"] for r in records] == [{"tag": "ok"}]


# ------------------------------------------------------------------ bounded amplification

def batch_of(element: bytes, size: int = 300_000) -> bytes:
    return b"[" + b",".join([element] * (size // (len(element) + 1))) + b"]"


# The shapes found to draw the biggest answers per request byte: tiny invalid
# elements, unknown or refused methods, params that do not fit, refused fields.
SHAPES = [
    b"1",
    b"{}",
    b"[]",
    b'{"jsonrpc":"2.0","method":"x","id":1}',
    b'{"jsonrpc":"2.0","method":"status","id":1}',  # an admin method without the token
    b'{"jsonrpc":"2.0","method":"' + b"x" * 300 + b'","id":1}',
    b'{"jsonrpc":"2.0","method":"cast","id":1}',
    b'{"jsonrpc":"2.0","method":"cast","params":[0,0],"id":1}',
    b'{"jsonrpc":"2.0","method":"cast","params":["a b",0],"id":1}',
    b'{"jsonrpc":"2.0","method":"cast","params":["a",[1e999]],"id":1}',
    b'{"jsonrpc":"2.0","method":"cast","params":{"name":"a","msg":0,"x":0},"id":1}',
    b'{"jsonrpc":"2.0","method":"call","params":["a",0,0],"id":1}',
    b'{"jsonrpc":"2.0","method":"call","params":["a",0],"id":1}',
    b'{"jsonrpc":"2.0","id":1,"x":1}',
    b'{"jsonrpc":"2.0","method":"cast","params":["upai.record",0,null,99],"id":1}',
]


async def test_answers_stay_within_a_bound_of_the_request(node_process, http):
    over = []
    for element in SHAPES:
        for size in (300_000, 2_000, len(element)):
            body = batch_of(element, size) if size > len(element) else element
            _, answer = await post(http, node_process, body)
            strict_json(answer)
            if len(answer) > ANSWER_FACTOR * len(body) + ANSWER_SLACK_BYTES:
                over.append(f"{len(answer)} answer bytes for {len(body)} request bytes "
                            f"({len(answer) / len(body):.1f}x): {answer[:200]!r}")
    assert not over, "\n".join(over)
