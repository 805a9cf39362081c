"""The child's side of supervision: `Supervised`, and its `ChildLink` to its supervisor.

A `Supervised` actor reports its exits to its supervisor with `tell` ("crashed"
from on_failure, "normal" from on_stop, "start_failed" when its `init()` hook
raises, which pykka never reports; a `ChildStartFailed` from `init()` is an
expected failure the child has logged itself, so no traceback is written for
it, nor for a `crash()` a child asks for). The report is an `Exit`, OTP's EXIT signal.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from types import TracebackType

import pykka

from yptask.errors import ChildStartFailed
from yptask.supervision.policy import ActorRef, ExitReason

__all__ = ["ChildLink", "Exit", "Supervised"]


@dataclass(frozen=True)
class Exit:
    """What a supervised child tells its supervisor when it exits (OTP's EXIT signal)."""

    child_id: str
    urn: str
    reason: ExitReason


class ChildLink:
    """A child's tie to its supervisor: where to report exits, and whether init() is done."""

    def __init__(self, supervisor: ActorRef, child_id: str) -> None:
        self.supervisor = supervisor
        self.child_id = child_id
        self.started = threading.Event()  # set once init() returned or raised
        self.error: str | None = None  # set before `started` when init() raised
        self.cause: Exception | None = None  # what init() raised, with `error`


class Supervised(pykka.ThreadingActor):
    """An actor that reports its exits to its supervisor. Override `init()` and `terminate()`.

    Do not override `on_start`, `on_stop` or `on_failure` without calling super().
    """

    def __init__(self, *, link: ChildLink | None = None) -> None:
        super().__init__()
        self._link = link

    def init(self) -> None:
        """Set up, in the actor's thread; raising here is a failed start, handled as a crash."""

    def terminate(self, reason: ExitReason) -> None:
        """Clean up, in the actor's thread, on a normal stop or after a crash."""

    def on_start(self) -> None:
        try:
            self.init()
        except Exception as exc:
            if self._link is not None:
                self._link.error, self._link.cause = repr(exc), exc
            self._report(ExitReason.START_FAILED)
            if not isinstance(exc, ChildStartFailed):
                raise  # unexpected: pykka logs it with its traceback, and stops the actor
            # Expected and logged by the child: stop as pykka would, without a traceback.
            pykka.ActorRegistry.unregister(self.actor_ref)
            self.actor_stopped.set()
        finally:
            if self._link is not None:
                self._link.started.set()

    def crash(self) -> None:
        """End this actor as a crash (its supervisor restarts it by its restart rules) for an
        expected failure it has logged itself, so no traceback is written. Call it from a
        message handler, then return."""
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()  # the actor's loop ends once the handler returns
        self.on_failure(None, None, None)

    def on_stop(self) -> None:
        try:
            self.terminate(ExitReason.NORMAL)
        finally:
            self._report(ExitReason.NORMAL)

    def on_failure(self, exception_type: type[BaseException] | None,
                   exception_value: BaseException | None,
                   traceback: TracebackType | None) -> None:
        try:
            self.terminate(ExitReason.CRASHED)
        finally:
            self._report(ExitReason.CRASHED)

    def _report(self, reason: ExitReason) -> None:
        """Tell the supervisor (never ask: it may be waiting on us); a dead one is no error."""
        if self._link is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                self._link.supervisor.tell(Exit(self._link.child_id, self.actor_urn, reason))
