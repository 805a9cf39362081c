"""Connection exhaustion: the fd limit, the caps, the head, idle and handshake timeouts.

Real `yptask node` processes and real loopback sockets. A node started with the
usual soft limit of 1 024 open files must raise it, cap each surface below it,
close slow heads and idle connections, and keep serving well-behaved clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import ALONE, ECHO, NodeProcess, until, wait_for

from yptask.client import Client
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.connection_limits import ConnectionLimit, RefusalLog, default_caps
from yptask.errors import ConfigError
from yptask.node import Node
from yptask.wire.bertrpc import Call, ErrorReply, Reply, decode_packet, frame

TASKS = """
[[task]]
name = "echo"
worker_class = "yptask.tasks.echo:Echo"
messages = ["*.echo"]
"""
IDLE_CONNECTIONS = 2000
SLOW_CONNECTIONS = 1000
CASTS = 200
SLOW_HEAD = b"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


@pytest.fixture
def fd_room() -> Iterator[None]:
    """Room in this process for the attack's sockets: the soft limit raised to the hard."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 8192  # the attack's 3 000 sockets here, and as many in the node with room over
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the hard open-file limit is {hard}; this test needs {need} "
                    "(raise it with ulimit -Hn or in limits.conf)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def node_process(tmp: Path, soft_fd_limit: int | None = None, **settings: object
                 ) -> NodeProcess:
    """A node process with these [node] settings, under this soft open-file limit."""
    node = NodeProcess(tmp, TASKS)
    if settings:
        lines = [f"{key} = {value}" for key, value in settings.items()]  # numbers only
        (tmp / "node.toml").write_text("[node]\n" + "\n".join(lines) + "\n")
        node.argv += ["--config", str(tmp / "node.toml")]
    if soft_fd_limit is not None:  # as a node started from a login shell gets it
        node.argv = ["sh", "-c", f'ulimit -Sn {soft_fd_limit} && exec "$@"', "sh", *node.argv]
    return node


@contextlib.contextmanager
def running(node: NodeProcess) -> Iterator[NodeProcess]:
    try:
        node.start()
        yield node
    finally:
        node.stop()


def http_address(node: NodeProcess) -> tuple[str, int]:
    host, port = node.url.removeprefix("http://").split("/")[0].rsplit(":", 1)
    return host, int(port)


def healthz(address: tuple[str, int]) -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n\r\n".encode()


def open_idle(address: tuple[str, int], count: int, into: list[socket.socket]) -> None:
    """Open `count` keep-alive connections, each served one request, then left idle."""
    new = []
    for _ in range(count):
        sock = socket.create_connection(address, timeout=10)
        into.append(sock)
        new.append(sock)
        sock.sendall(healthz(address))
    for sock in new:
        assert sock.recv(4096).startswith(b"HTTP/1.1 200"), "an idle connection was not served"


def open_slow(address: tuple[str, int], count: int, into: list[socket.socket]) -> None:
    """Open `count` connections that have sent the first byte of a request head."""
    for _ in range(count):
        sock = socket.create_connection(address, timeout=10)
        into.append(sock)
        sock.sendall(SLOW_HEAD[:1])


def open_busy(address: tuple[str, int], count: int, into: list[socket.socket]) -> None:
    """Open `count` connections each in the middle of a request: its head sent and seen
    (the node said 100 Continue), its body never."""
    head = (f"POST /rpc HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n"
            "Expect: 100-continue\r\n\r\n").encode()
    for _ in range(count):
        sock = socket.create_connection(address, timeout=10)
        into.append(sock)
        sock.sendall(head)
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")


def is_closed(sock: socket.socket) -> bool:
    """True once the node has closed `sock` (it reads EOF, or the reset)."""
    sock.settimeout(0)
    try:
        while sock.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


