"""The node in one process: delivery, retries, dead letters, supervision, live task edits.

Real worker processes, real SQLite, real threads; each test starts its own node in
its own data folder and always stops it.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from support import ALONE, ECHO, TEST_WORKERS, until

from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.errors import (
    CallTimeout,
    ConfigError,
    HandlerError,
    NoSubscriber,
    Overloaded,
    ProtocolError,
    UnknownTask,
    WorkerExited,
)
from yptask.node import Node


def sample_task(name: str, messages: list[str], tmp_path: Path, **fields) -> TaskDef:
    """A task served by tests/workers/sample.py, recording what it handles in tmp_path."""
    return TaskDef.from_dict({
        "name": name, "messages": messages, "worker_class": "sample:Sample",
        "env": {"PYTHONPATH": str(TEST_WORKERS)},
        "settings": {"record_path": str(tmp_path / f"{name}.jsonl")},
        "retry_backoff_s": 0.05, **fields})


def recorded(tmp_path: Path, task: str) -> list[dict]:
    path = tmp_path / f"{task}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
async def start_node(tmp_path):
    nodes: list[Node] = []

    async def start(tasks: list[TaskDef], **config) -> Node:
        settings = {"name": "n1", "data_dir": tmp_path / "data", **ALONE, **config}
        node = await Node.start(NodeConfig(**settings), tasks=tasks)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()


async def test_cast_call_and_status(start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.record", "*.echo", "*.fail"], tmp_path,
                                         nodes={"*": 2}),
                             sample_task("b", ["upai.#"], tmp_path)])
    # When messages are cast to a name both tasks subscribe to
    answers = [await node.cast("upai.record", {"n": i}) for i in range(20)]
    assert all(a["tasks"] == ["a", "b"] and not a["duplicate"] for a in answers)
    # Then each task handles each message exactly once
    for task in ("a", "b"):
        records = await until(lambda t=task: len(recorded(tmp_path, t)) == 20 and
                              recorded(tmp_path, t), what=f"task {task} handled 20")
        assert sorted(r["payload"]["n"] for r in records) == list(range(20))
        assert {r["id"] for r in records} == {a["id"] for a in answers}
    assert len({r["pid"] for r in recorded(tmp_path, "a")}) <= 2
    # And calls answer with the handler's result or its error
    assert await node.call("upai.echo", {"x": "é"}) == {"x": "é"}
    with pytest.raises(HandlerError) as caught:
        await node.call("upai.fail", {"reason": "no disk"})
    assert caught.value.error_class == "ValueError" and "no disk" in caught.value.detail
    with pytest.raises(NoSubscriber):
        await node.call("nobody.listens", {})
    status = await node.status()
    assert status["tasks"]["a"]["workers"] == {"n1": 2}
    assert status["tasks"]["a"]["handled"] >= 20
    assert status["tasks"]["a"]["handled_per_s"] > 0
    assert status["tasks"]["a"]["latency_ms"]["p50"] > 0
    # and the journal's size on disk, once measured, beside the cap that refuses casts
    journal = (await until(lambda: _journal_measured(node), what="the journal measured"))
    assert 0 < journal["bytes"] < journal["max_bytes"] == 4096 * 1024 * 1024
    series = (await node.metrics(10, 60))["series"]["a"]
    assert sum(point["handled_per_s"] for point in series) * 10 >= 20


async def test_a_handler_can_cast_and_call_through_its_node(start_node, tmp_path):
    node = await start_node([sample_task("relay", ["*.relay"], tmp_path),
                             sample_task("echo", ["*.echo", "*.record"], tmp_path)])
    answer = await node.call("upai.relay", {"to": "upai.echo", "payload": {"x": 1},
                                            "cast": "upai.record"})
    assert answer["answer"] == {"x": 1} and answer["cast"]["tasks"] == ["echo"]
    (record,) = await until(lambda: recorded(tmp_path, "echo"), what="the relayed cast")
    assert record["payload"] == {"from": "relay"}


async def test_a_call_its_caller_gave_up_on_still_ends_and_frees_its_worker(start_node,
                                                                           tmp_path):
    node = await start_node([sample_task("a", ["*.sleep", "*.echo"], tmp_path,
                                         nodes={"*": 1})])
    assert await node.call("upai.echo", "warm") == "warm"  # the one worker, idle
    # When a caller stops waiting before the handler returns
    with pytest.raises(CallTimeout):
        await node.call("upai.sleep", {"seconds": 0.5}, timeout_s=0.1)
    # Then the worker finishes that message (not killed), and the next call gets its own
    # answer from it, not the one the first caller left
    assert await node.call("upai.echo", "mine", timeout_s=10) == "mine"
    assert node.running.pools["a"].live_workers == 1
    status = (await node.status())["tasks"]["a"]
    assert status["workers"] == {"n1": 1} and status["in_flight"] == 0


@pytest.mark.parametrize(("name", "msg", "error"), [
    ("upai.crash", {}, WorkerExited),  # the worker dies during a call
    ("upai.sleep", {"seconds": 30}, CallTimeout),  # past the task's message timeout
    ("upai.garbage", {}, ProtocolError),  # its answer is no frame
])
async def test_a_call_that_loses_its_worker_fails_and_the_worker_is_replaced(
        start_node, tmp_path, name, msg, error):
    node = await start_node([sample_task("a", ["*.crash", "*.sleep", "*.garbage", "*.echo"],
                                         tmp_path, nodes={"*": 1}, message_timeout_s=1)])
    assert await node.call("upai.echo", 1) == 1
    with pytest.raises(error):
        await node.call(name, msg, timeout_s=20)
    # A fresh worker takes the next call
    assert await until(lambda: node.running.pools["a"].live_workers == 1, what="a new worker")
    assert await node.call("upai.echo", 2, timeout_s=20) == 2


async def test_a_repeated_id_is_delivered_once(start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.record"], tmp_path)])
    first = await node.cast("upai.record", {"n": 1}, id="order-42")
    second = await node.cast("upai.record", {"n": 2}, id="order-42")
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    await until(lambda: recorded(tmp_path, "a"), what="delivery")
    await node.cast("upai.record", {"n": 3})  # a later message, to know the first is done
    await until(lambda: len(recorded(tmp_path, "a")) == 2, what="second delivery")
    assert [r["payload"]["n"] for r in recorded(tmp_path, "a")] == [1, 3]


async def test_done_messages_are_forgotten_after_the_dedupe_window(start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.record"], tmp_path)], dedupe_window_s=0)
    first = await node.cast("upai.record", {"n": 1}, id="once")
    await until(lambda: recorded(tmp_path, "a"), what="delivery")
    await node.stop()
    # A restart prunes at once: with a window of 0 the id is free again
    again = await start_node([], dedupe_window_s=0)
    second = await again.cast("upai.record", {"n": 2}, id="once")
    assert (first["duplicate"], second["duplicate"]) == (False, False)


async def test_a_worker_dying_mid_message_causes_redelivery_with_the_next_attempt(start_node,
                                                                                 tmp_path):
    node = await start_node([sample_task("a", ["*.crash_first"], tmp_path)])
    cast = await node.cast("upai.crash_first", {"n": 1})
    (record,) = await until(lambda: recorded(tmp_path, "a"), what="redelivery")
    assert (record["id"], record["attempt"]) == (cast["id"], 2)
    # and the supervisor replaced the dead worker
    await until(lambda: node.running.pools["a"].free_workers == 1, what="a fresh worker")


async def test_a_message_queued_behind_a_crash_keeps_its_attempt(start_node, tmp_path):
    # Given one worker, a message that kills it, and messages right behind it
    node = await start_node([sample_task("a", ["*.crash_first", "*.record"], tmp_path)])
    crash = await node.cast("upai.crash_first", {"n": 0})
    behind = [await node.cast("upai.record", {"n": i}) for i in (1, 2)]
    # Then the crashing one is redelivered, and those behind it spend no attempt
    records = await until(lambda: len(recorded(tmp_path, "a")) == 3 and recorded(tmp_path, "a"),
                          what="all three")
    attempts = {r["id"]: r["attempt"] for r in records}
    assert attempts == {crash["id"]: 2, behind[0]["id"]: 1, behind[1]["id"]: 1}


async def test_slow_messages_are_shared_by_the_workers_not_queued_behind_one(start_node,
                                                                            tmp_path):
    # Given two workers, warmed up with quick messages (their pipelines deepen)
    node = await start_node([sample_task("a", ["*.record", "*.record_slowly"], tmp_path,
                                         nodes={"*": 2})])
    for i in range(200):
        await node.cast("upai.record", {"n": i})
    await until(lambda: len(recorded(tmp_path, "a")) == 200, what="the quick ones")
    # When slow messages arrive together
    for i in range(8):
        await node.cast("upai.record_slowly", {"n": i, "seconds": 0.3})
    slow = await until(lambda: (done := [r for r in recorded(tmp_path, "a")
                                         if "seconds" in r["payload"]]) and len(done) == 8
                       and done, what="the slow ones")
    # Then both workers take their share
    by_worker = Counter(r["pid"] for r in slow)
    assert len(by_worker) == 2 and min(by_worker.values()) >= 3, by_worker


async def test_big_messages_and_answers_do_not_jam_a_worker_pipe(start_node, tmp_path):
    # Given one worker and messages whose answers (echoes) are bigger than a pipe holds,
    # queued so that the node would write the next before reading the current answer
    node = await start_node([sample_task("a", ["*.echo"], tmp_path)])
    big = {"blob": "x" * 300_000}
    for _ in range(6):
        await node.cast("upai.echo", big)
    # Then every one is handled, none stuck behind a full pipe
    await until(lambda: node.running.pools["a"].handled == 6, timeout_s=20, what="six big echoes")


async def test_failing_messages_are_dead_lettered_with_their_error_and_can_be_replayed(
        start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.fail", "*.record"], tmp_path,
                                         max_attempts=2)])
    cast = await node.cast("upai.fail", {"reason": "bad input"})
    (letter,) = await until(node.dead_letters, what="a dead letter")
    # each failed attempt is listed too, newest first, with its traceback
    failures = await node.failures()
    assert [f["attempt"] for f in failures] == [2, 1]
    assert {f["id"] for f in failures} == {cast["id"]}
    assert failures[0]["error_class"] == "ValueError" and "Traceback" in failures[0]["traceback"]
    assert (await node.status())["tasks"]["a"]["failed_per_s"] > 0
    assert (letter["id"], letter["task"], letter["attempt"]) == (cast["id"], "a", 2)
    assert letter["error_class"] == "ValueError" and letter["error"] == "bad input"
    assert "handle_fail" in letter["traceback"]
    assert await node.replay(cast["id"]) == 1
    await until(lambda: node.running.pools["a"].failed == 4, what="two more failed attempts")
    assert len(await until(node.dead_letters, what="dead again")) == 1


async def test_a_hung_handler_is_killed_at_its_timeout_and_retried(start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.sleep"], tmp_path, message_timeout_s=0.5,
                                         max_attempts=2)])
    await node.cast("upai.sleep", {"seconds": 60})
    (letter,) = await until(node.dead_letters, what="timed-out message dead-lettered")
    assert letter["error_class"] == "CallTimeout"


async def test_a_message_for_a_task_running_nowhere_waits_until_it_runs(start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.record"], tmp_path, nodes={"*": 0})])
    await node.cast("upai.record", {"n": 1})
    assert (await node.status())["tasks"]["a"]["queued"] == 1
    definition = await node.task("a")
    await node.put_task({**definition, "nodes": {"n1": 1}})
    await until(lambda: recorded(tmp_path, "a"), what="the waiting message")


async def test_worker_count_follows_the_definition_live(start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.record"], tmp_path)])
    definition = await node.task("a")
    # (a put answers before its workers have started or stopped)
    await node.put_task({**definition, "nodes": {"*": 3}})
    await until(lambda: _task_status(node, "a", {"workers": {"n1": 3}, "state": "running"}),
                what="three workers")
    await node.put_task({**definition, "nodes": {"*": 1}})
    await until(lambda: _task_status(node, "a", {"workers": {"n1": 1}}), what="one worker")


async def test_idle_workers_are_reaped_and_spawned_again_on_demand(start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.record", "*.echo"], tmp_path,
                                         max_idle_s=0.3, nodes={"*": 2})])
    # Given workers idle past the task's max idle time: they are stopped
    await until(lambda: _task_status(node, "a", {"workers": {"n1": 0}, "state": "idle"}),
                what="workers reaped")
    # When a message arrives, a worker is started for it
    await node.cast("upai.record", {"n": 1})
    await until(lambda: recorded(tmp_path, "a"), what="delivery after spawn on demand")
    assert await node.call("upai.echo", "on demand") == "on demand"


async def _task_status(node: Node, task: str, expected: dict) -> bool:
    status = (await node.status())["tasks"][task]
    return all(status[key] == value for key, value in expected.items())


async def test_rolling_restart_interrupts_no_message_in_flight(start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.record_slowly", "*.echo"], tmp_path,
                                         nodes={"*": 2})])
    assert await node.call("upai.echo", 1) == 1
    # Given two slow messages in flight
    await node.cast("upai.record_slowly", {"seconds": 1.0, "n": 1})
    await node.cast("upai.record_slowly", {"seconds": 1.0, "n": 2})
    await until(lambda: node.running.pools["a"].in_flight == 2, what="two in flight")
    # When the task is restarted
    result = await node.restart("a")
    # Then both finished on their first attempt, and new workers serve
    assert result == {"task": "a", "generation": 1, "replaced": 2, "workers": 2}
    records = await until(lambda: len(recorded(tmp_path, "a")) == 2 and
                          recorded(tmp_path, "a"), what="both slow messages")
    assert [r["attempt"] for r in records] == [1, 1]
    assert await node.call("upai.echo", 2) == 2
    assert (await node.task("a"))["restart_generation"] == 1


async def test_a_task_whose_workers_cannot_start_backs_off_and_the_node_serves_on(
        start_node, tmp_path):
    broken = sample_task("broken", ["*.never"], tmp_path, settings={"fail_setup": True})
    node = await start_node([broken, sample_task("a", ["*.echo"], tmp_path)])
    await until(lambda: _state(node, "broken"), what="backoff")
    assert await node.call("upai.echo", "fine") == "fine"


async def test_restart_intensity_is_a_task_setting(start_node, tmp_path):
    # Given a task whose workers cannot start, allowed no restart at all
    broken = sample_task("broken", ["*.never"], tmp_path, settings={"fail_setup": True},
                         max_restarts=0, restart_period_s=60)
    assert broken.to_dict()["max_restarts"] == 0
    node = await start_node([broken])
    # Then its first failure puts it into backoff, with no restart spent before
    await until(lambda: _state(node, "broken"), what="backoff")
    assert node._tree._states["broken"][1].restarts == 0
    # And the default is the documented 5 restarts within 10 s
    default = sample_task("d", ["*.x"], tmp_path)
    assert (default.max_restarts, default.restart_period_s) == (5, 10.0)


async def _state(node: Node, task: str) -> bool:
    return (await node.status())["tasks"][task]["state"] == "backoff"


async def test_invalid_requests_get_clear_errors(start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.echo", "*.sleep"], tmp_path)])
    with pytest.raises(ConfigError, match="invalid message name"):
        await node.cast("bad name", {})
    with pytest.raises(ConfigError, match=r"msg\.x is nan"):
        await node.cast("upai.echo", {"x": float("nan")})
    with pytest.raises(ConfigError, match="over the node's limit"):
        await node.cast("upai.echo", "x" * 2_000_000)
    with pytest.raises(UnknownTask):
        await node.restart("nope")
    with pytest.raises(ConfigError, match="'max_attempts'"):
        await node.put_task({**(await node.task("a")), "max_attempts": 0})
    with pytest.raises(CallTimeout):
        await node.call("upai.sleep", {"seconds": 2}, timeout_s=0.05)


async def test_a_full_queue_refuses_casts_and_takes_them_again_once_drained(start_node,
                                                                          tmp_path):
    # Given a task that runs nowhere (its messages wait) and may queue three
    node = await start_node([sample_task("a", ["*.record"], tmp_path, max_queue=3,
                                         nodes={"*": 0})])
    accepted = [await node.cast("upai.record", {"n": i}) for i in range(3)]
    # Then the fourth is refused, saying why, and nothing of it is stored
    with pytest.raises(Overloaded, match="max_queue"):
        await node.cast("upai.record", {"n": 3})
    assert (await node.status())["tasks"]["a"]["queued"] == 3
    # When workers start and drain the queue, casts are taken again
    await node.put_task({**(await node.task("a")), "nodes": {"*": 1}})
    await until(lambda: len(recorded(tmp_path, "a")) == 3, what="the queue drained")
    await until(_accepts(node), what="casts accepted again")
    assert {r["id"] for r in recorded(tmp_path, "a")} >= {a["id"] for a in accepted}


def _accepts(node: Node):
    async def check() -> bool:
        try:
            await node.cast("upai.record", {"n": "again"})
        except Overloaded:
            return False
        return True
    return check


async def test_a_journal_over_its_size_limit_refuses_casts(start_node, tmp_path):
    # A new journal already takes more than 10 kB on disk
    node = await start_node([sample_task("a", ["*.record"], tmp_path)], max_journal_mb=0.01)
    accepts = _accepts(node)

    async def refused() -> bool:
        return not await accepts()

    await until(refused, timeout_s=10, what="a refusal, once the size is measured")
    with pytest.raises(Overloaded, match="max_journal_mb"):
        await node.cast("upai.record", {})


async def test_a_worker_that_dies_leaving_a_child_has_its_child_killed(start_node,
                                                                       tmp_path):
    node = await start_node([sample_task("a", ["*.orphan", "*.echo"], tmp_path,
                                         max_attempts=1)])
    pid_file = tmp_path / "child.pid"
    await node.cast("upai.orphan", {"pid_file": str(pid_file)})
    child = int(await until(lambda: pid_file.exists() and pid_file.read_text(),
                            what="the leaked child"))
    # Its whole process group is killed with it
    await until(lambda: not _running(child), what="the leaked child gone")
    assert await node.call("upai.echo", 1) == 1  # and a fresh worker serves


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie is dead, waiting for its new parent to reap it


async def test_a_worker_writing_garbage_on_its_pipe_is_killed_and_the_node_serves_on(
        start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.garbage", "*.echo"], tmp_path,
                                         max_attempts=2)])
    cast = await node.cast("upai.garbage", {})
    (letter,) = await until(node.dead_letters, what="the message dead after two attempts")
    assert (letter["id"], letter["attempt"]) == (cast["id"], 2)
    assert letter["error_class"] == "ProtocolError" and "broke the protocol" in letter["error"]
    assert await node.call("upai.echo", "fine") == "fine"


async def test_a_worker_flooding_its_output_fills_its_log_files_not_the_node(start_node,
                                                                          tmp_path):
    node = await start_node([sample_task("a", ["*.flood", "*.echo"], tmp_path)])
    assert await node.call("upai.flood", {"megabytes": 8}) == "flooded"
    # the output went to the task's log files (the node writes them, as it reads them)
    for stream in ("stdout", "stderr"):
        log = node.log_dir / f"a.{stream}.log"
        await until(lambda log=log: log.stat().st_size >= 8 * 1024 * 1024, what=f"{log}")
    assert await node.call("upai.echo", "fine") == "fine"


async def test_edits_survive_a_restart_and_the_seed_is_applied_once(start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.echo"], tmp_path)])
    await node.put_task(sample_task("b", ["*.b"], tmp_path).to_dict())
    await node.delete_task("a")
    await node.stop()
    again = await start_node([sample_task("a", ["*.echo"], tmp_path)])
    assert [t["name"] for t in await again.tasks()] == ["b"]


async def test_stopping_lets_workers_finish_and_leaves_no_process(start_node, tmp_path):
    node = await start_node([sample_task("a", ["*.record_slowly"], tmp_path)])
    await node.cast("upai.record_slowly", {"seconds": 0.5, "n": 1})
    await until(lambda: node.running.pools["a"].in_flight == 1, what="in flight")
    assert child_workers()
    await node.stop()
    assert [r["attempt"] for r in recorded(tmp_path, "a")] == [1]
    assert child_workers() == set()


def child_workers() -> set[int]:
    """PIDs of this process's live children that run the worker runner."""
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"yptask.tasks.runner" in cmdline:
            pids.add(int(entry.name))
    return pids


