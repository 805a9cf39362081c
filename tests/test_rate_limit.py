"""A task's rate limit: per key without one key holding up the others, shown in status,
and held for the whole cluster while three nodes take casts; and a task that refuses
one publisher application's casts and calls (`refuse_tokens`) and takes the others'."""

from __future__ import annotations

import asyncio
import json
import struct
from collections import deque
from typing import Any

import pytest
from support import ALONE, ECHO, TEST_WORKERS, SeededNode, until, wait_for

from yptask.client import Client
from yptask.cluster.membership import Member
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.delivery.rate import Bucket, RateGate, key_of, node_share
from yptask.errors import ConfigError, NotAccepting
from yptask.node import Node
from yptask.store.records import Delivery, Envelope
from yptask.wire.bertrpc import Call, ErrorReply, Info, Reply, decode_packet, frame

pytestmark = pytest.mark.timeout(240)


def test_a_bucket_gives_its_burst_then_says_when_the_next_token_is_due():
    bucket = Bucket(rate=10.0, burst=2.0, now=0.0)
    assert bucket.take(0.0) == 0.0  # one token to start with
    assert bucket.take(0.0) == pytest.approx(0.1)
    assert bucket.take(1.0) == 0.0 and bucket.take(1.0) == 0.0  # refilled to its burst
    assert bucket.take(1.0) == pytest.approx(0.1)


def test_the_key_is_read_dotted_and_a_payload_without_it_shares_the_null_bucket():
    assert key_of({"user": {"id": 7}}, ("user", "id")) == 7
    assert key_of({"user": {}}, ("user", "id")) is None
    assert key_of([1, 2], ("user",)) is None


def test_a_node_takes_its_demand_s_share_and_all_of_it_when_no_peer_waits():
    task = TaskDef.from_dict({"name": "t", "messages": ["x"], "worker_class": "a:B",
                              "rate_limit": "30/s"})

    def peer(name: str, queued: int) -> Member:
        return Member(name, "boot", "l", load={"t": {"queued": queued, "in_flight": 0}})

    assert node_share(task, "a", 10, [peer("b", 10), peer("c", 20)]) == pytest.approx(0.25)
    assert node_share(task, "a", 10, [peer("b", 0), peer("c", 0)]) == 1.0
    assert node_share(task, "a", 0, [peer("b", 5)]) == 0.0


def test_a_key_over_its_limit_is_set_aside_and_the_next_key_goes_on():
    task = TaskDef.from_dict({"name": "t", "messages": ["x"], "worker_class": "a:B",
                              "rate_limit": "1/min", "rate_limit_key": "k"})
    loop, woken = _Loop(), []
    backlog = deque(_delivery(str(n), {"k": key}) for n, key in enumerate("aab"))
    gate = RateGate(lambda: task, "a", backlog, peers=list, demand=int, loop=loop,
                    signal=lambda: woken.append(True))

    def pop() -> Delivery | None:
        return backlog.popleft() if backlog else None

    assert gate.next(pop).message.id == "0"  # a's one token
    assert gate.next(pop).message.id == "2"  # a's second is set aside, b goes on
    assert gate.next(pop) is None and not backlog
    assert gate.set_aside == 1 and gate.waited == 1 and gate.waiting == 1
    # the pool is to be woken when a's next token is due, not polled
    assert len(loop.later) == 1 and 59 < loop.later[0][0] <= 60
    loop.later[0][1]()  # woken early: nothing is due yet
    assert woken and gate.set_aside == 1 and not backlog
    # When the limit is lifted, what was set aside goes at once
    task = TaskDef.from_dict({**task.to_dict(), "rate_limit": ""})
    assert gate.next(pop).message.id == "1"
    assert gate.set_aside == 0


class _Loop:
    """As much of an event loop as the gate uses: its wake-ups are kept, not run."""

    def __init__(self) -> None:
        self.later: list[tuple[float, Any]] = []

    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        fn(*args)

    def call_later(self, delay: float, fn: Any) -> None:
        self.later.append((delay, fn))


def _delivery(id: str, payload: Any) -> Delivery:
    return Delivery(Envelope(id, "x", payload, 0.0), "t", 1)


async def _put(node: Any, task: str, **fields: Any) -> None:
    await node.put_task({**(await node.task(task)), **fields})


async def test_one_key_over_its_limit_does_not_hold_up_the_others(node):
    # Given the echo task limited to 1 a second per user
    await _put(node, "echo", rate_limit="1/s", rate_limit_key="user.id")
    await until(lambda: _rate_limit(node, "echo", "1/s"), what="the limit applied")
    # When user 1 casts five messages, then user 2 one
    for n in range(5):
        await node.cast("x.echo", {"user": {"id": 1}, "n": n})
    await node.cast("x.echo", {"user": {"id": 2}})
    # Then user 2's is handled while user 1's still wait
    await until(lambda: _handled(node, "echo", 2), what="user 1's first and user 2's")
    state = (await node.status())["tasks"]["echo"]
    assert state["queued"] + state["in_flight"] >= 3, state
    assert state["rate_limit"] == "1/s" and state["rate_limit_key"] == "user.id"
    assert state["rate_waited"] >= 1, state
    # and user 1's are all handled in the end
    await until(lambda: _handled(node, "echo", 6), timeout_s=60, what="all handled")


async def _rate_limit(node: Any, task: str, limit: str) -> bool:
    return (await node.status())["tasks"][task]["rate_limit"] == limit


async def _handled(node: Any, task: str, count: int) -> bool:
    return (await node.status())["tasks"][task]["handled"] >= count


LIMIT = 20  # a second, for the whole cluster
WINDOW_S = 20.0


