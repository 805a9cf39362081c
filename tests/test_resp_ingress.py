"""The Redis-protocol ingress, against real nodes: the real `redis-cli`, redis-py, raw sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from support import ALONE, TEST_WORKERS, NodeProcess, read_records, until, wait_for

from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.endpoints.resp import error_line
from yptask.errors import (
    ConfigError,
    FrameError,
    IdPending,
    InvalidParams,
    JournalError,
    NodeStopping,
    Overloaded,
    ProtocolError,
)
from yptask.node import Node
from yptask.wire.resp import RequestLimits, RequestParser, payload_of

TOKEN = "shop-token-0123456789"
OTHER_TOKEN = "blog-token-0123456789"
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"


def recording(name: str, messages: list[str], records: Path, **more: Any) -> TaskDef:
    return TaskDef.from_dict({"name": name, "messages": messages, "worker_class": "sample:Sample",
                              "env": {"PYTHONPATH": str(TEST_WORKERS)},
                              "settings": {"record_path": str(records)}, **more})


async def start_node(tmp_path: Path, **settings: Any) -> Node:
    """A node with the ingress on a free loopback port: task s records `*.record` (and
    `both.record`), task t records `both.*`, task picky refuses the shop's casts."""
    return await Node.start(
        NodeConfig(name="r1", data_dir=tmp_path / "data", redis="127.0.0.1:0",
                   **{**ALONE, **settings}),
        tasks=[recording("s", ["*.record"], tmp_path / "s.jsonl"),
               recording("t", ["both.*"], tmp_path / "t.jsonl"),
               recording("picky", ["picky.*"], tmp_path / "picky.jsonl",
                         refuse_tokens=["shop"])])


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    started = await start_node(tmp_path)
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def token_node(tmp_path: Path) -> AsyncIterator[Node]:
    started = await start_node(tmp_path, api_tokens={"shop": TOKEN, "blog": OTHER_TOKEN})
    try:
        yield started
    finally:
        await started.stop()


def address(node: Node) -> tuple[str, int]:
    host, port = node.redis_address.rsplit(":", 1)
    return host, int(port)


@contextlib.asynccontextmanager
async def client(node: Node, **options: Any) -> AsyncIterator[aredis.Redis]:
    host, port = address(node)
    connection = aredis.Redis(host=host, port=port, socket_timeout=30, **options)
    try:
        yield connection
    finally:
        await connection.aclose()


def require_redis_cli() -> None:
    """Skip without redis-cli, except in CI, where its absence is a failure."""
    if shutil.which("redis-cli") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-cli is not installed; CI must run the Redis-protocol tests")
        pytest.skip("redis-cli is not installed (apt-get install redis-tools)")


