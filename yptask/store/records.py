"""What the journal hands out: `Envelope` (a message), `Delivery` (a message for one task,
with its attempt), `DeadLetter` (a delivery that ran out of attempts, or expired) and
`Attempt` (one settled run of a handler on a delivery, for its history).

Plain frozen dataclasses, shared by the journal (yptask.store.journal), the pools
and the forwarders; nothing here touches SQLite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Attempt", "DeadLetter", "Delivery", "Envelope"]


# Slotted, not frozen: one is made per message on the hot path, and a frozen dataclass's
# __init__ costs about three times as much (2.0 against 0.7 us with ten fields).
# Nothing changes one once it is made.
@dataclass(slots=True)
class Envelope:
    """A message as the journal keeps it."""

    id: str
    name: str
    payload: Any
    published_at: float
    priority: int = 0
    deadline: float | None = None
    trace_id: str | None = None
    parent_id: str | None = None  # the message whose handler cast this one
    not_before: float = 0.0  # deliver no sooner (a delayed cast); 0: at once
    # the payload as JSON, when the caller has it already (it is not encoded twice)
    payload_json: str | None = field(default=None, compare=False, repr=False)

    def payload_text(self) -> str:
        return json.dumps(self.payload) if self.payload_json is None else self.payload_json


@dataclass(slots=True)  # as Envelope
class Delivery:
    """One message handed to one task, and which attempt this is (1 = first)."""

    message: Envelope
    task: str
    attempt: int


@dataclass(frozen=True)
class DeadLetter:
    """A delivery that failed its task's max attempts, with its last error."""

    message: Envelope
    task: str
    attempt: int
    error_class: str
    error: str
    traceback: str
    died_at: float


@dataclass(slots=True)  # as Envelope: one is made per settled delivery
class Attempt:
    """One settled attempt of a delivery: where it ran, when, how long, how it ended."""

    message_id: str
    task: str
    attempt: int
    node: str
    worker: str | None  # the worker's pid, or a remote worker's id
    started_at: float
    duration_s: float | None
    outcome: str  # an Ending's value: handled, failed, refused, lost
    error_class: str | None = None
    error: str | None = None
    traceback: str | None = None

    def row(self) -> tuple[object, ...]:
        return (self.message_id, self.task, self.attempt, self.node, self.worker,
                self.started_at, self.duration_s, self.outcome, self.error_class, self.error,
                self.traceback)
