"""A client id is unique cluster-wide: the same id cast at two nodes is taken once.

The cluster tests run three `yptask node` processes on loopback, joined by
seeds (no mDNS); every node runs one worker of a task that records what it
handles in one file, so a message handled twice anywhere shows as two lines.
The ledger and journal tests use a real SQLite journal, in process.
"""

from __future__ import annotations

import itertools
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from support import ALONE, SeededNode, read_records, recording_task, until, wait_for

from yptask.cluster.client_ids import KNOWN, NEW, PENDING, Ledger, home_of
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.errors import IdPending, Overloaded
from yptask.node import Node
from yptask.store.journal import Envelope, Journal

NAMES = ("a", "b", "c")
COOKIE = "cookie-ids-123"


class IdNode(SeededNode):
    """A node of the test's cluster, joined by its seed (no mDNS)."""

    def __init__(self, tmp: Path, name: str, join: str | None, down_after_s: float) -> None:
        super().__init__(tmp, name, recording_task("rec", "ids.*", tmp / "records.jsonl"),
                         join, cluster="ids", settings=f"down_after_s = {down_after_s}\n")

    def cast(self, name: str, msg: Any, id: str) -> dict[str, Any]:
        return self.rpc("cast", name, msg, id)

    def try_cast(self, name: str, msg: Any, id: str) -> dict[str, Any]:
        return self.answer("cast", name, msg, id)

    def fallbacks(self) -> int:
        return int(self.rpc("status")["client_ids"]["fallbacks"])


def ids_homed_at(home: str, members: tuple[str, ...] = NAMES) -> Iterator[str]:
    """Fresh ids whose home, among `members`, is `home`."""
    prefix = uuid.uuid4().hex[:8]
    for n in itertools.count():
        candidate = f"{prefix}-{n}"
        if home_of(candidate, members) == home:
            yield candidate


def wait_for_mesh(nodes: dict[str, IdNode]) -> None:
    """Every node sees every other alive, and asks each one's ids without falling back."""
    everyone = {name: "alive" for name in nodes}
    for node in nodes.values():
        wait_for(lambda n=node: {m["name"]: m["state"] for m in n.rpc("nodes")} == everyone,
                 timeout_s=30, what=f"node {node.name} to see the whole cluster")
    members = tuple(nodes)
    for node in nodes.values():
        for home in members:
            fresh = ids_homed_at(home, members)

            def asked_without_fallback(n: IdNode = node, ids: Iterator[str] = fresh) -> bool:
                before = n.fallbacks()
                n.cast("nobody.warm", {}, next(ids))
                return n.fallbacks() == before

            wait_for(asked_without_fallback, timeout_s=30,
                     what=f"node {node.name} to reach the home node {home}")


@pytest.fixture
def trio(tmp_path) -> Iterator[Callable[..., dict[str, IdNode]]]:
    """Nodes a, b, c in one cluster (b and c join by a's link address); killed at the end."""
    started: list[IdNode] = []

    def start(down_after_s: float = 2.0) -> dict[str, IdNode]:
        join = None
        for name in NAMES:
            node = IdNode(tmp_path, name, join, down_after_s)
            started.append(node)
            node.start()
            join = join or node.link
        nodes = {node.name: node for node in started}
        wait_for_mesh(nodes)
        return nodes

    yield start
    for node in started:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


def cast_until_taken(node: IdNode, message_id: str) -> bool:
    """Cast, retrying while the id is pending at its home; whether it was a duplicate."""
    answer: dict[str, Any] = {}

    def taken() -> bool:
        reply = node.try_cast("ids.record", {}, message_id)
        if "error" in reply:
            assert reply["error"]["data"]["error_class"] == "IdPending", reply
            return False
        answer.update(reply["result"])
        return True

    wait_for(taken, timeout_s=30, what=f"{message_id} taken at {node.name}")
    return bool(answer["duplicate"])


def handled(records: Path, ids: set[str]) -> Counter[str]:
    return Counter(r["id"] for r in read_records(records) if r["id"] in ids)


def wait_handled_once(records: Path, ids: set[str]) -> None:
    """Every id handled, and none twice (the answers said `duplicate`, so nothing was
    stored a second time; this looks at what the workers did)."""
    wait_for(lambda: set(handled(records, ids)) == ids, timeout_s=30, what="every id handled")
    counts = handled(records, ids)
    assert max(counts.values()) == 1, {i: n for i, n in counts.items() if n > 1}


@pytest.mark.parametrize("home", ["a", "b", "c"], ids=["home-first", "home-second",
                                                       "home-third"])
