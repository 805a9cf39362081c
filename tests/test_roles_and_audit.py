"""The read-only role and the audit log, against real nodes over real HTTP and TCP.

A viewer (a viewer token, or the viewer password and its console session) reads
everything and changes nothing; every change, from any surface, lands in the
audit log, which every node of a cluster holds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import subprocess
import sys

import aiohttp
import pytest
from support import ALONE, ECHO, until

from yptask.access.passwords import hash_password
from yptask.access.policy import PUBLISHING, READING, kind_of
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.endpoints.bert import FUNCTIONS
from yptask.errors import ConfigError
from yptask.node import Node
from yptask.store.config_map import AUDIT_KEY
from yptask.store.replicated import (
    PRUNE_EVERY_WRITES,
    Entry,
    HybridClock,
    ReplicatedStore,
    Retention,
    Version,
)
from yptask.web.methods import METHODS
from yptask.wire.bertrpc import Call, ErrorReply, Info, Reply, decode_packet, frame

ADMIN_PASSWORD = "correct horse battery"
VIEWER_PASSWORD = "look but do not touch"
VIEWER_TOKEN = "viewer-token-0123456789"
COOKIE = "roles-and-audit-cookie"
FORBIDDEN = -32024
UNAUTHORIZED = -32015


@pytest.fixture(scope="module")
def hashes() -> tuple[str, str]:
    return hash_password(ADMIN_PASSWORD), hash_password(VIEWER_PASSWORD)


@pytest.fixture
async def node(tmp_path, hashes):
    admin_hash, viewer_hash = hashes
    started = await Node.start(
        NodeConfig(name="guarded", data_dir=tmp_path / "data", console_password_hash=admin_hash,
                   viewer_password_hash=viewer_hash, viewer_tokens=(VIEWER_TOKEN,), **ALONE),
        tasks=[TaskDef.from_dict(ECHO)])
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def pair(tmp_path):
    """Two in-process nodes, a joined to b, each seeing the other."""
    common = {**ALONE, "cookie": COOKIE, "cluster": "audit-pair", "heartbeat_s": 0.1}
    b = await Node.start(NodeConfig(name="b", data_dir=tmp_path / "b", **common),
                         tasks=[TaskDef.from_dict(ECHO)])
    assert b.cluster is not None
    try:
        a = await Node.start(NodeConfig(name="a", data_dir=tmp_path / "a",
                                        join=(b.cluster.link_address,), **common),
                             tasks=[TaskDef.from_dict(ECHO)])
    except BaseException:
        await b.stop()
        raise
    try:
        for one, other in ((a, b), (b, a)):
            await until(lambda o=one, p=other: o.cluster is not None
                        and p.name in [m.name for m in o.cluster.up()], what="the pair to link")
        yield a, b
    finally:
        await a.stop()
        await b.stop()


async def rpc(session: aiohttp.ClientSession, node: Node, method: str, headers=None,
              **params):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    async with session.post(node.http_url + "/rpc", json=body,
                            headers=headers or {}) as response:
        return await response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ------------------------------------------------------------------ the read-only role


async def test_a_viewer_token_reads_everything_and_is_refused_every_change(node):
    viewer = bearer(VIEWER_TOKEN)
    async with aiohttp.ClientSession() as session:
        # Given a viewer token, When it reads: status, tasks, metrics answer
        for method, params in (("status", {}), ("tasks.list", {}), ("tasks.get",
                               {"name": "echo"}), ("metrics", {}), ("nodes", {}),
                               ("dead.list", {}), ("failures.list", {}), ("timers.list", {}),
                               ("scheduled.list", {}), ("audit.list", {})):
            answer = await rpc(session, node, method, viewer, **params)
            assert "result" in answer, (method, answer)
        assert (await rpc(session, node, "auth.whoami", viewer))["result"] == {
            "role": "viewer", "via": "token"}
        # When it asks for a change: Forbidden, saying why, and nothing changed
        for method, params in (("tasks.put", {"definition": {**ECHO, "workers": 3}}),
                               ("tasks.pause", {"name": "echo"}),
                               ("tasks.restart", {"name": "echo"}),
                               ("tasks.delete", {"name": "echo"}),
                               ("dead.replay", {"id": "x"}), ("cancel", {"id": "x"}),
                               ("timers.put", {"definition": {"name": "t", "every_s": 60,
                                                              "message": "upai.echo"}}),
                               ("cast", {"name": "upai.echo", "msg": {}}),
                               ("call", {"name": "upai.echo", "msg": {}})):
            answer = await rpc(session, node, method, viewer, **params)
            assert answer["error"]["code"] == FORBIDDEN, (method, answer)
            assert answer["error"]["data"]["error_class"] == "Forbidden"
            assert "viewer" in answer["error"]["message"]
        admin = bearer(node.admin_token)
        assert (await rpc(session, node, "tasks.get", admin, name="echo"))["result"][
            "paused"] is False
        assert (await rpc(session, node, "timers.list", admin))["result"] == []
        assert (await rpc(session, node, "auth.whoami", admin))["result"] == {
            "role": "admin", "via": "token"}
        # A wrong token is no viewer: Unauthorized, as before
        wrong = await rpc(session, node, "status", bearer("not-a-token-at-all-x"))
        assert wrong["error"]["code"] == UNAUTHORIZED
        # /metrics: the viewer may scrape it
        async with session.get(node.http_url + "/metrics", headers=viewer) as response:
            assert response.status == 200 and "yptask" in await response.text()
        async with session.get(node.http_url + "/metrics") as response:
            assert response.status == 401


async def test_the_viewer_password_opens_a_read_only_console_session(node):
    url = node.http_url
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[url])
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        # Given the viewer password, When it logs in to the console
        async with session.post(url + "/login", data={"password": VIEWER_PASSWORD},
                                allow_redirects=False) as response:
            assert response.headers["Location"] == "/"
        async with session.get(url + "/session") as response:
            answer = await response.json()
        assert answer["role"] == "viewer"
        csrf = {"X-CSRF-Token": answer["csrf"]}
        # Then its session reads, and says it is a viewer's
        assert "result" in await rpc(session, node, "tasks.list", csrf)
        assert (await rpc(session, node, "auth.whoami", csrf))["result"] == {
            "role": "viewer", "via": "session"}
        # and every change, casts from the console included, is refused
        for method, params in (("tasks.pause", {"name": "echo"}),
                               ("cast", {"name": "upai.echo", "msg": {}})):
            answer = await rpc(session, node, method, csrf, **params)
            assert answer["error"]["code"] == FORBIDDEN, answer
    # The admin password's session may change things
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[url])
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.post(url + "/login", data={"password": ADMIN_PASSWORD},
                                allow_redirects=False) as response:
            assert response.headers["Location"] == "/"
        async with session.get(url + "/session") as response:
            answer = await response.json()
        assert answer["role"] == "admin"
        csrf = {"X-CSRF-Token": answer["csrf"]}
        assert (await rpc(session, node, "auth.whoami", csrf))["result"] == {
            "role": "admin", "via": "session"}
        assert "result" in await rpc(session, node, "tasks.pause", csrf, name="echo")
    # HTTP Basic with the viewer password: a viewer too
    async with aiohttp.ClientSession() as session:
        basic = "Basic " + base64.b64encode(f"ops:{VIEWER_PASSWORD}".encode()).decode()
        answer = await rpc(session, node, "auth.whoami", {"Authorization": basic})
        assert answer["result"] == {"role": "viewer", "via": "password"}
        answer = await rpc(session, node, "tasks.resume", {"Authorization": basic},
                           name="echo")
        assert answer["error"]["code"] == FORBIDDEN
    # The audit log says who did what, and how they showed it
    entries = await node.audit(10, None, None)
    assert [(e["method"], e["role"], e["via"], e["who"], e["outcome"]) for e in entries] == [
        ("tasks.resume", "viewer", "password", "viewer password", "Forbidden"),
        ("tasks.pause", "admin", "session", "console password", "ok"),
        ("tasks.pause", "viewer", "session", "viewer password", "Forbidden")]


async def _bert(node: Node, *frames: bytes):
    host, port = node.bert_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"".join(frames))
        await writer.drain()
        header = await reader.readexactly(4)
        return decode_packet(await reader.readexactly(struct.unpack(">I", header)[0]))
    finally:
        writer.close()
        await writer.wait_closed()


async def test_over_bert_rpc_a_viewer_may_ask_who_it_is_and_not_cancel(node):
    auth = frame(Info("auth", [VIEWER_TOKEN]))
    assert await _bert(node, auth, frame(Call("yptask", "whoami", []))) == Reply(
        {"role": "viewer", "via": "token"})
    refused = await _bert(node, auth, frame(Call("yptask", "cancel", ["some-id"])))
    assert isinstance(refused, ErrorReply)
    assert (refused.code, refused.error_class) == (124, "Forbidden")
    admin = frame(Info("auth", [node.admin_token]))
    assert await _bert(node, admin, frame(Call("yptask", "whoami", []))) == Reply(
        {"role": "admin", "via": "token"})
    nobody = await _bert(node, frame(Call("yptask", "whoami", [])))
    assert isinstance(nobody, ErrorReply) and nobody.error_class == "Unauthorized"
    # the refused cancel is in the audit log, as the viewer's
    entries = await node.audit(10, None, "some-id")
    assert [(e["method"], e["role"], e["outcome"]) for e in entries] == [
        ("cancel", "viewer", "Forbidden")]


def test_every_method_of_every_surface_is_classified():
    # Every JSON-RPC method and every BERT-RPC function is publishing, a read or a
    # change; the reads are exactly those named, so a new method is a change.
    surfaces = set(METHODS) | set(FUNCTIONS.values())
    assert surfaces >= READING, READING - surfaces  # no stale names in the policy
    for method in surfaces:
        assert kind_of(method) in ("publish", "read", "change")
        assert (kind_of(method) == "read") == (method in READING)
        assert (kind_of(method) == "publish") == (method in PUBLISHING)
    changes = {m for m in surfaces if kind_of(m) == "change"}
    assert changes == {"tasks.put", "tasks.delete", "tasks.restart", "tasks.pause",
                       "tasks.resume", "timers.put", "timers.delete", "timers.run_now",
                       "timers.pause", "timers.resume", "messages.bulk", "dead.replay", "cancel",
                       "nodes.forget"}, "a method was added: classify it in READING or here"
    assert kind_of("some.method.added.later") == "change"


def test_viewer_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="viewer_tokens"):
        NodeConfig.from_dict({"viewer_tokens": ["short"]})
    with pytest.raises(ConfigError, match="viewer_password_hash"):
        NodeConfig.from_dict({"viewer_password_hash": "plain text"})
    tokens = tmp_path / "viewers"
    tokens.write_text(f"# the dashboards\n{VIEWER_TOKEN}\n\nanother-viewer-token-42\n")
    config = NodeConfig.from_dict({"viewer_tokens_file": str(tokens),
                                   "viewer_tokens": ["inline-viewer-token-1"]})
    assert config.viewer_token_list() == ("inline-viewer-token-1", VIEWER_TOKEN,
                                          "another-viewer-token-42")
    tokens.write_text("tiny\n")
    with pytest.raises(ConfigError, match="viewer_tokens_file"):
        config.viewer_token_list()


# ------------------------------------------------------------------ the audit log


async def test_changes_are_audited_with_who_and_target_on_every_node_and_casts_are_not(pair):
    a, b = pair
    async with aiohttp.ClientSession() as session:
        admin = bearer(a.admin_token)
        # Given changes made on node a with its admin token
        definition = {**ECHO, "name": "audited", "messages": ["audited.*"]}
        assert "result" in await rpc(session, a, "tasks.put", admin, definition=definition)
        assert "result" in await rpc(session, a, "tasks.pause", admin, name="audited")
        assert "result" in await rpc(session, a, "tasks.restart", admin, name="audited")
        assert "result" in await rpc(session, a, "tasks.delete", admin, name="audited")
        failed = await rpc(session, a, "tasks.pause", admin, name="no-such-task")
        assert failed["error"]["data"]["error_class"] == "UnknownTask"
        # and casts and calls, which are no changes
        assert "result" in await rpc(session, a, "cast", name="upai.echo", msg={})
        assert "result" in await rpc(session, a, "call", name="upai.echo", msg={})
        # Then a's audit log has the changes, newest first, with who, where and the target
        expected = [("tasks.pause", "no-such-task", "UnknownTask"),
                    ("tasks.delete", "audited", "ok"), ("tasks.restart", "audited", "ok"),
                    ("tasks.pause", "audited", "ok"), ("tasks.put", "audited", "ok")]
        here = (await rpc(session, a, "audit.list", admin))["result"]
        assert [(e["method"], e["target"], e["outcome"]) for e in here] == expected
        assert {(e["node"], e["role"], e["via"], e["who"], e["address"]) for e in here} == {
            ("a", "admin", "token", "admin token", "127.0.0.1")}
        assert not [e for e in here if e["method"] in ("cast", "call")]
        # and so has b's, which got them from a
        async def b_has_them():
            there = (await rpc(session, b, "audit.list", bearer(b.admin_token)))["result"]
            return [(e["method"], e["target"], e["outcome"]) for e in there] == expected
        await until(b_has_them, what="a's audit entries to reach b")
        # Paging: two at a time, each page older than the last entry of the one before
        pages, before = [], None
        while True:
            params = {"limit": 2, **({"before": before} if before else {})}
            page = (await rpc(session, b, "audit.list", bearer(b.admin_token),
                              **params))["result"]
            if not page:
                break
            pages.append([e["method"] for e in page])
            before = page[-1]["id"]
        assert [len(p) for p in pages] == [2, 2, 1]
        assert [m for page in pages for m in page] == [m for m, _, _ in expected]
        # and by target
        only = (await rpc(session, b, "audit.list", bearer(b.admin_token),
                          target="no-such-task"))["result"]
        assert [e["method"] for e in only] == ["tasks.pause"]
        bad = await rpc(session, b, "audit.list", bearer(b.admin_token), limit=0)
        assert bad["error"]["code"] == -32602


async def test_a_node_that_was_away_gets_the_entries_it_missed(pair):
    a, b = pair
    # Given an entry written on a while b's copy of the map never got the push
    assert b._config_map is not None
    await a.audit_log.record("tasks.pause", ["while-away"])
    await until(lambda: b.audit(10, None, "while-away"), what="the push to b")
    key = AUDIT_KEY + (await b.audit(1, None, "while-away"))[0]["id"]
    store = b._config_map._store  # drop it from b, as if the push had been lost
    with store._lock:
        store._db.execute("DELETE FROM entries WHERE key = ?", (key,))
    assert await b.audit(10, None, "while-away") == []
    # Then anti-entropy brings it back
    await until(lambda: b.audit(10, None, "while-away"), what="anti-entropy to heal b")


def test_pruning_keeps_the_newest_entries_of_the_union_and_refuses_older_ones(tmp_path):
    now = [1_000_000.0]
    bound = Retention("audit:", max_entries=3, max_age_s=100.0)
    stores = []
    for name in ("x", "y"):
        store = ReplicatedStore(tmp_path / f"{name}.db", HybridClock(name, lambda: now[0]))
        store.bound(bound)
        stores.append(store)
    x, y = stores
    try:
        def key(second: float, node: str) -> str:
            return f"audit:{int(second * 1000):013d}-{node}-0"
        # x writes 4 entries (keeps its newest 3), y one older than all of them
        for second in (999_990, 999_991, 999_992, 999_993):
            x.put(key(second, "x"), {"n": second})
        y.put(key(999_950, "y"), {"n": 0})
        x.prune()  # (local writes count the bound every PRUNE_EVERY_WRITES, merges always)
        assert [e.key for e in x.entries("audit:")] == [key(s, "x") for s in
                                                         (999_991, 999_992, 999_993)]
        # When they trade everything both ways (anti-entropy), both keep the same newest 3
        x.merge(y.newer_than(x.digest()))  # too old for x's bound: refused
        y.merge(x.newer_than(y.digest()))
        x.merge(y.newer_than(x.digest()))
        assert [e.key for e in x.entries("audit:")] == [e.key for e in y.entries("audit:")]
        assert len(x.entries("audit:")) == 3
        # and past the age bound, entries go, on every node alike
        now[0] += 92.5  # the horizon: 999 992.5 s
        x.prune()
        y.prune()
        assert [e.key for e in x.entries("audit:")] == [key(999_993, "x")] == \
            [e.key for e in y.entries("audit:")]
        # an entry merged from a node that still has a too-old one is refused
        stale = Entry(key(999_990, "x"), Version(999_990_000, 0, "x"), {"n": 1})
        assert x.merge([stale]) == []
    finally:
        x.close()
        y.close()


def test_local_writes_keep_the_bound_within_a_few_entries(tmp_path):
    store = ReplicatedStore(tmp_path / "c.db", HybridClock("x"))
    store.bound(Retention("audit:", max_entries=10, max_age_s=1e12))  # no age bound
    try:
        for n in range(PRUNE_EVERY_WRITES * 3):
            store.put(f"audit:{n:013d}-x-0", {"n": n})
            assert len(store.entries("audit:")) <= 10 + PRUNE_EVERY_WRITES
        store.put("task:other", {"name": "other"})  # other prefixes are not bounded
        store.prune()
        assert [e.value for e in store.entries("audit:")] == [
            {"n": n} for n in range(PRUNE_EVERY_WRITES * 3 - 10, PRUNE_EVERY_WRITES * 3)]
        assert store.get("task:other") is not None
        # the digest and what a peer lacks carry versions only / the entries it lacks
        assert set(store.digest()) == {e.key for e in store.entries()}
        lacking = store.newer_than({key: v for key, v in store.digest().items()
                                    if key != "task:other"})
        assert [e.key for e in lacking] == ["task:other"]
    finally:
        store.close()


async def test_yptask_audit_prints_the_log(node):
    # the command runs in a subprocess, waited for off the loop the node runs on
    async with aiohttp.ClientSession() as session:
        assert "result" in await rpc(session, node, "tasks.pause", bearer(node.admin_token),
                                     name="echo")
    env = {**os.environ, "YPTASK_ADMIN_TOKEN": VIEWER_TOKEN}  # a viewer may read the log
    argv = [sys.executable, "-m", "yptask", "audit", "--url", node.http_url + "/rpc"]
    # run in the data dir: from the source tree, `-m yptask` imports the unmapped sources
    shown = await asyncio.to_thread(subprocess.run, argv, env=env, capture_output=True,
                                    text=True, timeout=60, cwd=node.data_dir)
    assert shown.returncode == 0, shown.stderr
    assert "tasks.pause" in shown.stdout and "admin token" in shown.stdout
    as_json = await asyncio.to_thread(subprocess.run, [*argv, "--json", "--limit", "1"],
                                      env=env, capture_output=True, text=True, timeout=60,
                                      cwd=node.data_dir)
    rows = json.loads(as_json.stdout)
    assert [(r["method"], r["target"], r["who"]) for r in rows] == [
        ("tasks.pause", "echo", "admin token")]
