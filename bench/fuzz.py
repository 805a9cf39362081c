"""Hostile input under load: a node takes malformed and oversized input on every port and
keeps answering calls.

A `yptask node` subprocess on loopback gets, from a few concurrent senders
per surface, the shapes tests/test_fuzz.py draws: compressed terms near and
past the inflation-ratio cap, decompression bombs (a few KB that would
inflate to 16 MiB of NILs), text that is not UTF-8 or holds lone
surrogates, numbers out of every range, payloads nested to the depth cap
and past it, and garbage, on its JSON-RPC (HTTP), BERT-RPC and link ports.
Meanwhile one client calls the no-op task over JSON-RPC, one call at a time.
Each sender sends a fixed number of cases, so the run ends by itself.
Printed: cases sent and refused per surface, the calls' p50 / p99 and
failures, and the node's peak memory.

    python bench/fuzz.py [--rounds 100] [--senders 3] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import aiohttp
from _harness import BenchNode

from yptask.wire import codec
from yptask.wire.bertrpc import Call, ErrorReply, decode_packet, frame

Shape = Callable[[random.Random], bytes]
CALL_TIMEOUT_S = 10.0


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def compressed(body: bytes, level: int = 9) -> bytes:
    """A compressed term around `body` (term bytes without the magic byte)."""
    return b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body, level)


def raw_atom(raw: bytes) -> bytes:
    return bytes([codec.SMALL_ATOM_UTF8, len(raw)]) + raw


def raw_binary(raw: bytes) -> bytes:
    return struct.pack(">BI", codec.BINARY, len(raw)) + raw


def raw_call(args: list[bytes], kind: bytes = b"call", function: bytes = b"call") -> bytes:
    return (b"\x83h\x04" + raw_atom(kind) + raw_atom(b"yptask") + raw_atom(function)
            + struct.pack(">BI", codec.LIST, len(args)) + b"".join(args) + b"j")


def nested_bert(depth: int) -> bytes:
    return b"l\x00\x00\x00\x01" * depth + b"a\x01" + b"j" * depth


def big_int(magnitude_bytes: int, negative: bool) -> bytes:
    return struct.pack(">BIB", codec.LARGE_BIG, magnitude_bytes, int(negative)) \
        + b"\x01" * magnitude_bytes


def nils(count: int) -> bytes:
    return b"l" + struct.pack(">I", count) + b"j" * (count + 1)


NAME = raw_binary(b"bench.echo")
TEN = bytes([codec.SMALL_INTEGER, 10])
NOT_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"a\x80b", b"\xf4\x90\x80\x80"]
HUGE = [2**70, -2**70, 2**63, -2**63 - 1, 10**400]
DEPTH = codec.DEFAULT_MAX_DEPTH


def near_ratio_cap(rng: random.Random) -> bytes:
    head = bytes(rng.randrange(256) for _ in range(rng.randrange(50, 400)))
    blob = head + b"a" * (len(head) * rng.randrange(20, 120))
    return framed(compressed(raw_call([NAME, struct.pack(">BI", codec.MAP, 1)
                                       + raw_binary(b"b") + raw_binary(blob), TEN])[1:],
                             rng.randrange(1, 10)))


BERT_SHAPES: list[Shape] = [
    near_ratio_cap,
    lambda rng: framed(compressed(nils(16 * 1024 * 1024 - 6))),  # the 16 MiB bomb
    lambda rng: framed(compressed(raw_call([NAME, nils(rng.randrange(10**5, 10**6)),
                                            TEN])[1:])),
    lambda rng: framed(raw_call([raw_binary(rng.choice(NOT_UTF8)), raw_binary(b"x"), TEN])),
    lambda rng: framed(raw_call([NAME, raw_atom(rng.choice(NOT_UTF8)), TEN])),
    lambda rng: framed(raw_call([NAME], function=rng.choice(NOT_UTF8))),
    lambda rng: framed(raw_call([NAME, big_int(rng.randrange(9, 200_000), rng.random() < .5),
                                 TEN])),
    lambda rng: framed(raw_call([NAME, struct.pack(">BI", codec.MAP, 0),
                                 big_int(rng.randrange(9, 2000), rng.random() < .5)])),
    lambda rng: frame(Call("yptask", "cast", ["bench.echo", {}, {"priority": rng.choice(HUGE)}])),
    lambda rng: framed(raw_call([NAME, nested_bert(rng.randrange(DEPTH - 3, DEPTH + 3)), TEN])),
    lambda rng: framed(raw_call([NAME, nested_bert(rng.randrange(DEPTH - 3, DEPTH + 3))],
                                kind=b"cast", function=b"cast")),
    lambda rng: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))),
]


def rpc(method: str, params: object, id_: object = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": method,
                       "params": params}).encode()


def deep_json_call(depth: int) -> bytes:
    """A call whose payload is `depth` lists deep, written as text (json.dumps would
    overflow the stack)."""
    return (b'{"jsonrpc": "2.0", "id": 1, "method": "call", "params": ["bench.echo", {"d": '
            + b"[" * depth + b"1" + b"]" * depth + b"}, 5]}")


def surrogates(rng: random.Random) -> str:
    return "".join(chr(rng.randrange(0xD800, 0xE000)) for _ in range(rng.randrange(1, 4)))


HTTP_SHAPES: list[Shape] = [
    lambda rng: rpc("cast", [surrogates(rng), {"k": 1}]),
    lambda rng: rpc("cast", ["bench.echo", {surrogates(rng): surrogates(rng)}]),
    lambda rng: rpc("call", ["bench.echo", {"k": surrogates(rng)}, 5]),
    lambda rng: rpc("cast", ["bench.echo", {}], id_=surrogates(rng)),
    lambda rng: b'{"jsonrpc": "2.0", "id": 1, "method": "cast", "params": ["bench.echo", '
                b'{"k": "' + rng.choice(NOT_UTF8) + b'"}]}',
    lambda rng: rpc("cast", ["bench.echo", {"n": rng.choice(HUGE)}]),
    lambda rng: rpc("call", ["bench.echo", {}, rng.choice(HUGE)]),
    lambda rng: rpc("cast", ["bench.echo", {}], id_=rng.choice(HUGE)),
    lambda rng: b'{"jsonrpc": "2.0", "id": 1, "method": "cast", "params": ["bench.echo", '
                b'{"n": ' + rng.choice([b"1e999", b"-1e999", b"NaN", b"Infinity"]) + b'}]}',
    lambda rng: deep_json_call(rng.choice([DEPTH - 2, DEPTH - 1, DEPTH, DEPTH + 1, 100_000])),
    lambda rng: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))),
]


def hello(name: bytes, nonce: bytes, tag: bytes = raw_atom(b"yptask_hello")) -> bytes:
    return (b"\x83h\x06" + tag + b"a\x01" + raw_binary(b"yptask") + name + raw_binary(b"b")
            + nonce)


LINK_SHAPES: list[Shape] = [
    lambda rng: framed(compressed(hello(raw_binary(b"x"), nils(4_000_000))[1:])),
    lambda rng: framed(compressed(hello(raw_binary(b"x"), raw_binary(
        b"a" * rng.randrange(100, 4000)))[1:])),
    lambda rng: framed(hello(raw_binary(rng.choice(NOT_UTF8)), raw_binary(b"n"))),
    lambda rng: framed(hello(raw_binary(b"x"), raw_binary(b"n"), raw_atom(rng.choice(NOT_UTF8)))),
    lambda rng: framed(hello(raw_binary(b"x"), nested_bert(rng.randrange(DEPTH - 2, DEPTH + 2)))),
    lambda rng: framed(hello(raw_binary(b"x"), big_int(rng.randrange(9, 3000), True))),
    lambda rng: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))),
]


async def exchange(address: str, data: bytes) -> bytes:
    """Send bytes to a TCP port; return what came back before it closed or went quiet."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        async with asyncio.timeout(CALL_TIMEOUT_S):
            return await reader.read()
    except (ConnectionError, TimeoutError):
        return b""
    finally:
        writer.close()


