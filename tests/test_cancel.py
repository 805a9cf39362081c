"""Cancelling a message: its waiting deliveries, on whichever node holds them, never run.

Tried where it can break: queued, delayed and retry-waiting deliveries in the
journal itself; a node whose task is paused (so the message waits) and then
resumed; a handler that watches `self.cancelled()` while it runs; every
transport (JSON-RPC, BERT-RPC, the CLI); and a cluster of three, the cancel
made on another node than the one holding the message, across a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support import NodeProcess, SeededNode, read_records, recording_task, wait_for

from yptask.store.journal import Envelope, Journal
from yptask.wire.bertrpc import Call, ErrorReply, Info, Reply, decode_packet, frame

pytestmark = pytest.mark.timeout(240)


# ---------------------------------------------------------------- the journal


def _envelope(mid: str, not_before: float = 0.0) -> Envelope:
    return Envelope(mid, "x.record", {"n": mid}, time.time(), not_before=not_before)


def test_the_journal_cancels_what_waits_and_never_delivers_that_id_again(tmp_path):
    journal = Journal(tmp_path / "j.db")
    journal.append([(_envelope("queued"), ["a", "b"]),
                    (_envelope("delayed", time.time() + 3600), ["a"]),
                    (_envelope("retry"), ["a"]), (_envelope("running"), ["a"]),
                    (_envelope("other"), ["a"])])
    claimed = {d.message.id for d in journal.claim("a", limit=10)}
    assert claimed == {"queued", "retry", "running", "other"}
    journal.release_many([("queued", "a"), ("other", "a")])
    journal.fail("retry", "a", max_attempts=5, retry_after_s=3600, error_class="E", error="e")
    journal.ack_many([], started=[("running", "a")])
    # queued (two tasks), delayed, waiting for a retry: cancelled; a started one: running
    assert journal.cancel("queued") == (["a", "b"], [])
    assert journal.cancel("delayed") == (["a"], [])
    assert journal.cancel("retry") == (["a"], [])
    assert journal.cancel("running") == ([], ["a"])
    assert journal.cancel("unknown") == ([], [])
    assert journal.cancelled("queued") and journal.cancelled("unknown")
    assert not journal.cancelled("other")
    assert journal.depth("a") == (1, 1) and journal.depth("b") == (0, 0)
    # the running one fails: dropped, neither retried nor dead
    assert journal.fail("running", "a", max_attempts=5, retry_after_s=0, error_class="E",
                        error="e") is False
    assert journal.depth("a") == (1, 0) and journal.dead_letters() == []
    # sticky: neither a cast nor a forward of a cancelled id makes a delivery
    assert journal.append([(_envelope("unknown"), ["a"])]) == [True]
    assert journal.accept_forwarded([_envelope("delayed"), _envelope("fresh")], "b") == 1
    assert [d.message.id for d in journal.claim("a", limit=10, now=time.time() + 7200)] \
        == ["other"]
    assert [d.message.id for d in journal.claim("b", limit=10)] == ["fresh"]
    journal.close()


def test_a_cancelled_message_left_running_by_a_stopped_node_is_not_delivered_again(tmp_path):
    journal = Journal(tmp_path / "j.db")
    journal.append([(_envelope("m"), ["a"])])
    assert [d.message.id for d in journal.claim("a")] == ["m"]
    journal.ack_many([], started=[("m", "a")])
    assert journal.cancel("m") == ([], ["a"])
    journal.close()
    reopened = Journal(tmp_path / "j.db")  # recover(): claimed ones come back, not this one
    assert reopened.depth("a") == (0, 0) and reopened.claim("a") == []
    assert reopened.cancelled("m")
    # the id is forgotten with the dedupe window
    reopened.prune(older_than_s=60, now=time.time() + 120)
    assert not reopened.cancelled("m")
    reopened.close()


# ---------------------------------------------------------------- one node


def _status(node: NodeProcess, task: str) -> dict[str, Any]:
    return dict(node.rpc("status")["tasks"][task])


def _recorded(records: Path) -> list[str]:
    return [r["id"] for r in read_records(records)]


def test_a_cancelled_message_waiting_in_a_paused_task_is_never_handled(tmp_path):
    records = tmp_path / "rec.jsonl"
    node = NodeProcess(tmp_path, recording_task("rec", "*.record", records))
    with node:
        # Given a paused task with a queued and a delayed message waiting
        node.rpc("tasks.pause", "rec")
        queued = node.cast("x.record", {"n": 1})["id"]
        answer = node.rpc("cast", name="x.record", msg={"n": 2}, delay_s=1.0)
        delayed = answer["id"]
        kept = node.cast("x.record", {"n": 3})["id"]
        wait_for(lambda: _status(node, "rec")["queued"] == 3, what="three messages queued")
        # When two are cancelled
        for mid in (queued, delayed):
            assert node.rpc("cancel", mid) == {"cancelled": {"p1": ["rec"]}, "running": {},
                                                "unreached": []}
        assert node.rpc("message.cancelled", queued) is True
        assert node.rpc("message.cancelled", kept) is False
        assert _status(node, "rec")["queued"] == 1
        # Then, resumed, the node handles the third and never the cancelled ones
        node.rpc("tasks.resume", "rec")
        wait_for(lambda: kept in _recorded(records), what="the kept message handled")
        wait_for(lambda: time.time() > answer["not_before"] + 0.2,
                 what="the delayed one's due time passed")
        marker = node.cast("x.record", {"n": 4})["id"]
        wait_for(lambda: marker in _recorded(records), what="a later message handled")
        assert _recorded(records) == [kept, marker]
        # and a cancel now finds nothing: empty maps, not an error
        assert node.rpc("cancel", queued) == {"cancelled": {}, "running": {}, "unreached": []}
        assert node.rpc("cancel", "never-cast")["cancelled"] == {}


def test_cancel_checks_its_id_and_is_for_admins_while_message_cancelled_is_not(tmp_path):
    node = NodeProcess(tmp_path, recording_task("rec", "*.record", tmp_path / "rec.jsonl"))
    with node:
        for bad in (None, 7, "", "x" * 129):
            for method in ("cancel", "message.cancelled"):
                error = node.answer(method, bad)["error"]
                assert error["code"] == -32602, error
                assert "'id'" in error["message"] and method in error["message"]
        anonymous = node.batch([("cancel", ["some-id"]), ("message.cancelled", ["some-id"])],
                               admin=False)
        by_id = {a["id"]: a for a in anonymous}
        assert "admin token" in by_id[0]["error"]["message"]
        assert by_id[1]["result"] is False


WATCH_TASK = '''
import json, time
from yptask.tasks.base import BaseTask

class Watch(BaseTask):
    def handle_watch(self, msg):
        self._note("started")
        end = time.monotonic() + 50
        while time.monotonic() < end and not self.cancelled():
            time.sleep(0.02)
        self._note("stopped", cancelled=self.cancelled())
        raise RuntimeError("stopped at a safe point")

    def _note(self, event, **more):
        with open(self.settings["record_path"], "a") as f:
            f.write(json.dumps({"id": self.message.id, "event": event,
                                "attempt": self.message.attempt, **more}) + "\\n")
'''


def _watch_node(tmp_path: Path) -> tuple[NodeProcess, Path]:
    """A node with one worker of the watch task, whose handler runs until cancelled."""
    (tmp_path / "watch.py").write_text(WATCH_TASK)
    records = tmp_path / "watch.jsonl"
    return NodeProcess(tmp_path, f"""
