"""The generic supervisor: pure restart rules as tables, then real pykka actors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

from yptask.errors import DuplicateChild, NoSuchChild, SupervisionError
from yptask.supervision.child import ChildLink, Exit, Supervised
from yptask.supervision.policy import (
    BackoffPolicy,
    ChildSpec,
    ExitReason,
    Restart,
    Strategy,
    SupervisorFlags,
    backoff_delay,
    recent,
    should_restart,
    within_intensity,
)
from yptask.supervision.state import Phase, SupervisorState
from yptask.supervision.supervisor import Supervisor
from yptask.testing import wait_for

T = 5.0  # timeout of every ask, stop and get in this file

# --------------------------------------------------------------------------- pure rules


@pytest.mark.parametrize(("restart", "reason", "expected"), [
    (Restart.PERMANENT, ExitReason.NORMAL, True),
    (Restart.PERMANENT, ExitReason.CRASHED, True),
    (Restart.PERMANENT, ExitReason.START_FAILED, True),
    (Restart.TRANSIENT, ExitReason.NORMAL, False),
    (Restart.TRANSIENT, ExitReason.CRASHED, True),
    (Restart.TRANSIENT, ExitReason.START_FAILED, True),
    (Restart.TEMPORARY, ExitReason.NORMAL, False),
    (Restart.TEMPORARY, ExitReason.CRASHED, False),
    (Restart.TEMPORARY, ExitReason.START_FAILED, False),
])
def test_should_restart(restart: Restart, reason: ExitReason, expected: bool) -> None:
    assert should_restart(restart, reason) is expected


@pytest.mark.parametrize(("timestamps", "now", "intensity", "period_s", "expected"), [
    ((), 100.0, 1, 5.0, True),  # the first restart
    ((), 100.0, 0, 5.0, False),  # intensity 0: no restart at all
    ((99.0,), 100.0, 1, 5.0, False),  # a second one within the period
    ((95.0,), 100.0, 1, 5.0, True),  # exactly one period ago no longer counts
    ((95.1,), 100.0, 1, 5.0, False),
    ((97.0, 98.0), 100.0, 3, 5.0, True),  # the third of three
    ((97.0, 98.0, 99.0), 100.0, 3, 5.0, False),  # the fourth of three
    ((10.0, 20.0, 99.0), 100.0, 2, 5.0, True),  # old ones have left the window
])
def test_within_intensity(timestamps: tuple[float, ...], now: float, intensity: int,
                          period_s: float, expected: bool) -> None:
    assert within_intensity(timestamps, now, intensity, period_s) is expected


def test_recent_keeps_only_the_window() -> None:
    assert recent([1.0, 5.0, 6.0, 9.9], now=10.0, period_s=5.0) == (6.0, 9.9)
    assert recent([], now=10.0, period_s=5.0) == ()


@pytest.mark.parametrize(("attempt", "policy", "expected"), [
    (1, BackoffPolicy(), 1.0),
    (2, BackoffPolicy(), 2.0),
    (3, BackoffPolicy(), 4.0),
    (6, BackoffPolicy(), 32.0),
    (7, BackoffPolicy(), 60.0),  # 64 capped
    (10_000, BackoffPolicy(), 60.0),  # no overflow
    (3, BackoffPolicy(initial_s=0.05, factor=1.0, max_s=1.0), 0.05),  # constant
    (3, BackoffPolicy(initial_s=0.5, factor=3.0, max_s=10.0), 4.5),
])
def test_backoff_delay(attempt: int, policy: BackoffPolicy, expected: float) -> None:
    assert backoff_delay(attempt, policy) == pytest.approx(expected)


@pytest.mark.parametrize("make", [
    lambda: backoff_delay(0, BackoffPolicy()),
    lambda: BackoffPolicy(initial_s=0),
    lambda: BackoffPolicy(factor=0.5),
    lambda: BackoffPolicy(initial_s=2.0, max_s=1.0),
    lambda: SupervisorFlags(intensity=-1),
    lambda: SupervisorFlags(period_s=0),
    lambda: ChildSpec("", Supervised),
    lambda: ChildSpec("a", Supervised, shutdown_s=0),
])
def test_invalid_settings_raise_value_error(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


# --------------------------------------------------------------------------- helpers


def wait_until(predicate: Callable[[], object]) -> None:
    """Poll `predicate` quickly (these children start in microseconds) until it is true;
    fail the test after 5 s."""
    wait_for(predicate, timeout_s=5.0, what="the condition", interval_s=0.005)


class Journal:
    """A thread-safe list of events, passed to the children."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[str] = []

    def add(self, event: str) -> None:
        with self._lock:
            self._events.append(event)

    def events(self) -> list[str]:
        with self._lock:
            return list(self._events)


