"""The cluster with real node processes: mDNS discovery, the cookie, replicated config,
calls across nodes, failure detection and rejoining.

Every node is a `yptask node` subprocess on loopback. mDNS speaks on 127.0.0.1
only, under a service type unique to the test, so concurrent runs never meet.
"""

from __future__ import annotations

import itertools
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support import TEST_WORKERS, NodeProcess, read_records, wait_for

RECORDS = "@RECORDS@"  # replaced per test: the folder the record handlers write in
TASKS = f"""
[[task]]
name = "everywhere"
worker_class = "sample:Sample"
messages = ["all.*"]
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
nodes = {{ "*" = 1 }}

[[task]]
name = "only_c"
worker_class = "sample:Sample"
messages = ["c.*"]
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
settings = {{ record_path = "{RECORDS}/only_c.jsonl" }}
nodes = {{ "c" = 1 }}

[[task]]
name = "b_and_c"
worker_class = "sample:Sample"
messages = ["bc.*"]
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
settings = {{ record_path = "{RECORDS}/b_and_c.jsonl" }}
nodes = {{ "b" = 1, "c" = 1 }}
"""


class ClusterNode(NodeProcess):
    """A node of the test's cluster: its cookie, its mDNS service type."""

    def __init__(self, tmp: Path, name: str, service_type: str, cookie: str = "cookie-abc-123",
                 join: str | None = None) -> None:
        folder = tmp / name
        folder.mkdir(exist_ok=True)
        (folder / "node.toml").write_text(
            f'[node]\ncluster = "test"\ncookie = "{cookie}"\nmdns_type = "{service_type}"\n'
            'heartbeat_s = 0.25\ndown_after_s = 2.0\n')
        args = ["--config", str(folder / "node.toml"), *(["--join", join] if join else [])]
        super().__init__(folder, TASKS.replace(RECORDS, str(tmp)), name, cluster=args)

    def members(self) -> dict[str, str]:
        return {m["name"]: m["state"] for m in self.rpc("nodes")}

    def log(self) -> str:
        return (self.tmp / "node.log").read_text()


@pytest.fixture
def cluster(tmp_path):
    """Start nodes with `cluster(name, ...)`; all are stopped (by PID) at the end."""
    service_type = f"_ypt-{uuid.uuid4().hex[:8]}._tcp.local."
    nodes: list[ClusterNode] = []

    def start(name: str, **kwargs) -> ClusterNode:
        node = ClusterNode(tmp_path, name, service_type, **kwargs)
        nodes.append(node)
        node.start()
        return node

    yield start
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait()


@pytest.mark.slow
def test_nodes_find_each_other_share_config_and_call_across(cluster):
    # Given three nodes started separately, knowing nothing of each other
    a, b, c = (cluster(name) for name in "abc")
    # Then each finds the other two over mDNS, and all are alive
    for node in (a, b, c):
        wait_for(lambda n=node: n.members() == {"a": "alive", "b": "alive", "c": "alive"},
                 timeout_s=15, what=f"node {node.name} to see the cluster")
    # And a call on a reaches the task whose only worker runs on c
    answer = a.rpc("call", "c.whoami", {}, 10)
    assert answer["node"] == "c"
    # When a task is edited on a
    task = a.rpc("tasks.get", "everywhere")
    a.rpc("tasks.put", {**task, "messages": ["all.*", "extra.*"], "settings": {"v": 2}})
    # Then b and c run it with the new definition
    for node in (b, c):
        wait_for(lambda n=node: n.rpc("tasks.get", "everywhere")["settings"] == {"v": 2},
                 timeout_s=2, what=f"the edit to reach {node.name}")
        # (its workers are replaced one by one: poll until a new one answers)
        wait_for(lambda n=node: n.rpc("call", "extra.whoami", {}, 10)["settings"] == {"v": 2},
                 timeout_s=10, what=f"{node.name} to run the new definition")
    # And a restart issued on a rolls the task's workers on b too
    wait_for(lambda: b.rpc("status")["tasks"]["everywhere"]["pids"], timeout_s=10,
             what="a worker on b")
    before = set(b.rpc("status")["tasks"]["everywhere"]["pids"])
    a.rpc("tasks.restart", "everywhere")
    wait_for(lambda: (pids := set(b.rpc("status")["tasks"]["everywhere"]["pids"]))
             and not pids & before, timeout_s=10, what="b's workers replaced")
    assert b.rpc("status")["tasks"]["everywhere"]["workers"] == {"a": 1, "b": 1, "c": 1}
    # And a task created on c, then deleted on b, is gone everywhere
    c.rpc("tasks.put", {**task, "name": "fresh", "messages": ["fresh.*"]})
    wait_for(lambda: any(t["name"] == "fresh" for t in b.rpc("tasks.list")), timeout_s=5,
             what="the new task on b")
    b.rpc("tasks.delete", "fresh")
    for node in (a, c):
        wait_for(lambda n=node: all(t["name"] != "fresh" for t in n.rpc("tasks.list")),
                 timeout_s=5, what=f"the delete to reach {node.name}")


