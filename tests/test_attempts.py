"""Attempts are spent by handlers only, and journal writes that fail are retried.

A node that stops (SIGTERM) or dies (kill -9) with deliveries claimed but not
started must deliver them again without counting an attempt; a failing message
is dead-lettered only after its handler really ran `max_attempts` times. And a
settlement (ack, failure, release) that the journal refuses, say on a full disk,
is written later, once the disk has room again, instead of leaving the delivery
in flight until a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import sqlite3
import struct
import subprocess
import tempfile
import termios
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from support import SAMPLE, NodeProcess, read_records, until, wait_for

from yptask.store.group_commit import JournalThread
from yptask.store.journal import Envelope, Journal

MAX_ATTEMPTS = 2
FAILING = 3

# The test's own task class: it records every run of a handler (so runs can be counted),
# and its slow handler holds the only worker until the test creates the release file.
WORKER = textwrap.dedent('''
    import json, os, time
    from yptask.tasks.base import BaseTask

    class Attempts(BaseTask):
        def _record(self, msg):
            line = {"id": self.message.id, "attempt": self.message.attempt,
                    "name": self.message.name, "pid": os.getpid()}
            with open(self.settings["record_path"], "a") as f:
                f.write(json.dumps(line) + "\\n")

        def handle_slow(self, msg):
            self._record(msg)
            deadline = time.monotonic() + 60
            while not os.path.exists(msg["release"]) and time.monotonic() < deadline:
                time.sleep(0.02)
            return "released"

        def handle_fail(self, msg):
            self._record(msg)
            raise ValueError("told to fail")
''')

TASKS = """
[[task]]
name = "attempts"
worker_class = "attempts_worker:Attempts"
messages = ["attempts.*"]
env = {{ PYTHONPATH = "{workers}" }}
settings = {{ record_path = "{record}" }}
max_attempts = {max_attempts}
retry_backoff_s = 0
max_idle_s = 0
"""


class Scenario:
    """One node with one worker of the `attempts` task, and what its handlers recorded."""

    def __init__(self, tmp: Path) -> None:
        (tmp / "attempts_worker.py").write_text(WORKER)
        self.record = tmp / "record.jsonl"
        self.release = tmp / "release"
        self.node = NodeProcess(tmp, TASKS.format(workers=tmp, record=self.record,
                                                   max_attempts=MAX_ATTEMPTS))
        self.log = tmp / "node.log"

    def runs(self) -> list[dict[str, Any]]:
        return read_records(self.record)

    def task_status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.node.rpc("status")["tasks"]["attempts"]
        return status

    def worker_pids(self) -> set[int]:
        return {run["pid"] for run in self.runs()}


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[Scenario]:
    running = Scenario(tmp_path)
    try:
        yield running
    finally:
        running.release.touch()  # a worker the node left behind ends its slow handler
        running.node.stop()
        for pid in running.worker_pids():  # workers of a killed node: ours, by pid
            with contextlib.suppress(OSError):
                if "attempts_worker" in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGKILL)


def busy_worker_with_failing_messages_claimed(s: Scenario) -> tuple[str, list[str]]:
    """Given one slow message running and FAILING messages claimed behind it."""
    s.node.start()
    slow = s.node.rpc("cast", "attempts.slow", {"release": str(s.release)})["id"]
    wait_for(lambda: any(r["id"] == slow for r in s.runs()), what="the slow handler to start")
    failing = [s.node.rpc("cast", "attempts.fail", {"n": n})["id"] for n in range(FAILING)]
    # claimed by the node (into its backlog or the worker's pipe), none started
    wait_for(lambda: s.task_status()["queued"] == 0 and s.task_status()["in_flight"] == 1
             + FAILING, what="the failing messages to be claimed")
    assert [r["id"] for r in s.runs()] == [slow]
    return slow, failing


def all_dead_lettered(s: Scenario, failing: list[str]) -> list[dict[str, Any]]:
    def dead() -> list[dict[str, Any]] | None:
        letters: list[dict[str, Any]] = s.node.rpc("dead.list")
        return letters if {d["id"] for d in letters} >= set(failing) else None
    return wait_for(dead, what="the failing messages to be dead-lettered")


def check_attempts(s: Scenario, failing: list[str], letters: list[dict[str, Any]]) -> None:
    """Each failing message ran MAX_ATTEMPTS times, numbered 1, 2, ...; its dead letter
    says the last; and no message was dead-lettered before MAX_ATTEMPTS real runs."""
    runs = Counter(r["id"] for r in s.runs())
    attempts = {mid: [r["attempt"] for r in s.runs() if r["id"] == mid] for mid in failing}
    assert attempts == {mid: list(range(1, MAX_ATTEMPTS + 1)) for mid in failing}
    assert {d["id"]: d["attempt"] for d in letters} == dict.fromkeys(failing, MAX_ATTEMPTS)
    for letter in letters:  # the property: a dead letter cost its handler max_attempts runs
        assert runs[letter["id"]] >= MAX_ATTEMPTS, letter


def test_a_stop_spends_no_attempt_of_the_messages_claimed_behind_a_running_one(
        scenario: Scenario) -> None:
    s = scenario
    slow, failing = busy_worker_with_failing_messages_claimed(s)
    # When the node is stopped, and the slow message then finishes
    assert s.node.proc is not None
    s.node.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "no new claims" in s.log.read_text(), what="the node to stop claiming")
    s.release.touch()
    assert s.node.proc.wait(timeout=60) == 0
    assert [r["id"] for r in s.runs()] == [slow]  # nothing else started
    # And it starts again
    s.node.start()
    # Then each failing message runs MAX_ATTEMPTS times before it is dead-lettered
    check_attempts(s, failing, all_dead_lettered(s, failing))
    assert [r["attempt"] for r in s.runs() if r["id"] == slow] == [1]  # it was acked


def test_a_crash_spends_no_attempt_of_the_messages_claimed_behind_a_running_one(
        scenario: Scenario) -> None:
    s = scenario
    slow, failing = busy_worker_with_failing_messages_claimed(s)
    # When the node is killed without warning
    assert s.node.signal(signal.SIGKILL) == -signal.SIGKILL
    s.release.touch()
    # And it starts again
    s.node.start()
    # Then each failing message runs MAX_ATTEMPTS times before it is dead-lettered
    check_attempts(s, failing, all_dead_lettered(s, failing))
    # And the slow message, which was running, runs again as its next attempt
    wait_for(lambda: len([r for r in s.runs() if r["id"] == slow]) == 2,
             what="the slow message to run again")
    assert [r["attempt"] for r in s.runs() if r["id"] == slow] == [1, 2]


def unread_input_of(pid: int) -> int:
    """Bytes waiting in a worker's protocol input (fd 3) that it has not read, looked at
    through a reader of our own on the same pipe (which reads nothing)."""
    fd = os.open(f"/proc/{pid}/fd/3", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0])
    finally:
        os.close(fd)


def test_a_worker_killed_before_it_read_its_message_spends_no_attempt_of_it(
        scenario: Scenario) -> None:
    s = scenario
    # Given the task's only worker, idle and then stopped (it can read nothing)
    s.node.start()
    s.release.touch()
    first = s.node.rpc("cast", "attempts.slow", {"release": str(s.release)})["id"]
    wait_for(lambda: s.task_status()["handled"] == 1, what="the first message handled")
    (pid,) = s.worker_pids()
    os.kill(pid, signal.SIGSTOP)
    # And a failing message written into its pipe, unread
    failing = s.node.rpc("cast", "attempts.fail", {"n": 0})["id"]
    wait_for(lambda: unread_input_of(pid) > 0, what="the message in the worker's pipe")
    # When the worker is killed before it could read it
    os.kill(pid, signal.SIGKILL)
    # Then the message still runs MAX_ATTEMPTS times, from its first, before its dead letter
    check_attempts(s, [failing], all_dead_lettered(s, [failing]))
    assert [r["id"] for r in s.runs()].count(first) == 1


# ---------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 2 MB tmpfs of our own, unmounted at the end."""
    folder = Path(tempfile.mkdtemp(prefix="yptask-full-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs to fill up ({mounted.stderr.strip()}): "
                    "this test needs root and the mount capability")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


def fill(folder: Path) -> Path:
    """Fill the file system of `folder` to the last byte; return the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    return filler


def deliveries_left(path: Path) -> int:
    """Deliveries left in the journal at `path`, read over a connection of our own."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0])


async def test_acks_refused_by_a_full_disk_are_written_once_it_has_room(
        small_disk: Path) -> None:
    # Given deliveries claimed from a journal on a small disk, its write-ahead log emptied
    path = small_disk / "journal.db"
    thread = JournalThread(Journal(path))
    try:
        messages = [(Envelope(f"m{i}", "a.b", {"i": i}, time.time()), ["t"]) for i in range(20)]
        await thread.append_many(messages)
        claimed = await thread.run(partial(Journal.claim, task="t", limit=20))
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        filler = fill(small_disk)
        # When their acks, a failure and a release come while the disk is full
        for delivery in claimed[:18]:
            thread.ack_nowait(delivery.message.id, delivery.task)
        thread.run_nowait(partial(Journal.fail, message_id="m18", task="t", max_attempts=1,
                                  retry_after_s=0, error_class="E", error="boom"))
        thread.run_nowait(partial(Journal.release_many, deliveries=[("m19", "t")]))
        with pytest.raises(sqlite3.OperationalError, match="full"):  # the disk is full
            await thread.run(partial(Journal.release_many, deliveries=[("m19", "t")]))
        assert deliveries_left(path) == 20
        # And the disk then has room again
        filler.unlink()
        # Then they are written, without anyone asking again
        await until(lambda: deliveries_left(path) == 1, what="the refused writes to go through")
        letters = await thread.run(lambda j: j.dead_letters())
        assert [d.message.id for d in letters] == ["m18"]
        assert [d.message.id for d in await thread.run(partial(Journal.claim, task="t"))] == [
            "m19"]
    finally:
        await asyncio.to_thread(thread.close)


async def test_a_journal_that_stays_full_does_not_hold_up_its_close(small_disk: Path) -> None:
    # Given an ack the full disk refuses
    path = small_disk / "journal.db"
    thread = JournalThread(Journal(path))
    await thread.append_many([(Envelope("m", "a.b", {}, time.time()), ["t"])])
    await thread.run(partial(Journal.claim, task="t"))
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    fill(small_disk)
    thread.ack_nowait("m", "t")
    # When the journal is closed while the disk is still full
    closed = await asyncio.to_thread(thread.close, 10.0)
    # Then it closes, and the delivery is still there to be delivered after a restart
    assert closed
    (small_disk / "filler").unlink()
    assert deliveries_left(path) == 1


def test_a_delivery_claimed_but_never_started_keeps_its_attempts_after_a_crash(
        tmp_path: Path) -> None:
    # Given one delivery started and one only claimed, and the journal not closed (a crash)
    path = tmp_path / "journal.db"
    journal = Journal(path)
    journal.append([(Envelope(m, "a.b", {}, 0.0), ["t"]) for m in ("started", "claimed")])
    journal.claim("t", limit=2)
    journal.ack_many([], started=[("started", "t")])
    # When it is opened again
    reopened = Journal(path)
    try:
        # Then the started one comes back as its next attempt, the other as its first
        attempts = {d.message.id: d.attempt for d in reopened.claim("t", limit=2)}
        assert attempts == {"started": 2, "claimed": 1}
    finally:
        reopened.close()
        journal.close()


async def test_a_deleted_task_puts_back_what_it_had_claimed(node: Any, tmp_path: Path) -> None:
    # Given the sample task's only worker busy, and messages claimed behind it
    sample = {**SAMPLE, "nodes": {"*": 1}, "settings": {"record_path": str(tmp_path / "r")}}
    await node.put_task(sample)
    await node.cast("sample.sleep", {"seconds": 2})
    for n in range(3):
        await node.cast("sample.record", {"n": n})

    async def depth() -> tuple[int, int]:  # from the journal: status lists no deleted task
        found: tuple[int, int] = await node._journal.run(partial(Journal.depth, task="sample"))
        return found
    await until(lambda: _is(depth(), (0, 4)), what="the messages to be claimed")
    # When the task is deleted
    await node.delete_task("sample")
    # Then what it had claimed and not started waits in the journal again, ready for the
    # task's next definition (the running message is acked when it finishes)
    await until(lambda: _is(depth(), (3, 0)), what="the claimed messages to be put back")


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
