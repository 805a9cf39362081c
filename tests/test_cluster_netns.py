"""A cluster across network namespaces: cut one node off, see it declared down, restore
its link, see config and queues catch up.

Each node runs in its own namespace, wired by a veth pair into a bridge in a
fourth one; addresses are in 198.18.0.0/24 (reserved for benchmarking) and
exist only inside those namespaces. Needs root and `ip netns`; every namespace
is deleted at the end, pass or fail. The test talks to the nodes through
`ip netns exec ... yptask`, since their addresses are unreachable from here.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from support import REPO, TEST_WORKERS, NodeProcess, read_records, wait_for

sys.path.insert(0, str(REPO / "bench"))
from chaos_net import ip, namespaces_unavailable, star  # one copy for both

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def netns_ok() -> None:
    why = namespaces_unavailable()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the network-namespace test: {why}")
        pytest.skip(f"network namespaces unavailable: {why}")


class Lab:
    """A bridge namespace and one namespace per node, each with a veth into the bridge."""

    def __init__(self, nodes: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.bridge = f"ypt{tag}br"
        self.spaces = [f"ypt{tag}n{i}" for i in range(1, nodes + 1)]
        self.addresses = [f"198.18.0.{10 + i}" for i in range(1, nodes + 1)]

    def __enter__(self) -> Lab:
        try:
            star(self.bridge, self.spaces, self.addresses)
        except BaseException:
            self.__exit__()
            raise
        return self

    def cut(self, index: int, up: bool) -> None:
        ip("-n", self.bridge, "link", "set", f"p{index}", "up" if up else "down")

    def __exit__(self, *_: object) -> None:
        for space in [*self.spaces, self.bridge]:  # deleting a namespace removes its links
            subprocess.run(["ip", "netns", "del", space], check=False, capture_output=True)


TASKS = f"""
[[task]]
name = "on_n3"
worker_class = "sample:Sample"
messages = ["n3.*"]
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
settings = {{ record_path = "@RECORDS@/on_n3.jsonl" }}
nodes = {{ "n3" = 1 }}

[[task]]
name = "tick"
worker_class = "sample:Sample"
messages = ["beat.*"]
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
settings = {{ record_path = "@RECORDS@/ticks.jsonl" }}
nodes = {{ "*" = 1 }}
"""


class NamespacedNode(NodeProcess):
    """A `yptask node` inside a namespace, bound to that namespace's address; started here."""

    def __init__(self, tmp: Path, space: str, name: str, address: str) -> None:
        self.space = space
        super().__init__(
            tmp / name, TASKS.replace("@RECORDS@", str(tmp)), name, cluster=[],
            config='[node]\ncluster = "lab"\ncookie = "lab-cookie-42"\n'
                   'heartbeat_s = 0.25\ndown_after_s = 2.0\ntimer_lease_s = 2.0\n',
            prefix=["ip", "netns", "exec", space], http=f"{address}:0", bert=f"{address}:0",
            link=f"{address}:0")
        self.start()

    def yptask(self, *args: str) -> Any:
        done = subprocess.run(["ip", "netns", "exec", self.space, "yptask", *args, "--json",
                               "--url", self.url], check=False, capture_output=True, text=True,
                              timeout=30,
                              env={**os.environ, "YPTASK_ADMIN_TOKEN": self.admin_token})
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def members(self) -> dict[str, str]:
        return {m["name"]: m["state"] for m in self.yptask("nodes")}


