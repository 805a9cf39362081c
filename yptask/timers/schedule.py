"""Cron timers: their definitions, and when they fire (pure functions, no clock inside).

A timer casts a message on a cron schedule (croniter): 5 fields, or 6 with
seconds FIRST (`*/10 * * * * *` = every 10 seconds), in a real time zone
(an IANA name such as "Europe/Berlin", never a fixed offset, so daylight
saving time is followed). Impossible schedules (`0 0 31 2 *`) are refused
when the timer is saved, not when it would first fire.

Times are UTC epoch seconds. Fires are computed from the last scheduled fire,
never from "now", so nothing drifts or is skipped across restarts and
failovers. In the hour repeated when clocks go back, croniter would fire a
wall-clock time twice; here a fire counts only if its local wall-clock time is
later than the previous one's, so each tick of the local schedule fires once.

What a late timer does with the ticks it missed is its misfire policy:
`skip` (fire none of them; only a tick that is due now fires), `fire_once`
(one fire, for the latest missed tick) or `fire_all` (every missed tick,
at most `max_catchup` of the latest).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from yptask.config.fields import checked_definition, read_toml
from yptask.config.tasks import validate_message_name
from yptask.errors import ConfigError

__all__ = ["MISFIRE_POLICIES", "ON_TIME_S", "TimerDef", "due_fires", "due_ticks", "fire_id",
           "load_timers", "next_fire", "run_now_id", "unfired_ticks"]

MISFIRE_POLICIES = ("skip", "fire_once", "fire_all")
ON_TIME_S = 2.0  # a tick this late is still on time, not missed
# Missed ticks are counted (for metrics) by walking them: after a long outage, this many
# at most, so that counting them costs a bounded moment once.
MAX_MISSES_COUNTED = 1000
_TIMER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_FIXED_OFFSET = re.compile(r"(Etc/)?(GMT|UTC)?[+-]\d{1,2}(:?\d\d)?", re.IGNORECASE)


@dataclass(frozen=True)
class TimerDef:
    """A timer: cast `message` with `payload` on the `cron` schedule, in `timezone`."""

    name: str
    cron: str
    message: str
    timezone: str = "UTC"
    payload: Any = field(default_factory=dict)
    misfire: str = "fire_once"
    max_catchup: int = 100
    enabled: bool = True
    paused: bool = False  # its ticks come and are recorded as skipped, none is cast

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimerDef:
        """Build a checked timer; raise ConfigError naming the bad field."""
        label, values = checked_definition(data, _FIELDS, "timer", ("name", "cron", "message"))
        timer = cls(**values)
        try:
            _check_schedule(timer.cron, timer.timezone)
        except ConfigError as exc:
            raise ConfigError(f"{label}: field 'cron': {exc}") from None
        return timer


def load_timers(path: str | Path) -> list[TimerDef]:
    """Read timer definitions (`[[timer]]` tables) from a TOML file."""
    timers = [TimerDef.from_dict(entry) for entry in read_toml(path, "timer").get("timer", [])]
    names = [t.name for t in timers]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: timer(s) defined twice: {', '.join(duplicates)}")
    return timers


def fire_id(timer: str, scheduled: float) -> str:
    """The message id of one tick: the same on every node, so a repeat is dropped."""
    return f"timer:{timer}:{scheduled:.3f}"


def run_now_id(timer: str, at: float, nonce: str) -> str:
    """The message id of a cast asked for now (`timers.run_now`): one of its own, never a
    tick's, so it is not taken for a scheduled tick nor dropped as a repeat of one."""
    return f"timer:{timer}:now:{at:.3f}:{nonce}"


def next_fire(timer: TimerDef, after: float) -> float:
    """The first tick strictly after `after` (and, in local wall-clock time, after it too)."""
    zone = ZoneInfo(timer.timezone)
    start = dt.datetime.fromtimestamp(after, zone)
    it = croniter(timer.cron, start, second_at_beginning=_has_seconds(timer.cron))
    while True:
        tick: dt.datetime = it.get_next(dt.datetime)
        if tick.replace(tzinfo=None) > start.replace(tzinfo=None):
            return tick.timestamp()
        # The repeated hour after clocks go back: this wall-clock time has had its fire.


def due_fires(timer: TimerDef, last: float, now: float) -> tuple[list[float], float]:
    """The ticks to fire now, oldest first, given the last tick fired (or accounted for);
    and the tick accounted for once they are fired (missed ones included)."""
    fires, accounted, _ = due_ticks(timer, last, now)
    return fires, accounted


