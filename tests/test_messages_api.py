"""The message browser (`messages.list`, `messages.get`, `messages.bulk`) against a real node:
each state, the filters, paging, one message with its attempt history, and the bulk
changes (cancel, retry_now, replay, delete, priority) with their confirmation.

One node process for the module, with a task per situation (tests/workers/sample.py
handlers): `held` and `cancelme` and `order` are paused (what is cast waits queued),
`rec` retries at once, `slow` retries only after an hour, `dl` dead-letters at the first
failure. Each test tells its messages apart by a payload field (`run`) of its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import TEST_WORKERS, NodeProcess, read_records, wait_for

from yptask.delivery import messages as browser
from yptask.errors import ConfigError
from yptask.store import messages
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Attempt, Envelope, Journal

pytestmark = pytest.mark.timeout(300)


def _task(name: str, records: Path, extra: str = "") -> str:
    return f"""
[[task]]
name = "{name}"
worker_class = "sample:Sample"
messages = ["{name}.*"]
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
settings = {{ record_path = "{records}" }}
nodes = {{ "*" = 1 }}
{extra}
"""


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records") / "records.jsonl"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, records: Path) -> Iterator[NodeProcess]:
    tasks = "".join([
        _task("held", records), _task("cancelme", records),
        # a level with no tickets is claimed only when no other waits: p9 strictly first
        _task("order", records, "priority_tickets = [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]"),
        _task("rec", records, "retry_backoff_s = 0.1"),
        _task("slow", records, "retry_backoff_s = 3600"),
        _task("dl", records, "max_attempts = 1")])
    with NodeProcess(tmp_path_factory.mktemp("node"), tasks) as started:
        for task in ("held", "cancelme", "order"):
            started.rpc("tasks.pause", task)
        yield started


def _list(node: NodeProcess, **params: Any) -> dict[str, Any]:
    return dict(node.rpc("messages.list", **params))


def _items(node: NodeProcess, run: str, **params: Any) -> list[dict[str, Any]]:
    """The items of one test's messages (its `run` payload field), newest first."""
    where = {"run": run, **params.pop("where", {})}
    return list(_list(node, where=where, limit=1000, **params)["messages"])


def _state(node: NodeProcess, message_id: str) -> str | None:
    found = node.rpc("messages.get", message_id)["deliveries"]
    return found[0]["state"] if found else None


def _recorded(records: Path, message_id: str) -> list[dict[str, Any]]:
    return [r for r in read_records(records) if r["id"] == message_id]


# ------------------------------------------------------------------ list

def test_each_state_is_listed_with_its_messages(node, records):
    run = "states"
    # Given a message in each state
    queued = node.cast("held.record", {"run": run, "n": 1})["id"]
    delayed = node.cast("held.record", {"run": run, "n": 2}, delay_s=3600)["id"]
    retrying = node.cast("slow.fail_first", {"run": run})["id"]
    dead = node.cast("dl.fail", {"run": run})["id"]
    busy = node.cast("rec.record_slowly", {"run": run, "seconds": 3})["id"]
    wait_for(lambda: _state(node, busy) == "inflight", what="the slow one running")
    expired = node.cast("rec.record", {"run": run}, ttl_s=0.3)["id"]
    done = node.cast("rec.record", {"run": run, "n": 3})["id"]
    wait_for(lambda: _recorded(records, done), what="the last one handled")
    wait_for(lambda: _state(node, retrying) == "retrying", what="the failure retrying")
    wait_for(lambda: _state(node, dead) == "dead", what="the dead letter")
    # Then each state lists its own, and only those
    expected = {"queued": {queued}, "delayed": {delayed}, "retrying": {retrying},
                "dead": {dead, expired}, "expired": {expired}, "done": {busy, done},
                "inflight": set(), "cancelled": set()}
    for state, ids in expected.items():
        listed = _items(node, run, state=state)
        assert {item["id"] for item in listed} == ids, state
        if state != "dead":
            assert {item["state"] for item in listed} <= {state}
    # and each item says what it is
    item = next(i for i in _items(node, run) if i["id"] == delayed)
    assert (item["name"], item["task"], item["state"], item["node"]) == (
        "held.record", "held", "delayed", "p1")
    assert item["not_before"] > time.time() + 3000
    assert item["payload_preview"] == '{"run": "states", "n": 2}'
    assert item["trace_id"].startswith(delayed)
    assert {"published_at", "priority", "deadline", "attempt"} <= item.keys()
    assert next(i for i in _items(node, run) if i["id"] == expired)["state"] == "expired"


