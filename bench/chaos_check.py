"""The checker of bench/chaos.py: properties over the history of one run (pure, no clock).

A run's `History` is what the harness saw (every accepted cast, with the tasks
the node said it went to), what the workers wrote down (every handler run,
tests/workers/recorder.py), what the nodes hold at the end (dead letters), and
the figures the harness measured (config convergence, membership). `check`
turns it into one `Property` per claim, each with its figure; a run is good
only if every property holds.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

EXAMPLES = 5  # ids shown with a violated property
EXPIRED = "Expired"  # the error class of a dead letter whose deadline passed
EARLY_SLACK_S = 0.01  # clock reads of the publisher and the workers, on one machine


@dataclass(frozen=True)
class Cast:
    """One accepted cast: its id, the tasks subscribed when it was accepted, where, when."""

    id: str
    tasks: tuple[str, ...]
    node: str
    at: float
    priority: int = 0
    not_before: float = 0.0  # a delayed cast: due then (the node's answer), else 0
    deadline: float | None = None  # a cast with a ttl: expires then unless handed out


@dataclass(frozen=True)
class DeadLetter:
    id: str
    task: str
    attempt: int
    node: str
    error_class: str = ""  # "Expired": its deadline passed before a worker took it

    @property
    def expired(self) -> bool:
        return self.error_class == EXPIRED


@dataclass
class History:
    casts: list[Cast] = field(default_factory=list)
    runs: list[dict[str, Any]] = field(default_factory=list)  # the recorder's lines
    dead: list[DeadLetter] = field(default_factory=list)
    max_attempts: dict[str, int] = field(default_factory=dict)  # per task
    tick_task: str = ""  # the task the every-second fire_all timer casts to
    ticks_until: float = 0.0  # the last tick expected handled (scheduled time)
    # Settling times measured: (after what, seconds; None: not within the wait), for the
    # config (all nodes the same definitions) and membership (all list all live nodes).
    converged_s: list[tuple[str, float | None]] = field(default_factory=list)
    converge_limit_s: float = 0.0
    joins_s: list[tuple[str, float | None]] = field(default_factory=list)
    join_limit_s: float = 0.0


@dataclass(frozen=True)
class Property:
    name: str
    figure: str
    ok: bool
    examples: tuple[str, ...] = ()


def check(history: History) -> list[Property]:
    return [casts_handled(history), delayed_not_early(history), expired_only_with_deadline(history),
            ticks_exactly_once(history), config_converges(history), members_listed(history),
            attempts_before_dead(history)]


def _finished(runs: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(id, task) -> how many handler runs ended without an error."""
    return Counter((r["id"], r["task"]) for r in runs if r.get("phase") == "end" and r.get("ok"))


def lost(history: History) -> list[tuple[str, str]]:
    """(id, task) of each accepted delivery neither handled nor dead-lettered."""
    done = _finished(history.runs)
    dead = {(d.id, d.task) for d in history.dead}
    return sorted({(c.id, task) for c in history.casts for task in c.tasks
                   if (c.id, task) not in done and (c.id, task) not in dead})


def casts_handled(history: History) -> Property:
    """Every accepted cast is handled (or dead-lettered) by each task it was accepted for."""
    done = _finished(history.runs)
    wanted = {(c.id, task) for c in history.casts for task in c.tasks}
    missing = lost(history)
    dead = {(d.id, d.task) for d in history.dead if not d.expired}
    expired = {(d.id, d.task) for d in history.dead if d.expired}
    twice = sum(1 for pair in wanted if done[pair] > 1)
    delayed = sum(1 for c in history.casts if c.not_before)
    figure = (f"{len(history.casts)} casts ({delayed} delayed), {len(wanted)} deliveries: "
              f"lost {len(missing)}, dead {len(wanted & dead)}, expired "
              f"{len(wanted & expired)} (not lost), handled twice {twice} (allowed)")
    return Property("every accepted cast handled by each subscribed task", figure, not missing,
                    tuple(f"{i} for {t}" for i, t in missing[:EXAMPLES]))


def delayed_not_early(history: History) -> Property:
    """No handler run of a delayed cast starts before the time it was due."""
    due = {c.id: c.not_before for c in history.casts if c.not_before}
    early = sorted({(r["id"], r["task"]) for r in history.runs if r.get("phase") == "start"
                    and r["id"] in due and r["at"] < due[r["id"]] - EARLY_SLACK_S})
    figure = f"{len(due)} delayed casts, {len(early)} run before they were due"
    return Property("no delayed cast runs before it is due", figure, not early,
                    tuple(f"{i} for {t}" for i, t in early[:EXAMPLES]))


