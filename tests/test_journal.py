"""The journal on real SQLite files: delivery, retry, dead letters, dedupe, crash recovery."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from yptask.errors import ConfigError
from yptask.store.journal import Envelope, Journal


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.db")
    yield j
    j.close()


def envelope(mid: str, priority: int = 0, name: str = "upai.photos.upload") -> Envelope:
    return Envelope(mid, name, {"photo_id": mid, "tags": ["é"]}, 1000.0, priority)


def test_a_message_is_delivered_once_to_each_subscribed_task(journal):
    assert journal.append([(envelope("m1"), ["indexer", "antispam"])]) == [True]
    (first,) = journal.claim("indexer", limit=10)
    assert (first.message, first.task, first.attempt) == (envelope("m1"), "indexer", 1)
    assert journal.claim("indexer") == []  # in flight: not handed out twice
    assert [d.task for d in journal.claim("antispam")] == ["antispam"]
    assert journal.depth("indexer") == (0, 1)
    journal.ack("m1", "indexer")
    assert journal.depth("indexer") == (0, 0)


def test_higher_priority_first_then_oldest_first(journal):
    journal.append([(envelope("low"), ["t"]), (envelope("high", priority=5), ["t"]),
                    (envelope("low2"), ["t"])])
    assert [d.message.id for d in journal.claim("t", limit=3)] == ["high", "low", "low2"]


def test_a_repeated_id_is_not_delivered_twice(journal):
    assert journal.append([(envelope("dup"), ["t"]), (envelope("dup"), ["t"])]) == [True, False]
    journal.ack("dup", "t")
    assert journal.append([(envelope("dup"), ["t"])]) == [False]  # remembered after it is done
    assert journal.claim("t") == []
    assert journal.prune(older_than_s=0, now=10**12) == 1
    assert journal.append([(envelope("dup"), ["t"])]) == [True]  # forgotten after the window


def test_failures_retry_after_the_backoff_then_dead_letter_with_the_error(journal):
    journal.append([(envelope("m"), ["t"])])
    for attempt in (1, 2):
        (delivery,) = journal.claim("t", now=attempt * 100)
        assert delivery.attempt == attempt
        dead = journal.fail("m", "t", max_attempts=3, retry_after_s=10, error_class="KeyError",
                            error="'x'", now=attempt * 100)
        assert not dead
        assert journal.claim("t", now=attempt * 100 + 5) == []  # still backing off
    (third,) = journal.claim("t", now=1000)
    assert third.attempt == 3
    assert journal.fail("m", "t", max_attempts=3, retry_after_s=10, error_class="KeyError",
                        error="'x'", traceback="Traceback...", now=1000)
    (letter,) = journal.dead_letters()
    assert (letter.message.id, letter.task, letter.attempt) == ("m", "t", 3)
    assert (letter.error_class, letter.error, letter.traceback) == ("KeyError", "'x'",
                                                                     "Traceback...")
    assert journal.depth("t") == (0, 0)


def test_a_replayed_dead_letter_is_delivered_again_from_attempt_one(journal):
    journal.append([(envelope("m"), ["t"])])
    journal.claim("t")
    journal.fail("m", "t", max_attempts=1, retry_after_s=0, error_class="E", error="boom")
    assert journal.replay("m", "t")
    assert not journal.replay("m", "t")
    assert journal.dead_letters() == []
    (delivery,) = journal.claim("t")
    assert delivery.attempt == 1


def test_a_released_delivery_is_claimed_again_with_the_same_attempt(journal):
    journal.append([(envelope("m"), ["t"])])
    (first,) = journal.claim("t")
    journal.release("m", "t")
    (again,) = journal.claim("t")
    assert (first.attempt, again.attempt) == (1, 1)


def test_a_message_for_a_task_with_no_worker_waits(journal, tmp_path):
    journal.append([(envelope("waits"), ["nowhere"])])
    journal.close()
    reopened = Journal(tmp_path / "journal.db")
    assert [d.message.id for d in reopened.claim("nowhere")] == ["waits"]
    reopened.close()


def test_bad_fsync_level_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="fsync level"):
        Journal(tmp_path / "j.db", synchronous="sometimes")


WRITER = textwrap.dedent("""
    import sys
    from yptask.store.journal import Envelope, Journal
    j = Journal(sys.argv[1], synchronous="FULL")
    for i in range(10**6):
        j.append([(Envelope(f"m{i}", "a.b", {"i": i}, 0.0), ["t"])])
        if i == 3:
            j.claim("t", limit=2)  # two in flight when the process dies
        print(i, flush=True)  # printed only once committed
""")


def test_kill_9_loses_nothing_committed_and_requeues_what_was_in_flight(tmp_path):
    # Given a process appending and claiming as fast as it can
    path = tmp_path / "journal.db"
    # -P: the source checkout in the cwd must not shadow the installed package
    proc = subprocess.Popen([sys.executable, "-P", "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        acknowledged = [int(proc.stdout.readline()) for _ in range(50)]
    finally:
        # When it is killed without warning
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # Then every message it reported committed is there, and the in-flight ones are queued
    # again, with no attempt spent (no handler started on them)
    journal = Journal(path)
    try:
        delivered = {d.message.id: d.attempt for d in journal.claim("t", limit=10**6)}
        assert {f"m{i}" for i in acknowledged} <= set(delivered)
        assert delivered["m0"] == delivered["m1"] == delivered["m2"] == 1
    finally:
        journal.close()


def test_a_delivery_forwarded_after_it_was_cast_here_is_not_taken_again(tmp_path):
    journal = Journal(tmp_path / "j.db")
    message = Envelope("tick-1", "a.b", {}, 1.0)
    journal.append([(message, ["t"])])
    (delivery,) = journal.claim("t")
    journal.ack(delivery.message.id, "t")
    assert journal.accept_forwarded([message], "t") == 0  # handled here already
    assert journal.accept_forwarded([message], "other") == 1  # another task's is new
    assert journal.accept_forwarded([message], "other") == 0
    assert [d.task for d in journal.claim("t") + journal.claim("other")] == ["other"]
