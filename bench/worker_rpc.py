"""Worker round trip and spawn benchmark: an asyncio parent calling a real worker process.

Prints, for each CPU placement (scheduler's choice; parent and worker on the
same CPU; on different CPUs):
  - the round trip of `handle("upai.echo", msg)` through the Python runner
    (BERT-RPC over the worker's fds 3/4), p50 and p99;
  - the same through a bare frame-echo child (no codec, no dispatch): the
    floor the pipes and the event loop set, measured in the same run;
and the spawn-to-ready time of a worker (spawn until its `setup` answered).

    python bench/worker_rpc.py [--calls 3000] [--spawns 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time

from yptask.tasks.runner import runner_argv
from yptask.workers.process import WorkerSpec
from yptask.workers.standalone import WorkerProcess

RUNNER = runner_argv("yptask.tasks.echo:Echo")
# The floor: read a frame on fd 3, write it back on fd 4, nothing else.
BARE_ECHO = [sys.executable, "-S", "-c", """
import os
def read(n):
    b = b""
    while len(b) < n:
        c = os.read(3, n - len(b))
        if not c: raise SystemExit
        b += c
    return b
while True:
    h = read(4); os.write(4, h + read(int.from_bytes(h, "big")))
"""]
MSG = {"photo_id": 123, "user": "abc", "tags": ["a", "b"]}
PLACEMENTS = {"scheduler's choice": None, "same CPU (0, 0)": (0, 0),
              "split CPUs (0, 1)": (0, 1)}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def runner_rtts(worker: WorkerProcess, calls: int) -> list[float]:
    await worker.setup({"task": "echo", "node": "bench", "settings": {}})
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await worker.handle("upai.echo", MSG)
        samples.append(time.perf_counter() - start)
    return samples


async def bare_rtts(worker: WorkerProcess, calls: int) -> list[float]:
    frame = (200).to_bytes(4, "big") + b"x" * 200
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        worker.write(frame)
        await worker.read_frame()
        samples.append(time.perf_counter() - start)
    return samples


async def measure(argv: list[str], placement: tuple[int, int] | None, calls: int,
                  bare: bool) -> list[float]:
    all_cpus = os.sched_getaffinity(0)
    worker = await WorkerProcess.spawn(WorkerSpec(argv, stderr_path=os.devnull))
    try:
        if placement is not None:
            os.sched_setaffinity(0, {placement[0]})
            os.sched_setaffinity(worker.pid, {placement[1]})
        run = bare_rtts if bare else runner_rtts
        await run(worker, calls // 10)  # warm up
        return await run(worker, calls)
    finally:
        os.sched_setaffinity(0, all_cpus)
        await worker.stop()


async def spawn_to_ready(spawns: int) -> list[float]:
    samples = []
    for _ in range(spawns):
        start = time.perf_counter()
        worker = await WorkerProcess.spawn(WorkerSpec(RUNNER, stderr_path=os.devnull))
        await worker.setup({"task": "echo", "node": "bench", "settings": {}})
        samples.append(time.perf_counter() - start)
        await worker.stop()
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--spawns", type=int, default=20)
    args = parser.parse_args()
    print(f"round trip of one call, {args.calls} sequential calls, microseconds "
          f"({os.cpu_count()} CPUs)")
    print(f"{'placement':<22} {'runner p50':>10} {'p99':>8}   {'bare p50':>9} {'p99':>8}")
    for label, placement in PLACEMENTS.items():
        ours = await measure(RUNNER, placement, args.calls, bare=False)
        floor = await measure(BARE_ECHO, placement, args.calls, bare=True)
        print(f"{label:<22} {percentile(ours, .5) * 1e6:>10.0f} {percentile(ours, .99) * 1e6:>8.0f}"
              f"   {percentile(floor, .5) * 1e6:>9.0f} {percentile(floor, .99) * 1e6:>8.0f}")
    spawns = await spawn_to_ready(args.spawns)
    print(f"spawn to ready (posix_spawn until setup answered), {args.spawns} spawns: "
          f"min {min(spawns) * 1e3:.1f} ms, median {statistics.median(spawns) * 1e3:.1f} ms, "
          f"max {max(spawns) * 1e3:.1f} ms  [{sys.executable}]")


if __name__ == "__main__":
    asyncio.run(main())