def expired_only_with_deadline(history: History) -> Property:
    """Only a cast given a deadline expires, and not before it (nothing else is dropped)."""
    deadline = {c.id: c.deadline for c in history.casts}
    wrong = sorted({(d.id, d.task) for d in history.dead
                    if d.expired and deadline.get(d.id) is None})
    figure = (f"{sum(1 for d in history.dead if d.expired)} expired, {len(wrong)} of them "
              "without a deadline")
    return Property("only casts with a deadline expire", figure, not wrong,
                    tuple(f"{i} for {t}" for i, t in wrong[:EXAMPLES]))


def handled_ticks(history: History) -> dict[float, list[dict[str, Any]]]:
    """Scheduled time -> the runs of the tick task that finished it."""
    per_tick: dict[float, list[dict[str, Any]]] = defaultdict(list)
    for run in history.runs:
        if (run.get("phase") == "end" and run.get("ok") and run.get("task") == history.tick_task
                and run.get("tick") is not None):
            per_tick[float(run["tick"])].append(run)
    return per_tick


def expected_ticks(history: History, handled: dict[float, Any]) -> list[float]:
    """Every second from the first tick handled to `ticks_until`."""
    first = min(handled, default=history.ticks_until)
    return [first + s for s in range(math.floor(history.ticks_until - first) + 1)]


def ticks_exactly_once(history: History) -> Property:
    """Every tick from the first handled one to `ticks_until` handled exactly once."""
    per_tick = handled_ticks(history)
    if not per_tick:
        return Property("every timer tick handled exactly once", "no tick handled at all",
                        False)
    expected = expected_ticks(history, per_tick)
    missed = [t for t in expected if t not in per_tick]
    doubles = sorted(t for t, runs in per_tick.items() if len(runs) > 1)
    on_two_nodes = sum(1 for t in doubles if len({r["node"] for r in per_tick[t]}) > 1)
    figure = (f"{len(expected)} ticks expected: missed {len(missed)}, handled twice "
              f"{len(doubles)} ({on_two_nodes} of them on two nodes)")
    examples = [f"missed {t:.0f}" for t in missed[:EXAMPLES]]
    examples += [f"tick {t:.0f} on " + ", ".join(f"{r['node']} (attempt {r['attempt']})"
                                                 for r in per_tick[t])
                 for t in doubles[:EXAMPLES]]
    return Property("every timer tick handled exactly once", figure,
                    not missed and not doubles, tuple(examples))


def config_converges(history: History) -> Property:
    return _in_time("config converges after the faults", history.converged_s,
                    history.converge_limit_s, "2 x sync_every_s")


def members_listed(history: History) -> Property:
    return _in_time("every node lists every live member", history.joins_s,
                    history.join_limit_s, "3 heartbeats")


def _in_time(name: str, measured: list[tuple[str, float | None]], limit_s: float,
             limit: str) -> Property:
    """Each measured settling (what settled, seconds or None) within `limit_s`."""
    limit = f"limit {limit_s:.2f} s = {limit}"
    if not measured:
        return Property(name, f"not measured; {limit}", False)
    late = [(what, s) for what, s in measured if s is None or s > limit_s]
    times = [s for _, s in measured]
    worst = "never" if None in times else f"{max(s for s in times if s is not None):.2f} s"
    return Property(name, f"{len(measured)} measured, slowest {worst}, late {len(late)}; {limit}",
                    not late, tuple(f"{what}: " + ("never" if s is None else f"{s:.2f} s")
                                    for what, s in late[:EXAMPLES]))


def attempts_before_dead(history: History) -> Property:
    """No message is dead-lettered before its task's max attempts of real handler runs."""
    started: dict[tuple[str, str], list[int]] = defaultdict(list)  # the attempts seen
    for r in history.runs:
        if r.get("phase") == "start":
            started[(r["id"], r["task"])].append(r["attempt"])
    early = sorted({(d.id, d.task) for d in history.dead if not d.expired
                    and len(started[(d.id, d.task)]) < history.max_attempts.get(d.task, 1)})
    figure = f"{len(history.dead)} dead letters, {len(early)} with fewer runs than max_attempts"
    return Property("dead letters only after max_attempts runs", figure, not early, tuple(
        f"{i} for {t}: {len(started[(i, t)])} run(s), attempts {sorted(started[(i, t)])}"
        for i, t in early[:EXAMPLES]))


def table(properties: list[Property]) -> list[str]:
    """The properties as a small table, examples under a violated one."""
    width = max(len(p.name) for p in properties)
    lines = [f"{'PROPERTY':<{width}}  {'VERDICT':<7}  FIGURE"]
    for p in properties:
        lines.append(f"{p.name:<{width}}  {'ok' if p.ok else 'FAILED':<7}  {p.figure}")
        lines += [f"{'':<{width}}           e.g. {e}" for e in p.examples if not p.ok]
    return lines
