"""Series kept in the node's history file, deploy markers, and the timer ledger.

Real nodes throughout: in this process for one node (stopped and started again
on the same data dir for a restart), subprocesses for the three-node ledger.
The one exception is the tick in doubt after a failover, which a real cluster
cannot be made to hit (see test_timer_lease.FakePeer): that test drives the
leader with an in-memory peer, and a real history file.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support import ALONE, ECHO, TEST_WORKERS, SeededNode, read_records, recording_task, until
from support import wait_for as wait_for_sync
from test_timer_lease import FakePeer

from yptask.client import Client
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.errors import ConfigError, InvalidParams, UnknownTimer
from yptask.node import Node
from yptask.store.config_map import TIMER_KEY, TIMER_STATE_KEY, ConfigMap
from yptask.store.history import History
from yptask.store.replicated import HybridClock, ReplicatedStore
from yptask.timers.leader import TimerRunner
from yptask.timers.ledger import TimerLedger
from yptask.timers.schedule import TimerDef, fire_id

pytestmark = pytest.mark.timeout(240)

REC = {"name": "rec", "messages": ["tick.*"], "worker_class": "sample:Sample",
       "env": {"PYTHONPATH": str(TEST_WORKERS)}}


async def start(tmp_path: Path) -> Node:
    rec = {**REC, "settings": {"record_path": str(tmp_path / "rec.jsonl")}}
    return await Node.start(NodeConfig(name="solo", data_dir=tmp_path / "data", **ALONE),
                            tasks=[TaskDef.from_dict(ECHO), TaskDef.from_dict(rec)])


@pytest.fixture
async def nodes(tmp_path):
    """Start the node "solo" (`await nodes.start()`, again after a stop); all stopped at
    the end."""
    class Nodes:
        current: Node | None = None

        async def start(self) -> Node:
            self.current = await start(tmp_path)
            return self.current

        async def stop(self) -> None:
            if self.current is not None:
                await self.current.stop()
                self.current = None

    held = Nodes()
    try:
        yield held
    finally:
        await held.stop()


def records(tmp_path: Path, prefix: str) -> list[dict[str, Any]]:
    return [r for r in read_records(tmp_path / "rec.jsonl") if r["id"].startswith(prefix)]


# ---------------------------------------------------------------------- series


def handled(points: list[dict[str, Any]], step: int) -> float:
    return sum(p["handled_per_s"] for p in points) * step


async def test_series_answer_every_span_at_its_step_and_survive_a_restart(nodes):
    # Given a node that handled 20 calls
    node = await nodes.start()
    for i in range(20):
        await node.call("upai.echo", {"i": i})
    # Then the ten-minute view counts them at once, every point with its time
    short = (await node.metrics(None, 600))["series"]
    assert len(short["echo"]) == 60 and handled(short["echo"], 10) >= 20
    now = time.time()
    assert all(isinstance(p["t"], int) for p in short["echo"])
    assert now - 610 <= short["echo"][0]["t"] and short["echo"][-1]["t"] <= now
    # When it restarts
    await nodes.stop()
    node = await nodes.start()
    # Then the hour and the day still count them (the new process handled nothing),
    # at a minute and at ten minutes a point
    for span, step, count in ((600, 10, 60), (3600, 60, 60), (86400, 600, 144)):
        points = (await node.metrics(None, span))["series"]["echo"]
        assert len(points) == count, span
        assert {b["t"] - a["t"] for a, b in itertools.pairwise(points)} == {step}
        assert all(p["t"] % step == 0 for p in points)
        assert handled(points, step) >= 20, (span, points)
        sampled = [p for p in points if p["queued"] is not None]
        assert sampled and all(p["in_flight"] == 0 and p["queued"] == 0 for p in sampled)
        assert any(p["p50_ms"] for p in points) and any(p["p99_ms"] for p in points)
    # And each start of the node is marked
    events = (await node.metrics(None, 3600))["events"]
    assert [e["kind"] for e in events] == ["node_start", "node_start"]


async def test_events_mark_restarts_changes_and_pauses(nodes):
    node = await nodes.start()
    await node.restart("echo")
    await node.pause("echo")
    await node.resume("echo")
    await node.put_task({**ECHO, "max_queue": 77})

    async def marked() -> list[dict[str, Any]] | None:
        events = (await node.metrics(None, 600))["events"]
        return events if len(events) >= 5 else None

    events = await until(marked, what="five markers")
    assert [(e["kind"], e.get("task")) for e in events] == [
        ("node_start", None), ("restart", "echo"), ("pause", "echo"), ("resume", "echo"),
        ("put", "echo")]
    assert events[1]["generation"] == 1 and all(isinstance(e["t"], float) for e in events)
    assert events[0]["t"] <= events[1]["t"] <= events[4]["t"] <= time.time()


async def test_a_step_the_store_cannot_answer_is_refused(nodes):
    node = await nodes.start()
    for step, span in ((15, 600), (600, 60), (10, 86400)):
        with pytest.raises(InvalidParams, match="step"):
            await node.metrics(step, span)
    assert len((await node.metrics(60, 600))["series"]["echo"]) == 10


async def test_an_unreadable_history_file_is_put_aside_and_the_node_starts(nodes, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "history.db").write_bytes(b"this is not a SQLite file" * 100)
    node = await nodes.start()
    await node.call("upai.echo", {})
    assert handled((await node.metrics(None, 600))["series"]["echo"], 10) >= 1
    assert [p.name.split(".broken-")[0] for p in data.glob("history.db.broken-*")] == [
        "history.db"]


# ---------------------------------------------------------------------- the ledger


EVERY_SECOND = {"name": "beat", "cron": "* * * * * *", "message": "tick.record",
                "timezone": "Europe/Berlin", "misfire": "fire_all"}


async def ledger_with(node: Node, outcome: str, count: int = 1, **fields: Any
                      ) -> dict[str, Any] | None:
    ledger = await node.timer_ledger("beat", 1000, None)
    found = [e for e in ledger["entries"] if e["outcome"] == outcome
             and all(e.get(k) == v for k, v in fields.items())]
    return ledger if len(found) >= count else None


async def test_the_ledger_shows_fired_ticks_with_node_epoch_and_local_time(nodes, tmp_path):
    node = await nodes.start()
    await node.put_timer(EVERY_SECOND)
    ledger = await until(lambda: ledger_with(node, "fired", 3), what="three fired ticks")
    assert ledger["timezone"] == "Europe/Berlin" and ledger["unreached"] == []
    fired = [e for e in ledger["entries"] if e["outcome"] == "fired"]
    ticks = [e["tick"] for e in fired]
    assert ticks == sorted(ticks, reverse=True), "newest first"
    for entry in fired:
        assert entry["node"] == "solo" and entry["epoch"] >= 1
        assert entry["id"] == fire_id("beat", entry["tick"])
        assert entry["tick_local"].endswith("+01:00")  # Berlin in December
        assert entry["at"] >= entry["tick"]
    # Every fired tick is one the task handled
    await until(lambda: {e["id"] for e in fired} <= {
        r["id"] for r in records(tmp_path, "timer:beat:")}, what="the ticks handled")
    # `before` pages back; `limit` cuts
    page = await node.timer_ledger("beat", 1, ticks[0])
    assert [e["tick"] for e in page["entries"]] == [ticks[1]]


async def test_a_tick_the_journal_knows_is_recorded_as_duplicate_suppressed(nodes, tmp_path):
    # Given the ticks of the next seconds journaled already (as a leader that died right
    # after casting them would have left them)
    node = await nodes.start()
    await node.put_timer(EVERY_SECOND)
    first = math.ceil(time.time()) + 3
    taken = [first, first + 1]
    for tick in taken:
        await node.publisher.cast("tick.record", {}, id=fire_id("beat", tick), ticks=True)
    # When the timer reaches them, the journal says so, and the ledger tells it
    await until(lambda: ledger_with(node, "duplicate_suppressed", 2), what="both")
    ledger = await until(lambda: ledger_with(node, "fired", 1, tick=float(first + 2)),
                         what="the tick after them fired")
    outcomes = {e["tick"]: e["outcome"] for e in ledger["entries"]}
    assert [outcomes[float(t)] for t in taken] == ["duplicate_suppressed"] * 2
    ids = [r["id"] for r in records(tmp_path, "timer:beat:")]
    assert all(ids.count(fire_id("beat", t)) == 1 for t in taken), "each handled once"


async def a_takeover_with_ledger(tmp_path: Path, peer: FakePeer, cast_answer: Any = None,
                                 misfire: str = "fire_all") -> list[dict[str, Any]]:
    """Node b takes over at 1000.5 from a leader whose last known fire was 995 (see
    test_timer_lease.a_takeover); the ledger rows b wrote, oldest tick first."""
    tmp_path.mkdir(exist_ok=True)
    store = ReplicatedStore(tmp_path / "config.db", HybridClock("b"))
    store.put(TIMER_KEY + "beat", TimerDef.from_dict(
        {"name": "beat", "cron": "* * * * * *", "message": "m.x", "misfire": misfire}
    ).to_dict())
    store.put(TIMER_STATE_KEY + "beat", {"last_fire": 995.0})
    history = History(tmp_path / "history.db")
    await history.open()

    async def cast(name: str, payload: Any, message_id: str) -> Any:
        return cast_answer(message_id) if cast_answer else {"duplicate": False}

    async def nothing_here(ids: list[str]) -> set[str]:
        return set()

    config = ConfigMap(store)
    runner = TimerRunner("b", config, cast=cast, peers=lambda: ["c"], ask=peer.ask,
                         ballot=tmp_path / "ballot", lease_s=3.0, known_here=nothing_here,
                         wall=lambda: 1000.5, ledger=TimerLedger("b", history))
    await runner._round()
    await config.close()
    rows = await history.run(history.ledger, "beat", 100, None)
    await asyncio.to_thread(history.close)
    return sorted(rows, key=lambda r: r["tick"])


async def test_the_tick_a_predecessor_cast_is_recorded_as_duplicate_suppressed(tmp_path):
    rows = await a_takeover_with_ledger(tmp_path, FakePeer({fire_id("beat", 996.0)}))
    assert [(r["tick"], r["outcome"]) for r in rows] == [
        (996.0, "duplicate_suppressed"), *((t, "fired") for t in (997.0, 998.0, 999.0, 1000.0))]
    assert {r["node"] for r in rows} == {"b"} and {r["epoch"] for r in rows} == {1}


async def test_a_cast_the_journal_answers_as_duplicate_is_recorded_so(tmp_path):
    def answer(message_id: str) -> dict[str, Any]:
        return {"duplicate": message_id == fire_id("beat", 998.0)}

    rows = await a_takeover_with_ledger(tmp_path, FakePeer(set()), answer)
    assert [r["outcome"] for r in rows] == ["fired", "fired", "duplicate_suppressed", "fired",
                                           "fired"]


async def test_ticks_a_late_leader_leaves_unfired_are_missed_or_skipped_by_policy(tmp_path):
    # fire_once: the latest tick fires, the four before it are missed
    rows = await a_takeover_with_ledger(tmp_path / "once", FakePeer(set()), misfire="fire_once")
    assert [(r["tick"], r["outcome"], r["reason"]) for r in rows] == [
        *((t, "missed", "misfire fire_once") for t in (996.0, 997.0, 998.0, 999.0)),
        (1000.0, "fired", None)]
    # skip: the tick due now (half a second ago) fires, the late ones are skipped
    rows = await a_takeover_with_ledger(tmp_path / "skip", FakePeer(set()), misfire="skip")
    assert [(r["tick"], r["outcome"]) for r in rows] == [
        *((t, "skipped") for t in (996.0, 997.0, 998.0, 999.0)), (1000.0, "fired")]
    assert {r["reason"] for r in rows if r["outcome"] == "skipped"} == {"misfire skip"}


# ---------------------------------------------------------------------- run now, pause


async def cli(node: Node, *args: str) -> tuple[int, str]:
    """Run the `yptask` command against the node (off this loop, which runs the node), in
    its data dir: from the source tree, `-m yptask` would import the unmapped sources."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "yptask", *args, "--url", node.http_url + "/rpc",
        "--data-dir", str(node.data_dir), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, cwd=node.data_dir)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_run_now_casts_the_message_once_with_an_id_of_its_own(nodes, tmp_path):
    node = await nodes.start()
    await node.put_timer({**EVERY_SECOND, "cron": "0 0 1 1 *", "payload": {"v": 7}})
    answer = await node.run_timer("beat")
    assert answer["id"].startswith("timer:beat:now:") and answer["tasks"] == ["rec"]
    (record,) = await until(lambda: records(tmp_path, "timer:beat:"), what="the cast")
    assert record["id"] == answer["id"] and record["payload"] == {"v": 7}
    ledger = await until(lambda: ledger_with(node, "run_now"), what="the run_now row")
    (entry,) = ledger["entries"]
    assert entry["id"] == answer["id"] and entry["node"] == "solo"
    # From the command line too: another cast, another id
    code, out = await cli(node, "timers", "run", "beat", "--json")
    assert code == 0, out
    second = json.loads(out)["id"]
    assert second != answer["id"]
    await until(lambda: len(records(tmp_path, "timer:beat:")) == 2, what="the second")
    await asyncio.sleep(1.0)  # nothing else comes
    assert sorted(r["id"] for r in records(tmp_path, "timer:beat:")) == sorted(
        [answer["id"], second])


