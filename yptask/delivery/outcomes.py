"""What becomes of a claimed delivery once its job has ended: ack, put back, retry or dead letter.

Runs in whichever thread ended the job (a worker actor's, or the loop); every write
goes to the journal thread without waiting. A handled delivery is acked; one its
worker never started is put back with no attempt spent; a failed one is recorded
(in the task's recent failures, with its trace) and either requeued after the
task's backoff or, its attempts spent or the message itself undeliverable,
dead-lettered. Each started attempt is kept in the journal's attempt history, written
with its ack or its failure.
"""

from __future__ import annotations

import logging
import time
from functools import partial

from yptask.config.tasks import TaskDef
from yptask.delivery.metrics import Failure, TaskMetrics
from yptask.delivery.schedule import retry_after_s
from yptask.errors import YPTaskError, describe
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Attempt, Delivery, Journal
from yptask.workers.job import Ending, Outcome

__all__ = ["settle"]

log = logging.getLogger(__name__)


def settle(journal: JournalThread, task: TaskDef, metrics: TaskMetrics, delivery: Delivery,
           outcome: Outcome, *, node: str = "") -> float | None:
    """Settle `delivery` by its `outcome` (on `node`); return when the task has work again
    because of it (at once: it was put back; later: its retry), or None."""
    message = delivery.message
    now = time.time()
    if outcome.ending is Ending.HANDLED:
        journal.ack_nowait(message.id, delivery.task, _attempt(delivery, outcome, node, now))
        return None
    if outcome.ending is Ending.UNSTARTED:  # no attempt spent: it is claimable again
        journal.run_nowait(partial(Journal.release, message_id=message.id, task=delivery.task))
        return now
    assert outcome.error is not None
    described = describe(outcome.error)
    record = _attempt(delivery, outcome, node, now, described)
    metrics.failed(Failure(message.id, delivery.task, message.name, delivery.attempt,
                           *described, now, message.trace_id, message.parent_id))
    permanent = outcome.ending is Ending.REFUSED  # the message itself cannot be delivered
    journal.run_nowait(partial(_fail, delivery=delivery, error=outcome.error,
                               described=described, task=task, now=now, permanent=permanent,
                               metrics=metrics, record=record))
    return None if permanent else now + retry_after_s(task, delivery.attempt)


def _fail(journal: Journal, delivery: Delivery, error: YPTaskError, *,
          described: tuple[str, str, str], task: TaskDef, now: float,
          metrics: TaskMetrics, permanent: bool = False, record: Attempt | None = None) -> bool:
    """Record a failed attempt, its error `described` (in the journal thread); return True
    if it was dead-lettered.

    A `permanent` failure (the message itself cannot be delivered) is dead-lettered at once.
    """
    error_class, detail, backtrace = described
    retry_after = retry_after_s(task, delivery.attempt)
    max_attempts = 0 if permanent else task.max_attempts
    dead = journal.fail(delivery.message.id, delivery.task, max_attempts=max_attempts,
                        retry_after_s=retry_after, error_class=error_class, error=detail,
                        traceback=backtrace, now=now, record=record)
    metrics.failure_settled(dead=dead)  # counted once written: a retry, or a dead letter
    log.log(logging.ERROR if dead else logging.WARNING, "message %s to task %s failed (attempt "
            "%d%s, trace %s): %s", delivery.message.id, delivery.task, delivery.attempt,
            ", dead-lettered" if dead else "", delivery.message.trace_id, error)
    return dead


def _attempt(delivery: Delivery, outcome: Outcome, node: str, now: float,
             described: tuple[str, str, str] | None = None) -> Attempt:
    """The attempt's entry in the history (yptask.store.messages): ended `now`."""
    took = outcome.duration_s
    error_class, error, backtrace = described or (None, None, None)
    return Attempt(delivery.message.id, delivery.task, delivery.attempt, node, outcome.worker,
                   now - (took or 0.0), took, outcome.ending.value, error_class, error,
                   backtrace)
