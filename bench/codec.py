"""Codec benchmark: encode+decode round trips per second, yptask's codec beside `bert`.

Same messages, same process, same run, so the ratio holds on a noisy machine.
Messages: the typical cast of the peers' anchor (shared/peers/codec_bench.py)
and the BERT-RPC call packet a node sends a worker for it.

    python bench/codec.py [--loops 20000] [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import bert

from yptask.wire import codec
from yptask.wire.bertrpc import Call
from yptask.wire.decode import decode

MESSAGES: dict[str, Any] = {
    "typical cast": {"name": "upai.photos.upload",
                     "msg": {"photo_id": 123, "user": "abc", "tags": ["a", "b"]}},
    "worker call packet": Call("yptask", "handle", [
        "upai.photos.upload", {"photo_id": 123, "user": "abc", "tags": ["a", "b"]},
        {"id": "01J9ZX4Q5C8N2M7K3H6G", "attempt": 1, "published_at": 1764000000.25}]).to_term(),
}


def rate(roundtrip: Callable[[], Any], loops: int, reps: int) -> list[float]:
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(loops):
            roundtrip()
        rates.append(loops / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    print(f"encode+decode round trips per second, {args.reps} reps x {args.loops}; "
          "min / median / max")
    for label, message in MESSAGES.items():
        assert decode(codec.encode(message)) == message
        ours = rate(lambda m=message: decode(codec.encode(m)), args.loops, args.reps)
        theirs = rate(lambda m=message: bert.decode(bert.encode(m)), args.loops, args.reps)
        ratio = statistics.median(ours) / statistics.median(theirs)
        print(f"{label} ({len(codec.encode(message))} bytes yptask, "
              f"{len(bert.encode(message))} bytes bert)")
        for name, rates in (("yptask.wire.codec", ours), ("bert 2.2.0", theirs)):
            print(f"  {name:<13} {min(rates):>9.0f} / {statistics.median(rates):>9.0f} / "
                  f"{max(rates):>9.0f}")
        print(f"  ratio yptask/bert (medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
