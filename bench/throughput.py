"""Durable casts end to end: 20 000 casts into a node with 2 workers, single requests and batches.

Publishers POST JSON-RPC `cast` to a `yptask node` subprocess over loopback
(single requests from 32 concurrent keep-alive connections, or batches of 100
from 4), or send `PUBLISH` over its Redis-protocol ingress (redis-py pipelines
of 100 from 4 connections); each cast is answered once journaled. The last line
casts batches to a task whose 2 workers are an HTTP endpoint (an aiohttp server
in a process of its own answering 204), beside the BERT workers above. End to end = N / (first
publish -> the node reports N handled). Where the peers are installed, Celery
and Dramatiq (both on Redis, 2 worker processes) run in the same run.

    python bench/throughput.py [--n 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
from _harness import BenchNode, peers_note, run_peer, summary

CONCURRENCY = {"single": 32, "batch": 4, "redis": 4}
BATCH = 100
JSON = {"Content-Type": "application/json"}


async def rpc(session: aiohttp.ClientSession, url: str, headers: dict[str, str], method: str,
              *params: object) -> object:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
    async with session.post(url, json=body, headers=headers) as response:
        return (await response.json())["result"]


async def publish(session: aiohttp.ClientSession, url: str, mode: str, n: int) -> None:
    counter = itertools.count()

    async def single() -> None:
        while (i := next(counter)) < n:
            body = {"jsonrpc": "2.0", "id": i, "method": "cast",
                    "params": ["bench.echo", {"i": i}]}
            async with session.post(url, data=json.dumps(body)) as response:
                assert "result" in await response.json()

    async def batches() -> None:
        while (b := next(counter)) * BATCH < n:
            body = [{"jsonrpc": "2.0", "id": i, "method": "cast",
                     "params": ["bench.echo", {"i": i}]}
                    for i in range(b * BATCH, min(n, (b + 1) * BATCH))]
            async with session.post(url, data=json.dumps(body)) as response:
                assert all("result" in r for r in await response.json())

    worker = single if mode == "single" else batches
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY[mode])))


async def publish_redis(address: str, n: int) -> None:
    """`PUBLISH bench.echo {"i": i}`, in pipelines of BATCH, from CONCURRENCY["redis"]
    connections of their own."""
    import redis.asyncio as aredis

    host, port = address.rsplit(":", 1)
    counter = itertools.count()

    async def pipelines() -> None:
        connection = aredis.Redis(host=host, port=int(port))
        try:
            while (b := next(counter)) * BATCH < n:
                async with connection.pipeline(transaction=False) as pipe:
                    for i in range(b * BATCH, min(n, (b + 1) * BATCH)):
                        pipe.publish("bench.echo", json.dumps({"i": i}))
                    assert all(r == 1 for r in await pipe.execute())
        finally:
            await connection.aclose()

    await asyncio.gather(*(pipelines() for _ in range(CONCURRENCY["redis"])))


async def handled(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> int:
    status = await rpc(session, url, headers, "status")
    return int(status["tasks"]["noop"]["handled"])  # type: ignore[index]


async def round_trip(url: str, mode: str, n: int, headers: dict[str, str],
                     redis_address: str = "") -> tuple[float, float]:
    """`headers`: the node's (BenchNode.headers), for status; the casts carry only their
    Content-Type, as a publisher's do on a node without publisher tokens."""
    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector, headers=JSON) as session:
        before = await handled(session, url, headers)
        start = time.perf_counter()
        if mode == "redis":
            await publish_redis(redis_address, n)
        else:
            await publish(session, url, mode, n)
        published = time.perf_counter()
        while await handled(session, url, headers) < before + n:
            await asyncio.sleep(0.05)
        done = time.perf_counter()
    return n / (published - start), n / (done - start)


# The endpoint of the HTTP-worker line: acks every message, prints its port once it listens.
ENDPOINT = """
import socket, sys
from aiohttp import web
async def ack(request):
    await request.read()
    return web.Response(status=204)
app = web.Application()
app.router.add_post("/", ack)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
print(sock.getsockname()[1], flush=True)
web.run_app(app, sock=sock, print=None, access_log=None)
"""

HTTP_TASK = """
[[task]]
name = "noop"
url = "http://127.0.0.1:{port}/"
messages = ["bench.echo"]
max_idle_s = 0
nodes = {{ "*" = 2 }}
"""


@contextlib.contextmanager
def http_endpoint() -> Iterator[int]:
    """Run ENDPOINT in a process of its own; yield its port; stop it by its PID."""
    server = subprocess.Popen([sys.executable, "-c", ENDPOINT], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        yield int(server.stdout.readline())
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"yptask: {args.n} durable casts, 2 workers, node on loopback; "
          "figures min / median / max over rounds")
    ours: dict[str, float] = {}
    with BenchNode(workers=2, settings='redis = "127.0.0.1:0"\n') as node:
        rpc_url = node.url
        asyncio.run(round_trip(rpc_url, "single", 500, node.headers))  # warm up
        for mode in ("single", "batch", "redis"):
            rounds = [asyncio.run(round_trip(rpc_url, mode, args.n, node.headers,
                                             node.redis_address))
                      for _ in range(args.rounds)]
            e2e = [r[1] for r in rounds]
            ours[mode] = sorted(e2e)[len(e2e) // 2]
            label = {"single": f"single requests, {CONCURRENCY[mode]} connections",
                     "batch": f"batches of {BATCH}, {CONCURRENCY[mode]} connections",
                     "redis": f"Redis pipelines of {BATCH}, {CONCURRENCY[mode]} conns"}[mode]
            print(f"  {label:<36} publish {summary([r[0] for r in rounds])}/s   "
                  f"end to end {summary(e2e)}/s")
    with http_endpoint() as port, BenchNode(tasks=HTTP_TASK.format(port=port)) as node:
        asyncio.run(round_trip(node.url, "batch", 500, node.headers))  # warm up
        rounds = [asyncio.run(round_trip(node.url, "batch", args.n, node.headers))
                  for _ in range(args.rounds)]
        print(f"  {'HTTP workers, batches of ' + str(BATCH):<36} publish "
              f"{summary([r[0] for r in rounds])}/s   end to end "
              f"{summary([r[1] for r in rounds])}/s")
    celery = run_peer("celery_bench.py", "tput")
    dramatiq = run_peer("dramatiq_bench.py")
    if celery is None or dramatiq is None:
        print(peers_note())
        return
    print(f"Celery+Redis end to end (median) {celery['end-to-end/s']:.0f}/s; "
          f"Dramatiq+Redis {dramatiq['end-to-end/s']:.0f}/s")
    print(f"ratio single-request casts / Celery: {ours['single'] / celery['end-to-end/s']:.2f}x "
          "(bar: 3x)")
    print(f"ratio batched casts / Dramatiq: {ours['batch'] / dramatiq['end-to-end/s']:.2f}x "
          "(bar: 2x)")


if __name__ == "__main__":
    main()
