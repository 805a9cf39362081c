"""A default node cannot be driven by a web page or by another local user: Host, Origin,
Content-Type and the admin token, tried the way an attacker would, over real HTTP.

A real node in this process with its defaults (no password, no tokens), on loopback.
"""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest
from support import ALONE, ECHO

from yptask.access import policy
from yptask.access.passwords import hash_password
from yptask.access.policy import AccessPolicy
from yptask.access.throttle import LoginThrottle
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.errors import ProtocolError, Unauthorized, wire_code
from yptask.node import Node
from yptask.web.origin import OriginCheck, host_name

PWN = {"name": "pwn", "messages": ["p.x"], "command": ["sh", "-c", "id > pwned"],
       "nodes": {"*": 1}}
UNAUTHORIZED = wire_code(Unauthorized).jsonrpc_code


@pytest.fixture
async def node(tmp_path):
    started = await Node.start(NodeConfig(name="plain", data_dir=tmp_path / "data", **ALONE),
                               tasks=[TaskDef.from_dict(ECHO)])
    yield started
    await started.stop()


async def post(node: Node, body: object, headers: dict[str, str]) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.post(
            node.http_url + "/rpc", data=json.dumps(body), headers=headers) as response:
        return response.status, json.loads(await response.read() or b"null")


def put_pwn() -> dict:
    return {"jsonrpc": "2.0", "id": 1, "method": "tasks.put", "params": [PWN]}


async def task_names(node: Node) -> list[str]:
    return [t["name"] for t in await node.tasks()]


async def test_a_text_plain_post_like_a_no_cors_fetch_runs_nothing(node):
    # Given the body a page sends with fetch(..., {mode: "no-cors"}): text/plain
    status, answer = await post(node, put_pwn(), {"Content-Type": "text/plain"})
    # Then it is refused before any method runs, and no task was made
    assert status == 415
    assert answer["error"]["code"] == wire_code(ProtocolError).jsonrpc_code
    assert "application/json" in answer["error"]["message"]
    for form in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        assert (await post(node, put_pwn(), {"Content-Type": form}))[0] == 415
    assert await task_names(node) == ["echo"]


async def test_admin_methods_want_the_admin_token_even_on_loopback(node):
    json_only = {"Content-Type": "application/json"}
    # Without a credential, another local user's process gets no admin method
    _, answer = await post(node, put_pwn(), json_only)
    assert answer["error"]["code"] == UNAUTHORIZED
    assert "admin token" in answer["error"]["message"]
    for method in ("status", "tasks.list", "dead.list"):
        _, answer = await post(node, {"jsonrpc": "2.0", "id": 1, "method": method}, json_only)
        assert answer["error"]["code"] == UNAUTHORIZED, method
    # nor with a wrong token, as Bearer or as Basic
    wrong = {**json_only, "Authorization": "Bearer not-the-token"}
    assert (await post(node, put_pwn(), wrong))[1]["error"]["code"] == UNAUTHORIZED
    basic = base64.b64encode(b"x:not-the-token").decode()
    assert (await post(node, put_pwn(), {**json_only, "Authorization": f"Basic {basic}"})
            )[1]["error"]["code"] == UNAUTHORIZED
    assert await task_names(node) == ["echo"]
    # Publishing stays open on loopback, as the docs say
    _, cast = await post(node, {"jsonrpc": "2.0", "id": 2, "method": "call",
                                "params": ["upai.echo", 7]}, json_only)
    assert cast["result"] == 7
    # The token from the data dir (0600) opens the admin methods
    token = (node.data_dir / "admin-token").read_text().strip()
    assert token == node.admin_token
    assert (node.data_dir / "admin-token").stat().st_mode & 0o077 == 0
    _, answer = await post(node, {"jsonrpc": "2.0", "id": 1, "method": "tasks.list"},
                           {**json_only, "Authorization": f"Bearer {token}"})
    assert [t["name"] for t in answer["result"]] == ["echo"]


async def test_a_foreign_host_header_is_refused_on_every_route(node):
    # Given DNS rebinding: a page of attacker.example, resolved to 127.0.0.1
    token = {"Authorization": f"Bearer {node.admin_token}"}
    async with aiohttp.ClientSession() as session:
        for path in ("/", "/healthz", "/session", "/login"):
            async with session.get(node.http_url + path, headers={
                    "Host": "attacker.example:8700"}, allow_redirects=False) as response:
                assert response.status == 403, path
                assert "not a name of this node" in await response.text()
        # even with the token (the page cannot have it, but the check comes first)
        async with session.post(node.http_url + "/rpc", json=put_pwn(), headers={
                **token, "Host": "attacker.example"}) as response:
            assert response.status == 403
            assert (await response.json())["error"]["code"] == UNAUTHORIZED
        # The node's own names pass
        port = node.http_url.rsplit(":", 1)[1]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
            async with session.get(node.http_url + "/healthz",
                                   headers={"Host": host}) as response:
                assert response.status == 200, host
    assert await task_names(node) == ["echo"]