def bert_refused(back: bytes) -> bool:
    """Did the answer hold an error packet, or no packet at all?"""
    if len(back) < 4:
        return True
    (length,) = struct.unpack(">I", back[:4])
    return isinstance(decode_packet(back[4:4 + length]), ErrorReply)


def http_refused(status: int, text: str) -> bool:
    if status != 200:
        return status != 204
    answer = json.loads(text)
    return any("error" in item for item in (answer if isinstance(answer, list) else [answer]))


class Run:
    """What the senders and the caller saw."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds  # cases per sender
        self.unanswered: list[str] = []  # cases the node did not answer in time
        self.sent = {"http": 0, "bert": 0, "link": 0}
        self.refused = {"http": 0, "bert": 0, "link": 0}
        self.latencies_ms: list[float] = []
        self.failures: list[str] = []


async def sender(surface: str, node: BenchNode, session: aiohttp.ClientSession,
                 rng: random.Random, run: Run) -> None:
    shapes = {"http": HTTP_SHAPES, "bert": BERT_SHAPES, "link": LINK_SHAPES}[surface]
    for _ in range(run.rounds):
        index = rng.randrange(len(shapes))
        data = shapes[index](rng)
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                refused = await send(surface, node, session, data)
        except TimeoutError:
            run.unanswered.append(f"{surface} shape {index}")
            refused = True
        run.sent[surface] += 1
        run.refused[surface] += refused


async def send(surface: str, node: BenchNode, session: aiohttp.ClientSession, data: bytes
               ) -> bool:
    """Send one case; was it refused?"""
    if surface == "http":
        async with session.post(node.url, data=data,
                                headers={"Content-Type": "application/json"}) as response:
            return http_refused(response.status, await response.text())
    if surface == "bert":
        return bert_refused(await exchange(node.bert_address, data))
    await exchange(node.link, data)  # a stranger never gets past the handshake
    return True


async def caller(node: BenchNode, session: aiohttp.ClientSession, done: asyncio.Event,
                 run: Run) -> None:
    i = 0
    while not done.is_set():
        body = {"jsonrpc": "2.0", "id": i, "method": "call", "params": ["bench.echo", {"i": i}]}
        start = time.perf_counter()
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S), session.post(node.url,
                                                                     json=body) as response:
                answer = await response.json()
            if answer.get("result") != {"i": i}:
                run.failures.append(f"call {i} answered {answer!r:.100}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            run.failures.append(f"call {i}: {exc!r}")
        run.latencies_ms.append((time.perf_counter() - start) * 1e3)
        i += 1


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def bench(node: BenchNode, rounds: int, senders: int, seed: int,
                surfaces: list[str]) -> Run:
    run = Run(rounds)
    done = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        calls = asyncio.create_task(caller(node, session, done, run))
        await asyncio.gather(*(sender(surface, node, session, random.Random(seed * 100 + i),
                                      run)
                               for i, surface in enumerate(surfaces * senders)))
        done.set()
        await calls
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="cases per sender")
    parser.add_argument("--senders", type=int, default=3, help="senders per surface")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--surfaces", default="http,bert,link", help="comma-separated")
    args = parser.parse_args()
    with BenchNode(workers=2) as node:
        start_mb = peak_rss_mb(node.pid)
        run = asyncio.run(bench(node, args.rounds, args.senders, args.seed,
                                args.surfaces.split(",")))
        alive = node.running
        end_mb = peak_rss_mb(node.pid) if alive else 0.0
    latencies = sorted(run.latencies_ms)
    print(f"hostile input, {args.senders} senders per surface x {args.rounds} cases, "
          f"seed {args.seed}:")
    for surface in args.surfaces.split(","):
        print(f"  {surface:5} cases sent {run.sent[surface]:5}, refused {run.refused[surface]:5}")
    if latencies:
        print(f"  plain calls meanwhile: {len(latencies)}, p50 "
              f"{latencies[len(latencies) // 2]:.2f} ms, p99 "
              f"{latencies[int(len(latencies) * 0.99)]:.2f} ms, failures {len(run.failures)}")
    for failure in run.failures[:5]:
        print(f"    {failure}")
    if run.unanswered:
        print(f"  cases not answered within {CALL_TIMEOUT_S:.0f} s: "
              f"{', '.join(sorted(set(run.unanswered)))}")
    print(f"  node peak RSS: {start_mb:.0f} MB at start, {end_mb:.0f} MB at the end")
    print(f"node answered throughout: "
          f"{'yes' if alive and not run.failures and not run.unanswered else 'no'}")


if __name__ == "__main__":
    main()