@pytest.mark.slow
def test_a_node_cut_off_is_declared_down_and_catches_up_when_its_link_returns(
        netns_ok, tmp_path):
    with Lab(3) as lab:
        nodes: list[NamespacedNode] = []
        try:
            for i, (space, address) in enumerate(zip(lab.spaces, lab.addresses, strict=True)):
                nodes.append(NamespacedNode(tmp_path, space, f"n{i + 1}", address))
            n1, _, n3 = nodes
            everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
            for node in nodes:
                wait_for(lambda n=node: n.members() == everyone, timeout_s=20,
                         what=f"{node.name} to find the others over mDNS")
            # When n3's cable is pulled
            lab.cut(2, up=False)
            wait_for(lambda: n1.members()["n3"] == "down", timeout_s=10, what="n3 down")
            # and, meanwhile, its task is edited and casts for it arrive at n1
            edited = TASKS.replace("@RECORDS@", str(tmp_path)).replace(
                "settings = {", "settings = { edition = 2,")
            (tmp_path / "edit.toml").write_text(edited)
            n1.yptask("task", "apply", str(tmp_path / "edit.toml"))
            ids = [n1.yptask("cast", "n3.record", json.dumps({"n": i}))["id"] for i in range(5)]
            # Then, once the cable is back, n3 is alive again, has the edit, handles the casts
            lab.cut(2, up=True)
            wait_for(lambda: n1.members()["n3"] == "alive", timeout_s=20, what="n3 back")
            wait_for(lambda: n3.yptask("task", "show", "on_n3")["settings"].get("edition") == 2,
                     timeout_s=10, what="the edit to reach n3")
            wait_for(lambda: {r["id"] for r in read_records(tmp_path / "on_n3.jsonl")}
                     >= set(ids), timeout_s=20, what="the queued casts to reach n3")
        finally:
            for node in nodes:
                node.kill()


@pytest.mark.slow
def test_a_partitioned_timer_leader_stops_firing_and_no_tick_is_doubled_or_missed(
        netns_ok, tmp_path):
    """The leader's half of a partition is a minority: it cannot renew its lease, so it
    stops firing before the majority elects another leader, which catches up."""
    records = tmp_path / "ticks.jsonl"

    def ticks() -> list[float]:
        return sorted(float(r["id"].rsplit(":", 1)[1]) for r in read_records(records))

    with Lab(3) as lab:
        nodes: list[NamespacedNode] = []
        try:
            for i, (space, address) in enumerate(zip(lab.spaces, lab.addresses, strict=True)):
                nodes.append(NamespacedNode(tmp_path, space, f"n{i + 1}", address))
            everyone = {"n1": "alive", "n2": "alive", "n3": "alive"}
            for node in nodes:
                wait_for(lambda n=node: n.members() == everyone, timeout_s=20,
                         what=f"{node.name} to find the others over mDNS")
            nodes[0].yptask("timer", "apply", str(_timer_file(tmp_path)))
            wait_for(lambda: len(ticks()) >= 3, timeout_s=20, what="three ticks")
            leader = wait_for(lambda: nodes[0].yptask("timers")[0]["leader"], timeout_s=10,
                              what="a leader")
            cut = int(leader[1:]) - 1
            rest = [node for i, node in enumerate(nodes) if i != cut]
            lab.cut(cut, up=False)
            try:
                wait_for(lambda: rest[0].yptask("timers")[0]["leader"] not in ("", leader),
                         timeout_s=20, what="the majority to elect another leader")
                seen = len(ticks())
                wait_for(lambda: len(ticks()) >= seen + 5, timeout_s=20,
                         what="ticks fired by the majority's leader")
            finally:
                lab.cut(cut, up=True)
            wait_for(lambda: nodes[cut].members() == everyone, timeout_s=20, what="healed")
            seen = len(ticks())
            wait_for(lambda: len(ticks()) >= seen + 3, timeout_s=20, what="ticks after")
            nodes[0].yptask("timer", "delete", "beat")
            wait_for(lambda: {round(b - a, 3) for a, b in itertools.pairwise(
                sorted(set(ticks())))} == {1.0}, timeout_s=20, what=f"no gap in {ticks()}")
            doubled = sorted({t for t in ticks() if ticks().count(t) > 1})
            assert not doubled, f"{len(doubled)} tick(s) handled twice: {doubled}"
        finally:
            for node in nodes:
                node.kill()


def _timer_file(folder: Path) -> Path:
    path = folder / "timers.toml"
    path.write_text('[[timer]]\nname = "beat"\ncron = "* * * * * *"\n'
                    'message = "beat.record"\nmisfire = "fire_all"\n')
    return path
