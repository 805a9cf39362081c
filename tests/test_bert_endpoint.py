"""The BERT-RPC TCP endpoint: publish and call over {packet, 4} TCP, from Python and from Erlang."""

from __future__ import annotations

import asyncio
import struct
import subprocess

import pytest
from support import ALONE, TEST_WORKERS, require_erlang

from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.node import Node
from yptask.wire.bertrpc import Call, Cast, ErrorReply, Info, NoReply, Reply, decode_packet, frame


@pytest.fixture
async def node(tmp_path):
    task = TaskDef.from_dict({"name": "s", "messages": ["*.echo", "*.fail", "*.record"],
                              "worker_class": "sample:Sample",
                              "env": {"PYTHONPATH": str(TEST_WORKERS)},
                              "settings": {"record_path": str(tmp_path / "s.jsonl")}})
    node = await Node.start(NodeConfig(name="b1", data_dir=tmp_path / "data", **ALONE),
                            tasks=[task])
    yield node
    await node.stop()


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, node: Node) -> Client:
        host, port = node.bert_address.rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, data: bytes):
        self.writer.write(data)
        await self.writer.drain()
        try:
            header = await self.reader.readexactly(4)
        except asyncio.IncompleteReadError:
            return None
        return decode_packet(await self.reader.readexactly(struct.unpack(">I", header)[0]))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_cast_and_call_over_tcp(node, tmp_path):
    client = await Client.connect(node)
    answer = await client.send(frame(Call("yptask", "cast", ["upai.record", {"n": 1}])))
    assert isinstance(answer, Reply) and answer.result["tasks"] == ["s"]
    opts = {"id": "fixed-1", "priority": 3}
    again = await client.send(frame(Call("yptask", "cast", ["upai.record", {"n": 1}, opts])))
    assert (again.result["id"], again.result["duplicate"]) == ("fixed-1", False)
    assert await client.send(frame(Cast("yptask", "cast", ["upai.record", {"n": 2}]))) \
        == NoReply()
    assert await client.send(frame(Call("yptask", "call", ["upai.echo", {"é": [1.5]}, 10]))) \
        == Reply({"é": [1.5]})
    await client.close()


async def test_errors_come_back_coded_and_the_connection_serves_on(node):
    client = await Client.connect(node)
    failed = await client.send(frame(Call("yptask", "call", ["upai.fail", {"reason": "r"}])))
    assert (failed.type, failed.code, failed.error_class) == ("user", 100, "ValueError")
    nobody = await client.send(frame(Call("yptask", "call", ["no.one", {}])))
    assert (nobody.type, nobody.code) == ("server", 106)
    assert (await client.send(frame(Call("other", "cast", [])))).code == 1
    assert (await client.send(frame(Call("yptask", "fly", [])))).code == 2
    garbage = await client.send(struct.pack(">I", 3) + b"\x83\x00\x00")
    assert isinstance(garbage, ErrorReply) and garbage.type == "protocol"
    bad_name = await client.send(frame(Call("yptask", "cast", ["bad name", {}])))
    assert "invalid message name" in bad_name.detail
    client.writer.write(frame(Info("cache", [])))  # tolerated, not answered
    assert await client.send(frame(Call("yptask", "call", ["upai.echo", 1]))) == Reply(1)
    await client.close()


async def test_an_oversize_frame_closes_that_connection_only(node):
    client = await Client.connect(node)
    answer = await client.send(b"\x7f\xff\xff\xff")
    assert (answer.type, answer.code) == ("protocol", 1)
    assert await client.send(b"") is None  # closed by the node
    other = await Client.connect(node)
    assert await other.send(frame(Call("yptask", "call", ["upai.echo", 2]))) == Reply(2)
    await other.close()


ERLANG_CLIENT = r"""#!/usr/bin/env escript
%%! -noshell
main([Port]) ->
    {ok, S} = gen_tcp:connect({127,0,0,1}, list_to_integer(Port),
                              [binary, {packet, 4}, {active, false}]),
    ok = gen_tcp:send(S, term_to_binary({call, yptask, cast,
                                         [<<"upai.record">>, #{<<"from">> => <<"erlang">>}]})),
    {ok, R1} = gen_tcp:recv(S, 0, 10000),
    {reply, #{<<"tasks">> := [<<"s">>]}} = binary_to_term(R1),
    ok = gen_tcp:send(S, term_to_binary({call, yptask, call,
                                         [<<"upai.echo">>, #{<<"n">> => [1, 2.5]}, 10]})),
    {ok, R2} = gen_tcp:recv(S, 0, 10000),
    {reply, #{<<"n">> := [1, 2.5]}} = binary_to_term(R2),
    io:format("ok~n").
"""


async def test_an_erlang_client_casts_and_calls(node, tmp_path):
    require_erlang()
    script = tmp_path / "client.escript"
    script.write_text(ERLANG_CLIENT)
    port = node.bert_address.rsplit(":", 1)[1]
    done = await asyncio.to_thread(subprocess.run, ["escript", str(script), port],
                                   capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr + done.stdout
