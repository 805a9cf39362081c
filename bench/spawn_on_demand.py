"""Spawn on demand: how long a message waits when its task has no worker running.

A node runs a task whose workers are reaped after 0.5 s idle. Each round
waits until the task has no worker, then times a `call` over JSON-RPC: the
node starts a worker (posix_spawn, Python start-up, `setup`) and the worker
handles the message. The goal is well under 300 ms from arrival to answer.

    python bench/spawn_on_demand.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import time

from _harness import BenchNode, summary

from yptask.testing import wait_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    samples = []
    with BenchNode(workers=1, max_idle_s=0.5) as node:
        for i in range(args.rounds):
            wait_for(lambda: not node.rpc("status")["tasks"]["noop"]["pids"], timeout_s=30,
                     what="the idle worker to be reaped")
            start = time.perf_counter()
            assert node.rpc("call", "bench.echo", {"i": i}, timeout_s=60) == {"i": i}
            samples.append((time.perf_counter() - start) * 1e3)
    print(f"call answered by a worker spawned on demand, {args.rounds} rounds: "
          f"{summary(samples, '{:.0f}')} ms (min / median / max)")


if __name__ == "__main__":
    main()