def test_the_same_id_cast_at_two_nodes_is_taken_once(trio, tmp_path, home):
    # Given three nodes in one cluster, and an id whose home is `home`
    nodes = trio()
    records = tmp_path / "records.jsonl"
    message_id = next(ids_homed_at(home))
    # When a publisher casts it at a, then (its answer lost) casts it again at b
    first = nodes["a"].cast("ids.record", {"n": 1}, message_id)
    second = nodes["b"].cast("ids.record", {"n": 1}, message_id)
    # Then the first is new, the second a duplicate
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    # And the message is handled once in the whole cluster, even after a third try at c
    assert nodes["c"].cast("ids.record", {"n": 1}, message_id)["duplicate"] is True
    probe = next(ids_homed_at("c"))
    nodes["b"].cast("ids.record", {"probe": 1}, probe)  # handled after any second delivery
    wait_handled_once(records, {message_id, probe})


def test_ids_cast_at_two_random_nodes_are_each_handled_once(trio, tmp_path):
    # Given three nodes in one cluster
    nodes = trio()
    records = tmp_path / "records.jsonl"
    rng = random.Random(7)
    ids = {f"prop-{uuid.uuid4().hex[:6]}-{n}" for n in range(40)}
    # When each id is cast at one random node, then again at another
    answers = {}
    for message_id in sorted(ids):
        first, second = rng.sample(NAMES, 2)
        answers[message_id] = (nodes[first].cast("ids.record", {}, message_id)["duplicate"],
                               nodes[second].cast("ids.record", {}, message_id)["duplicate"])
    # Then every first answer is new and every second a duplicate
    assert {a for a in answers.values()} == {(False, True)}
    # And each is handled exactly once across the cluster
    wait_handled_once(records, ids)


def test_ids_cast_at_two_nodes_at_once_are_each_handled_once(trio, tmp_path):
    # Given three nodes in one cluster
    nodes = trio()
    rng = random.Random(11)
    ids = {f"race-{uuid.uuid4().hex[:6]}-{n}" for n in range(30)}
    # When each id is cast at two random nodes at the same time (retrying while pending)
    pairs = [(message_id, *rng.sample(NAMES, 2)) for message_id in sorted(ids)]
    answers = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for message_id, *names in pairs:
            both = [pool.submit(cast_until_taken, nodes[name], message_id) for name in names]
            answers.append([future.result() for future in both])
    # Then one of each pair is new and the other a duplicate
    assert all(sorted(pair) == [False, True] for pair in answers), answers
    # And each is handled exactly once across the cluster
    wait_handled_once(tmp_path / "records.jsonl", ids)


def test_the_home_node_remembers_its_ids_across_a_restart(trio, tmp_path):
    # Given an id homed at c, cast at a
    nodes = trio()
    message_id = next(ids_homed_at("c"))
    assert nodes["a"].cast("ids.record", {}, message_id)["duplicate"] is False
    assert nodes["b"].cast("ids.record", {}, message_id)["duplicate"] is True  # c has it
    # When c restarts
    nodes["c"].stop()
    nodes["c"].start()
    wait_for_mesh(nodes)
    # Then the same id cast at b (whose journal never took it) is still a duplicate
    assert nodes["b"].cast("ids.record", {}, message_id)["duplicate"] is True
    wait_handled_once(tmp_path / "records.jsonl", {message_id})


def test_a_home_node_that_does_not_answer_costs_a_bounded_wait_not_the_cast(trio, tmp_path):
    # Given three nodes, c not declared down for a while, and an id homed at c
    nodes = trio(down_after_s=30.0)
    message_id = next(ids_homed_at("c"))
    # When c stops answering (paused), and the id is cast at a
    assert nodes["c"].proc is not None
    nodes["c"].proc.send_signal(signal.SIGSTOP)
    try:
        answer = nodes["a"].cast("ids.record", {}, message_id)
        # Then it is accepted all the same (the local journal dedupes it), and counted
        assert answer["duplicate"] is False
        assert nodes["a"].fallbacks() >= 1
        assert nodes["a"].cast("ids.record", {}, message_id)["duplicate"] is True
        wait_handled_once(tmp_path / "records.jsonl", {message_id})
    finally:
        nodes["c"].proc.send_signal(signal.SIGCONT)


# ---------------------------------------------------------------------- in process


def test_home_of_is_stable_spread_and_moves_only_the_ids_of_a_member_that_leaves():
    ids = [f"id-{n}" for n in range(3000)]
    homes = {i: home_of(i, ["a", "b", "c"]) for i in ids}
    # The same answer whatever the order of the members
    assert all(home_of(i, ["c", "a", "b"]) == homes[i] for i in ids[:200])
    # Spread over the members (each gets a fair share)
    assert all(800 < n < 1200 for n in Counter(homes.values()).values())
    # When c leaves, only c's ids move
    assert all(home_of(i, ["a", "b"]) == homes[i] for i in ids if homes[i] != "c")


