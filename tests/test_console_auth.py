"""Who may use the console and the admin API: login, sessions, CSRF, the password itself.

A real node in this process with a console password, spoken to over real HTTP.
"""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import pytest
from support import ALONE, ECHO, until

from yptask.access.passwords import check_hash, hash_password
from yptask.access.policy import AccessPolicy
from yptask.client import Client
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.errors import ConfigError, Unauthorized
from yptask.node import Node
from yptask.web.auth import Guard

PASSWORD = "correct horse battery"
HASH = hash_password(PASSWORD)


@pytest.fixture
async def node(tmp_path):
    started = await Node.start(NodeConfig(name="guarded", data_dir=tmp_path / "data",
                                          console_password_hash=HASH, **ALONE),
                               tasks=[TaskDef.from_dict(ECHO)])
    yield started
    await started.stop()


async def rpc(session: aiohttp.ClientSession, url: str, method: str, headers=None, **params):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    async with session.post(url + "/rpc", json=body, headers=headers or {}) as response:
        return await response.json()


async def test_the_console_asks_for_the_password_and_a_session_needs_its_csrf_token(node):
    url = node.http_url
    # (the session cookie is Secure: browsers keep it on loopback, as this jar is told to)
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[url])
    async with aiohttp.ClientSession(cookie_jar=jar) as session:
        # Without a session: the console sends to the login page, admin methods refuse
        async with session.get(url + "/", allow_redirects=False) as response:
            assert (response.status, response.headers["Location"]) == (303, "/login")
        refused = await rpc(session, url, "tasks.list")
        assert refused["error"]["code"] == -32015
        assert "console password" in refused["error"]["message"]
        # while publishing stays open
        assert "result" in await rpc(session, url, "cast", name="upai.echo", msg={})
        # A wrong password goes back to the login page
        async with session.post(url + "/login", data={"password": "nope"},
                                allow_redirects=False) as response:
            assert response.headers["Location"] == "/login?failed=1"
        # The right one opens a session: HttpOnly, SameSite=Strict
        async with session.post(url + "/login", data={"password": PASSWORD},
                                allow_redirects=False) as response:
            assert response.headers["Location"] == "/"
            cookie = response.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        async with session.get(url + "/") as response:
            assert response.status == 200 and "yptask console" in await response.text()
        async with session.get(url + "/session") as response:
            csrf = (await response.json())["csrf"]
        # The cookie alone is not enough for the admin API (a forged cross-site request
        # would carry it); with the session's CSRF token it is
        assert (await rpc(session, url, "tasks.list"))["error"]["code"] == -32015
        listed = await rpc(session, url, "tasks.list", headers={"X-CSRF-Token": csrf})
        assert [t["name"] for t in listed["result"]] == ["echo"]
        wrong = await rpc(session, url, "tasks.list", headers={"X-CSRF-Token": "guess"})
        assert wrong["error"]["code"] == -32015
        # Logging out ends the session
        async with session.post(url + "/logout", allow_redirects=False) as response:
            assert response.headers["Location"] == "/login"
        async with session.get(url + "/session") as response:
            assert response.status == 401


async def test_the_cli_and_scripts_use_the_password(node):
    url = node.http_url + "/rpc"
    # (the client blocks: it runs in a thread, so the node's loop in this process serves it)
    tasks = await asyncio.to_thread(Client(url, password=PASSWORD).tasks)
    assert [t["name"] for t in tasks] == ["echo"]
    with pytest.raises(Unauthorized):
        await asyncio.to_thread(Client(url, password="wrong password").tasks)
    with pytest.raises(Unauthorized):
        await asyncio.to_thread(Client(url).status)


def test_a_node_beyond_loopback_without_a_password_serves_no_console():
    assert "no console password" in Guard(AccessPolicy(), "0.0.0.0").console_refusal()
    assert Guard(AccessPolicy(), "127.0.0.1").console_refusal() is None
    assert Guard(AccessPolicy(), "::1").console_refusal() is None
    assert Guard(AccessPolicy(password_hash=HASH), "10.1.2.3").console_refusal() is None


def test_only_real_password_hashes_are_accepted_in_the_config():
    assert check_hash(HASH) == HASH
    with pytest.raises(ConfigError, match="hash-password"):
        NodeConfig.from_dict({"console_password_hash": "plain-text-password"})
    with pytest.raises(ConfigError, match="at least 8"):
        hash_password("short")


async def test_a_stopped_node_leaves_no_password_thread_behind(tmp_path):
    # Given a node whose password has been checked (scrypt runs on a thread of its own)
    started = await Node.start(NodeConfig(name="checked", data_dir=tmp_path / "data",
                                          console_password_hash=HASH, **ALONE),
                               tasks=[TaskDef.from_dict(ECHO)])
    try:
        await asyncio.to_thread(Client(started.http_url + "/rpc", password=PASSWORD).tasks)
        assert any(t.name.startswith("password-check") for t in threading.enumerate())
    finally:
        # When it stops
        await started.stop()
    # Then that thread ends with it
    assert await until(lambda: not any(t.name.startswith("password-check")
                                       for t in threading.enumerate()),
                       what="the password thread to end")
