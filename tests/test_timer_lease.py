"""The timer lease: one leader at a time, across kills, restarts and pauses, and every
tick of a `fire_all` timer handled exactly once cluster-wide.

The first tests drive the voter and lease bookkeeping with a made-up clock; the
others run three real nodes joined by seeds, whose task runs on every node (so
a tick fired by two leaders would be journaled, and handled, on two nodes).
"""

from __future__ import annotations

import itertools
import signal
from pathlib import Path
from typing import Any

import pytest
from support import SeededNode, read_records, recording_task, wait_for

from yptask.errors import LinkError
from yptask.store.config_map import TIMER_KEY, TIMER_STATE_KEY, ConfigMap
from yptask.store.replicated import HybridClock, ReplicatedStore
from yptask.timers.leader import TimerRunner
from yptask.timers.lease import Lease, Voter, quorum
from yptask.timers.schedule import TimerDef, fire_id

pytestmark = pytest.mark.timeout(240)


# ---------------------------------------------------------------------- bookkeeping


def test_a_voter_grants_one_holder_at_a_time_and_only_a_newer_epoch(tmp_path):
    voter = Voter(tmp_path / "ballot", lease_s=3.0, now=0.0)
    assert voter.ask("a", 1, {}, now=0.0)["granted"]
    # While a's grant runs, b is refused, whatever epoch it names ...
    refused = voter.ask("b", 5, {}, now=2.9)
    assert not refused["granted"] and refused["holder"] == "a" and refused["epoch"] == 1
    # ... a renews its own epoch at any time ...
    assert voter.ask("a", 1, {}, now=2.9)["granted"]
    assert not voter.ask("b", 2, {}, now=5.8)["granted"]
    # ... and once it ran out, b needs an epoch newer than a's
    assert not voter.ask("b", 1, {}, now=6.0)["granted"]
    assert voter.ask("b", 2, {}, now=6.0)["granted"]
    assert not voter.ask("a", 1, {}, now=6.1)["granted"]


def test_a_grant_given_before_a_restart_stands_for_a_full_lease(tmp_path):
    voter = Voter(tmp_path / "ballot", lease_s=3.0, now=0.0)
    voter.ask("a", 4, {}, now=0.0)
    assert voter.unsaved, "a new grant is to be saved before it is answered"
    voter.save()
    again = Voter(tmp_path / "ballot", lease_s=3.0, now=100.0)  # a new process
    assert not again.ask("b", 9, {}, now=102.0)["granted"]
    assert again.ask("a", 4, {}, now=102.0)["granted"], "its holder renews it"
    assert again.ask("b", 9, {}, now=105.1)["granted"]


def test_the_voters_keep_the_latest_fire_and_tell_every_candidate(tmp_path):
    voter = Voter(tmp_path / "ballot", lease_s=3.0, now=0.0)
    voter.ask("a", 1, {"beat": 10.0, "other": 3.0}, now=0.0)
    voter.ask("a", 1, {"beat": 12.0, "bogus": "x"}, now=1.0)
    answer = voter.ask("b", 2, {"beat": 11.0}, now=9.0)
    assert answer["fires"] == {"beat": 12.0, "other": 3.0}


