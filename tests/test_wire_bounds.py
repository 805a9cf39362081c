"""Bounds on what untrusted BERT input can make the node allocate, compute and write.

The codec's own caps (inflation ratio, term count) as a table of small inputs,
the safe description of terms in error messages, and then real `yptask node`
subprocesses that are sent decompression bombs on their BERT-RPC and link
ports while another connection keeps calling.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
import struct
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from support import ECHO, NodeProcess, wait_for

from yptask.errors import DecodeError, ProtocolError
from yptask.wire import codec
from yptask.wire.bertrpc import Call, ErrorReply, Info, Reply, decode_packet, frame, parse_packet
from yptask.wire.codec import encode
from yptask.wire.decode import decode
from yptask.wire.decoding import OFF_LOOP_BYTES, PRE_AUTH, PUBLISHER, Decoder, InflationBudget
from yptask.wire.describe import describe


def compressed(value: object, level: int = 9) -> bytes:
    body = encode(value)[1:]
    return b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body, level)


# --------------------------------------------------------------------------- the codec


def test_a_compressed_term_that_inflates_past_the_ratio_cap_is_refused_before_inflating():
    bomb = compressed(b"\x00" * 1_000_000)
    assert len(bomb) * codec.DEFAULT_MAX_RATIO < 1_000_000
    with pytest.raises(DecodeError, match="ratio"):
        decode(bomb)


def test_a_compressed_term_within_the_ratio_cap_decodes():
    value = ["abc", 1, 2.5, {"k": "v"}] * 50
    data = compressed(value)
    assert len(encode(value)) < len(data) * codec.DEFAULT_MAX_RATIO
    assert decode(data) == value


def test_the_ratio_cap_is_exact_at_its_edge():
    data = compressed("x" * 20_000)
    size = struct.unpack(">I", data[2:6])[0]
    ratio = -(-size // len(data))  # the smallest cap that admits it
    assert decode(data, max_ratio=ratio) == "x" * 20_000
    with pytest.raises(DecodeError, match="ratio"):
        decode(data, max_ratio=ratio - 1)


@pytest.mark.parametrize("value", [[None] * 5000, [[]] * 5000, [{}] * 5000,
                                   {str(i): i for i in range(2500)}, [(1, 2)] * 2000])
def test_a_term_with_more_elements_than_the_budget_is_refused(value):
    data = encode(value)
    assert decode(data, max_terms=20_000) == value
    with pytest.raises(DecodeError, match="elements"):
        decode(data, max_terms=4000)


def test_the_term_budget_counts_the_whole_term_not_one_container():
    value = [[1] * 100] * 100  # 100 lists of 100: 10 100 elements in all
    assert decode(encode(value), max_terms=10_100) == value
    with pytest.raises(DecodeError, match="elements"):
        decode(encode(value), max_terms=10_099)


def test_inflated_nils_cannot_become_millions_of_objects():
    bomb = compressed([[]] * 2_000_000)  # about 2 MB of NIL bytes, 2 M empty lists
    with pytest.raises(DecodeError, match="ratio"):
        decode(bomb)
    with pytest.raises(DecodeError, match="elements"):
        decode(bomb, max_ratio=10_000)


HUGE_TERMS = {
    "str": lambda: "x" * 10_000_000, "bytes": lambda: b"x" * 10_000_000,
    "list": lambda: list(range(1_000_000)), "tuple": lambda: tuple(range(1_000_000)),
    "dict": lambda: {i: "v" * 1000 for i in range(100_000)}, "bignum": lambda: 7 ** 1_000_000,
    "nested": lambda: [[[["deep" * 1000] * 100]]],
    "bert": lambda: (codec.Atom("bert"), ["y" * 100] * 100_000)}


@pytest.mark.parametrize("make", HUGE_TERMS.values(), ids=HUGE_TERMS.keys())
def test_describe_is_short_whatever_the_term(make):
    text = describe(make())
    assert 0 < len(text) <= 120


def test_describe_says_type_and_size():
    assert describe([1, 2, 3]) == "[1, 2, 3]"
    assert describe(list(range(1_000_000))).startswith("<list of 1000000>[0, 1, 2")
    assert describe("x" * 10_000).startswith("<str of 10000 chars>'xxx")
    assert "bits" in describe(7 ** 100_000)


def test_a_huge_term_in_a_protocol_error_gives_a_short_message():
    with pytest.raises(ProtocolError) as caught:
        parse_packet(["z" * 1_000_000] * 1000)
    assert len(str(caught.value)) < 300
    with pytest.raises(ProtocolError) as caught:
        parse_packet((codec.Atom("nope"), "z" * 1_000_000))
    assert len(str(caught.value)) < 300


def test_a_huge_bert_complex_kind_gives_a_short_message():
    data = b"\x83h\x02d\x00\x04bert" + encode(["q" * 1000] * 1000)[1:]
    with pytest.raises(DecodeError) as caught:
        decode(data)
    assert len(str(caught.value)) < 300


# --------------------------------------------------------------------------- decoding


def test_a_connections_inflation_budget_refuses_what_it_has_not():
    budget = InflationBudget(burst_bytes=100, refill_bytes_per_s=0)
    budget.spend(10, 60)
    budget.spend(10, 10)  # uncompressed frames cost nothing
    budget.spend(10, 60)
    with pytest.raises(DecodeError, match="inflate faster"):
        budget.spend(10, 20)


async def test_a_big_frame_decodes_off_the_loop_to_the_same_value():
    decoder = Decoder("test decode")
    try:
        value = [{"n": i, "s": "x" * 10} for i in range(20_000)]
        data = encode(value)
        assert len(data) > OFF_LOOP_BYTES
        ticks = 0

        def tick() -> None:
            nonlocal ticks
            ticks += 1
            loop.call_soon(tick)

        loop = asyncio.get_running_loop()
        loop.call_soon(tick)
        assert await decoder.decode(data, PUBLISHER) == value
        assert ticks > 0  # the loop ran while the decoder thread worked
        with pytest.raises(DecodeError, match="elements"):
            await decoder.decode(data, PRE_AUTH)
    finally:
        decoder.close()


# --------------------------------------------------------------------------- real nodes

ECHO_TASKS = f"""
[[task]]
name = "echo"
worker_class = "{ECHO['worker_class']}"
messages = ["*.echo"]
"""
RSS_BOUND_MB = 200  # generous: the unbounded decode took over 1 GB
NILS = 16 * 1024 * 1024 - 6  # the most a 16 MiB inflation cap admits


def nil_bomb(count: int = NILS) -> bytes:
    """A compressed list of `count` NILs: a few KB that inflate to `count` bytes."""
    body = b"l" + struct.pack(">I", count) + b"j" * count + b"j"
    return b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body, 9)


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


class Node(NodeProcess):
    """A node subprocess with a [node] config of its own; knows its BERT-RPC address."""

    def __init__(self, tmp: Path, name: str = "w1", *, config: str = "",
                 cluster: list[str] | None = None) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        super().__init__(tmp, ECHO_TASKS, name, cluster=cluster)
        (tmp / "node.toml").write_text("[node]\n" + config)
        self.argv += ["--config", str(tmp / "node.toml")]

    @property
    def bert(self) -> tuple[str, int]:
        found = re.search(r"BERT-RPC (\S+):(\d+),", self.log())
        assert found, "the node logged no BERT-RPC address"
        return found.group(1), int(found.group(2))

    @property
    def link_address(self) -> tuple[str, int]:
        host, _, port = self.link.rpartition(":")
        return host, int(port)

    def log(self) -> str:
        return (self.tmp / "node.log").read_text()

    @property
    def peak_mb(self) -> float:
        assert self.proc is not None
        return memory_kb(self.proc.pid, "VmHWM") / 1024


@pytest.fixture
def nodes(tmp_path):
    """Start nodes with `nodes(name, config=..., cluster=...)`; all stopped by PID at the end."""
    started: list[Node] = []

    def start(name: str = "w1", **kwargs) -> Node:
        node = Node(tmp_path / name, name, **kwargs)
        started.append(node)
        node.start()
        return node

    yield start
    for node in started:
        node.stop()


async def send_frames(address: tuple[str, int], frames: list[bytes], answers: int,
                      parse: Callable[[bytes], object] = decode_packet) -> list[object]:
    """Send frames on one connection; return up to `answers` answers, each parsed (fewer if
    the node closes it)."""
    reader, writer = await asyncio.open_connection(*address)
    got: list[object] = []
    try:
        for data in frames:
            writer.write(data)
        await writer.drain()
        async with asyncio.timeout(60):
            for _ in range(answers):
                header = await reader.readexactly(4)
                got.append(parse(await reader.readexactly(struct.unpack(">I", header)[0])))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
    return got


def packed(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


async def plain_calls(address: tuple[str, int], stop: asyncio.Event) -> int:
    """Call echo on its own connection until `stop`; return how many were answered."""
    answered = 0
    while not stop.is_set() or answered == 0:
        answer = await send_frames(address, [frame(Call("yptask", "call",
                                                        ["t.echo", {"n": answered}, 10]))], 1)
        assert answer == [Reply({"n": answered})]
        answered += 1
    return answered


async def test_a_compressed_bomb_on_the_bert_port_is_refused_and_costs_no_memory(nodes):
    # Given a node with defaults (no tokens: every connection may publish)
    node = nodes()
    before = node.peak_mb
    # When a client sends frames of a few KB that each inflate to 16 MiB of NILs,
    # while another connection keeps calling
    bombs = [packed(nil_bomb())] * 4
    assert len(bombs[0]) < 20_000
    stop = asyncio.Event()
    calls = asyncio.create_task(plain_calls(node.bert, stop))
    answers = await send_frames(node.bert, bombs, len(bombs))
    stop.set()
    # Then each gets a clear protocol error, the calls were answered throughout,
    assert len(answers) == len(bombs)
    for answer in answers:
        assert isinstance(answer, ErrorReply) and answer.type == "protocol"
        assert "inflates" in answer.detail and len(answer.detail) < 400
    assert await calls > 0
    # and the node's memory did not jump
    assert node.peak_mb - before < RSS_BOUND_MB


async def test_before_a_token_the_bert_port_takes_only_small_frames(nodes):
    # Given a node that wants a publisher token
    node = nodes(config='api_tokens = { shop = "shop-token-0123456789" }\n')
    before = node.peak_mb
    # When a connection that has shown none sends a big frame
    big = frame(Call("yptask", "cast", ["t.echo", {"blob": "x" * 200_000}]))
    [answer] = await send_frames(node.bert, [big], 1)
    # Then it is told to authenticate first (and the connection closes)
    assert isinstance(answer, ErrorReply) and "publisher token" in answer.detail
    # And a small compressed frame may not inflate past the small pre-token cap
    [answer] = await send_frames(node.bert, [packed(nil_bomb(1_000_000))], 1)
    assert isinstance(answer, ErrorReply) and "inflates" in answer.detail
    # While, with the token, the same connection may publish
    token = Info("auth", ["shop-token-0123456789"])
    answers = await send_frames(node.bert, [frame(token), frame(Call(
        "yptask", "call", ["t.echo", {"ok": 1}, 10]))], 1)
    assert answers == [Reply({"ok": 1})]
    assert node.peak_mb - before < RSS_BOUND_MB


def hello(nonce: object) -> bytes:
    return codec.encode((codec.Atom("yptask_hello"), 1, "yptask", "x", "b", nonce))


async def test_a_compressed_bomb_on_the_link_port_before_the_handshake_is_refused(nodes):
    # Given a node
    node = nodes()
    before = node.peak_mb
    # When strangers send hello frames under the 4 KiB handshake cap that inflate a lot
    body = b"\x68\x06" + hello("n")[3:-6] + b"l" + struct.pack(">I", 4_000_000) \
        + b"j" * 4_000_001  # the nonce: a list of 4 M NILs
    bomb = b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body, 9)
    assert len(bomb) < 4096
    stop = asyncio.Event()
    calls = asyncio.create_task(plain_calls(node.bert, stop))
    answers = await asyncio.gather(*(send_frames(node.link_address, [packed(bomb)], 1,
                                                 decode) for _ in range(6)))
    stop.set()
    # Then each is refused and closed without a challenge, and the node serves on
    assert answers == [[]] * 6
    assert await calls > 0
    # (the log says so once; refusals in a flood are counted, not written one by one)
    wait_for(lambda: "refused a link" in node.log(), timeout_s=10,
             what="the refusal in the log")
    assert all(len(line) < 400 for line in node.log().splitlines() if "refused a link" in line)
    assert node.peak_mb - before < RSS_BOUND_MB


async def test_a_huge_term_in_an_error_path_gives_a_short_error(nodes):
    node = nodes()
    huge = codec.encode((codec.Atom("nope"), ["z" * 100_000] * 100))
    [answer] = await send_frames(node.bert, [packed(huge)], 1)
    assert isinstance(answer, ErrorReply) and len(answer.detail) < 400
    [answer] = await send_frames(node.bert, [frame(Call("yptask", "cast",
                                                        [["n" * 100_000] * 100, {}]))], 1)
    assert isinstance(answer, ErrorReply) and len(answer.detail) < 400
    [answer] = await send_frames(node.bert, [frame(Call("yptask", "call",
                                                        ["t.echo", {"still": 1}, 10]))], 1)
    assert answer == Reply({"still": 1})


# --------------------------------------------------------------------------- allow_from


@pytest.mark.slow
async def test_allow_from_closes_the_link_port_before_any_handshake(nodes, tmp_path):
    # Given a node that allows only a network the test does not connect from, and a peer
    # that shares its cookie and knows its link address
    (tmp_path / "cookie").write_text("cookie-abc-123\n")
    common = ["--no-mdns", "--cookie-file", str(tmp_path / "cookie")]
    fenced = nodes("fenced", config='allow_from = ["198.51.100.0/24"]\n', cluster=common)
    peer = nodes("peer", cluster=[*common, "--join", fenced.link])
    # When a stranger says hello on the fenced node's link port
    answer = await send_frames(fenced.link_address, [packed(hello("0" * 64))], 1, decode)
    # Then the connection is closed with no challenge, and the log says why
    assert answer == []
    wait_for(lambda: "not in allow_from" in fenced.log(), timeout_s=10,
             what="the refusal in the log")
    # And the peer is refused too (it never links)
    wait_for(lambda: fenced.log().count("not in allow_from") >= 2, timeout_s=15,
             what="the peer's dial refused")
    assert "linked to node" not in peer.log()
    assert {m["name"] for m in peer.rpc("nodes")} == {"peer"}


async def test_a_node_does_not_dial_a_peer_outside_its_allow_from(nodes, tmp_path):
    # Given an open node, and a node that allows only 198.51.100.0/24 but is told to join it
    (tmp_path / "cookie").write_text("cookie-abc-123\n")
    common = ["--no-mdns", "--cookie-file", str(tmp_path / "cookie")]
    open_node = nodes("open", cluster=common)
    fenced = nodes("fenced", config='allow_from = ["198.51.100.0/24"]\n',
                   cluster=[*common, "--join", open_node.link])
    # Then it says why it does not link, and the open node never hears from it
    wait_for(lambda: "not in this node's allow_from" in fenced.log(), timeout_s=15,
             what="the fenced node to refuse to dial")
    assert {m["name"] for m in open_node.rpc("nodes")} == {"open"}


# --------------------------------------------------------------------------- mDNS


def other_addresses() -> list[str]:
    """This machine's IPv4 addresses that are not loopback."""
    import ifaddr  # zeroconf's own dependency: how it lists interfaces too

    return [str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips
            if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]