class Worker(Supervised):
    """Records init/terminate; crashes on "crash", stops itself on "stop"."""

    def __init__(self, name: str, journal: Journal, *, healthy: threading.Event | None = None,
                 block_stop: threading.Event | None = None, link: ChildLink | None = None):
        super().__init__(link=link)
        self.name, self.journal = name, journal
        self.healthy, self.block_stop = healthy, block_stop

    def init(self) -> None:
        if self.healthy is not None and not self.healthy.is_set():
            self.journal.add(f"init-failed:{self.name}")
            raise RuntimeError(f"{self.name} cannot start yet")
        self.journal.add(f"start:{self.name}")

    def terminate(self, reason: ExitReason) -> None:
        if self.block_stop is not None:
            self.block_stop.wait(T)
        self.journal.add(f"stop:{self.name}:{reason.value}")

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError(f"{self.name} crashed on purpose")
        if message == "stop":
            self.actor_ref.stop(block=False)
        return message


def spec(name: str, journal: Journal, restart: Restart = Restart.PERMANENT,
         **kwargs: Any) -> ChildSpec:
    return ChildSpec(name, Worker, args=(name, journal), kwargs=kwargs, restart=restart)


Start = Callable[..., "pykka.ActorRef[Supervisor]"]


@pytest.fixture
def journal() -> Journal:
    return Journal()


@pytest.fixture
def supervise() -> Iterator[Start]:
    """Start supervisors; stop them and every other actor at the end."""
    started: list[pykka.ActorRef[Supervisor]] = []

    def start(children: list[ChildSpec], flags: SupervisorFlags | None = None,
              **kwargs: Any) -> pykka.ActorRef[Supervisor]:
        ref = Supervisor.start(children, flags, **kwargs)
        started.append(ref)
        return ref

    yield start
    for ref in reversed(started):
        ref.stop(timeout=T)
    pykka.ActorRegistry.stop_all(timeout=T)


def whereis(sup: pykka.ActorRef[Supervisor], child_id: str) -> pykka.ActorRef[Any] | None:
    ref: pykka.ActorRef[Any] | None = sup.proxy().whereis(child_id).get(timeout=T)
    return ref


def state(sup: pykka.ActorRef[Supervisor]) -> SupervisorState:
    result: SupervisorState = sup.proxy().state().get(timeout=T)
    return result


def restarted(sup: pykka.ActorRef[Supervisor], child_id: str, old_urn: str) -> bool:
    ref = whereis(sup, child_id)
    return ref is not None and ref.actor_urn != old_urn


# --------------------------------------------------------------------------- actors


def test_a_crashed_child_is_restarted_and_its_sibling_untouched(
        supervise: Start, journal: Journal, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="yptask.supervision")
    # Given a supervisor with two permanent children
    sup = supervise([spec("a", journal), spec("b", journal)])
    a, b = whereis(sup, "a"), whereis(sup, "b")
    assert a is not None and b is not None
    # When a crashes while handling a tell
    a.tell("crash")
    # Then whereis returns a new, live ref for a, and b is the same actor
    wait_until(lambda: restarted(sup, "a", a.actor_urn))
    new_a = whereis(sup, "a")
    assert new_a is not None and new_a.ask("ping", timeout=T) == "ping"
    assert whereis(sup, "b") == b and b.is_alive()
    assert not a.is_alive()
    assert state(sup).restarts == 1
    assert [(c.id, c.restarts) for c in sup.proxy().which_children().get(timeout=T)] == [
        ("a", 1), ("b", 0)]
    messages = [r.getMessage() for r in caplog.records if r.name == "yptask.supervision"]
    assert "child exited: a (crashed)" in messages
    assert "child restarted: a" in messages