async def test_a_paused_timer_skips_its_ticks_until_resumed(nodes, tmp_path):
    node = await nodes.start()
    await node.put_timer(EVERY_SECOND)
    await until(lambda: ledger_with(node, "fired"), what="a fired tick")
    # When it is paused (from the command line)
    code, out = await cli(node, "timers", "pause", "beat")
    assert code == 0 and "paused" in out, out
    assert (await node.timer("beat"))["paused"] is True
    await asyncio.sleep(1.5)  # a tick cast just before the pause lands
    cast_before = len(records(tmp_path, "timer:beat:"))
    paused_at = time.time()
    # Then its ticks are skipped, noted as such, and nothing is cast
    await until(lambda: ledger_with(node, "skipped", 2, reason="paused"), what="skips")
    assert len(records(tmp_path, "timer:beat:")) == cast_before
    ledger = await node.timer_ledger("beat", 1000, None)
    assert all(e["outcome"] == "skipped" for e in ledger["entries"]
               if e["tick"] > paused_at)
    # When resumed, it fires again from its next tick
    code, out = await cli(node, "timers", "resume", "beat")
    assert code == 0 and "resumed" in out, out
    await until(lambda: len(records(tmp_path, "timer:beat:")) > cast_before,
                what="a tick after the resume")
    assert (await node.timer("beat"))["paused"] is False
    # And the ledger, from the command line, tells both
    code, out = await cli(node, "timers", "ledger", "beat", "--limit", "1000")
    assert code == 0 and "Europe/Berlin" in out, out
    assert "skipped" in out and "paused" in out and "fired" in out, out


