"""Journal benchmark: durable casts per second through group commit, by concurrency and fsync level.

Each cast is answered only after its transaction commits. Prints casts/s and
messages per commit (how much group commit batched) for 1, 10 and 100
concurrent publishers, with SQLite synchronous=NORMAL and FULL; then the cost of
an ack (as a pool sends them: without waiting, group-committed), without and with
its entry in the attempt history.

    python bench/journal.py [--casts 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from yptask.store.group_commit import JournalThread
from yptask.store.journal import Attempt, Envelope, Journal

PAYLOAD = {"photo_id": 123, "user": "abc", "tags": ["a", "b"]}


async def run(path: Path, synchronous: str, casts: int, concurrency: int) -> tuple[float, float]:
    thread = JournalThread(Journal(path, synchronous=synchronous))
    counter = iter(range(casts))

    async def publisher() -> None:
        for i in counter:
            await thread.append(Envelope(f"m{i}", "upai.photos.upload", PAYLOAD, 0.0),
                                ["indexer", "antispam"])

    start = time.perf_counter()
    await asyncio.gather(*(publisher() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    commits = thread.commits
    thread.close()
    return casts / elapsed, casts / commits


async def acks(path: Path, count: int, history: bool) -> float:
    """Microseconds per ack of `count` claimed deliveries, all committed."""
    thread = JournalThread(Journal(path))
    await thread.append_many([(Envelope(f"m{i}", "upai.photos.upload", PAYLOAD, 0.0),
                               ["indexer"]) for i in range(count)])
    claimed = await thread.run(lambda journal: journal.claim("indexer", count))
    start = time.perf_counter()
    for delivery in claimed:
        attempt = Attempt(delivery.message.id, "indexer", 1, "n1", "4242", time.time(),
                          0.001, "handled") if history else None
        thread.ack_nowait(delivery.message.id, "indexer", attempt)
    await thread.run(lambda journal: None)  # behind every ack: all committed
    elapsed = time.perf_counter() - start
    thread.close()
    return elapsed / count * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--casts", type=int, default=20000)
    args = parser.parse_args()
    print(f"{args.casts} casts of 2 deliveries each; casts/s (messages per commit)")
    print(f"{'publishers':>10} {'NORMAL':>20} {'FULL':>20}")
    for concurrency in (1, 10, 100):
        cells = []
        for level in ("NORMAL", "FULL"):
            with tempfile.TemporaryDirectory() as tmp:
                rate, per_commit = await run(Path(tmp) / "j.db", level, args.casts, concurrency)
            cells.append(f"{rate:>10.0f} ({per_commit:>5.1f})")
        print(f"{concurrency:>10} {cells[0]:>20} {cells[1]:>20}")
    for history in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            cost = await acks(Path(tmp) / "j.db", args.casts, history)
        print(f"ack {'with' if history else 'without'} attempt history: {cost:.1f} us each")


if __name__ == "__main__":
    asyncio.run(main())
