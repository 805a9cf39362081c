"""The chaos checker (bench/chaos.py, bench/chaos_check.py).

First its properties over small made-up histories, no processes; then a short
real run: three nodes joined by seeds, casts and an every-second timer while
workers and nodes are killed, the timer leader is killed, paused and cut off
(the cut only where `ip netns` works), and tasks are edited and restarted.
The run passes only if every property holds.
"""

from __future__ import annotations

import re
import sys

import pytest
from support import REPO

sys.path.insert(0, str(REPO / "bench"))
from chaos import run_chaos
from chaos_check import Cast, DeadLetter, History, check
from chaos_nodes import leader_of

sys.path.insert(0, str(REPO / "tests" / "workers"))
from recorder import tick_of


def run(id: str, task: str, node: str = "c1", *, phase: str = "end", ok: bool = True,
        attempt: int = 1) -> dict[str, object]:
    return {"phase": phase, "id": id, "task": task, "node": node, "pid": 1, "attempt": attempt,
            "tick": tick_of(id), "ok": ok}


def tick_runs(ticks: list[int], node: str = "c1") -> list[dict[str, object]]:
    return [run(f"timer:t:{t}.000", "ticks", node) for t in ticks]


def good() -> History:
    return History(casts=[Cast("a", ("chaos", "flaky"), "c1", 0.0)],
                   runs=[run("a", "chaos"), run("a", "chaos"), run("a", "flaky"),
                         *tick_runs([100, 101, 102])],
                   max_attempts={"chaos": 5, "flaky": 2}, tick_task="ticks", ticks_until=102,
                   converged_s=[("faults stopped", 1.0)], converge_limit_s=4.0,
                   joins_s=[("formed", 0.4)], join_limit_s=1.5)


def failed(history: History) -> dict[str, str]:
    return {p.name: p.figure for p in check(history) if not p.ok}


def test_a_good_history_violates_nothing_and_counts_duplicate_casts():
    properties = check(good())
    assert all(p.ok for p in properties), properties
    assert "handled twice 1 (allowed)" in properties[0].figure


@pytest.mark.parametrize(("change", "violated", "figure"), [
    (lambda h: h.runs.remove(run("a", "flaky")), "every accepted cast handled by each "
     "subscribed task", "lost 1"),
    (lambda h: h.runs.extend(tick_runs([101], "c2")), "every timer tick handled exactly once",
     "handled twice 1 (1 of them on two nodes)"),
    (lambda h: h.runs.remove(tick_runs([101])[0]), "every timer tick handled exactly once",
     "missed 1"),
    (lambda h: setattr(h, "ticks_until", 104), "every timer tick handled exactly once",
     "missed 2"),
    (lambda h: h.converged_s.append(("c3 healed", 4.5)), "config converges after the faults",
     "slowest 4.50 s, late 1"),
    (lambda h: h.converged_s.append(("c2 restarted", None)), "config converges after the "
     "faults", "slowest never"),
    (lambda h: h.joins_s.append(("c1 restarted", 2.0)), "every node lists every live member",
     "late 1"),
    (lambda h: h.joins_s.append(("c2 restarted", None)), "every node lists every live member",
     "slowest never"),
    (lambda h: (h.dead.append(DeadLetter("b", "flaky", 2, "c1")),
                h.runs.append(run("b", "flaky", phase="start"))),
     "dead letters only after max_attempts runs", "1 with fewer runs"),
])
def test_each_property_fails_on_a_history_that_breaks_it(change, violated, figure):
    history = good()
    change(history)
    assert list(failed(history)) == [violated]
    assert figure in failed(history)[violated]


def test_a_dead_letter_after_max_attempts_real_runs_is_fine():
    history = good()
    history.casts.append(Cast("b", ("flaky",), "c2", 0.0))
    history.dead.append(DeadLetter("b", "flaky", 2, "c2"))
    history.runs += [run("b", "flaky", phase="start"), run("b", "flaky", phase="start",
                                                           attempt=2)]
    assert failed(history) == {}