def test_a_holder_stops_before_any_voter_may_grant_the_next_lease(tmp_path):
    lease = Lease()
    lease.granted(3, asked_at=10.0, lease_s=3.0)
    voter = Voter(tmp_path / "ballot", lease_s=3.0, now=0.0)
    voter.ask("a", 3, {}, now=10.001)  # it reached the voter a moment after it was sent
    last_fire_moment = lease.valid_until
    assert lease.holding(last_fire_moment - 0.001) and not lease.holding(last_fire_moment)
    assert not voter.ask("b", 4, {}, now=last_fire_moment)["granted"]
    assert [quorum(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


class FakePeer:
    """One peer on an in-memory link: it grants every lease, and says which tick ids it
    journaled (`journaled`), or cannot be reached about them (`reachable` false).

    The window this stands in for (a leader cut off between journaling a tick and
    telling its voters) lasts milliseconds: real processes cannot be made to hit it."""

    def __init__(self, journaled: set[str], reachable: bool = True) -> None:
        self.journaled, self.reachable = journaled, reachable

    async def ask(self, peer: str, kind: str, args: list[Any], timeout_s: float) -> Any:
        if kind == "lease":
            return {"granted": True, "epoch": args[0], "holder": "b", "left_s": 3.0,
                    "fires": {}}
        if kind == "tick_known":
            if not self.reachable:
                raise LinkError("no link to node c")
            return sorted(set(args[0]) & self.journaled)
        return None


async def a_takeover(tmp_path: Path, peer: FakePeer) -> list[str]:
    """Node b wins the lease at 1000.5 from a leader whose last known fire was 995: the
    ids b casts in its first round."""
    store = ReplicatedStore(tmp_path / "config.db", HybridClock("b"))
    store.put(TIMER_KEY + "beat", TimerDef.from_dict(
        {"name": "beat", "cron": "* * * * * *", "message": "m.x", "misfire": "fire_all"}
    ).to_dict())
    store.put(TIMER_STATE_KEY + "beat", {"last_fire": 995.0})
    cast: list[str] = []

    async def record(name: str, payload: Any, message_id: str) -> None:
        cast.append(message_id)

    async def nothing_here(ids: list[str]) -> set[str]:
        return set()

    config = ConfigMap(store)
    runner = TimerRunner("b", config, cast=record, peers=lambda: ["c"], ask=peer.ask,
                         ballot=tmp_path / "ballot", lease_s=3.0,
                         known_here=nothing_here, wall=lambda: 1000.5)
    await runner._round()
    await config.close()
    return cast


async def test_a_new_leader_does_not_fire_again_the_tick_its_predecessor_journaled(tmp_path):
    cast = await a_takeover(tmp_path, FakePeer({fire_id("beat", 996.0)}))
    assert cast == [fire_id("beat", t) for t in (997.0, 998.0, 999.0, 1000.0)]


async def test_a_new_leader_fires_the_tick_in_doubt_once_every_node_says_it_was_not(tmp_path):
    cast = await a_takeover(tmp_path, FakePeer(set()))
    assert cast == [fire_id("beat", t) for t in (996.0, 997.0, 998.0, 999.0, 1000.0)]


async def test_a_new_leader_waits_while_a_node_cannot_say(tmp_path):
    assert await a_takeover(tmp_path, FakePeer(set(), reachable=False)) == []


# ---------------------------------------------------------------------- three nodes


class LeaseNode(SeededNode):
    """A node joined to the first one by its link address only (no mDNS)."""

    def __init__(self, tmp: Path, name: str, records: Path, join: str | None) -> None:
        super().__init__(tmp, name, recording_task("tick", "beat.*", records), join,
                         cluster="lease", settings="down_after_s = 1.5\ntimer_lease_s = 1.5\n")

    def start(self) -> None:
        super().start()
        # A restart keeps its link address, as a node on a fixed port does: the others
        # know it by that address (this is the seed, and it knows no seed of its own).
        self.argv[self.argv.index("--link") + 1] = self.link

    def leader(self) -> str:
        return str(self.rpc("timers.list")[0]["leader"])


@pytest.fixture
def seeded(tmp_path):
    """Three nodes a, b, c (b and c join a), all seeing each other; a timer every second."""
    records = tmp_path / "ticks.jsonl"
    nodes: list[LeaseNode] = []
    try:
        a = LeaseNode(tmp_path, "a", records, None)
        a.start()
        nodes.append(a)
        for name in "bc":
            node = LeaseNode(tmp_path, name, records, a.link)
            node.start()
            nodes.append(node)
        for node in nodes:
            wait_for(lambda n=node: {m["name"] for m in n.rpc("nodes")
                                     if m["state"] == "alive"} == {"a", "b", "c"},
                     timeout_s=20, what=f"{node.name} to see the cluster")
        a.rpc("timers.put", {"name": "beat", "cron": "* * * * * *", "message": "beat.record",
                             "misfire": "fire_all"})
        wait_for(lambda: len(ticks(records)) >= 3, timeout_s=20, what="three ticks")
        yield nodes, records
    finally:
        for node in nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
                node.proc.wait()


def ticks(records: Path) -> list[float]:
    return sorted(float(r["id"].rsplit(":", 1)[1]) for r in read_records(records)
                  if r["id"].startswith("timer:beat:"))


def by_name(nodes: list[LeaseNode], name: str) -> LeaseNode:
    return next(node for node in nodes if node.name == name)


def assert_each_tick_once(nodes: list[LeaseNode], records: Path) -> None:
    """Stop the timer, let what was fired land, and check every second came exactly once."""
    live = next(node for node in nodes if node.proc is not None and node.proc.poll() is None)
    live.rpc("timers.delete", "beat")

    def settled() -> bool:
        seen = ticks(records)
        return {round(b - a, 3) for a, b in itertools.pairwise(sorted(set(seen)))} == {1.0}

    wait_for(settled, timeout_s=20, what=f"no missing tick in {ticks(records)}")
    seen = ticks(records)
    doubled = sorted({t for t in seen if seen.count(t) > 1})
    assert not doubled, f"{len(doubled)} tick(s) handled twice: {doubled}"


def wait_for_more_ticks(records: Path, count: int, what: str) -> None:
    seen = len(ticks(records))
    wait_for(lambda: len(ticks(records)) >= seen + count, timeout_s=20, what=what)


@pytest.mark.slow
def test_a_returning_leader_respects_the_new_lease_and_no_tick_is_doubled_or_missed(seeded):
    nodes, records = seeded
    leader = by_name(nodes, nodes[1].leader())
    others = [node for node in nodes if node is not leader]
    leader.signal(signal.SIGKILL)
    wait_for(lambda: others[0].leader() not in ("", leader.name), timeout_s=20,
             what="another node to take the lease")
    successor = others[0].leader()
    wait_for_more_ticks(records, 3, "ticks fired by the new leader")
    # The old leader comes back: it must not fire from its own stale last fire
    leader.start()
    wait_for_more_ticks(records, 3, "ticks after the old leader's return")
    # ... and, once its old grant to itself ran out, knows the new leader
    wait_for(lambda: {node.leader() for node in nodes} == {successor}, timeout_s=10,
             what=f"every node to name {successor} the leader")
    # A follower killed and restarted does not fire its missed ticks at boot either
    follower = next(node for node in others if node.name != successor)
    follower.signal(signal.SIGKILL)
    follower.start()
    wait_for_more_ticks(records, 3, "ticks after a follower's restart")
    assert_each_tick_once(nodes, records)


def test_a_paused_leader_fires_nothing_when_it_wakes(seeded):
    nodes, records = seeded
    leader = by_name(nodes, nodes[0].leader())
    others = [node for node in nodes if node is not leader]
    assert leader.proc is not None
    leader.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: others[0].leader() not in ("", leader.name), timeout_s=20,
                 what="another node to take the lease from the paused one")
        wait_for_more_ticks(records, 3, "ticks fired by the new leader")
    finally:
        leader.proc.send_signal(signal.SIGCONT)
    wait_for_more_ticks(records, 4, "ticks after the pause")
    assert_each_tick_once(nodes, records)


def test_a_clean_stop_hands_the_lease_over_and_leaves_the_roster(seeded):
    nodes, records = seeded
    leader = by_name(nodes, nodes[0].leader())
    others = [node for node in nodes if node is not leader]
    leader.stop()
    wait_for(lambda: others[0].leader() not in ("", leader.name), timeout_s=10,
             what="another node to lead")
    # Two voters are left: one more clean stop leaves one, which still leads alone
    new_leader = by_name(others, others[0].leader())
    new_leader.stop()
    last = next(node for node in others if node is not new_leader)
    wait_for(lambda: last.leader() == last.name, timeout_s=10, what="the last node to lead")
    wait_for_more_ticks(records, 3, "ticks fired by the last node")
    assert_each_tick_once([last], records)



def test_a_crashed_node_counts_until_it_is_forgotten(seeded):
    """Two of three crashed: the last cannot win a majority, fires nothing, until an
    operator forgets the dead (they are gone for good), then it leads alone."""
    nodes, records = seeded
    last = by_name(nodes, "c")
    for node in nodes:
        if node is not last:
            node.signal(signal.SIGKILL)
    wait_for(lambda: last.leader() == "", timeout_s=10, what="the lease to lapse")
    wait_for(lambda: {m["name"]: m["state"] for m in last.rpc("nodes")} ==
             {"a": "down", "b": "down", "c": "alive"}, timeout_s=10, what="a and b down")
    refused = last.answer("nodes.forget", "c")
    assert "alive" in refused["error"]["message"], refused
    assert last.rpc("nodes.forget", "a") == {"forgotten": "a"}
    assert last.leader() == "", "one voter of two is no majority"
    last.rpc("nodes.forget", "b")
    wait_for(lambda: last.leader() == "c", timeout_s=10, what="c to lead alone")
    wait_for_more_ticks(records, 3, "ticks fired by c alone")
    assert_each_tick_once([last], records)
