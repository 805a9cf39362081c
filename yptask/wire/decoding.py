"""Decoding untrusted BERT on the node: the bounds per surface, and no long stall of the loop.

The codec bounds one decode (inflated size, inflation ratio, element count,
depth); this module says which bounds each surface applies and where the
work runs. A frame whose decode walks more than `OFF_LOOP_BYTES` is decoded
on the owner's one decoder thread, so the event loop keeps serving while it
runs (the thread shares the GIL with the loop, which then gets at least half
of it; one thread, so big decodes queue instead of piling up). A connection
also has an `InflationBudget`: the bytes that compression may add to what
it sent, refilled over time, so one peer cannot keep the decoder inflating.

The bounds:

    surface                          frame    inflated  ratio  elements
    BERT-RPC, before a token         64 KiB   64 KiB    64     4 096
    BERT-RPC publisher               16 MiB   16 MiB    64     1 000 000
    link, before the handshake       4 KiB    4 KiB     64     64
    link, authenticated peer         64 MiB   16 MiB    64     16 000 000
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from yptask.errors import DecodeError
from yptask.wire import codec
from yptask.wire.decode import decode as decode_term
from yptask.wire.decode import decoded_size

__all__ = ["LINK", "LINK_HANDSHAKE", "OFF_LOOP_BYTES", "PRE_AUTH", "PUBLISHER", "Bounds",
           "Decoder", "InflationBudget"]

OFF_LOOP_BYTES = 64 * 1024  # on the loop, a decode of this much takes a few ms at most


@dataclass(frozen=True)
class Bounds:
    """What one decode on a surface may cost: the codec's caps, by name."""

    max_inflated: int = codec.DEFAULT_MAX_INFLATED
    max_ratio: int = codec.DEFAULT_MAX_RATIO
    max_terms: int = codec.DEFAULT_MAX_TERMS
    max_depth: int = codec.DEFAULT_MAX_DEPTH

    def decode(self, body: bytes) -> Any:
        """The term in `body`, decoded here and now within these bounds."""
        return decode_term(body, max_depth=self.max_depth, max_inflated=self.max_inflated,
                           max_ratio=self.max_ratio, max_terms=self.max_terms)


PRE_AUTH = Bounds(max_inflated=64 * 1024, max_terms=4096)
PUBLISHER = Bounds()
LINK_HANDSHAKE = Bounds(max_inflated=4096, max_terms=64, max_depth=4)
LINK = Bounds(max_terms=16_000_000)


@dataclass
class InflationBudget:
    """The bytes that compression may still add for one connection (a token bucket)."""

    burst_bytes: int = 32 * 1024 * 1024
    refill_bytes_per_s: float = 16 * 1024 * 1024
    left: float = field(init=False)
    at: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.left = self.burst_bytes

    def spend(self, frame_bytes: int, decoded_bytes: int) -> None:
        """Take what a frame inflates by; `DecodeError` if the connection has not that much."""
        extra = decoded_bytes - frame_bytes
        if extra <= 0:
            return
        now = time.monotonic()
        self.left = min(self.burst_bytes, self.left + (now - self.at) * self.refill_bytes_per_s)
        self.at = now
        if extra > self.left:
            raise DecodeError(
                f"this connection's compressed frames inflate faster than "
                f"{self.refill_bytes_per_s / 2**20:.0f} MiB/s; send uncompressed or slow down")
        self.left -= extra


class Decoder:
    """Decodes frames for one server: small ones inline, big ones on its decoder thread."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def decode(self, body: bytes, bounds: Bounds,
                     budget: InflationBudget | None = None) -> Any:
        """The term in `body`, within `bounds` (and `budget`); `DecodeError` if it is none."""
        size = decoded_size(body)
        if budget is not None:  # what the codec would refuse to inflate costs nothing
            budget.spend(len(body), min(size, bounds.max_inflated, bounds.max_ratio * len(body)))
        if size <= OFF_LOOP_BYTES:
            return bounds.decode(body)
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(bounds.decode, body))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
