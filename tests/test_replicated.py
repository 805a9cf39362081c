"""The replicated config map: versions, merges in any order, tombstones, seeds, restarts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from yptask.store.replicated import (
    Entry,
    HybridClock,
    ReplicatedStore,
    Version,
    digest_from_term,
    digest_to_term,
)


class FakeWall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_clock_never_goes_back_and_moves_past_what_it_sees():
    wall = FakeWall(1000.0)
    clock = HybridClock("a", wall)
    first = clock.now()
    wall.t = 999.0  # the wall clock steps back
    second = clock.now()
    assert second > first and second.millis == first.millis
    clock.observe(Version(5_000_000, 7, "b"))
    assert clock.now() > Version(5_000_000, 7, "b")


def test_the_node_name_breaks_an_exact_tie():
    assert Version(1, 0, "b") > Version(1, 0, "a")
    assert Version(2, 0, "a") > Version(1, 9, "z")


def test_last_writer_wins_and_a_tombstone_is_a_write(tmp_path):
    a = ReplicatedStore(tmp_path / "a.db", HybridClock("a"))
    b = ReplicatedStore(tmp_path / "b.db", HybridClock("b"))
    old = a.put("task:x", {"v": 1})
    new = b.put("task:x", {"v": 2})
    gone = a.put("task:y", None)
    assert new.version > old.version
    assert b.merge([old, gone]) == [gone]  # the older x loses
    assert a.merge(b.newer_than(a.digest())) == [new]
    assert a.digest() == b.digest()
    assert a.values("task:") == b.values("task:") == {"x": {"v": 2}}


def test_seeds_lose_to_any_edit_and_agree_among_themselves(tmp_path):
    a = ReplicatedStore(tmp_path / "a.db", HybridClock("a"))
    b = ReplicatedStore(tmp_path / "b.db", HybridClock("b"))
    assert a.seed_once({"task:x": {"from": "a seed"}})
    assert not a.seed_once({"task:x": {"from": "a second seed"}})
    edit = a.put("task:x", {"from": "an edit"})
    b.seed_once({"task:x": {"from": "b seed"}, "task:z": {"from": "b seed"}})
    b.merge(a.newer_than(b.digest()))
    a.merge(b.newer_than(a.digest()))
    assert a.get("task:x") == b.get("task:x") == edit
    assert a.values("task:") == b.values("task:")


def test_the_map_and_the_clock_survive_a_restart(tmp_path):
    wall = FakeWall(2000.0)
    store = ReplicatedStore(tmp_path / "a.db", HybridClock("a", wall))
    written = store.put("task:x", {"v": 1})
    store.close()
    wall.t = 1000.0  # the machine came back with its clock behind
    again = ReplicatedStore(tmp_path / "a.db", HybridClock("a", wall))
    assert again.get("task:x") == written
    assert again.put("task:x", {"v": 2}).version > written.version


def test_entries_and_digests_survive_their_wire_form():
    entry = Entry("task:x", Version(12, 3, "n1"), {"a": [1, 2]})
    assert Entry.from_term(entry.to_term()) == entry
    digest = {"task:x": Version(12, 3, "n1"), "task:y": Version(0, 0, "n2")}
    assert digest_from_term(digest_to_term(digest)) == digest


writes = st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["k1", "k2", "k3"]),
                            st.one_of(st.none(), st.integers(0, 9))), min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(writes=writes, order=st.randoms(use_true_random=False))
def test_any_order_of_merges_converges_to_one_map(tmp_path_factory, writes, order):
    # Given writes made on three nodes, each with its own clock
    tmp = tmp_path_factory.mktemp("conv")
    clocks = {n: HybridClock(n, FakeWall(1.0)) for n in "abc"}
    made = [Entry(key, clocks[node].now(), None if v is None else {"v": v})
            for node, key, v in writes]
    # When three replicas receive them in three different orders, in pieces
    replicas = []
    for i in range(3):
        store = ReplicatedStore(tmp / f"{i}.db", HybridClock(f"r{i}"))
        shuffled = list(made)
        order.shuffle(shuffled)
        for piece in [shuffled[j:j + 2] for j in range(0, len(shuffled), 2)]:
            store.merge(piece)
        replicas.append(store)
    # Then they agree, on the greatest version of each key
    assert replicas[0].digest() == replicas[1].digest() == replicas[2].digest()
    for key in {e.key for e in made}:
        assert replicas[0].get(key) == max((e for e in made if e.key == key),
                                           key=lambda e: e.version)