def test_the_filters_select_by_name_task_priority_time_and_payload_field(node):
    run = "filters"
    before = time.time()
    a = node.cast("held.alpha", {"run": run, "user": {"id": 7}, "flag": True})["id"]
    b = node.cast("held.beta", {"run": run, "user": {"id": 8}, "tag": "x"}, priority=5)["id"]
    middle = time.time()
    c = node.cast("held.beta", {"run": run, "user": {"id": 7, "name": "ann"},
                                "tag": None})["id"]
    after = time.time()

    def ids(**params: Any) -> list[str]:
        return [item["id"] for item in _items(node, run, **params)]

    assert ids() == [c, b, a]  # newest first
    assert ids(name="held.beta") == [c, b]
    assert ids(name="held.a*") == [a]
    assert ids(task="held") == [c, b, a] and ids(task="rec") == []
    assert ids(priority=5) == [b]
    assert ids(since=before, until=middle) == [b, a]
    assert ids(since=middle, until=after + 1) == [c]
    assert ids(where={"run": run, "user.id": 7}) == [c, a]
    assert ids(where={"run": run, "user.name": "ann"}) == [c]
    assert ids(where={"run": run, "flag": True}) == [a]
    assert ids(where={"run": run, "tag": None}) == [c]
    assert ids(where={"run": run, "user.id": "7"}) == []  # a string is no number


def test_pages_follow_each_other_newest_first_while_new_messages_arrive(node):
    run = "paging"
    cast = [node.cast("held.record", {"run": run, "n": n})["id"] for n in range(25)]
    first = _list(node, where={"run": run}, limit=10)
    assert first["total"] == 25
    # new messages cast between pages do not shift the pages that follow
    late = [node.cast("held.record", {"run": run, "n": 100 + n})["id"] for n in range(3)]
    second = _list(node, where={"run": run}, limit=10, cursor=first["next"])
    third = _list(node, where={"run": run}, limit=10, cursor=second["next"])
    assert third["next"] is None
    seen = [item["id"] for page in (first, second, third) for item in page["messages"]]
    assert seen == list(reversed(cast))
    assert third["total"] == 28
    assert [i["id"] for i in _list(node, where={"run": run}, limit=3)["messages"]] == \
        list(reversed(late))


# ------------------------------------------------------------------ get

def test_a_message_shows_its_attempts_after_a_failure_then_a_success(node, records):
    payload = {"run": "get", "text": "y" * 500}
    message_id = node.cast("rec.fail_first", payload)["id"]
    wait_for(lambda: _recorded(records, message_id), what="the second attempt handled")
    message = wait_for(lambda: (m := node.rpc("messages.get", message_id))["attempts"][1:]
                       and m, what="both attempts in the history")
    assert message["payload"] == payload  # whole, not a preview
    assert (message["id"], message["name"], message["node"]) == (message_id, "rec.fail_first",
                                                                  "p1")
    assert message["deliveries"] == [
        {"task": "rec", "state": "done", "priority": 0, "not_before": None, "attempt": 2}]
    failed, handled = message["attempts"]
    assert (failed["attempt"], failed["outcome"], failed["node"]) == (1, "failed", "p1")
    assert "the first attempt fails" in failed["error"]
    assert "RuntimeError" in failed["error_class"] + failed["traceback"]
    assert "handle_fail_first" in failed["traceback"]
    assert (handled["attempt"], handled["outcome"], handled["error"]) == (2, "handled", None)
    assert handled["worker"] == str(_recorded(records, message_id)[0]["pid"])
    assert handled["duration_s"] >= 0
    assert failed["started_at"] <= handled["started_at"] <= time.time()


def test_an_unknown_message_is_a_clear_error(node):
    with pytest.raises(ConfigError, match="no message 'nope' in the journal of node p1"):
        node.rpc("messages.get", "nope")


# ------------------------------------------------------------------ bulk