class Trickle(threading.Thread):
    """Slowloris: each interval, one more byte of a never-ending head on every socket."""

    def __init__(self, socks: list[socket.socket], interval_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.socks, self.interval_s = socks, interval_s
        self.stopping = threading.Event()
        self.closed = 0

    def run(self) -> None:
        head = SLOW_HEAD + b"X-Slow: 1\r\n" * 10_000
        sent = 1
        open_socks = list(self.socks)
        while not self.stopping.wait(self.interval_s) and open_socks:
            still = []
            for sock in open_socks:
                try:
                    sock.send(head[sent:sent + 1])
                    still.append(sock)
                except OSError:  # closed by the node
                    self.closed += 1
            open_socks, sent = still, sent + 1

    def stop(self) -> None:
        self.stopping.set()
        if self.ident is not None:  # started
            self.join(timeout=30)


def test_casts_are_answered_during_idle_and_slowloris_attack(tmp_path, fd_room):
    # (how fast they are under the attack is measured by bench/connections.py)
    # Given a node started under the common soft limit of 1 024 open files
    node = node_process(tmp_path, soft_fd_limit=1024)
    socks: list[socket.socket] = []
    trickle = Trickle(socks)
    client: Client | None = None
    with running(node):
        try:
            address = http_address(node)
            # When 2 000 idle keep-alive connections and 1 000 slowloris ones are open
            open_idle(address, IDLE_CONNECTIONS, socks)
            slow_start = len(socks)
            open_slow(address, SLOW_CONNECTIONS, socks)
            trickle.socks = socks[slow_start:]
            trickle.start()
            # Then a normal client's casts all succeed while the attack goes on
            client = Client(node.url, timeout_s=10)
            for i in range(CASTS):
                assert client.cast("load.echo", {"i": i})["tasks"] == ["echo"]
            assert trickle.closed < SLOW_CONNECTIONS, "the attack was over before the casts"
        finally:
            trickle.stop()
            if client is not None:
                client.close()
            for sock in socks:
                sock.close()
    # And the node said how many files it may open now
    assert "open files: soft limit raised from 1024 to" in (tmp_path / "node.log").read_text()


def test_slow_head_is_closed_after_the_head_timeout(tmp_path):
    node = node_process(tmp_path, http_head_timeout_s=0.5)
    socks: list[socket.socket] = []
    with running(node):
        try:
            address = http_address(node)
            # Given a connection sending its request head a byte at a time
            open_slow(address, 1, socks)
            slow = socks[0]
            # Then the node closes it once the head has taken longer than the timeout,
            # though bytes keep coming
            sent = 1

            def closed_while_trickling() -> bool:
                nonlocal sent
                if is_closed(slow):
                    return True
                with contextlib.suppress(OSError):
                    slow.send(SLOW_HEAD[sent:sent + 1])
                sent += 1
                return False
            wait_for(closed_while_trickling, timeout_s=10, what="the slow head closed")
            # And a request whose head is complete in time is served on a new connection
            open_idle(address, 1, socks)
        finally:
            for sock in socks:
                sock.close()


def test_idle_keepalive_is_closed_after_the_keepalive_timeout(tmp_path):
    node = node_process(tmp_path, http_keepalive_timeout_s=0.5)
    socks: list[socket.socket] = []
    with running(node):
        try:
            open_idle(http_address(node), 1, socks)
            wait_for(lambda: is_closed(socks[0]), timeout_s=10, what="the idle one closed")
        finally:
            for sock in socks:
                sock.close()


def test_past_the_cap_a_connection_gets_503_and_the_log_one_line(tmp_path):
    # Given a node capped at 10 HTTP connections, all 10 busy in a request
    node = node_process(tmp_path, max_http_connections=10)
    socks: list[socket.socket] = []
    with running(node):
        try:
            address = http_address(node)
            open_busy(address, 10, socks)
            # When 30 more connect
            refused = []
            for _ in range(30):
                sock = socket.create_connection(address, timeout=10)
                socks.append(sock)
                refused.append(sock)
            # Then each gets a 503 saying why, and the connection closes
            for sock in refused:
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
                assert answer.startswith(b"HTTP/1.1 503 ")
                assert b"Connection: close" in answer
                assert b"max_http_connections" in answer
            # And the log says so once, not once per refusal
            log = tmp_path / "node.log"
            wait_for(lambda: "max_http_connections" in log.read_text(), timeout_s=10,
                     what="the refusal logged")
            lines = [x for x in log.read_text().splitlines() if "refused" in x and "HTTP" in x]
            assert len(lines) == 1, lines
        finally:
            for sock in socks:
                sock.close()


def test_at_the_cap_the_idlest_keepalive_makes_room(tmp_path):
    # Given a node capped at 10 HTTP connections, all 10 idle keep-alives
    node = node_process(tmp_path, max_http_connections=10)
    socks: list[socket.socket] = []
    with running(node):
        try:
            address = http_address(node)
            open_idle(address, 10, socks)
            # When one more client connects, it is served
            open_idle(address, 1, socks)
            # Then the connection idle the longest was closed for it, and only that one
            wait_for(lambda: is_closed(socks[0]), timeout_s=10, what="the idlest closed")
            assert not any(is_closed(sock) for sock in socks[1:])
        finally:
            for sock in socks:
                sock.close()


# ---------------------------------------------------------------------- BERT-RPC and links


@pytest.fixture
async def capped_node(tmp_path):
    node = await Node.start(
        NodeConfig(name="c1", data_dir=tmp_path / "data", max_bert_connections=2,
                   bert_idle_timeout_s=0.5, max_link_connections=2,
                   link_handshake_timeout_s=0.5, **ALONE),
        tasks=[TaskDef.from_dict(ECHO)])
    try:
        yield node
    finally:
        await node.stop()


async def read_frame(reader: asyncio.StreamReader) -> object:
    header = await reader.readexactly(4)
    return decode_packet(await reader.readexactly(struct.unpack(">I", header)[0]))


async def test_bert_past_the_cap_gets_an_error_frame_then_eof(capped_node):
    host, port = capped_node.bert_address.rsplit(":", 1)
    streams = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
    try:
        # Given the two connections the cap allows, both served
        for reader, writer in streams:
            writer.write(frame(Call("yptask", "cast", ["b.echo", {}])))
            assert isinstance(await read_frame(reader), Reply)
        # When a third connects, it gets an error frame saying why, then EOF
        reader, writer = await asyncio.open_connection(host, int(port))
        streams.append((reader, writer))
        answer = await asyncio.wait_for(read_frame(reader), 10)
        assert isinstance(answer, ErrorReply) and "max_bert_connections" in answer.detail
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        for _, writer in streams:
            writer.close()


async def test_bert_idle_connection_is_closed_and_frees_its_place(capped_node):
    host, port = capped_node.bert_address.rsplit(":", 1)
    streams = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
    try:
        # Given two idle connections: both are closed after the idle timeout
        for reader, _ in streams:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        # Then a new one is served
        reader, writer = await asyncio.open_connection(host, int(port))
        streams.append((reader, writer))
        writer.write(frame(Call("yptask", "cast", ["b.echo", {}])))
        assert isinstance(await asyncio.wait_for(read_frame(reader), 10), Reply)
    finally:
        for _, writer in streams:
            writer.close()


async def test_link_unauthenticated_is_closed_and_past_the_cap_refused(capped_node):
    assert capped_node.cluster is not None
    host, port = capped_node.cluster.link_address.rsplit(":", 1)
    streams = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
    try:
        # Given three strangers that never finish a handshake, on a link port capped at 2:
        # the third is closed at once, the two others after the handshake timeout
        assert await asyncio.wait_for(streams[2][0].read(), 10) == b""
        for reader, _ in streams[:2]:
            assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        for _, writer in streams:
            writer.close()


# ---------------------------------------------------------------------- the mechanism


@pytest.mark.parametrize(("fd_limit", "http", "bert", "link"), [
    (1024, 460, 153, 38),  # the common default: room left for workers and the journal
    (20_000, 4096, 1024, 256),
    (1_048_576, 4096, 1024, 256),
])
def test_default_caps_leave_room_under_the_fd_limit(fd_limit, http, bert, link):
    caps = default_caps(fd_limit)
    assert (caps.http, caps.bert, caps.link) == (http, bert, link)
    assert caps.http + caps.bert + caps.link < fd_limit - 256


def test_connection_settings_are_checked():
    with pytest.raises(ConfigError, match="max_http_connections"):
        NodeConfig.from_dict({"max_http_connections": -1})
    with pytest.raises(ConfigError, match="http_head_timeout_s"):
        NodeConfig.from_dict({"http_head_timeout_s": 0})


def test_limit_evicts_the_least_recently_active_idle_one():
    evicted: list[str] = []
    idle = {"a": True, "b": True, "c": False}

    def evict(conn: str) -> bool:
        if idle[conn]:
            evicted.append(conn)
        return idle[conn]

    limit: ConnectionLimit[str] = ConnectionLimit("HTTP", "max_http_connections", 3,
                                                  evict=evict)
    for conn in "abc":
        assert limit.admit(conn)
    limit.touch("a")  # now b is the idlest idle one
    idle["d"] = False
    assert limit.admit("d") and evicted == ["b"]
    idle["a"] = False
    assert not limit.admit("e")  # a, c busy, d the newest: nothing to evict
    limit.release("a")
    assert limit.admit("e")


async def test_refusal_log_counts_within_its_window(caplog):
    log = RefusalLog("BERT-RPC", "max_bert_connections", every_s=0.2)
    with caplog.at_level("WARNING", logger="yptask.connection_limits"):
        for _ in range(50):
            log.refused(cap=7)
        # the first refusal is said at once, the other 49 once the window has passed
        await until(lambda: len(caplog.records) == 2, timeout_s=10, what="the second line")
    first, second = (r.getMessage() for r in caplog.records)
    assert "refused 1 " in first and "max_bert_connections" in first and "7" in first
    assert "refused 49 " in second