async def test_the_journal_pruner_survives_an_error_of_the_journal(tmp_path, caplog):
    # Given a node that has handled a message, so the journal has a done one to forget
    config = NodeConfig(name="pr", data_dir=tmp_path / "data", dedupe_window_s=0, **ALONE)
    node = await Node.start(config, tasks=[TaskDef.from_dict(ECHO)])
    try:
        await node.cast("upai.echo", {"n": 1})
        await until(lambda: node.running.pools["echo"].handled >= 1, what="handled")
    finally:
        await node.stop()
    # and a journal that refuses to forget it (a fault of the store, made with a trigger)
    with sqlite3.connect(tmp_path / "data" / "journal.db") as db:
        db.execute("CREATE TRIGGER refuse BEFORE DELETE ON messages "
                   "BEGIN SELECT RAISE(ABORT, 'the disk refuses'); END")
    # When the node starts again and its pruner meets the error
    node = await Node.start(config, tasks=[TaskDef.from_dict(ECHO)])
    try:
        await until(lambda: "pruning the journal failed" in caplog.text, what="the error logged")
        # Then the pruner is still running, and the node serves
        assert node._pruner is not None and not node._pruner.done()
        assert await node.call("upai.echo", 2) == 2
    finally:
        await node.stop()


async def test_an_update_whose_workers_cannot_start_is_stored_and_says_so(
        start_node, tmp_path):
    # Given a running task
    node = await start_node([sample_task("a", ["*.echo"], tmp_path)])
    assert await node.call("upai.echo", 1) == 1
    # When it is updated to a class that cannot be imported
    stored = await node.put_task({**(await node.task("a")),
                                  "worker_class": "no_such_module:Nothing"})
    # Then the update is stored, and status says its workers could not start, and why
    assert stored["worker_class"] == "no_such_module:Nothing"
    assert (await node.task("a"))["worker_class"] == "no_such_module:Nothing"
    status = await until(lambda: _failed_update(node, "a"), what="the update failed")
    assert "failed to start" in status["error"]
    # while the workers of the definition before it serve on (no capacity was dropped)
    assert await node.call("upai.echo", 2) == 2
    # And a good definition after it clears the state
    await node.put_task({**(await node.task("a")), "worker_class": "sample:Sample"})
    await until(lambda: _state_is(node, "a", "running"), what="running again")


