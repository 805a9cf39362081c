"""The generic `Supervisor` actor: starts, watches and restarts its children.

It starts children in order, stops them in reverse order, restarts them by
restart type and strategy (the rules in `yptask.supervision.policy`), backs
off once restarts exceed the intensity, and owns a `Registry` (child id ->
current ref). No module-level state.

A supervisor may start its children in the background (`start_in_background`):
its own start then returns at once and the children start from its inbox, with
the same outcome as a start in `init()`. Callers who must not wait on a busy
supervisor read the snapshot it publishes (`publish`) whenever its children or
its phase change, instead of asking it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pykka

from yptask.errors import (
    DuplicateChild,
    NoSuchChild,
    RestartIntensityExceeded,
    SupervisionError,
)
from yptask.supervision.child import ChildLink, Exit, Supervised
from yptask.supervision.policy import (
    ActorRef,
    ChildSpec,
    ExitReason,
    Restart,
    StartFunc,
    Strategy,
    SupervisorFlags,
    backoff_delay,
    recent,
    should_restart,
    within_intensity,
)
from yptask.supervision.state import ChildInfo, Phase, Registry, SupervisorState

__all__ = ["Supervisor"]

# The package's name, as before the split: operators and tests filter on it.
log = logging.getLogger("yptask.supervision")


@dataclass(frozen=True)
class _Retry:
    token: int


@dataclass(frozen=True)
class _StartChildren:
    """Start the children not started yet (a supervisor that starts them in the background)."""


@dataclass
class _Child:
    spec: ChildSpec
    ref: ActorRef | None = None
    urn: str | None = None
    restarts: int = 0


class Supervisor(Supervised):
    """Starts, watches and restarts children. Query it with asks (proxy calls) with timeouts."""

    def __init__(self, children: Sequence[ChildSpec] = (), flags: SupervisorFlags | None = None,
                 *, name: str = "supervisor", registry: Registry | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 link: ChildLink | None = None, start_in_background: bool = False,
                 publish: Callable[[str, SupervisorState], None] | None = None) -> None:
        """`publish(actor urn, state)` is called in the supervisor's thread on every change."""
        super().__init__(link=link)
        self.name = name
        self._background = start_in_background
        self._publish = publish
        self._starting: set[str] = set()
        self.flags = flags if flags is not None else SupervisorFlags()
        self.registry = registry if registry is not None else Registry()
        self._clock = clock
        self._children: dict[str, _Child] = {}
        for spec in children:
            if spec.id in self._children:
                raise DuplicateChild(f"{name}: two child specs have the id {spec.id!r}")
            self._children[spec.id] = _Child(spec)
        self._pending: set[str] = set()
        self._window: tuple[float, ...] = ()  # restart times within the period
        self._restarts = self._attempt = self._token = 0
        self._phase = Phase.RUNNING
        self._next_retry_at: float | None = None
        self._timer: threading.Timer | None = None  # pending backoff retry
        self._start_error: Exception | None = None  # see SupervisorState.start_error

    def init(self) -> None:
        if self._background:
            self._starting.update(self._children)
            self._changed()
            self.actor_ref.tell(_StartChildren())
            return
        started: list[_Child] = []
        try:
            for child in self._children.values():
                self._spawn(child)
                started.append(child)
        except Exception:
            self._stop_children(reversed(started))
            raise
        self._changed()

    def _start_children(self) -> None:
        """Start, in order, the children that wait for their first start. A child whose
        start fails is restarted (or backed off) like any child that exits."""
        for child in [c for c in self._children.values() if c.spec.id in self._starting]:
            self._spawn_reporting(child)

    def terminate(self, reason: ExitReason) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._stop_children(reversed(list(self._children.values())))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Exit):
            return self._on_exit(message)
        if isinstance(message, _Retry):
            return self._on_retry(message.token)
        if isinstance(message, _StartChildren):
            return self._start_children()
        return super().on_receive(message)

    def start_child(self, spec: ChildSpec) -> ActorRef:
        """Start a dynamic child; raise if its id is taken or its init() fails."""
        if spec.id in self._children or self.registry.whereis(spec.id) is not None:
            raise DuplicateChild(f"{self.name}: a child {spec.id!r} already exists")
        child = self._children[spec.id] = _Child(spec)
        try:
            error = self._spawn(child)
        except Exception:
            del self._children[spec.id]
            raise
        if error is not None or child.ref is None:
            self._forget(child)
            del self._children[spec.id]  # its Exit is now stale and ignored
            raise SupervisionError(f"{self.name}: child {spec.id!r} failed to start: {error}")
        return child.ref

    def terminate_child(self, child_id: str) -> None:
        """Stop a child gracefully (waiting up to its shutdown_s) and forget its spec."""
        child = self._children.pop(child_id, None)
        if child is None:
            raise NoSuchChild(f"{self.name}: no child {child_id!r}")
        self._pending.discard(child_id)
        self._starting.discard(child_id)
        self._stop_children([child])
        if self._phase is Phase.BACKOFF and not self._pending:
            # Nothing left to retry (replaced by new children, say): the backoff is over.
            if self._timer is not None:
                self._timer.cancel()
            self._phase, self._next_retry_at, self._timer = Phase.RUNNING, None, None
            self._token += 1  # a wake-up already on its way is stale
            self._changed()

    def which_children(self) -> list[ChildInfo]:
        return [ChildInfo(c.spec.id, c.ref, c.spec.restart, c.restarts)
                for c in self._children.values()]

    def whereis(self, child_id: str) -> ActorRef | None:
        return self.registry.whereis(child_id)

    def state(self) -> SupervisorState:
        at = self._next_retry_at
        return SupervisorState(
            self.name, self._phase, self._restarts, self._attempt, at,
            None if at is None else max(0.0, at - self._clock()),
            tuple(i for i in self._children if i in self._pending),
            sum(1 for c in self._children.values() if c.ref is not None and c.ref.is_alive()),
            tuple(i for i in self._children if i in self._starting), self._start_error)

    def _changed(self) -> None:
        """Publish a snapshot of this supervisor's state, for readers who must not ask."""
        if self._publish is not None:
            self._publish(self.actor_urn, self.state())

    def _spawn(self, child: _Child) -> str | None:
        """Start a child and wait for a Supervised child's init(); return its init error."""
        spec = child.spec
        self._starting.add(spec.id)
        self._changed()
        try:
            link = ChildLink(self.actor_ref, spec.id)
            start = spec.start
            if isinstance(start, type) and issubclass(start, pykka.Actor):
                start = start.start
            ref = cast(StartFunc, start)(*spec.args, link=link, **spec.kwargs)
            child.ref, child.urn = ref, ref.actor_urn
            if issubclass(ref.actor_class, Supervised) and not link.started.wait(
                    spec.start_timeout_s):
                log.warning("child start timed out: %s (%.1f s)", spec.id, spec.start_timeout_s)
            if link.error is not None:  # its Exit is already in our inbox
                self._start_error = link.cause
                return link.error
            self.registry.register(spec.id, ref)
            self._start_error = None
            log.info("child started: %s", spec.id)
            return None
        finally:
            self._starting.discard(spec.id)
            self._changed()

    def _spawn_reporting(self, child: _Child) -> bool:
        """Start a child; True if it started. A failed start comes back as its Exit (an
        exception from its start function too), to be restarted like any exit."""
        try:
            return self._spawn(child) is None
        except Exception as exc:
            log.exception("child start failed: %s", child.spec.id)
            self._start_error = exc
            child.ref, child.urn = None, f"start-failed:{uuid.uuid4()}"
            self.actor_ref.tell(Exit(child.spec.id, child.urn, ExitReason.START_FAILED))
            return False

    def _forget(self, child: _Child) -> None:
        self.registry.unregister(child.spec.id, child.urn)
        child.ref = child.urn = None
        self._changed()

    def _stop_children(self, children: Iterable[_Child]) -> None:
        for child in children:
            ref = child.ref
            self._forget(child)  # first, so its own exit report arrives stale
            if ref is None:
                continue
            try:
                ref.stop(block=True, timeout=child.spec.shutdown_s)
            except pykka.Timeout:
                log.error("child shutdown timed out: %s after %.1f s; its thread leaked",
                          child.spec.id, child.spec.shutdown_s)

    def _on_exit(self, exit_: Exit) -> None:
        child = self._children.get(exit_.child_id)
        if child is None or child.urn != exit_.urn:
            log.debug("stale exit ignored: %s (%s)", exit_.child_id, exit_.urn)
            return
        log.info("child exited: %s (%s)", exit_.child_id, exit_.reason.value)
        self._forget(child)
        if not should_restart(child.spec.restart, exit_.reason):
            del self._children[exit_.child_id]
            return
        self._pending.add(exit_.child_id)
        if self.flags.strategy is Strategy.ONE_FOR_ALL:
            self._stop_children(reversed(list(self._children.values())))
            for c in list(self._children.values()):
                if c.spec.restart is Restart.TEMPORARY:
                    del self._children[c.spec.id]
            self._pending.update(self._children)
        self._request_restart()

    def _request_restart(self) -> None:
        if self._phase is Phase.BACKOFF:
            return  # the scheduled retry restarts everything pending
        now = self._clock()
        intensity, period_s = self.flags.intensity, self.flags.period_s
        self._window = recent(self._window, now, period_s)
        if not self._window:
            self._attempt = 0  # stable for a whole period: back off from the start again
        if within_intensity(self._window, now, intensity, period_s):
            self._restart_pending(now)
        elif self.flags.escalate:
            raise RestartIntensityExceeded(
                f"{self.name}: more than {intensity} restarts in {period_s} s")
        else:
            self._enter_backoff(now)

    def _restart_pending(self, now: float) -> None:
        self._window = (*self._window, now)
        self._restarts += 1
        for child in [c for c in self._children.values() if c.spec.id in self._pending]:
            self._pending.discard(child.spec.id)
            child.restarts += 1
            if self._spawn_reporting(child):
                log.info("child restarted: %s", child.spec.id)

    def _enter_backoff(self, now: float) -> None:
        self._attempt += 1
        delay = backoff_delay(self._attempt, self.flags.backoff)
        self._phase = Phase.BACKOFF
        self._next_retry_at = now + delay
        self._token += 1
        self._timer = threading.Timer(delay, self._wake, args=(self._token,))
        self._timer.daemon = True
        self._timer.start()
        self._changed()
        log.warning("supervisor backoff: %s: more than %d restarts in %.1f s; "
                    "retry %d in %.2f s for %s", self.name, self.flags.intensity,
                    self.flags.period_s, self._attempt, delay, sorted(self._pending))

    def _wake(self, token: int) -> None:
        """Runs in the timer's thread: only tells, so the inbox never waits on the delay."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(_Retry(token))

    def _on_retry(self, token: int) -> None:
        if token != self._token or self._phase is not Phase.BACKOFF:
            return
        self._phase, self._next_retry_at, self._timer = Phase.RUNNING, None, None
        log.info("supervisor backoff over: %s; restarting %s", self.name, sorted(self._pending))
        self._restart_pending(self._clock())
        self._changed()