def test_a_bulk_cancel_by_filter_wants_the_count_then_cancels_them_all(node, records):
    run = "cancel"
    ids = node.cast_batch("cancelme.record", [{"run": run, "n": n} for n in range(50)])
    chosen = {"where": {"run": run}, "state": "queued"}
    # When the cancel is asked without the count, or with another, it is refused saying
    # how many it would touch, and nothing changes
    for confirm in (None, 49):
        with pytest.raises(ConfigError, match="'confirm_count' must be 50: cancel would touch"):
            node.rpc("messages.bulk", action="cancel", filter=chosen, confirm_count=confirm)
    assert _list(node, where={"run": run}, state="queued")["total"] == 50
    # When it is confirmed
    answer = node.rpc("messages.bulk", action="cancel", filter=chosen, confirm_count=50)
    assert answer == {"matched": 50, "done": 50, "skipped": []}
    # Then all 50 are cancelled, and are never handled once their task runs again
    assert {i["state"] for i in _items(node, run)} == {"cancelled"}
    assert _list(node, where={"run": run})["total"] == 50
    node.rpc("tasks.resume", "cancelme")
    sentinel = node.cast("cancelme.record", {"run": "cancel-after"})["id"]
    wait_for(lambda: _recorded(records, sentinel), what="a later message handled")
    assert not {r["id"] for r in read_records(records)} & set(ids)


def test_retry_now_runs_a_retrying_message_before_its_backoff(node, records):
    message_id = node.cast("slow.fail_first", {"run": "retry_now"})["id"]
    wait_for(lambda: _state(node, message_id) == "retrying", what="the first attempt failed")
    item = node.rpc("messages.get", message_id)["deliveries"][0]
    assert item["not_before"] > time.time() + 3000  # an hour's backoff
    answer = node.rpc("messages.bulk", action="retry_now", ids=[message_id])
    assert answer == {"matched": 1, "done": 1, "skipped": []}
    record = wait_for(lambda: _recorded(records, message_id), what="the retry run now")
    assert record[0]["attempt"] == 2
    wait_for(lambda: _state(node, message_id) == "done", what="it done")


def test_replay_brings_dead_letters_back_and_skips_what_is_not_dead(node, records, tmp_path):
    ok_file = tmp_path / "ok"
    dead = node.cast("dl.fail_unless", {"run": "replay", "ok_file": str(ok_file)})["id"]
    waiting = node.cast("held.record", {"run": "replay"})["id"]
    wait_for(lambda: _state(node, dead) == "dead", what="the dead letter")
    ok_file.write_text("ok")
    answer = node.rpc("messages.bulk", action="replay", ids=[dead, waiting, "unknown-id"])
    assert (answer["matched"], answer["done"]) == (2, 1)
    assert sorted((s["id"], s["why"].split(":")[0]) for s in answer["skipped"]) == [
        (waiting, "queued"), ("unknown-id", "no such message here")]
    wait_for(lambda: _recorded(records, dead), what="the replayed letter handled")
    # (its handler wrote the record before its ack committed)
    wait_for(lambda: _state(node, dead) == "done", what="the replayed letter acked")
    assert _state(node, waiting) == "queued"


def test_delete_removes_waiting_deliveries_and_dead_letters_for_good(node):
    run = "delete"
    waiting = node.cast("held.record", {"run": run})["id"]
    dead = node.cast("dl.fail", {"run": run})["id"]
    wait_for(lambda: _state(node, dead) == "dead", what="the dead letter")
    answer = node.rpc("messages.bulk", action="delete", ids=[waiting, dead])
    assert answer == {"matched": 2, "done": 2, "skipped": []}
    assert _items(node, run) == []
    assert node.rpc("messages.get", waiting)["deliveries"] == []
    assert dead not in {d["id"] for d in node.rpc("dead.list")}
    # and the task's queue holds just what is still listed waiting
    assert node.rpc("status")["tasks"]["held"]["queued"] == sum(
        _list(node, task="held", state=state)["total"] for state in ("queued", "delayed"))


def test_a_priority_change_decides_which_waiting_message_runs_first(node, records):
    run = "order"
    first, second, last = (node.cast("order.record", {"run": run, "n": n})["id"]
                           for n in range(3))
    answer = node.rpc("messages.bulk", action="priority", ids=[last], priority=9)
    assert answer["done"] == 1
    assert [(i["id"], i["priority"]) for i in _items(node, run)] == [
        (last, 9), (second, 0), (first, 0)]
    node.rpc("tasks.resume", "order")
    wait_for(lambda: all(_recorded(records, m) for m in (first, second, last)),
             what="all three handled")
    handled = [r["id"] for r in read_records(records) if r["id"] in {first, second, last}]
    assert handled == [last, first, second]


# ------------------------------------------------------------------ bad params