async def cli(node: Node, *args: str, stdin: bytes | None = None) -> str:
    """What the real redis-cli prints for one command (or for the commands on stdin)."""
    require_redis_cli()
    host, port = address(node)
    process = await asyncio.create_subprocess_exec(
        REDIS_CLI, "-h", host, "-p", str(port), *args, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(process.communicate(stdin), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return out.decode()


async def records(path: Path, n: int) -> list[Any]:
    """The payloads of the first `n` deliveries recorded in `path`, once there are n."""
    await until(lambda: len(read_records(path)) >= n, what=f"{n} deliveries in {path.name}")
    return [r["payload"] for r in read_records(path)]


async def raw(node: Node, data: bytes, *, until_eof: bool = True) -> bytes:
    """Send bytes on a connection of their own; what comes back until EOF."""
    reader, writer = await asyncio.open_connection(*address(node))
    try:
        if data:
            writer.write(data)
            await writer.drain()
        if until_eof:
            return await asyncio.wait_for(reader.read(), 30)
        return await asyncio.wait_for(reader.read(65536), 30)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# ---------------------------------------------------------------------- casting

async def test_publish_and_rpush_reach_a_worker_unchanged(node, tmp_path):
    # Given JSON and non-JSON messages, cast with the real redis-cli
    assert (await cli(node, "PUBLISH", "a.record", '{"a": [1, 2.5, "é"], "b": null}')
            ).strip() == "1"
    assert (await cli(node, "RPUSH", "a.record", "hello world", "42", '"42"', "not json {",
                      "NaN")).strip() == "5"
    assert (await cli(node, "LPUSH", "a.record", "[]")).strip() == "1"
    # Then each reaches the worker as its JSON value, or else as its text
    assert await records(tmp_path / "s.jsonl", 7) == [
        {"a": [1, 2.5, "é"], "b": None}, "hello world", 42, "42", "not json {", "NaN", []]


async def test_the_replies_count_subscribed_tasks_and_messages_cast(node, tmp_path):
    async with client(node) as redis_py:
        assert await redis_py.publish("both.record", "x") == 2  # tasks s and t
        assert await redis_py.publish("nobody.listens", "x") == 0  # journaled, for no task
        assert await redis_py.rpush("both.record", "1", "2", "3") == 3
    assert await records(tmp_path / "t.jsonl", 4) == ["x", 1, 2, 3]


async def test_a_refused_message_gets_an_error_and_the_connection_serves_on(node, tmp_path):
    async with client(node) as redis_py:
        ident = await redis_py.client_id()
        for name, payload, says in [
                ("a.record", b"\xff\xfe", "not UTF-8"),
                ("a.record", b'{"k": 1, "k": 2}', "the key 'k' twice"),
                ("a.record", b"0.10000000000000000001", "cannot hold exactly"),
                ("bad name", b"x", "invalid message name")]:
            with pytest.raises(redis.ResponseError, match=says):
                await redis_py.publish(name, payload)
        # One refused message of an RPUSH: the others are cast, and the reply says which
        with pytest.raises(redis.ResponseError, match=r"2 of 3 messages cast \(message\(s\) "
                                                      r"1, 3, stored\); message 2 refused"):
            await redis_py.rpush("a.record", "first", b"\xff", "third")
        assert await redis_py.client_id() == ident  # the same connection
    assert await records(tmp_path / "s.jsonl", 2) == ["first", "third"]


async def test_an_unknown_command_gets_err_and_the_connection_still_works(node):
    async with client(node) as redis_py:
        ident = await redis_py.client_id()
        with pytest.raises(redis.ResponseError, match="unknown command 'SET'"):
            await redis_py.set("k", "v")
        with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
            await redis_py.execute_command("PUBLISH", "a.record")
        assert await redis_py.ping() is True
        assert await redis_py.client_id() == ident
    assert "unknown command 'FLY'" in await cli(node, "FLY", "away")


async def test_a_thousand_pipelined_casts_are_all_durable(node, tmp_path):
    async with client(node) as redis_py, redis_py.pipeline(transaction=False) as pipe:
        for i in range(1000):
            pipe.rpush("p.record", f'{{"i": {i}}}')
        answers = await pipe.execute()
    assert answers == [1] * 1000
    assert sorted(p["i"] for p in await records(tmp_path / "s.jsonl", 1000)) == \
        list(range(1000))


# ---------------------------------------------------------------------- the protocol

async def test_ping_echo_hello_select_client_and_quit(node):
    assert await raw(node, b"PING\r\n", until_eof=False) == b"+PONG\r\n"  # inline
    assert await raw(node, b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n*2\r\n$4\r\nECHO\r\n$1\r\nx\r\n"
                     b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\nSELECT 1\r\nQUIT\r\nPING\r\n") == (
        b"$2\r\nhi\r\n$1\r\nx\r\n+OK\r\n-ERR DB index is out of range\r\n+OK\r\n")  # then EOF
    hello2 = await raw(node, b"HELLO 2\r\n", until_eof=False)
    assert hello2.startswith(b"*14\r\n$6\r\nserver\r\n$6\r\nyptask\r\n")
    assert b"proto\r\n:2" in hello2
    hello3 = await raw(node, b"HELLO 3\r\n", until_eof=False)
    assert hello3.startswith(b"%7\r\n") and b"proto\r\n:3" in hello3
    assert (await raw(node, b"HELLO 4\r\n", until_eof=False)).startswith(b"-NOPROTO")
    for protocol in (2, 3):  # redis-py's handshake: HELLO 3 (the default), CLIENT SETINFO
        async with client(node, protocol=protocol, client_name="shop-1") as redis_py:
            assert await redis_py.ping() is True
            assert await redis_py.client_getname() in ("shop-1", b"shop-1")
            assert await redis_py.publish("a.record", "x") == 1
    assert (await cli(node, "-3", "PING")).strip() == "PONG"
    assert (await cli(node, "COMMAND", "DOCS")).strip() == ""
    assert (await cli(node, stdin=b"PING\nPUBLISH a.record y\n")).split() == ["PONG", "1"]


@pytest.mark.parametrize("bad, says", [
    (b"\x00\x01\x02garbage\r\n", b"expected '*' or an inline command"),
    (b"*1\r\n$2000000\r\n", b"over the limit"),
    (b"*1\r\n$-5\r\nPING\r\n", b"negative"),
    (b"*-3\r\n", b"negative"),
    (b"*2\r\n:1\r\n", b"expected '$'"),
    (b"*1\r\n$4\r\nPINGPONG\r\n", b"not followed by CRLF"),
    (b"*99999\r\n", b"over the limit"),
])
async def test_bad_input_closes_that_connection_only(node, tmp_path, bad, says):
    # Given a client casting without pause on the same node
    cast = 0

    async def keep_casting(stop: asyncio.Event) -> None:
        nonlocal cast
        async with client(node) as redis_py:
            while not stop.is_set():
                assert await redis_py.rpush("k.record", cast) == 1
                cast += 1

    stop = asyncio.Event()
    caster = asyncio.create_task(keep_casting(stop))
    await until(lambda: cast >= 5, what="the other client casting")
    # When another sends bad bytes, it gets one protocol error line and EOF
    answer = await raw(node, bad + b"*1\r\n$4\r\nPING\r\n")
    assert answer.startswith(b"-ERR Protocol error") and says in answer
    assert answer.endswith(b"\r\n") and answer.count(b"\r\n") == 1
    before = cast
    await until(lambda: cast >= before + 5, what="casts after the bad input")
    stop.set()
    await caster  # every cast of the other client was answered 1
    assert not node.stopping
    assert sorted(await records(tmp_path / "s.jsonl", cast)) == list(range(cast))


# ---------------------------------------------------------------------- auth

async def test_a_node_with_tokens_wants_auth_before_casts(token_node, tmp_path):
    # Before AUTH: casts are refused, the publisher is named after it
    assert (await cli(token_node, "PUBLISH", "a.record", "x")).startswith(
        "NOAUTH Authentication required.")
    assert "WRONGPASS" in await cli(token_node, "-a", "not-the-token", "--no-auth-warning",
                                    "PUBLISH", "a.record", "x")
    assert (await cli(token_node, "-a", TOKEN, "--no-auth-warning", "PUBLISH", "a.record",
                      "by-cli")).strip() == "1"
    assert (await cli(token_node, "--user", "shop", "--pass", TOKEN, "--no-auth-warning",
                      "RPUSH", "a.record", "by-user")).strip() == "1"
    assert "WRONGPASS" in await cli(token_node, "--user", "blog", "--pass", TOKEN,
                                    "--no-auth-warning", "PUBLISH", "a.record", "x")
    for protocol in (2, 3):  # AUTH, or HELLO 3 AUTH default TOKEN
        with pytest.raises(redis.AuthenticationError):
            async with client(token_node, protocol=protocol, password="wrong-token-01234567"
                              ) as refused:
                await refused.ping()
        async with client(token_node, protocol=protocol, password=TOKEN) as shop:
            assert await shop.publish("a.record", f"by-py-{protocol}") == 1
            # the shop's casts are the shop's: a task that refuses its token refuses them
            with pytest.raises(redis.ResponseError, match=r"^NOTACCEPTING .*'shop'"):
                await shop.publish("picky.record", "x")
    async with client(token_node, password=OTHER_TOKEN) as blog:
        assert await blog.publish("picky.record", "from blog") == 2  # tasks picky and s
    assert await records(tmp_path / "s.jsonl", 5) == ["by-cli", "by-user", "by-py-2", "by-py-3",
                                                      "from blog"]
    assert await records(tmp_path / "picky.jsonl", 1) == ["from blog"]


async def test_before_auth_a_big_command_closes_the_connection(token_node):
    answer = await raw(token_node, b"*3\r\n$7\r\nPUBLISH\r\n$8\r\na.record\r\n$100000\r\n")
    assert answer.startswith(b"-ERR Protocol error: a bulk string of 100000 bytes")
    # while after AUTH the same size is a message like any other
    reader, writer = await asyncio.open_connection(*address(token_node))
    try:
        writer.write(f"AUTH {TOKEN}\r\n".encode() + b"*3\r\n$7\r\nPUBLISH\r\n$8\r\na.record"
                     b"\r\n$100000\r\n" + b"x" * 100000 + b"\r\n")
        assert await asyncio.wait_for(reader.readexactly(9), 30) == b"+OK\r\n:1\r\n"
    finally:
        writer.close()


# ---------------------------------------------------------------------- limits and settings

async def test_connections_past_the_cap_and_idle_ones_are_closed(tmp_path):
    node = await start_node(tmp_path, max_redis_connections=2, redis_idle_timeout_s=0.5)
    streams = []
    try:
        streams = [await asyncio.open_connection(*address(node)) for _ in range(2)]
        for reader, writer in streams:
            writer.write(b"PING\r\n")
            assert await asyncio.wait_for(reader.readexactly(7), 30) == b"+PONG\r\n"
        third = await raw(node, b"")  # (a refused client's bytes would go unread)
        assert third.startswith(b"-ERR max number of clients reached") and \
            b"max_redis_connections" in third
        # the two fall idle, are closed, and their places are free again
        for reader, _ in streams:
            assert await asyncio.wait_for(reader.read(), 30) == b""
        await until(lambda: len(node._resp.connections) == 0, what="the places freed")
        assert await raw(node, b"PING\r\n", until_eof=False) == b"+PONG\r\n"
    finally:
        for _, writer in streams:
            writer.close()
        await node.stop()


async def test_the_listener_is_off_by_default(tmp_path):
    assert NodeConfig().redis == "" and NodeConfig.from_dict({}).redis == ""
    node = await Node.start(NodeConfig(name="off", data_dir=tmp_path / "data", **ALONE),
                            tasks=[])
    try:
        assert node.redis_address == "" and node._resp is None
    finally:
        await node.stop()


NODE_TOML = "[node]\nredis = \"{address}\"\n"


def record_toml(records: Path) -> str:
    """Task s, recording `*.record` in `records`, as a tasks file."""
    return f"""
[[task]]
name = "s"
worker_class = "sample:Sample"
messages = ["*.record"]
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
settings = {{ record_path = "{records}" }}
"""


def test_a_yptask_node_process_listens_where_its_config_says(tmp_path):
    # Given `yptask node` with `redis = "127.0.0.1:0"` in its config file
    require_redis_cli()
    records = tmp_path / "s.jsonl"
    with NodeProcess(tmp_path / "n", record_toml(records), "n1",
                     config=NODE_TOML.format(address="127.0.0.1:0")) as node:
        # Then its banner names the address, and redis-cli casts there
        host, port = node.redis_address.rsplit(":", 1)
        done = subprocess.run([REDIS_CLI, "-h", host, "-p", port, "PUBLISH", "a.record", "[1]"],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.stdout.strip() == "1", done.stdout + done.stderr
        assert [r["payload"] for r in wait_records(records, 1)] == [[1]]


def test_a_redis_port_in_use_is_refused_before_any_worker_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        node = NodeProcess(tmp_path, record_toml(tmp_path / "s.jsonl"), "n2")
        done = subprocess.run([*node.argv, "--redis", address], capture_output=True,
                              text=True, timeout=60, cwd=tmp_path, check=False)
    assert done.returncode == 69, done.stderr[-2000:]
    assert f"redis {address}" in done.stderr and "in use" in done.stderr
    assert "worker started" not in done.stderr


def wait_records(path: Path, n: int) -> list[dict[str, Any]]:
    return wait_for(lambda: len(read_records(path)) >= n and read_records(path),
                    what=f"{n} deliveries")


async def test_a_stopping_node_closes_its_idle_connections(tmp_path):
    node = await start_node(tmp_path)
    try:
        reader, writer = await asyncio.open_connection(*address(node))
        writer.write(b"PING\r\n")
        assert await asyncio.wait_for(reader.readexactly(7), 30) == b"+PONG\r\n"
        # When the node stops, the idle connection is closed, not waited for
        await asyncio.wait_for(node.stop(), 60)
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
    finally:
        await node.stop()


def test_each_refusal_has_its_code():
    for exc, line in [(Overloaded("queue full"), b"-OVERLOADED queue full\r\n"),
                      (IdPending("retry"), b"-TRYAGAIN retry\r\n"),
                      (NodeStopping("bye"), b"-STOPPING bye\r\n"),
                      (InvalidParams("bad\r\nline"), b"-ERR bad  line\r\n"),
                      (JournalError("not stored", "ref1"), b"-ERR not stored\r\n")]:
        assert error_line(exc) == line


def test_the_setting_is_checked():
    config = NodeConfig.from_dict({"redis": "127.0.0.1:8703"})
    assert (config.redis_host, config.redis_port) == ("127.0.0.1", 8703)
    six = NodeConfig.from_dict({"redis": "[::1]:0"})
    assert (six.redis_host, six.redis_port) == ("::1", 0)
    for bad in ("8703", "127.0.0.1:", ":8703", "127.0.0.1:70000", 8703, "host:port"):
        with pytest.raises(ConfigError, match="redis"):
            NodeConfig.from_dict({"redis": bad})


# ---------------------------------------------------------------------- the pure parts

def test_the_payload_rule():
    for data, payload in [(b'{"a": 1}', {"a": 1}), (b"text", "text"), (b"1.5", 1.5),
                          (b"1e2", 100.0), (b'"1"', "1"), (b"Infinity", "Infinity"),
                          (b"", ""), (b" [1] ", [1]), (b"{bad", "{bad")]:
        assert payload_of(data) == payload, data
    for data in (b"\xc3", b'{"a":1,"a":1}', b"1e400", b"1" * 30, b"[" * 100000):
        with pytest.raises(InvalidParams):
            payload_of(data)


def test_the_parser_takes_commands_as_they_come_and_bounds_them():
    parser = RequestParser(RequestLimits(max_bulk=10, max_args=3, max_command=40))
    whole = b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n"
    for byte in whole:  # one byte at a time
        assert parser.next_command() is None
        parser.feed(bytes([byte]))
    assert parser.next_command() == [b"PING", b"hi"]
    parser.feed(b"*0\r\n\r\n  PING  a  \r\n")
    assert parser.next_command() == [b"PING", b"a"]
    assert parser.next_command() is None and parser.buffered == 0
    for bad, error in [(b"*4\r\n", FrameError), (b"*1\r\n$11\r\n", FrameError),
                       (b"*3\r\n$10\r\n0123456789\r\n$10\r\n0123456789\r\n$10\r\n", FrameError),
                       (b"*1\r\n$x\r\n", ProtocolError), (b"*" + b"9" * 30, ProtocolError)]:
        fresh = RequestParser(RequestLimits(max_bulk=10, max_args=3, max_command=40))
        fresh.feed(bad)
        with pytest.raises(error):
            fresh.next_command()