def test_a_claim_pending_elsewhere_is_refused_until_it_is_settled():
    ledger = Ledger(pending_s=10.0)
    now = time.monotonic()
    # Given an id claimed by a, not yet settled
    assert ledger.claim("a", ["x"], set(), now) == [NEW]
    # Then b's claim of it is refused as pending (a retry of a's own is not)
    assert ledger.claim("b", ["x"], set(), now) == [PENDING]
    assert ledger.claim("a", ["x"], set(), now) == [NEW]
    # When a could not store it (its journal append failed) and releases it
    ledger.settle("a", taken=[], released=["x"], now=now)
    # Then b may take it; and once b has, it is known to all, before the journal says so
    assert ledger.claim("b", ["x"], set(), now) == [NEW]
    ledger.settle("b", taken=["x"], released=[], now=now)
    assert ledger.claim("a", ["x"], set(), now) == [KNOWN]
    assert ledger.claim("a", ["x"], set(), now + 11.0) == [NEW]  # (the journal is silent)
    # An id the journal holds is known; a claim nobody settles expires
    assert ledger.claim("b", ["z"], {"z"}, now) == [KNOWN]
    assert ledger.claim("a", ["y"], set(), now) == [NEW]
    assert ledger.claim("b", ["y"], set(), now + 11.0) == [NEW]


def test_the_ids_a_home_remembers_are_forgotten_with_the_dedupe_window(tmp_path):
    journal = Journal(tmp_path / "journal.db")
    try:
        journal.remember_client_ids(["old"], now=1000.0)
        journal.remember_client_ids(["new"], now=5000.0)
        journal.append([(Envelope("mine", "ids.x", {}, 1000.0), [])])  # taken here
        assert journal.known_client_ids(["old", "new", "mine", "other"]) == {
            "old", "new", "mine"}
        assert journal.forget_client_ids(older_than_s=3000.0, now=5500.0) == 1
        assert journal.known_client_ids(["old", "new"]) == {"new"}
    finally:
        journal.close()


async def _pair(tmp_path: Path) -> tuple[Node, Node]:
    """Two in-process nodes, a joined to b, each seeing the other."""
    sample = TaskDef.from_dict({"name": "rec", "messages": ["ids.*"],
                                "worker_class": "sample:Sample", "nodes": {"*": 0}})
    common = {**ALONE, "cookie": COOKIE, "cluster": "ids-pair", "heartbeat_s": 0.1}
    b = await Node.start(NodeConfig(name="b", data_dir=tmp_path / "b", **common),
                         tasks=[sample])
    assert b.cluster is not None
    try:
        a = await Node.start(NodeConfig(name="a", data_dir=tmp_path / "a",
                                        join=(b.cluster.link_address,), **common),
                             tasks=[sample])
    except BaseException:
        await b.stop()
        raise
    for one, other in ((a, b), (b, a)):
        await until(lambda o=one, p=other: o.cluster is not None
                    and p.name in [m.name for m in o.cluster.up()], what="the pair to link")
    return a, b


async def test_an_id_claimed_but_not_stored_is_not_lost(tmp_path):
    # Given nodes a and b, and an id whose home is b
    a, b = await _pair(tmp_path)
    try:
        message_id = next(ids_homed_at("b", ("a", "b")))
        fresh = ids_homed_at("b", ("a", "b"))
        await until(lambda: _asks_home(a, next(fresh)), what="a to reach its home node b")
        # When a's journal is full as it takes the cast (the claim at b succeeded)
        assert a._journal is not None
        await a._journal.run(lambda j: j._db.execute("PRAGMA max_page_count = 1"))
        with pytest.raises(Overloaded) as refused:
            await a.cast("ids.record", {"pad": "x" * 8000}, id=message_id)
        assert "full" in str(refused.value)
        await a._journal.run(lambda j: j._db.execute("PRAGMA max_page_count = 1000000"))
        # Then a retry, at b or at a, is taken: not answered as a duplicate and lost
        answer = await _cast_retrying(b, message_id)
        assert answer["duplicate"] is False
        assert (await a.cast("ids.record", {}, id=message_id))["duplicate"] is True
    finally:
        await a.stop()
        await b.stop()


async def _asks_home(node: Node, message_id: str) -> bool:
    before = (await node.status())["client_ids"]["fallbacks"]
    await node.cast("nobody.warm", {}, id=message_id)
    return bool((await node.status())["client_ids"]["fallbacks"] == before)


async def _cast_retrying(node: Node, message_id: str) -> dict[str, Any]:
    """Cast, retrying while the id is pending (its release may still be on its way)."""
    answer: dict[str, Any] = {}

    async def taken() -> bool:
        try:
            answer.update(await node.cast("ids.record", {"pad": "retry"}, id=message_id))
        except IdPending:
            return False
        return True

    await until(taken, what="the id to be released")
    return answer