async def test_bad_ledger_and_timer_requests_are_refused(nodes):
    node = await nodes.start()
    await node.put_timer(EVERY_SECOND)
    client = Client(node.http_url + "/rpc", admin_token=node.admin_token)
    for method, params, word in (("timers.ledger", {"name": "beat", "limit": 0}, "limit"),
                                 ("timers.ledger", {"name": "beat", "before": "x"}, "before"),
                                 ("timers.run_now", {"name": 5}, "name"),
                                 ("metrics", {"span": 10**6}, "span"),
                                 ("metrics", {"step": 15}, "step")):
        with pytest.raises(ConfigError, match=word):  # -32602, as the client raises it
            await asyncio.to_thread(client.request, method, params)
    with pytest.raises(UnknownTimer):
        await asyncio.to_thread(client.request, "timers.pause", {"name": "nope"})
    # and the node goes on
    assert (await asyncio.to_thread(client.request, "timers.get", {"name": "beat"}))[
        "paused"] is False
    client.close()


# ---------------------------------------------------------------------- three nodes


class LedgerNode(SeededNode):
    def __init__(self, tmp: Path, name: str, records: Path, join: str | None) -> None:
        super().__init__(tmp, name, recording_task("tick", "beat.*", records), join,
                         cluster="ledger", settings="down_after_s = 1.5\ntimer_lease_s = 1.5\n")

    def start(self) -> None:
        super().start()
        self.argv[self.argv.index("--link") + 1] = self.link  # a restart keeps its address

    def leader(self) -> str:
        return str(self.rpc("timers.list")[0]["leader"])

    def fired(self) -> list[dict[str, Any]]:
        ledger = self.rpc("timers.ledger", name="beat", limit=1000)
        return [e for e in ledger["entries"] if e["outcome"] == "fired"]