def test_an_expired_cast_with_a_deadline_is_counted_apart_never_lost():
    history = good()
    history.casts.append(Cast("e", ("flaky",), "c2", 0.0, deadline=3.0))
    history.dead.append(DeadLetter("e", "flaky", 0, "c2", "Expired"))
    assert failed(history) == {}
    assert "expired 1 (not lost)" in check(history)[0].figure


@pytest.mark.parametrize(("change", "violated", "figure"), [
    (lambda h: (h.casts.append(Cast("d", ("flaky",), "c1", 0.0, not_before=50.0)),
                h.runs.extend([{**run("d", "flaky", phase="start"), "at": 49.0},
                               run("d", "flaky")])),
     "no delayed cast runs before it is due", "1 run before they were due"),
    (lambda h: (h.casts.append(Cast("x", ("flaky",), "c1", 0.0)),
                h.dead.append(DeadLetter("x", "flaky", 0, "c1", "Expired"))),
     "only casts with a deadline expire", "1 of them without a deadline"),
])
def test_the_controls_properties_fail_on_a_history_that_breaks_them(change, violated, figure):
    history = good()
    change(history)
    assert list(failed(history)) == [violated]
    assert figure in failed(history)[violated]


def test_a_delayed_cast_run_once_due_is_fine():
    history = good()
    history.casts.append(Cast("d", ("flaky",), "c1", 0.0, not_before=50.0))
    history.runs += [{**run("d", "flaky", phase="start"), "at": 50.2}, run("d", "flaky")]
    assert failed(history) == {}


def test_the_timer_leader_is_read_from_any_shape_timers_list_gives():
    assert leader_of([{"name": "t", "leader": "c2"}]) == "c2"
    assert leader_of([{"name": "t", "leader": {"name": "c3", "epoch": 4}}]) == "c3"
    assert leader_of([{"name": "t", "leader_node": "c1"}]) == "c1"
    assert leader_of([{"name": "t", "leader": "", "epoch": 3}]) is None  # nobody holds it
    assert leader_of([]) is None and leader_of({"error": 1}) is None


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_a_short_chaos_run_violates_no_property(tmp_path):
    report = run_chaos(30, folder=tmp_path)
    print("\n".join(report.lines()))
    kinds = {kind for kind, n in report.faults.items() if n}
    assert {"worker kill -9", "node kill", "node kill leader", "node pause leader",
            "task edit", "yptask restart"} <= kinds, report.lines()
    if not any("partition skipped" in note for note in report.notes):
        assert "node partition leader" in kinds, report.lines()
    # The node counts an attempt once the worker has read some of the job (none while all of
    # it is still in the pipe); the recorder counts it once the handler has written its first
    # line. A kill -9 in the microseconds between the two is an attempt by the one count and
    # none by the other: the one blind spot of this history (a worker cannot tell it started
    # without a write a kill can still precede). It is rare: at most one such dead letter in
    # a short run.
    attempts = next(p for p in report.properties if p.name.startswith("dead letters"))
    # A tick is still handled twice in two known windows: a leader cut off in the
    # milliseconds between journaling a tick and its voters hearing of it (its successor
    # fires it again), and a worker killed between a handler's end and its ack (the one
    # journaled tick delivered again). Both are rare; at most one in a short run.
    ticks = next(p for p in report.properties if p.name.startswith("every timer tick"))
    others = [v for v in report.violations if not v.startswith(("dead letters",
                                                                  "every timer tick"))]
    assert not others, "\n".join(report.lines())
    early = re.search(r"(\d+) with fewer runs", attempts.figure)
    assert early is not None and int(early.group(1)) <= 1, "\n".join(report.lines())
    tick_figures = re.search(r"missed (\d+), handled twice (\d+)", ticks.figure)
    assert tick_figures is not None, ticks.figure
    assert tick_figures.group(1) == "0" and int(tick_figures.group(2)) <= 1, \
        "\n".join(report.lines())