def test_a_child_stopping_normally(supervise: Start, journal: Journal) -> None:
    # Given one child of each restart type
    sup = supervise([spec("perm", journal), spec("trans", journal, Restart.TRANSIENT),
                     spec("temp", journal, Restart.TEMPORARY)])
    refs = {name: whereis(sup, name) for name in ("perm", "trans", "temp")}
    # When each stops normally
    for ref in refs.values():
        assert ref is not None
        ref.tell("stop")
    # Then only the permanent one is restarted; the others are gone for good
    perm = refs["perm"]
    assert perm is not None
    wait_until(lambda: restarted(sup, "perm", perm.actor_urn))
    wait_until(lambda: [c.id for c in sup.proxy().which_children().get(timeout=T)] == ["perm"])
    assert whereis(sup, "trans") is None and whereis(sup, "temp") is None


def test_a_child_crashing(supervise: Start, journal: Journal) -> None:
    # Given a transient and a temporary child
    sup = supervise([spec("trans", journal, Restart.TRANSIENT),
                     spec("temp", journal, Restart.TEMPORARY)])
    trans, temp = whereis(sup, "trans"), whereis(sup, "temp")
    assert trans is not None and temp is not None
    # When both crash
    trans.tell("crash")
    temp.tell("crash")
    # Then the transient one is restarted and the temporary one is not
    wait_until(lambda: restarted(sup, "trans", trans.actor_urn))
    wait_until(lambda: [c.id for c in sup.proxy().which_children().get(timeout=T)] == ["trans"])


def test_children_start_in_order_and_stop_in_reverse(supervise: Start, journal: Journal) -> None:
    sup = supervise([spec(name, journal) for name in "abc"])
    state(sup)  # an ask is answered once on_start (starting every child) has returned
    assert journal.events() == ["start:a", "start:b", "start:c"]
    sup.stop(timeout=T)
    assert journal.events()[3:] == ["stop:c:normal", "stop:b:normal", "stop:a:normal"]


def test_one_for_all_restarts_every_child(supervise: Start, journal: Journal) -> None:
    sup = supervise([spec(name, journal) for name in "abc"],
                    SupervisorFlags(strategy=Strategy.ONE_FOR_ALL))
    old = {name: whereis(sup, name) for name in "abc"}
    b = old["b"]
    assert b is not None
    b.tell("crash")
    wait_until(lambda: all(restarted(sup, n, r.actor_urn) for n, r in old.items() if r))
    assert journal.events()[3:] == ["stop:b:crashed", "stop:c:normal", "stop:a:normal",
                                    "start:a", "start:b", "start:c"]
    assert state(sup).restarts == 1


def test_intensity_exceeded_backs_off_then_recovers(
        supervise: Start, journal: Journal, caplog: pytest.LogCaptureFixture) -> None:
    # Given a child whose init() fails until `healthy` is set, and a short backoff
    healthy = threading.Event()
    healthy.set()
    flags = SupervisorFlags(intensity=1, period_s=30.0,
                            backoff=BackoffPolicy(initial_s=0.05, factor=2.0, max_s=0.1))
    sup = supervise([spec("a", journal, healthy=healthy), spec("b", journal)], flags)
    a = whereis(sup, "a")
    assert a is not None
    # When it crashes and cannot start again
    healthy.clear()
    a.tell("crash")
    # Then the supervisor backs off visibly instead of spinning, and keeps serving asks
    wait_until(lambda: state(sup).backoff_attempt >= 2)
    wait_until(lambda: state(sup).phase is Phase.BACKOFF)
    s = state(sup)
    assert s.pending == ("a",)
    assert s.next_retry_at is not None and s.retry_in_s is not None and s.retry_in_s <= 0.1
    assert whereis(sup, "a") is None and whereis(sup, "b") is not None
    assert any(r.getMessage().startswith("supervisor backoff: ") for r in caplog.records)
    assert journal.events().count("init-failed:a") < 50  # delays, not a spin
    # When it can start again, then after the delay it is running and the phase is over
    healthy.set()
    wait_until(lambda: whereis(sup, "a") is not None)
    wait_until(lambda: state(sup).phase is Phase.RUNNING)
    assert state(sup).next_retry_at is None


