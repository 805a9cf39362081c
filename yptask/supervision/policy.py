"""Supervision policy, pure: child specs, supervisor flags, backoff, and the restart rules.

`ChildSpec` / `SupervisorFlags` / `BackoffPolicy` settings and the OTP words
(restart types, strategies, exit reasons); the pure rules `should_restart`,
`recent`, `within_intensity`, `backoff_delay` (no actors, no clock). More than
`intensity` restarts within `period_s` puts a supervisor into a visible BACKOFF
phase (exponential, capped) rather than crashing it, unless `escalate` is set.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pykka

__all__ = [
    "ActorRef", "BackoffPolicy", "ChildSpec", "ExitReason", "Restart", "StartFunc", "Strategy",
    "SupervisorFlags", "backoff_delay", "recent", "should_restart", "within_intensity",
]

ActorRef = pykka.ActorRef[Any]
StartFunc = Callable[..., ActorRef]


class Restart(enum.Enum):
    """When a child is restarted (OTP restart types)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit
    TEMPORARY = "temporary"  # never


class Strategy(enum.Enum):
    """Which children restart when one dies."""

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"


class ExitReason(enum.Enum):
    """Why a supervised actor exited."""

    NORMAL = "normal"
    CRASHED = "crashed"
    START_FAILED = "start_failed"


@dataclass(frozen=True)
class ChildSpec:
    """How to start one child: `start(*args, link=ChildLink, **kwargs)` returns its ref.

    `start` is an actor class or a start function; Supervised children take `link=`.
    """

    id: str
    start: type[pykka.Actor] | StartFunc
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    restart: Restart = Restart.PERMANENT
    shutdown_s: float = 5.0  # graceful stop timeout; then the thread is left behind
    start_timeout_s: float = 5.0  # how long to wait for a Supervised child's init()

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a child spec needs a non-empty id")
        if self.shutdown_s <= 0 or self.start_timeout_s <= 0:
            raise ValueError(f"child {self.id!r}: shutdown_s and start_timeout_s must be > 0")


@dataclass(frozen=True)
class BackoffPolicy:
    """The delay before retrying restarts once intensity is exceeded: exponential, capped."""

    initial_s: float = 1.0
    factor: float = 2.0
    max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0 or self.factor < 1 or self.max_s < self.initial_s:
            raise ValueError(f"invalid {self!r}: need initial_s > 0, factor >= 1, "
                             "max_s >= initial_s")


@dataclass(frozen=True)
class SupervisorFlags:
    """Strategy, intensity (max restarts) within period_s, and what happens beyond it."""

    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = 3
    period_s: float = 5.0
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    escalate: bool = False  # True: crash the supervisor instead of backing off (OTP)

    def __post_init__(self) -> None:
        if self.intensity < 0 or self.period_s <= 0:
            raise ValueError(f"invalid {self!r}: need intensity >= 0 and period_s > 0")


def should_restart(restart: Restart, reason: ExitReason) -> bool:
    """Whether a child of this restart type is restarted after exiting for this reason."""
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return reason is not ExitReason.NORMAL
    return False


def recent(timestamps: Iterable[float], now: float, period_s: float) -> tuple[float, ...]:
    """The restart times that still count at `now`: those less than `period_s` ago."""
    return tuple(t for t in timestamps if now - t < period_s)


def within_intensity(timestamps: Iterable[float], now: float, intensity: int,
                     period_s: float) -> bool:
    """Whether one more restart at `now` keeps restarts within `period_s` at most `intensity`."""
    return len(recent(timestamps, now, period_s)) + 1 <= intensity


def backoff_delay(attempt: int, policy: BackoffPolicy) -> float:
    """The delay before backoff retry `attempt` (1, 2, ...): initial * factor**(n-1), capped."""
    if attempt < 1:
        raise ValueError(f"backoff attempts count from 1, got {attempt}")
    try:
        delay = policy.initial_s * policy.factor ** (attempt - 1)
    except OverflowError:
        return policy.max_s
    return min(delay, policy.max_s)