@pytest.mark.parametrize(("method", "params", "field"), [
    ("messages.list", {"state": "bogus"}, "state"),
    ("messages.list", {"where": {"a..b": 1}}, "where"),
    ("messages.list", {"where": {"a": [1]}}, "where"),
    ("messages.list", {"where": "user.id=1"}, "where"),
    ("messages.list", {"limit": 0}, "limit"),
    ("messages.list", {"limit": 1001}, "limit"),
    ("messages.list", {"cursor": "not-a-cursor"}, "cursor"),
    ("messages.list", {"priority": 10}, "priority"),
    ("messages.list", {"since": "yesterday"}, "since"),
    ("messages.list", {"task": 5}, "task"),
    ("messages.get", {"id": 5}, "id"),
    ("messages.bulk", {"action": "nuke", "ids": ["a"]}, "action"),
    ("messages.bulk", {"action": "priority", "ids": ["a"]}, "priority"),
    ("messages.bulk", {"action": "priority", "ids": ["a"], "priority": 12}, "priority"),
    ("messages.bulk", {"action": "cancel"}, "ids"),
    ("messages.bulk", {"action": "cancel", "ids": ["a"], "filter": {}}, "ids"),
    ("messages.bulk", {"action": "cancel", "ids": []}, "ids"),
    ("messages.bulk", {"action": "cancel", "filter": {"state": "x"}}, "filter.state"),
    ("messages.bulk", {"action": "cancel", "filter": {"limit": 5}}, "filter"),
])
def test_bad_params_are_refused_naming_the_field(node, method, params, field):
    with pytest.raises(ConfigError, match=f"invalid params for {method}: '{field}' must be"):
        node.rpc(method, **params)
    assert node.rpc("status")["node"] == "p1"  # and the node serves on


# ------------------------------------------------------------------ bounds, without a node

def _journal_with_acks(path: Path, count: int) -> Journal:
    journal = Journal(path)
    journal.append([(Envelope(f"m{n}", "x.record", {"n": n}, float(n)), ["t"])
                    for n in range(count)])
    claimed = journal.claim("t", count)
    journal.ack_many([(d.message.id, "t") for d in claimed], attempts=[
        Attempt(d.message.id, "t", 1, "n1", "1", 0.0, 0.1, "handled") for d in claimed])
    return journal


def test_the_attempt_history_keeps_the_newest_and_forgets_pruned_messages(tmp_path):
    journal = _journal_with_acks(tmp_path / "j.db", 5)
    try:
        journal.read(lambda db: messages.prune_attempts(db, keep=3))
        kept = journal.read(lambda db: db.execute(
            "SELECT message_id FROM attempts ORDER BY seq").fetchall())
        assert [row[0] for row in kept] == ["m2", "m3", "m4"]
        # a message the journal forgets (past the dedupe window) takes its history along
        journal.prune(older_than_s=0, now=time.time() + 1)
        assert journal.read(lambda db: db.execute("SELECT COUNT(*) FROM attempts")
                            .fetchone()[0]) == 0
    finally:
        journal.close()


async def test_the_total_is_counted_up_to_a_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(browser, "MAX_TOTAL", 3)
    thread = JournalThread(_journal_with_acks(tmp_path / "j.db", 5))
    try:
        room = browser.Messages("n1", thread, lambda *_: None, None)  # type: ignore[arg-type]
        page = await room.list_page({"state": "done", "limit": 2})
        assert page["total"] == "3+"
        assert [(i["id"], i["attempt"]) for i in page["messages"]] == [("m4", 1), ("m3", 1)]
        assert (await room.list_page({"where": {"n": 1}}))["total"] == 1
    finally:
        thread.close()


async def test_a_bulk_change_touches_at_most_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(browser, "MAX_BULK", 3)
    thread = JournalThread(_journal_with_acks(tmp_path / "j.db", 5))
    try:
        room = browser.Messages("n1", thread, lambda *_: None, None)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="'filter' must be a filter that matches at most 3"):
            await room.bulk({"action": "delete", "filter": {"state": "done"},
                             "confirm_count": 5})
        # by ids, what the action does not take is skipped, each with why
        answer = await room.bulk({"action": "delete", "ids": ["m1", "m2"]})
        assert (answer["matched"], answer["done"]) == (2, 0)
        assert {s["why"].split(":")[0] for s in answer["skipped"]} == {"done"}
    finally:
        thread.close()
