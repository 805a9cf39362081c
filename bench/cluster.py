"""The cluster: config convergence on 5 nodes, failure detection, and cross-node throughput.

All nodes are `yptask node` subprocesses on loopback, finding each other over
mDNS on 127.0.0.1 under a service type of their own, with the default
heartbeat (0.5 s) and down-after (3 s) settings.

- convergence: a task edited on one of 5 nodes, until all 5 serve the edit;
- failure detection: `kill -9` of one node, until every other says it is down;
- throughput: 20 000 casts in batches of 100 enter on node "in", which runs no
  worker; 2 workers run on node "work". End to end, with one node doing both
  (the figure of bench/throughput.py) in the same run, beside it.

    python bench/cluster.py [--n 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable

import throughput
from _harness import BenchNode, summary

from yptask.testing import wait_for

POLL_S = 0.01


def cluster_settings() -> str:
    service_type = f"_ypt-{uuid.uuid4().hex[:8]}._tcp.local."
    return f'cluster = "bench"\ncookie = "bench-cookie-1"\nmdns_type = "{service_type}"\n'


def until(predicate: Callable[[], object], timeout_s: float = 30.0) -> float:
    """Poll until true; return when it became true (perf_counter)."""
    wait_for(predicate, timeout_s, "the cluster", interval_s=POLL_S)
    return time.perf_counter()


def all_alive(nodes: list[BenchNode]) -> bool:
    return all(sum(m["state"] == "alive" for m in n.rpc("nodes")) == len(nodes) for n in nodes)


def convergence_and_detection(rounds: int) -> None:
    settings = cluster_settings()
    with contextlib.ExitStack() as stack:
        nodes = [stack.enter_context(BenchNode(workers=1, name=f"n{i}", cluster=settings))
                 for i in range(1, 6)]
        until(lambda: all_alive(nodes))
        task = nodes[0].rpc("tasks.get", "noop")
        times = []
        for r in range(rounds * 3):
            writer = nodes[r % 5]
            start = time.perf_counter()
            writer.rpc("tasks.put", {**task, "settings": {"round": r}})
            done = until(lambda r=r: all(n.rpc("tasks.get", "noop")["settings"] == {"round": r}
                                         for n in nodes))
            times.append((done - start) * 1000)
        print(f"  config edit on one node -> served by all 5:  {summary(times)} ms "
              f"({len(times)} edits)")
        victim = nodes[-1]
        start = time.perf_counter()
        os.kill(victim.pid, signal.SIGKILL)
        until(lambda: all(any(m["name"] == victim.name and m["state"] == "down"
                              for m in n.rpc("nodes")) for n in nodes[:-1]))
        print(f"  kill -9 of one node -> all 4 others say down: "
              f"{(time.perf_counter() - start):.2f} s (down_after_s 3.0)")


def cross_node_throughput(n: int, rounds: int) -> None:
    settings = cluster_settings()
    with BenchNode(workers=2, name="work", cluster=settings, runs_on="work") as work, \
            BenchNode(workers=2, name="in", cluster=settings, runs_on="work") as entry:
        until(lambda: all_alive([work, entry]))
        figures = []
        for _ in range(rounds):
            before = work.rpc("status")["tasks"]["noop"]["handled"]
            start = time.perf_counter()
            asyncio.run(publish_batches(entry.url, n))
            until(lambda b=before: work.rpc("status")["tasks"]["noop"]["handled"] >= b + n,
                  timeout_s=600)
            figures.append(n / (time.perf_counter() - start))
    with BenchNode(workers=2) as alone:
        single = [asyncio.run(throughput.round_trip(alone.url, "batch", n, alone.headers))[1]
                  for _ in range(rounds)]
    print(f"  casts entering on one node, workers on another: {summary(figures)}/s end to end; "
          f"one node alone, same run: {summary(single)}/s")


async def publish_batches(url: str, n: int) -> None:
    import aiohttp

    async with aiohttp.ClientSession(headers=throughput.JSON) as session:
        await throughput.publish(session, url, "batch", n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("yptask cluster on loopback; figures min / median / max")
    convergence_and_detection(args.rounds)
    cross_node_throughput(args.n, args.rounds)


if __name__ == "__main__":
    main()