def test_a_node_with_the_wrong_cookie_never_joins(cluster):
    a = cluster("a")
    stranger = cluster("x", cookie="another-cookie-1")
    wait_for(lambda: "cookie mismatch" in stranger.log() and "cookie mismatch" in a.log(),
             timeout_s=15, what="both sides to log the refused link")
    assert set(a.members()) == {"a"} and set(stranger.members()) == {"x"}


@pytest.mark.slow
def test_a_killed_node_is_declared_down_and_rejoins_when_restarted(cluster):
    a = cluster("a")
    c = cluster("c", join=None)
    wait_for(lambda: a.members().get("c") == "alive", timeout_s=15, what="c to join")
    boot = next(m["boot"] for m in a.rpc("nodes") if m["name"] == "c")
    c.signal(signal.SIGKILL)
    wait_for(lambda: a.members().get("c") == "down", timeout_s=5, what="c declared down")
    c.start()  # same name and data; a new boot id
    wait_for(lambda: a.members().get("c") == "alive", timeout_s=15, what="c to rejoin")
    assert next(m["boot"] for m in a.rpc("nodes") if m["name"] == "c") != boot


def test_a_static_seed_is_enough_without_mdns(tmp_path, cluster):
    a = cluster("a")
    # b has no mDNS (its own service type) but joins through a's link address
    b = ClusterNode(tmp_path, "b", "_ypt-other._tcp.local.", join=a.link)
    b.argv.append("--no-mdns")
    try:
        b.start()
        wait_for(lambda: b.members() == {"a": "alive", "b": "alive"}, timeout_s=10,
                 what="b to join through its seed")
        wait_for(lambda: a.members() == {"a": "alive", "b": "alive"}, timeout_s=10,
                 what="a to see b")
    finally:
        b.stop()


def test_nodes_joined_by_seeds_only_become_a_full_mesh(tmp_path):
    # Given three nodes without mDNS, b and c knowing only a's link address
    nodes: list[ClusterNode] = []
    try:
        a = ClusterNode(tmp_path, "a", "_ypt-seeds-a._tcp.local.")
        a.argv.append("--no-mdns")
        a.start()
        nodes.append(a)
        for name in "bc":
            node = ClusterNode(tmp_path, name, f"_ypt-seeds-{name}._tcp.local.", join=a.link)
            node.argv.append("--no-mdns")
            node.start()
            nodes.append(node)
        # Then every node lists every member, b and c each other too
        everyone = {"a": "alive", "b": "alive", "c": "alive"}
        for node in nodes:
            wait_for(lambda n=node: n.members() == everyone, timeout_s=15,
                     what=f"node {node.name} to see the whole cluster")
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.slow
def test_casts_reach_tasks_wherever_they_run_and_survive_a_node_killed_mid_stream(
        tmp_path, cluster):
    a, b, c = (cluster(name) for name in "abc")
    for node in (a, b, c):
        wait_for(lambda n=node: n.members() == {"a": "alive", "b": "alive", "c": "alive"},
                 timeout_s=15, what=f"node {node.name} to see the cluster")
    # A cast on a reaches the task whose only worker runs on c
    sent = a.rpc("cast", "c.record", {"n": 0})
    (record,) = wait_for(lambda: read_records(tmp_path / "only_c.jsonl"), timeout_s=10,
                         what="the cast to reach c")
    assert record["id"] == sent["id"]
    # When casts for a task on b and c enter on a, and c is killed mid-stream
    ids = a.cast_batch("bc.record", [{"n": i} for i in range(150)])
    c.signal(signal.SIGKILL)
    ids += a.cast_batch("bc.record", [{"n": i} for i in range(150, 300)])
    wait_for(lambda: a.members().get("c") == "down", timeout_s=5, what="c declared down")
    # Then b takes what a had not handed to c; what c had journaled waits for it
    records = tmp_path / "b_and_c.jsonl"
    wait_for(lambda: {r["id"] for r in read_records(records)} >= set(ids[150:]), timeout_s=20,
             what="b to handle the casts sent after c died")
    c.start()
    wait_for(lambda: {r["id"] for r in read_records(records)} == set(ids), timeout_s=20,
             what="every cast handled once c is back")


