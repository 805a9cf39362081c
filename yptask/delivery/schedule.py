"""When a task's deliveries are due and until when they may be handed out.

`DueTimes` is the wake-up of one task's delivery loop: rather than looking every
IDLE_POLL_S for deliveries that came due (delayed casts, retries), the loop sleeps
until the earliest due time it knows, learnt from the publisher (a delayed cast),
from a failure (the retry's time) or from the journal (after a start, or once the
time it knew has passed). `effective_deadline` is a delivery's deadline: the
message's own, else its task's `message_ttl_s` after it was published.
"""

from __future__ import annotations

import logging
import math
import time
from functools import partial

from yptask.config.tasks import TaskDef
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Delivery, Envelope, Journal

__all__ = ["DUE_MARGIN_S", "DueTimes", "effective_deadline", "expire", "retry_after_s"]

log = logging.getLogger(__name__)

# Wake this much after a due time: the claim compares with the wall clock, and a loop
# timer may fire a little early.
DUE_MARGIN_S = 0.002


def effective_deadline(message: Envelope, task: TaskDef) -> float | None:
    """The message's deadline, else published_at + the task's message_ttl_s (when > 0)."""
    if message.deadline is not None:
        return message.deadline
    if task.message_ttl_s > 0:
        return message.published_at + task.message_ttl_s
    return None


def expire(journal: JournalThread, delivery: Delivery, deadline: float) -> None:
    """Dead-letter a claimed delivery whose deadline passed before a worker took it (in
    the journal's thread: any thread may call this)."""
    log.info("message %s to task %s expired before a worker took it (deadline %.3f)",
             delivery.message.id, delivery.task, deadline)
    journal.run_nowait(partial(Journal.expire_many, deliveries=[
        (delivery.message.id, delivery.task, deadline)]))


# The doubling of the retry backoff stops here (as Celery's retry_backoff_max does): an
# attempt deep into a large max_attempts must not wait years, nor overflow a float.
MAX_RETRY_BACKOFF_S = 600.0


def retry_after_s(task: TaskDef, attempt: int) -> float:
    """How long a failed `attempt` waits for the next: exponential backoff between attempts,
    1x, 2x, 4x ... the task's retry backoff, at most MAX_RETRY_BACKOFF_S (or the backoff
    itself, if it is longer)."""
    backoff = float(task.retry_backoff_s)
    doubled = backoff * 2.0 ** min(max(0, attempt - 1), 64)
    return min(doubled, max(backoff, MAX_RETRY_BACKOFF_S))


class DueTimes:
    """The earliest due time one task's loop knows of (used on the loop only)."""

    def __init__(self) -> None:
        self.next = math.inf
        self.unknown = True  # ask the journal before the next wait

    def at(self, due: float | None) -> bool:
        """Note a due time; True if it is earlier than the one known."""
        if due is None or due >= self.next:
            return False
        self.next = due
        return True

    async def wait_s(self, journal: JournalThread, task: str, longest_s: float) -> float:
        """How long `task`'s loop may sleep: until the next due time, at most `longest_s`.

        Once the known time has passed, the next is unknown: the journal is asked (once
        the loop has claimed what came due, i.e. at its next wait)."""
        wait_s = self._until(longest_s)
        if self.unknown and wait_s > 0:
            self.unknown = False
            try:
                self.at(await journal.run(partial(Journal.next_due, task=task)))
            except Exception:  # the loop's poll still finds it
                log.exception("task %s: asking the journal when the next delivery is due "
                              "failed", task)
            wait_s = self._until(longest_s)
        return wait_s

    def _until(self, longest_s: float) -> float:
        now = time.time()
        if self.next <= now:  # due: claim it first, then ask for the next one
            self.next, self.unknown = math.inf, True
            return 0.0
        return min(longest_s, self.next - now + DUE_MARGIN_S)
