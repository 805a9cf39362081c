"""Trace ids: the W3C trace context (`traceparent`) every cast and call belongs to.

A traceparent is `00-<trace id: 32 hex>-<parent span: 16 hex>-<flags: 2 hex>`
(https://www.w3.org/TR/trace-context/). A cast or call that brings one joins
its trace; one that brings none starts a trace of its own. Each message is a
span of its trace, whose span id is derived from its message id
(`span_of`), so it needs no column of its own: the traceparent a handler is
given (`traceparent_of`) names its message as the parent of whatever it casts
or calls next.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from typing import Any

from yptask.ingress.checks import bad_param

__all__ = ["check_traceparent", "new_trace_id", "own_trace_id", "span_of", "traceparent_of"]

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_WANTED = "a W3C traceparent: '00-' 32 hex digits '-' 16 hex digits '-' 2 hex digits"


# Seeded once from the OS: a trace id per cast from os.urandom would cost a system call
# each. W3C asks trace ids to be unique, not unguessable.
_random = random.Random(os.urandom(32))


def new_trace_id() -> str:
    """A fresh trace id: 32 lowercase hex digits, the first 12 the milliseconds since the
    epoch and the other 20 random (as in a UUIDv7; W3C allows it, without the "random"
    flag of its level 2). Ids that grow with time add to the end of the journal's trace
    index: random ones touched a page of it per message, which doubled a commit's writes."""
    return f"{int(time.time() * 1000) & _MS_MASK:012x}{_random.getrandbits(80):020x}"


_NODE_MADE_ID = re.compile(r"[0-9a-f]{30}")  # yptask.ingress.publisher.MessageIds


def own_trace_id(message_id: str) -> str | None:
    """The trace id of a message with a node-made id that starts a trace of its own: its
    id and "00" (unique as the id is, never all zeros: it starts with the time). None for
    other ids. The journal stores no trace id for such a message (yptask.store.journal),
    so a cast that starts a trace adds no entry to its trace index."""
    return f"{message_id}00" if _NODE_MADE_ID.fullmatch(message_id) else None


_MS_MASK = (1 << 48) - 1


def check_traceparent(value: Any, method: str = "cast") -> str | None:
    """The trace id of a given traceparent (None: none given), or InvalidParams.

    Upper-case hex is taken (lower-cased); version ff and all-zero ids are refused, as the
    W3C text says; a version after 00 may carry more fields after the flags."""
    if value is None:
        return None
    if isinstance(value, str) and len(value) <= 512:
        text = value.strip().lower()
        match = _TRACEPARENT.match(text)
        if match and (len(text) == 55 or (match[1] != "00" and text[55:56] == "-")):
            version, trace_id, span, _ = match.groups()
            if version != "ff" and trace_id.strip("0") and span.strip("0"):
                return trace_id
    raise bad_param(method, "traceparent", _WANTED, value)


def span_of(message_id: str) -> str:
    """The span id of a message: 16 hex digits derived from its id (never all zeros)."""
    span = hashlib.blake2b(message_id.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return span if span.strip("0") else "0000000000000001"


def traceparent_of(trace_id: str, message_id: str) -> str:
    """The traceparent of a message of a trace: what its handler passes on."""
    return f"00-{trace_id}-{span_of(message_id)}-01"
