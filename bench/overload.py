"""Back-pressure: a node fed ten times what its workers can handle stays bounded.

A task with 2 workers whose handler sleeps 10 ms handles about 200 messages a
second; publishers cast about 2 000 a second for 10 seconds (batches of 50).
With the task's max_queue at 1 000, the node refuses what does not fit with
the documented Overloaded error (-32007) instead of growing. Printed: what
was accepted and refused, the queue at the end, and the node's memory (RSS)
over the run.

    python bench/overload.py [--seconds 10] [--rate 2000] [--max-queue 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp
from _harness import BenchNode

WORKERS = Path(__file__).resolve().parents[1] / "tests" / "workers"
TASKS = """
[[task]]
name = "slow"
worker_class = "sample:Sample"
messages = ["bench.sleep"]
env = {{ PYTHONPATH = "{workers}" }}
nodes = {{ "*" = 2 }}
max_queue = {max_queue}
"""
BATCH = 50


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def overload(node: BenchNode, seconds: float, rate: float) -> None:
    accepted = refused = 0
    peak = start_rss = rss_mb(node.pid)
    body = json.dumps([{"jsonrpc": "2.0", "id": i, "method": "cast",
                        "params": ["bench.sleep", {"seconds": 0.01}]} for i in range(BATCH)])
    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        sent = 0
        while (elapsed := time.perf_counter() - start) < seconds:
            if sent > elapsed * rate:  # ahead of the rate: wait a little
                await asyncio.sleep(0.005)
                continue
            async with session.post(node.url, data=body, headers=node.headers) as response:
                for answer in await response.json():
                    if "result" in answer:
                        accepted += 1
                    elif answer["error"]["code"] == -32007:
                        refused += 1
                    else:
                        raise RuntimeError(answer)
            sent += BATCH
            peak = max(peak, rss_mb(node.pid))
        status_body = {"jsonrpc": "2.0", "id": 1, "method": "status", "params": []}
        async with session.post(node.url, json=status_body, headers=node.headers) as response:
            queued = (await response.json())["result"]["tasks"]["slow"]["queued"]
    print(f"  offered {sent} casts in {seconds:.0f} s ({rate:.0f}/s, about 10x what 2 workers "
          f"handle): accepted {accepted}, refused as overloaded {refused}")
    print(f"  queue at the end: {queued}; node RSS: {start_rss:.0f} MB at start, "
          f"{peak:.0f} MB at most")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--max-queue", type=int, default=1000)
    args = parser.parse_args()
    print(f"yptask under a 10x overload, max_queue {args.max_queue}")
    tasks = TASKS.format(workers=WORKERS, max_queue=args.max_queue)
    with BenchNode(tasks=tasks) as node:
        asyncio.run(overload(node, args.seconds, args.rate))


if __name__ == "__main__":
    main()
