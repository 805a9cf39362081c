"""A cast as it enters the node: `CastRequest` (its fields as a transport brought them) and
`CastTimes`, what its time fields come to once checked.

Every transport builds a `CastRequest` and hands it to the publisher
(`yptask.ingress.publisher`), which checks each field by the rules of
`yptask.ingress.checks`. The options a cast may carry, besides its name and
payload, are `CAST_OPTIONS`; JSON-RPC takes them by name, BERT-RPC in its
options map, the clients as keyword arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

from yptask.errors import InvalidParams
from yptask.ingress import checks

__all__ = ["CAST_OPTIONS", "CastRequest", "CastTimes"]


# Slotted, not frozen: one is made per message on the hot path, and a frozen dataclass's
# __init__ costs about three times as much (2.0 against 0.7 us with ten fields).
# Nothing changes one once it is made.
@dataclass(slots=True)
class CastRequest:
    """One cast, unchecked. None: not given (the node or the task decides)."""

    name: Any
    msg: Any
    id: Any = None  # the publisher's id, for dedupe; None: the node makes one
    priority: Any = None  # 0 (lowest) to 9; None: each subscribed task's default
    ttl_s: Any = None  # expire this many seconds after it is accepted
    deadline: Any = None  # or at this time (epoch seconds)
    delay_s: Any = None  # deliver no sooner than this many seconds from now
    at: Any = None  # or than this time (epoch seconds)
    traceparent: Any = None  # the W3C trace context it belongs to; None: a new trace
    parent: Any = None  # the id of the message whose handler cast this one

    @property
    def options(self) -> dict[str, Any]:
        """The options given (not None), by name."""
        return {name: value for name in CAST_OPTIONS
                if (value := getattr(self, name)) is not None}


CAST_OPTIONS = tuple(f.name for f in fields(CastRequest))[2:]


@dataclass(frozen=True, slots=True)
class CastTimes:
    """When a checked cast may be delivered, and until when (epoch seconds)."""

    not_before: float = 0.0  # 0: at once
    deadline: float | None = None  # None: no deadline of its own (the task's ttl may apply)

    @classmethod
    def of(cls, cast: CastRequest, now: float | None = None) -> CastTimes:
        """Check the time fields of `cast` (at most one of ttl_s/deadline, delay_s/at)."""
        if cast.ttl_s is None and cast.deadline is None and cast.delay_s is None \
                and cast.at is None:
            return AT_ONCE  # the usual cast: nothing to check
        now = time.time() if now is None else now
        for one, other in (("ttl_s", "deadline"), ("delay_s", "at")):
            if getattr(cast, one) is not None and getattr(cast, other) is not None:
                raise InvalidParams(f"invalid params for cast: give {one!r} or {other!r}, "
                                    "not both")
        deadline = None
        if cast.ttl_s is not None:
            deadline = now + checks.check_seconds(cast.ttl_s, "ttl_s", minimum_exclusive=True)
        elif cast.deadline is not None:
            deadline = checks.check_epoch(cast.deadline, "deadline")
        not_before = 0.0
        if cast.delay_s is not None:
            not_before = now + checks.check_seconds(cast.delay_s, "delay_s")
        elif cast.at is not None:
            not_before = checks.check_epoch(cast.at, "at")
        if deadline is not None and deadline <= max(now, not_before):
            what = "its due time ('delay_s'/'at')" if not_before > now else "now"
            raise InvalidParams(f"invalid params for cast: the deadline ('ttl_s'/'deadline') "
                                f"is not after {what}: the message could never be delivered")
        return cls(not_before if not_before > now else 0.0, deadline)


AT_ONCE = CastTimes()