async def test_a_foreign_origin_is_refused_for_every_method(node):
    headers = {"Content-Type": "application/json", "Origin": "http://evil.example",
               "Authorization": f"Bearer {node.admin_token}"}
    for body in (put_pwn(), {"jsonrpc": "2.0", "id": 1, "method": "cast",
                             "params": ["upai.echo", {}]}):
        status, answer = await post(node, body, headers)
        assert status == 403 and answer["error"]["code"] == UNAUTHORIZED
    for origin in ("null", node.http_url.replace("127.0.0.1", "localhost") + "0"):
        assert (await post(node, put_pwn(), {**headers, "Origin": origin}))[0] == 403
    assert await task_names(node) == ["echo"]
    # The node's own origin (its console) passes
    own = {"jsonrpc": "2.0", "id": 1, "method": "tasks.put", "params": [{**ECHO, "name": "own"}]}
    status, answer = await post(node, own, {**headers, "Origin": node.http_url})
    assert status == 200 and answer["result"]["name"] == "own"


async def test_the_login_url_opens_a_session_and_the_console(node):
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[node.http_url])
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        async with session.get(node.http_url + "/", allow_redirects=False) as response:
            assert response.status == 303  # no session yet: to the login page
        async with session.get(node.http_url + "/login?token=wrong",
                               allow_redirects=False) as response:
            assert response.headers["Location"] == "/login?failed=1"
        async with session.get(node.http_url + f"/login?token={node.admin_token}",
                               allow_redirects=False) as response:
            assert response.headers["Location"] == "/"
        async with session.get(node.http_url + "/session") as response:
            csrf = (await response.json())["csrf"]
        async with session.post(node.http_url + "/rpc", json={
                "jsonrpc": "2.0", "id": 1, "method": "tasks.list"},
                headers={"X-CSRF-Token": csrf}) as response:
            assert [t["name"] for t in (await response.json())["result"]] == ["echo"]


def test_host_names_and_origins_are_matched_exactly():
    check = OriginCheck("127.0.0.1", allowed_hosts=["yptask.internal"],
                        allowed_origins=["https://admin.example"])
    assert [host_name(h) for h in ("LocalHost:80", "[::1]:8700", "::1", "a.b")] == [
        "localhost", "::1", "::1", "a.b"]
    for good in ("127.0.0.1:8700", "127.0.0.2", "[::1]:1", "yptask.internal:8700"):
        assert check.host_allowed(good), good
    for bad in ("attacker.example", "localhost.attacker.example", "10.0.0.1:8700", "",
                "127.0.0.1.nip.io"):
        assert not check.host_allowed(bad), bad
    assert check.origin_allowed("http://127.0.0.1:8700", "127.0.0.1:8700")
    assert check.origin_allowed("https://admin.example", "127.0.0.1:8700")
    for bad in ("http://127.0.0.1:8701", "null", "file://", "http://127.0.0.1:8700/x"):
        assert not check.origin_allowed(bad, "127.0.0.1:8700"), bad
    # bound to every address, any address literal names it (a rebinding needs a name)
    assert OriginCheck("0.0.0.0").host_allowed("192.0.2.7:8700")


def test_failed_logins_are_throttled_per_address():
    throttle = LoginThrottle(max_failures=3, window_s=60)
    for _ in range(3):
        assert throttle.blocked_for_s("10.0.0.1", now=100) == 0
        throttle.failed("10.0.0.1", now=100)
    assert throttle.blocked_for_s("10.0.0.1", now=101) == pytest.approx(59)
    assert throttle.blocked_for_s("10.0.0.2", now=101) == 0  # another address may try
    assert throttle.blocked_for_s("10.0.0.1", now=161) == 0  # the window passed


async def test_password_guesses_cost_bounded_work_and_get_throttled(monkeypatch):
    # Given a node with a password, and a count of the scrypt checks it really runs
    checks: list[str] = []
    real = policy.verify_password

    def counted(password: str, encoded: str) -> bool:
        checks.append(password)
        return real(password, encoded)

    monkeypatch.setattr(policy, "verify_password", counted)
    access = AccessPolicy(password_hash=hash_password("the right password"), admin_token="t" * 32)
    # When one address sends 40 wrong guesses at once
    results = await asyncio.gather(*(access.secret_ok(f"guess {i}", "10.0.0.9")
                                     for i in range(40)))
    # Then all fail, and few ran scrypt: the rest waited for nothing
    assert not any(results)
    assert len(checks) <= policy.MAX_PENDING_CHECKS + access.throttle.max_failures
    # And once over the limit, that address runs no check at all, even for the password
    ran = len(checks)
    for i in range(access.throttle.max_failures):
        await access.secret_ok(f"more {i}", "10.0.0.9")
    assert await access.secret_ok("the right password", "10.0.0.9") is False
    assert len(checks) == ran
    # while another address, and the admin token, still get in
    assert await access.secret_ok("the right password", "10.0.0.10") is True
    assert await access.secret_ok("t" * 32, "10.0.0.9") is True
    access.close()


async def test_the_console_assets_are_served_by_name_only(node):
    async with aiohttp.ClientSession() as session:
        async with session.get(node.http_url + "/console/console.js") as response:
            assert response.status == 200 and "fetch" in await response.text()
        for path in ("/console/index.html", "/console/..%2fapp.py", "/console/nope.js"):
            async with session.get(node.http_url + path) as response:
                assert response.status == 404, path
        # and the Host rule holds for them too
        async with session.get(node.http_url + "/console/console.js",
                               headers={"Host": "attacker.example"}) as response:
            assert response.status == 403