[[task]]
name = "watch"
worker_class = "watch:Watch"
messages = ["*.watch"]
env = {{ PYTHONPATH = "{tmp_path}" }}
settings = {{ record_path = "{records}" }}
max_attempts = 5
retry_backoff_s = 0.05
message_timeout_s = 100
"""), records


def _events(records: Path) -> list[tuple[str, str]]:
    return [(r["id"], r["event"]) for r in read_records(records)]


def test_a_running_handler_sees_its_message_cancelled_and_is_not_retried(tmp_path):
    node, records = _watch_node(tmp_path)
    with node:
        # Given a handler running on a message
        mid = node.cast("x.watch", {})["id"]
        wait_for(lambda: [r["event"] for r in read_records(records)] == ["started"],
                 what="the handler started")
        # When the message is cancelled, it is reported running, not stopped by force
        assert node.rpc("cancel", mid) == {"cancelled": {}, "running": {"p1": ["watch"]},
                                            "unreached": []}
        # Then the handler sees it and stops; its failure is not retried
        wait_for(lambda: len(read_records(records)) == 2, what="the handler stopped")
        assert read_records(records)[1] == {"id": mid, "event": "stopped", "attempt": 1,
                                            "cancelled": True}
        wait_for(lambda: _status(node, "watch")["failed"] == 1, what="the failure counted")
        wait_for(lambda: _status(node, "watch")["in_flight"] == 0, what="nothing in flight")
        state = _status(node, "watch")
        assert state["queued"] == 0
        assert node.rpc("dead.list") == []
        assert node.rpc("scheduled.list") == []  # no retry waits: nothing can run it again
        assert len(read_records(records)) == 2


def test_cancel_over_bert_rpc_needs_the_admin_token(tmp_path):
    node = NodeProcess(tmp_path, recording_task("rec", "*.record", tmp_path / "rec.jsonl"))
    with node:
        node.rpc("tasks.pause", "rec")
        mid = node.cast("x.record", {"n": 1})["id"]
        refused, answer = asyncio.run(_bert_cancel(node, mid))
        assert isinstance(refused, ErrorReply) and "admin token" in refused.detail
        assert (refused.type, refused.code, refused.error_class) == ("server", 115,
                                                                    "Unauthorized")
        assert isinstance(answer, Reply)
        assert answer.result == {"cancelled": {"p1": ["rec"]}, "running": {}, "unreached": []}
        assert _status(node, "rec")["queued"] == 0


async def _bert_cancel(node: NodeProcess, mid: str) -> tuple[Any, Any]:
    host, port = node.bert_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))

    async def ask(packet: Call) -> Any:
        writer.write(frame(packet))
        await writer.drain()
        header = await reader.readexactly(4)
        return decode_packet(await reader.readexactly(struct.unpack(">I", header)[0]))

    try:
        refused = await ask(Call("yptask", "cancel", [mid]))
        writer.write(frame(Info("auth", [node.admin_token])))  # never answered
        return refused, await ask(Call("yptask", "cancel", [mid]))
    finally:
        writer.close()
        await writer.wait_closed()


def test_yptask_cancel_from_the_command_line(tmp_path):
    node = NodeProcess(tmp_path, recording_task("rec", "*.record", tmp_path / "rec.jsonl"))
    with node:
        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("YPTASK_")}
            return subprocess.run(["yptask", *args, "--url", node.url, "--data-dir",
                                   str(node.data_dir)], capture_output=True, text=True,
                                  timeout=60, env=env, check=False)

        node.rpc("tasks.pause", "rec")
        first, second = (node.cast("x.record", {"n": n})["id"] for n in (1, 2))
        done = cli("cancel", first)
        assert done.returncode == 0, done.stderr
        assert "cancelled on p1: rec" in done.stdout
        as_json = cli("cancel", second, "--json")
        assert as_json.returncode == 0, as_json.stderr
        assert json.loads(as_json.stdout)["cancelled"] == {"p1": ["rec"]}
        again = cli("cancel", first)
        assert again.returncode != 0 and first in again.stderr
        assert _status(node, "rec")["queued"] == 0


# ---------------------------------------------------------------- a cluster


@pytest.mark.slow
def test_a_cancel_made_on_one_node_reaches_the_node_holding_the_message_and_sticks(tmp_path):
    records = tmp_path / "rec.jsonl"
    tasks = recording_task("rec", "*.record", records)
    first = SeededNode(tmp_path, "n1", tasks, None)
    with first:
        second = SeededNode(tmp_path, "n2", tasks, first.link)
        with second:
            third = SeededNode(tmp_path, "n3", tasks, first.link)
            with third:
                for node in (first, second, third):
                    wait_for(lambda node=node: len(node.rpc("nodes")) == 3,
                             what=f"node {node.name} linked to the others")
                # Given a message journaled on node 3 for a task whose workers are paused
                first.rpc("tasks.pause", "rec")
                wait_for(lambda: _status(third, "rec")["state"] == "paused",
                         what="the pause replicated to node 3")
                mid = third.cast("x.record", {"n": 1})["id"]
                wait_for(lambda: _status(third, "rec")["queued"] == 1, what="it waits on n3")
                # When it is cancelled on node 1, the answer names node 3
                answer = first.rpc("cancel", mid)
                assert answer == {"cancelled": {"n3": ["rec"]}, "running": {},
                                  "unreached": []}
                assert _status(third, "rec")["queued"] == 0
                # Then it sticks across a restart of node 3
                assert third.signal(signal.SIGTERM) == 0
                third.start()
                assert third.rpc("message.cancelled", mid) is True
                assert _status(third, "rec")["queued"] == 0
                wait_for(lambda: len(third.rpc("nodes")) == 3, what="node 3 back")
                # and, resumed, the task never handles it
                first.rpc("tasks.resume", "rec")
                marker = third.cast("x.record", {"n": 2})["id"]
                wait_for(lambda: marker in _recorded(records), what="a later message handled")
                assert mid not in _recorded(records)
                # a node that cannot be reached is named as such
                third.pause()
                try:
                    late = first.rpc("cancel", "late-id", timeout_s=90)
                finally:
                    third.pause(False)
                assert late["unreached"] == ["n3"]


def test_a_message_claimed_behind_a_busy_worker_is_dropped_before_it_is_handed_out(tmp_path):
    node, records = _watch_node(tmp_path)
    with node:
        # Given one worker busy with a message, and a second one claimed behind it
        busy = node.cast("x.watch", {})["id"]
        wait_for(lambda: _events(records) == [(busy, "started")], what="the first started")
        behind = node.cast("x.watch", {})["id"]
        wait_for(lambda: _status(node, "watch")["in_flight"] == 2, what="the second claimed")
        # When the second is cancelled, it counts as cancelled, not running
        assert node.rpc("cancel", behind) == {"cancelled": {"p1": ["watch"]}, "running": {},
                                               "unreached": []}
        # Then once the worker is free, the next message it takes is a later one
        node.rpc("cancel", busy)
        wait_for(lambda: (busy, "stopped") in _events(records), what="the first stopped")
        later = node.cast("x.watch", {})["id"]
        wait_for(lambda: (later, "started") in _events(records), what="a later one started")
        assert behind not in {mid for mid, _ in _events(records)}
        node.rpc("cancel", later)
        wait_for(lambda: _status(node, "watch")["in_flight"] == 0, what="nothing in flight")
        assert _status(node, "watch")["queued"] == 0