def _limited_task(records: Any) -> str:
    return f"""
[[task]]
name = "rec"
worker_class = "sample:Sample"
messages = ["*.record"]
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
settings = {{ record_path = "{records}" }}
nodes = {{ "*" = 2 }}
rate_limit = "{LIMIT}/s"
"""


@pytest.mark.parametrize("casting", [3, 1], ids=["three nodes cast", "one node casts"])
@pytest.mark.slow
def test_the_limit_holds_for_the_cluster_while_nodes_take_casts(tmp_path, casting):
    records = tmp_path / "rec.jsonl"
    tasks = _limited_task(records)
    with SeededNode(tmp_path, "a", tasks, None) as a, \
            SeededNode(tmp_path, "b", tasks, a.link) as b, \
            SeededNode(tmp_path, "c", tasks, a.link) as c:
        nodes = (a, b, c)
        wait_for(lambda: all(len(n.rpc("nodes")) == 3 for n in nodes), what="a 3-node mesh")
        # Given the casting nodes hold far more casts than the limit lets through in the
        # window (1.5 x), the others none (they must leave the casting nodes the limit)
        per_node = int(LIMIT * (WINDOW_S + 10) * 1.5 / casting) // 100 * 100
        for n in nodes[:casting]:
            for start in range(0, per_node, 100):
                n.cast_batch("x.record", [{"n": i} for i in range(start, start + 100)])
        # When the deliveries run for a while (the shares settle), then a window of 20 s
        wait_for(lambda: len(_records(records)) >= LIMIT * 3, timeout_s=120,
                 what="the deliveries under way")
        first = min(r["at"] for r in _records(records))
        start = first + 3.0
        wait_for(lambda: max(r["at"] for r in _records(records)) > start + WINDOW_S + 1,
                 timeout_s=120, what="the window passed")
        # Then the handled rate in the window is within 10 % of the limit
        seen = _records(records)
        in_window = [r for r in seen if start <= r["at"] < start + WINDOW_S]
        rate = len(in_window) / WINDOW_S
        assert abs(rate - LIMIT) <= LIMIT * 0.10, (rate, _per_node(nodes))
        # with the casting nodes' deliveries still waiting (the limit, not the supply, held)
        states = [n.rpc("status")["tasks"]["rec"] for n in nodes[:casting]]
        assert all(s["queued"] > 0 and s["rate_waited"] > 0 for s in states), states


def _records(path: Any) -> list[dict[str, Any]]:
    """The deliveries recorded so far: whole lines only (a worker may be writing one)."""
    if not path.exists():
        return []
    lines = path.read_text().split("\n")[:-1]  # what follows the last newline is partial
    return [json.loads(line) for line in lines]


def _per_node(nodes: Any) -> dict[str, Any]:
    return {n.name: {k: v for k, v in n.rpc("status")["tasks"]["rec"].items()
                     if k in ("queued", "handled", "rate_share", "rate_waited")}
            for n in nodes}


SHOP, BLOG = "shop-token-0123456789", "blog-token-0123456789"


@pytest.fixture
async def locked(tmp_path):
    """A node with two publisher applications, shop and blog, and the echo task."""
    started = await Node.start(
        NodeConfig(name="locked", data_dir=tmp_path / "data", **ALONE,
                   api_tokens={"shop": SHOP, "blog": BLOG}), tasks=[TaskDef.from_dict(ECHO)])
    try:
        yield started
    finally:
        await started.stop()


async def _bert(node: Node, *packets: Any) -> Any:
    """Send packets on one BERT-RPC connection; return the last answer."""
    host, port = node.bert_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for packet in packets:
            writer.write(frame(packet))
        await writer.drain()
        answer = None
        for packet in packets:
            if not isinstance(packet, Info):
                header = await reader.readexactly(4)
                answer = decode_packet(await reader.readexactly(struct.unpack(">I", header)[0]))
        return answer
    finally:
        writer.close()


async def test_a_task_refuses_one_publisher_s_token_and_takes_the_others(locked):
    # Given echo refuses what the shop application sends
    await _put(locked, "echo", refuse_tokens=["shop"])
    url = locked.http_url + "/rpc"
    shop, blog = Client(url, token=SHOP), Client(url, token=BLOG)
    # Then the shop's casts and calls are refused over HTTP, naming the task and the shop
    with pytest.raises(NotAccepting, match="task echo is not accepting messages from 'shop'"):
        await asyncio.to_thread(shop.cast, "x.echo", {"n": 1})
    with pytest.raises(NotAccepting):
        await asyncio.to_thread(shop.call, "x.echo", 1)
    # and over BERT-RPC
    refused = await _bert(locked, Info("auth", [SHOP]), Call("yptask", "call", ["x.echo", 2, 5]))
    assert isinstance(refused, ErrorReply) and refused.error_class == "NotAccepting", refused
    # while the blog's are taken on both surfaces
    assert (await asyncio.to_thread(blog.cast, "x.echo", {"n": 3}))["tasks"] == ["echo"]
    assert await asyncio.to_thread(blog.call, "x.echo", 4) == 4
    taken = await _bert(locked, Info("auth", [BLOG]), Call("yptask", "call", ["x.echo", 5, 5]))
    assert taken == Reply(5)
    # and once the shop is no longer listed, its calls are taken again
    await _put(locked, "echo", refuse_tokens=[])
    assert await asyncio.to_thread(shop.call, "x.echo", 6) == 6


def test_refuse_tokens_must_be_a_list_of_names():
    base = {"name": "t", "messages": ["x"], "worker_class": "a:B"}
    assert TaskDef.from_dict({**base, "refuse_tokens": ["a", "a"]}).refuse_tokens == ("a",)
    with pytest.raises(ConfigError, match="refuse_tokens"):
        TaskDef.from_dict({**base, "refuse_tokens": "shop"})