def test_a_failing_init_is_handled_like_a_crash(supervise: Start, journal: Journal) -> None:
    healthy = threading.Event()
    sup = supervise([spec("a", journal, healthy=healthy)],
                    SupervisorFlags(backoff=BackoffPolicy(initial_s=0.05, max_s=0.05)))
    wait_until(lambda: journal.events().count("init-failed:a") >= 2)  # restarted
    assert whereis(sup, "a") is None
    healthy.set()
    wait_until(lambda: whereis(sup, "a") is not None)
    assert "start:a" in journal.events()


def test_escalate_stops_the_supervisor_and_its_parent_restarts_it(
        supervise: Start, journal: Journal) -> None:
    # Given a parent supervising a child supervisor that escalates at once
    inner_flags = SupervisorFlags(intensity=0, escalate=True)
    parent = supervise([ChildSpec("inner", Supervisor, args=([spec("w", journal)], inner_flags),
                                  kwargs={"name": "inner"})])
    inner = whereis(parent, "inner")
    assert inner is not None
    w = inner.proxy().whereis("w").get(timeout=T)
    assert w is not None
    # When its worker crashes
    w.tell("crash")
    # Then the inner supervisor dies and is restarted, with a fresh worker
    wait_until(lambda: restarted(parent, "inner", inner.actor_urn))
    assert not inner.is_alive()
    new_inner = whereis(parent, "inner")
    assert new_inner is not None
    new_w = new_inner.proxy().whereis("w").get(timeout=T)
    assert new_w is not None and new_w.actor_urn != w.actor_urn
    assert journal.events().count("start:w") == 2


def test_stale_exits_are_ignored(supervise: Start, journal: Journal) -> None:
    sup = supervise([spec("a", journal)])
    a = whereis(sup, "a")
    sup.tell(Exit("a", "urn:uuid:not-the-current-one", ExitReason.CRASHED))
    sup.tell(Exit("nobody", "urn:uuid:x", ExitReason.CRASHED))
    assert state(sup).restarts == 0  # the ask is queued behind both tells
    assert whereis(sup, "a") == a


def test_dynamic_children(supervise: Start, journal: Journal) -> None:
    sup = supervise([spec("a", journal)])
    proxy = sup.proxy()
    b = proxy.start_child(spec("b", journal)).get(timeout=T)
    assert whereis(sup, "b") == b
    with pytest.raises(DuplicateChild):
        proxy.start_child(spec("b", journal)).get(timeout=T)
    with pytest.raises(SupervisionError, match="failed to start"):
        proxy.start_child(spec("c", journal, healthy=threading.Event())).get(timeout=T)
    proxy.terminate_child("b").get(timeout=T)
    assert not b.is_alive() and whereis(sup, "b") is None
    assert [c.id for c in proxy.which_children().get(timeout=T)] == ["a"]
    with pytest.raises(NoSuchChild):
        proxy.terminate_child("b").get(timeout=T)
    assert state(sup).restarts == 0


def test_a_stuck_child_is_left_behind_after_its_shutdown_timeout(
        supervise: Start, journal: Journal, caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    stuck = ChildSpec("stuck", Worker, args=("stuck", journal), kwargs={"block_stop": release},
                      shutdown_s=0.1)
    sup = supervise([stuck])
    sup.proxy().terminate_child("stuck").get(timeout=T)
    assert any("its thread leaked" in r.getMessage() for r in caplog.records)
    release.set()
    wait_until(lambda: "stop:stuck:normal" in journal.events())


def test_stopping_the_supervisor_stops_every_child_and_thread(
        supervise: Start, journal: Journal) -> None:
    before = threading.active_count()
    sup = supervise([spec(name, journal) for name in "abc"])
    refs = [whereis(sup, name) for name in "abc"]
    urns = {sup.actor_urn} | {ref.actor_urn for ref in refs if ref is not None}
    assert threading.active_count() >= before + 4
    sup.stop(timeout=T)
    assert all(ref is not None and not ref.is_alive() for ref in refs)
    wait_until(lambda: threading.active_count() <= before)
    assert not [r for r in pykka.ActorRegistry.get_all() if r.actor_urn in urns]


def test_registries_are_per_supervisor(supervise: Start, journal: Journal) -> None:
    one, two = supervise([spec("a", journal)]), supervise([spec("a", journal)])
    a1, a2 = whereis(one, "a"), whereis(two, "a")
    assert a1 is not None and a2 is not None and a1.actor_urn != a2.actor_urn
