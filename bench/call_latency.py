"""Call round trips: 2 000 sequential `call`s over JSON-RPC to a node, p50 and p99.

Each call goes from the Python client (`yptask.client.Client`, one keep-alive
connection) over HTTP to the node, to a worker process over its pipes, and
back. Where the peers are installed, Celery's request/reply
(`apply_async().get()` from its own client, Redis backend) runs in the same run.

    python bench/call_latency.py [--n 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

from _harness import BenchNode, peers_note, run_peer, summary

from yptask.client import Client


def calls(url: str, n: int) -> list[float]:
    client = Client(url, timeout_s=30)
    samples = []
    for i in range(n):
        start = time.perf_counter()
        assert client.call("bench.echo", {"i": i}) == {"i": i}
        samples.append((time.perf_counter() - start) * 1e3)
    client.close()
    return sorted(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with BenchNode(workers=2) as node:
        calls(node.url, 200)  # warm up
        rounds = [calls(node.url, args.n) for _ in range(args.rounds)]
    p50 = [r[len(r) // 2] for r in rounds]
    p99 = [r[int(len(r) * 0.99)] for r in rounds]
    print(f"yptask call round trip over JSON-RPC, {args.n} sequential calls x {args.rounds}: "
          f"p50 {summary(p50, '{:.2f}')} ms, p99 {summary(p99, '{:.2f}')} ms (min / median / max)")
    celery = run_peer("celery_bench.py", "rtt")
    if celery is None:
        print(peers_note())
        return
    ours = sorted(p50)[len(p50) // 2]
    print(f"Celery request/reply p50 (median) {celery['p50 ms']:.2f} ms; "
          f"ratio yptask/Celery {ours / celery['p50 ms']:.2f} (bar: at most 0.25)")


if __name__ == "__main__":
    main()