@pytest.mark.slow
def test_five_nodes_converge_on_every_edit_even_concurrent_ones(cluster):
    nodes = [cluster(f"n{i}") for i in range(1, 6)]
    names = {node.name for node in nodes}
    for node in nodes:
        wait_for(lambda n=node: set(n.members()) == names and
                 set(n.members().values()) == {"alive"}, timeout_s=20,
                 what=f"{node.name} to see all five")
    task = nodes[0].rpc("tasks.get", "everywhere")
    # An edit on one node reaches all five
    nodes[2].rpc("tasks.put", {**task, "settings": {"edit": "one"}})
    for node in nodes:
        wait_for(lambda n=node: n.rpc("tasks.get", "everywhere")["settings"] == {"edit": "one"},
                 timeout_s=10, what=f"the edit to reach {node.name}")
    # Two edits of one task at once, on two nodes, end as the same value everywhere
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda pair: pair[0].rpc("tasks.put", {**task, "settings": pair[1]}),
                      [(nodes[0], {"edit": "from n1"}), (nodes[4], {"edit": "from n5"})]))

    def settled() -> bool:
        seen = [n.rpc("tasks.get", "everywhere")["settings"] for n in nodes]
        return all(s == seen[0] for s in seen) and seen[0]["edit"] in ("from n1", "from n5")

    wait_for(settled, timeout_s=10, what="the two concurrent edits to converge")


@pytest.mark.slow
def test_one_node_fires_each_timer_tick_once_across_a_leader_kill(tmp_path, cluster):
    a, b, c = (cluster(name) for name in "abc")
    for node in (a, b, c):
        wait_for(lambda n=node: n.members() == {"a": "alive", "b": "alive", "c": "alive"},
                 timeout_s=15, what=f"node {node.name} to see the cluster")
    # A timer every second, saved on b; the lease holder (the lowest-named node first) fires it
    b.rpc("timers.put", {"name": "beat", "cron": "* * * * * *", "message": "c.record",
                         "misfire": "fire_all"})
    wait_for(lambda: {row["leader"] for row in b.rpc("timers.list")} == {"a"}, timeout_s=10,
             what="a to lead")
    records = tmp_path / "only_c.jsonl"
    wait_for(lambda: len(read_records(records)) >= 3, timeout_s=15, what="three ticks")
    # When the leader is killed, b takes over and catches up what was missed
    a.signal(signal.SIGKILL)
    wait_for(lambda: b.rpc("timers.list")[0]["leader"] == "b", timeout_s=5,
             what="b to lead (failure detection)")
    seen = len(read_records(records))
    wait_for(lambda: len(read_records(records)) >= seen + 3, timeout_s=10,
             what="ticks fired by b")
    # a comes back and respects b's lease; its journal still held ticks it had fired
    a.start()
    wait_for(lambda: a.members() == {"a": "alive", "b": "alive", "c": "alive"}, timeout_s=15,
             what="a back")
    wait_for(lambda: a.rpc("timers.list")[0]["leader"] == "b", timeout_s=15,
             what="a to know b leads")
    # An edit saved on c takes effect on the leader, b, without a restart
    c.rpc("timers.put", {"name": "beat", "cron": "* * * * * *", "message": "c.record",
                         "misfire": "fire_all", "payload": {"edition": 2}})
    wait_for(lambda: read_records(records)[-1]["payload"] == {"edition": 2}, timeout_s=10,
             what="ticks with the edited payload")
    c.rpc("timers.delete", "beat")

    def ticks() -> list[float]:
        return sorted(float(r["id"].rsplit(":", 1)[1]) for r in read_records(records)
                      if r["id"].startswith("timer:beat:"))

    def gaps() -> set[float]:
        return {round(later - earlier, 3) for earlier, later in itertools.pairwise(ticks())}

    # Then over the whole run every scheduled second was delivered (those in flight land) ...
    wait_for(lambda: gaps() == {1.0}, timeout_s=15, what=f"no missing tick in {ticks()}")
    # ... and exactly once
    assert len(ticks()) == len(set(ticks())), "a tick was delivered twice"
