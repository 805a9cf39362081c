"""Journal benchmark: durable casts per second through group commit, by concurrency and fsync level.

Each cast is answered only after its transaction commits. Prints casts/s and
messages per commit (how much group commit batched) for 1, 10 and 100
concurrent publishers, with SQLite synchronous=NORMAL and FULL.

    python bench/journal.py [--casts 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from yptask.store.group_commit import JournalThread
from yptask.store.journal import Envelope, Journal

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


if __name__ == "__main__":
    asyncio.run(main())
