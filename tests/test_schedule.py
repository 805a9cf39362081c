"""When timers fire: next ticks and missed ticks as tables, with no clock; definitions refused."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from yptask.config.tasks import TaskDef
from yptask.delivery.schedule import MAX_RETRY_BACKOFF_S, retry_after_s
from yptask.errors import ConfigError
from yptask.timers.schedule import TimerDef, due_fires, fire_id, next_fire


def at(text: str, zone: str = "UTC") -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def local(epoch: float, zone: str) -> str:
    return dt.datetime.fromtimestamp(epoch, ZoneInfo(zone)).isoformat()


def timer(cron: str, zone: str = "UTC", **fields) -> TimerDef:
    return TimerDef.from_dict({"name": "t", "cron": cron, "message": "tick.tock",
                               "timezone": zone, **fields})


def timer_with(fields: dict) -> TimerDef:
    return TimerDef.from_dict({"name": "t", "cron": "* * * * *", "message": "tick.tock",
                               **fields})


BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"


@pytest.mark.parametrize(("cron", "zone", "after", "expected"), [
    # plain schedules
    ("*/15 * * * *", "UTC", "2025-06-01T10:07:00", ["10:15:00+00:00", "10:30:00+00:00"]),
    ("0 9 * * 1", "UTC", "2025-06-01T12:00:00", ["2025-06-02T09:00:00+00:00",
                                                  "2025-06-09T09:00:00+00:00"]),
    ("*/20 * * * * *", "UTC", "2025-06-01T10:00:05", ["10:00:20+00:00", "10:00:40+00:00"]),
    # clocks go back in Berlin: the repeated 02:30 fires once
    ("30 2 * * *", BERLIN, "2025-10-25T12:00:00", ["2025-10-26T02:30:00+02:00",
                                                    "2025-10-27T02:30:00+01:00"]),
    # and every 20 minutes, the repeated hour's slots once each
    ("*/20 * * * *", BERLIN, "2025-10-26T02:30:00", ["02:40:00+02:00",
                                                      "2025-10-26T03:00:00+01:00"]),
    ("30 1 * * *", NEW_YORK, "2025-11-01T12:00:00", ["2025-11-02T01:30:00-04:00",
                                                      "2025-11-03T01:30:00-05:00"]),
    # clocks go forward: the missing 02:30 fires at the first valid instant
    ("30 2 * * *", BERLIN, "2025-03-29T12:00:00", ["2025-03-30T03:00:00+02:00",
                                                    "2025-03-31T02:30:00+02:00"]),
    # daily at midnight across the change keeps local midnight
    ("0 0 * * *", BERLIN, "2025-03-29T12:00:00", ["2025-03-30T00:00:00+01:00",
                                                   "2025-03-31T00:00:00+02:00"]),
])
def test_next_fires(cron, zone, after, expected):
    t = timer(cron, zone)
    ticks, last = [], at(after, zone)
    for _ in expected:
        last = next_fire(t, last)
        ticks.append(local(last, zone))
    assert [tick.endswith(e) if "T" not in e else tick == e for tick, e in
            zip(ticks, expected, strict=True)] == [True] * len(expected), ticks


@pytest.mark.parametrize(("misfire", "last", "now", "expected"), [
    # on time: the tick that just came due fires, whatever the policy
    ("skip", "10:00:00", "10:01:00.5", ["10:01:00"]),
    ("fire_once", "10:00:00", "10:01:00.5", ["10:01:00"]),
    ("fire_all", "10:00:00", "10:01:00.5", ["10:01:00"]),
    # nothing due yet
    ("fire_all", "10:00:00", "10:00:59", []),
    # three ticks missed, now well past the last
    ("skip", "10:00:00", "10:03:30", []),
    ("fire_once", "10:00:00", "10:03:30", ["10:03:00"]),
    ("fire_all", "10:00:00", "10:03:30", ["10:01:00", "10:02:00", "10:03:00"]),
    # missed ticks, the latest one just due: skip fires it alone
    ("skip", "10:00:00", "10:03:01", ["10:03:00"]),
])
def test_missed_ticks_follow_the_misfire_policy(misfire, last, now, expected):
    t = timer("* * * * *", misfire=misfire)
    day = "2025-06-01T"
    fires, accounted = due_fires(t, at(day + last), at(day + now))
    assert [local(f, "UTC")[11:19] for f in fires] == expected
    if at(day + now) >= at(day + "10:01:00"):  # every tick up to now is accounted for
        assert local(accounted, "UTC")[11:16] == (day + now)[11:16]


def test_fire_all_catches_up_at_most_its_cap_and_a_long_outage_is_cheap():
    t = timer("* * * * * *", misfire="fire_all", max_catchup=5)
    fires, _ = due_fires(t, at("2025-06-01T00:00:00"), at("2025-06-08T00:00:00"))  # a week
    assert fires == [at("2025-06-08T00:00:00") - i for i in (4, 3, 2, 1, 0)]


def test_a_fire_id_names_the_timer_and_the_tick():
    assert fire_id("nightly", 1717200000.0) == "timer:nightly:1717200000.000"


@pytest.mark.parametrize(("fields", "complaint"), [
    ({"cron": "0 0 31 2 *"}, "'cron'"),  # February 31st never comes
    ({"cron": "1 2 3"}, "3 fields"),
    ({"cron": "61 * * * *"}, "'cron'"),
    ({"timezone": "UTC+01:00"}, "fixed offset"),
    ({"timezone": "Etc/GMT-1"}, "fixed offset"),
    ({"timezone": "Mars/Olympus"}, "unknown time zone"),
    ({"misfire": "sometimes"}, "'misfire'"),
    ({"message": "bad name!"}, "'message'"),
    ({"max_catchup": 0}, "'max_catchup'"),
    ({"colour": "red"}, "unknown timer field"),
])
def test_bad_timers_are_refused_at_save_naming_the_field(fields, complaint):
    with pytest.raises(ConfigError, match=complaint):
        timer_with(fields)


def test_a_timer_survives_its_plain_form():
    t = timer("*/5 * * * *", BERLIN, payload={"k": [1, 2]}, misfire="skip")
    assert TimerDef.from_dict(t.to_dict()) == t


@pytest.mark.parametrize(("backoff", "attempt", "expected"), [
    (1.0, 1, 1.0), (1.0, 3, 4.0), (0.05, 5, 0.8),
    (1.0, 30, MAX_RETRY_BACKOFF_S),  # not 2**29 s: 17 years
    (1.0, 5000, MAX_RETRY_BACKOFF_S),  # nor an OverflowError
    (3600.0, 4, 3600.0),  # a backoff longer than the cap is kept, not doubled
    (0.0, 9, 0.0),
])
def test_the_retry_backoff_doubles_up_to_its_cap(backoff, attempt, expected):
    task = TaskDef(name="t", messages=("t.*",), worker_class="m:C", retry_backoff_s=backoff)
    assert retry_after_s(task, attempt) == expected