def due_ticks(timer: TimerDef, last: float, now: float) -> tuple[list[float], float, int]:
    """`due_fires`, and how many of the due ticks its misfire policy leaves unfired
    (missed; after a long outage, at most MAX_MISSES_COUNTED more than it fires)."""
    # After a long outage only the latest ticks matter: start just before them, rather
    # than walk a day of one-second ticks.
    keep = timer.max_catchup if timer.misfire == "fire_all" else 1
    start = max(last, _before_latest(timer, now, keep))
    ticks: list[float] = []
    seen = _ticks_between(timer, last, start) if start > last else 0  # none of them fired
    tick = next_fire(timer, start)
    while tick <= now:
        ticks.append(tick)
        seen += 1
        if len(ticks) > timer.max_catchup:
            ticks.pop(0)  # fire_all keeps the latest ones only
        tick = next_fire(timer, tick)
    if not ticks:
        return [], last, 0
    latest = ticks[-1]
    if timer.misfire == "fire_all":
        fires = ticks
    elif timer.misfire == "fire_once" or now - latest <= ON_TIME_S:
        fires = [latest]
    else:
        fires = []  # skip: the latest tick is missed too
    return fires, latest, seen - len(fires)


def unfired_ticks(timer: TimerDef, last: float, accounted: float, fired: list[float],
                  limit: int = 100) -> list[float]:
    """The newest `limit` ticks in (last, accounted] that are not in `fired`, oldest first:
    those a round accounted for without firing them (for the ledger)."""
    start = max(last, _before_latest(timer, accounted, limit + len(fired)))
    left: list[float] = []
    tick = next_fire(timer, start)
    while tick <= accounted:
        if tick not in fired:
            left.append(tick)
        tick = next_fire(timer, tick)
    return left[-limit:]


def _ticks_between(timer: TimerDef, after: float, until: float) -> int:
    """How many ticks fall in (after, until], counted up to MAX_MISSES_COUNTED."""
    count, tick = 0, next_fire(timer, after)
    while tick <= until and count < MAX_MISSES_COUNTED:
        count += 1
        tick = next_fire(timer, tick)
    return count


def _before_latest(timer: TimerDef, now: float, count: int) -> float:
    """A time just before the `count` latest ticks at or before `now`."""
    it = croniter(timer.cron, dt.datetime.fromtimestamp(now, ZoneInfo(timer.timezone)),
                  second_at_beginning=_has_seconds(timer.cron))
    earliest = now
    for _ in range(count):
        earliest = it.get_prev(dt.datetime).timestamp()
    return earliest - 0.001


# ---------------------------------------------------------------------- checks


def _has_seconds(expression: str) -> bool:
    return len(expression.split()) == 6


def _check_schedule(expression: str, timezone: str) -> None:
    fields = len(expression.split())
    if fields not in (5, 6):
        raise ConfigError(f"{expression!r} has {fields} fields; use 5 (minute hour day month "
                          "weekday) or 6 (second first)")
    seconds = fields == 6
    if not croniter.is_valid(expression, strict=True, second_at_beginning=seconds):
        raise ConfigError(f"{expression!r} is not a valid cron schedule, or never fires")
    try:  # strict validity misses some never-matching schedules; asking for a tick does not
        croniter(expression, dt.datetime.now(ZoneInfo(timezone)),
                 second_at_beginning=seconds).get_next(dt.datetime)
    except Exception as exc:  # croniter's errors have no common base
        raise ConfigError(f"{expression!r} never fires: {exc}") from None


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _TIMER_NAME.fullmatch(value):
        raise ConfigError(f"{value!r} is not a timer name: start with a letter; letters, "
                          "digits, '_', '.', '-'; at most 64 characters")
    return value


def _cron(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"must be a cron expression, got {value!r}")
    return " ".join(value.split())


def _timezone(value: Any) -> str:
    if not isinstance(value, str) or _FIXED_OFFSET.fullmatch(value):
        raise ConfigError(f"{value!r} is not a time zone name: use an IANA zone such as "
                          "'Europe/Berlin' or 'UTC' (a fixed offset ignores daylight saving)")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {value!r}: use an IANA name such as "
                          "'Europe/Berlin'") from None
    return value


def _message(value: Any) -> str:
    return validate_message_name(value)


def _payload(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"must be a JSON value: {exc}") from None
    return value


def _misfire(value: Any) -> str:
    if value not in MISFIRE_POLICIES:
        raise ConfigError(f"must be one of {', '.join(MISFIRE_POLICIES)}, got {value!r}")
    return str(value)


def _catchup(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise ConfigError(f"must be an integer from 1 to 10000, got {value!r}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}")
    return value


_FIELDS = {"name": _name, "cron": _cron, "message": _message, "timezone": _timezone,
           "payload": _payload, "misfire": _misfire, "max_catchup": _catchup,
           "enabled": _flag, "paused": _flag}