@pytest.mark.slow
def test_the_ledger_is_read_cluster_wide_across_a_failover(tmp_path):
    records = tmp_path / "ticks.jsonl"
    nodes: list[LedgerNode] = []
    try:
        a = LedgerNode(tmp_path, "a", records, None)
        a.start()
        nodes.append(a)
        for name in "bc":
            node = LedgerNode(tmp_path, name, records, a.link)
            node.start()
            nodes.append(node)
        for node in nodes:
            wait_for_sync(lambda n=node: {m["name"] for m in n.rpc("nodes")
                                          if m["state"] == "alive"} == {"a", "b", "c"},
                          timeout_s=20, what=f"{node.name} to see the cluster")
        a.rpc("timers.put", {"name": "beat", "cron": "* * * * * *", "message": "beat.record"})
        wait_for_sync(lambda: len(a.fired()) >= 3, timeout_s=20, what="three fired ticks")
        # Given the ticks fired by the leader, a follower's ledger shows them (over the link)
        first = next(n for n in nodes if n.name == a.leader())
        follower = next(n for n in nodes if n is not first)
        assert {e["node"] for e in follower.fired()} == {first.name}
        old_epoch = follower.fired()[0]["epoch"]
        # When the leader is killed, the next one fires in a newer epoch
        first.signal(signal.SIGKILL)
        wait_for_sync(lambda: follower.leader() not in ("", first.name), timeout_s=20,
                      what="another leader")
        second = follower.leader()
        wait_for_sync(lambda: sum(e["node"] == second for e in follower.fired()) >= 2,
                      timeout_s=20, what="ticks fired by the new leader")
        newer = [e for e in follower.fired() if e["node"] == second]
        assert all(e["epoch"] > old_epoch for e in newer)
        # And once the old leader is back, its rows are in the merged ledger again
        first.start()
        wait_for_sync(lambda: {e["node"] for e in follower.fired()} >= {first.name, second},
                      timeout_s=20, what="both leaders' rows")
        ticks = [e["tick"] for e in follower.fired()]
        assert len(ticks) == len(set(ticks)), "no tick fired by two leaders"
        assert read_records(records)
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()