QUERY_IDS = itertools.count(0x5150)


def mdns_query(address: str, service_type: str, timeout_s: float) -> bytes:
    """Send one unicast PTR question for `service_type` to `address`:5353 from an
    ephemeral port (a legacy unicast query); return the answer, or b"" if none came.
    Each query has its own id: zeroconf ignores a repeat of the same bytes."""
    question = b"".join(bytes([len(label)]) + label.encode()
                        for label in service_type.rstrip(".").split(".")) + b"\x00"
    packet = (struct.pack(">6H", next(QUERY_IDS), 0, 1, 0, 0, 0) + question
              + struct.pack(">2H", 12, 1))  # PTR, IN
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sock.sendto(packet, (address, 5353))
        try:
            return sock.recv(9000)
        except TimeoutError:
            return b""


def test_mdns_answers_on_loopback_only(nodes, tmp_path):
    others = other_addresses()
    if not others:
        pytest.skip("this machine has no address but loopback to ask on")
    # Given a node with default mDNS settings (it announces on 127.0.0.1)
    (tmp_path / "cookie").write_text("cookie-abc-123\n")
    service_type = f"_ypt-{uuid.uuid4().hex[:8]}._tcp.local."
    node = nodes("mdnsnode", config=f'mdns_type = "{service_type}"\n',
                 cluster=["--cookie-file", str(tmp_path / "cookie")])
    # Then a unicast query on loopback is answered with its name (the query is sound)
    answer = wait_for(lambda: mdns_query("127.0.0.1", service_type, 1.0), timeout_s=15,
                      what="an mDNS answer on 127.0.0.1")
    assert b"mdnsnode" in answer
    # But the same query sent to the machine's other addresses gets no answer
    for address in others:
        assert mdns_query(address, service_type, 2.0) == b"", f"answered on {address}"
    assert node.proc is not None and node.proc.poll() is None