async def _failed_update(node: Node, task: str) -> dict | None:
    status = (await node.status())["tasks"][task]
    return status if status["state"] == "update failed" else None


async def _state_is(node: Node, task: str, state: str) -> bool:
    return (await node.status())["tasks"][task]["state"] == state


async def test_a_full_journal_refuses_casts_with_a_clear_error_and_the_node_serves_on(
        start_node, tmp_path):
    # Given a node whose journal cannot grow (SQLite's page cap stands in for a full disk)
    node = await start_node([sample_task("a", ["*.never"], tmp_path, nodes={"*": 0})])
    await node._journal.run(lambda j: j._db.execute("PRAGMA max_page_count = 1"))
    # When casts keep coming
    refused = None
    for n in range(200):
        try:
            await node.cast("upai.never", {"n": n, "pad": "x" * 2000})
        except Overloaded as exc:
            refused = exc
            break
    # Then they are refused as overloaded, saying the journal is full, not as internal errors
    assert refused is not None and "full" in str(refused)
    # And once there is room again, the node takes casts again
    await node._journal.run(lambda j: j._db.execute("PRAGMA max_page_count = 1000000"))
    assert (await node.cast("upai.never", {"n": "again"}))["duplicate"] is False


async def _journal_measured(node: Node) -> dict | None:
    journal = (await node.status())["journal"]
    return journal if journal["bytes"] > 0 else None
