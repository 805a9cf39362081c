"""The shipped publisher clients (Python `yptask.client`, PHP `clients/php/yptask.php`)
against a real node with real workers.

The Python client blocks, and the node runs on the test's event loop, so every
client call runs in a thread. The PHP client runs in a real `php -r` process.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from support import ECHO, REPO, SAMPLE

from yptask.client import Client
from yptask.errors import (
    ConfigError,
    HandlerError,
    NoSubscriber,
    ProtocolError,
    RPCError,
    UnknownTask,
    wire_code,
)

PHP_CLIENT = REPO / "clients" / "php" / "yptask.php"
@pytest.fixture
def client(node) -> Client:
    return Client(node.http_url + "/rpc", timeout_s=30, admin_token=node.admin_token)


def closed_port_url() -> str:
    """The URL of a port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/rpc"


# ------------------------------------------------------------------ Python


async def test_python_cast_returns_id_and_tasks(client):
    answer = await asyncio.to_thread(client.cast, "upai.echo", {"n": 1})
    assert isinstance(answer["id"], str)
    assert (answer["tasks"], answer["duplicate"]) == (["echo"], False)
    mine = await asyncio.to_thread(lambda: client.cast("upai.echo", {}, id="job-1", priority=2))
    again = await asyncio.to_thread(lambda: client.cast("upai.echo", {}, id="job-1"))
    assert (mine["id"], mine["duplicate"], again["duplicate"]) == ("job-1", False, True)


async def test_python_call_returns_the_handlers_result(client):
    payload = {"text": "héllo ☃", "n": [1, 2.5, None, True]}
    assert await asyncio.to_thread(client.call, "upai.echo", payload) == payload
    assert await asyncio.to_thread(lambda: client.call("sample.echo", "x", timeout=5)) == "x"


async def test_python_errors_are_raised_as_yptask_exceptions(client):
    with pytest.raises(NoSubscriber, match=r"nobody\.listens"):
        await asyncio.to_thread(client.call, "nobody.listens", {})

    with pytest.raises(HandlerError) as caught:
        await asyncio.to_thread(client.call, "sample.fail", {"reason": "disk full"})
    assert (caught.value.error_class, caught.value.detail) == ("ValueError", "disk full")
    assert any("handle_fail" in line for line in caught.value.backtrace)

    with pytest.raises(UnknownTask):
        await asyncio.to_thread(client.task, "no-such-task")
    with pytest.raises(ConfigError, match="'priority'"):
        await asyncio.to_thread(client.request, "cast", {"name": "upai.echo", "msg": {},
                                                         "priority": "high"})


async def test_python_admin_methods(client):
    assert [t["name"] for t in await asyncio.to_thread(client.tasks)] == ["echo", "sample"]
    assert (await asyncio.to_thread(client.task, "echo"))["worker_class"] == ECHO["worker_class"]
    definition = {**SAMPLE, "name": "custom", "messages": ["custom.any.name"]}
    assert (await asyncio.to_thread(client.put_task, definition))["name"] == "custom"
    assert await asyncio.to_thread(client.call, "custom.any.name", {}) == "custom"
    assert (await asyncio.to_thread(client.restart, "custom"))["generation"] == 1
    await asyncio.to_thread(client.delete_task, "custom")
    with pytest.raises(NoSubscriber):
        await asyncio.to_thread(client.call, "custom.any.name", {})
    assert set((await asyncio.to_thread(client.status))["tasks"]) == {"echo", "sample"}
    assert await asyncio.to_thread(client.dead_letters, 10) == []
    assert await asyncio.to_thread(client.replay, "no-such-message") == 0


async def test_python_oversize_message_is_refused_by_the_node(client, node):
    with pytest.raises(ProtocolError, match=str(node.config.max_body_bytes)):
        await asyncio.to_thread(client.cast, "upai.echo", "x" * node.config.max_body_bytes)


async def test_python_unreachable_node_is_an_rpc_error_naming_the_url():
    url = closed_port_url()
    with pytest.raises(RPCError, match="cannot reach the yptask node at " + url):
        await asyncio.to_thread(Client(url, timeout_s=5).status)


async def test_python_url_that_is_not_the_rpc_endpoint_says_so(node):
    wrong = Client(node.http_url + "/nope", timeout_s=5)
    with pytest.raises(RPCError, match="HTTP 404"):
        await asyncio.to_thread(wrong.status)


def _answer_with_id(request: dict[str, Any], close: bool = False) -> tuple[bytes, bool]:
    body = json.dumps({"jsonrpc": "2.0", "result": request["id"], "id": request["id"]})
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode())), close


class BareServer:
    """A bare HTTP server on 127.0.0.1 for as many requests as it has `answers`.

    Each answer is a function of the request (its JSON body) that returns the raw bytes
    to send back, and whether to close the connection then without a word, as a node
    closes an idle keep-alive connection. It counts connections and records requests.
    """

    def __init__(self, answers: list[Callable[[dict[str, Any]], tuple[bytes, bool]]]) -> None:
        self.answers = answers
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/rpc"
        self.thread = threading.Thread(target=self._serve)

    def __enter__(self) -> BareServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.thread.join(10)
        self.listener.close()

    def _serve(self) -> None:
        while len(self.requests) < len(self.answers):
            conn, _ = self.listener.accept()
            self.connections += 1
            with conn, conn.makefile("rb") as reader:
                while len(self.requests) < len(self.answers):
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        line = reader.readline()
                        if not line:
                            break
                        head += line
                    if not head:
                        break
                    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n")
                                      if h.lower().startswith(b"content-length")))
                    request = json.loads(reader.read(length))
                    raw, close = self.answers[len(self.requests)](request)
                    self.requests.append(request)
                    conn.sendall(raw)
                    if close:
                        break


@pytest.mark.parametrize("close_after_each", [False, True])
def test_python_client_keeps_its_connection_and_reopens_one_the_node_closed(
        close_after_each):
    with BareServer([lambda r: _answer_with_id(r, close_after_each)] * 3) as server:
        client = Client(server.url, timeout_s=10)
        answers = [client.request("status") for _ in range(3)]
        client.close()
    assert answers == [1, 2, 3]
    assert server.connections == (3 if close_after_each else 1)


def _chunked(request: dict[str, Any]) -> tuple[bytes, bool]:
    body = json.dumps({"jsonrpc": "2.0", "result": "chunked", "id": request["id"]}).encode()
    return (b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x;ext=1\r\n%s\r\n%x\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n"
            % (5, body[:5], len(body) - 5, body[5:])), False


def _json_answer(request: dict[str, Any], result: str, head: bytes) -> tuple[bytes, bool]:
    body = json.dumps({"jsonrpc": "2.0", "result": result, "id": request["id"]}).encode()
    return head.replace(b"LENGTH", b"%d" % len(body)) + body, False


def test_python_client_reads_every_framing_of_an_answer():
    answers = [
        _chunked,
        lambda r: (b"HTTP/1.1 204 No Content\r\n\r\n", False),
        lambda r: _json_answer(r, "1.0", b"HTTP/1.0 200 OK\r\nContent-Length: LENGTH\r\n\r\n"),
        lambda r: (_json_answer(r, "to the end", b"HTTP/1.1 200 OK\r\n\r\n")[0], True),
        _answer_with_id,
    ]
    with BareServer(answers) as server:
        client = Client(server.url, timeout_s=10)
        assert client.request("status") == "chunked"
        with pytest.raises(RPCError, match="HTTP 204"):
            client.request("status")
        assert client.request("status") == "1.0"  # HTTP/1.0: closed after it
        assert client.request("status") == "to the end"  # no length: closed after it
        assert client.request("status") == 5
        client.close()
    assert server.connections == 3


@pytest.mark.parametrize("answer, error", [
    (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not HTTP"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"jsonrpc\"", "middle of its answer"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "Content-Length of b'-5'"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk of size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", "chunk of size"),
])
def test_python_client_refuses_a_broken_answer_and_never_sends_twice(answer, error):
    """A request the node may have received is not sent again: only a connection closed
    before any answer is retried."""
    with BareServer([lambda r: (answer, True), _answer_with_id]) as server:
        client = Client(server.url, timeout_s=10)
        with pytest.raises(ProtocolError, match=error):
            client.request("status")
        assert client.request("status") == 2  # on a new connection
        client.close()
    assert [r["id"] for r in server.requests] == [1, 2]
    assert server.connections == 2


def test_python_client_does_not_import_aiohttp():
    check = ("import sys, yptask.client; "
             "sys.exit('aiohttp' in sys.modules or 'yptask.node' in sys.modules)")
    done = subprocess.run([sys.executable, "-P", "-c", check], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------ PHP


def require_php() -> None:
    """Skip without php, except in CI, where its absence is a failure."""
    if shutil.which("php") is None:
        if os.environ.get("CI"):
            pytest.fail("php is not installed; CI must run the PHP client tests")
        pytest.skip("php is not installed (apt-get install php-cli)")


async def run_php(code: str, url: str, **env: str) -> Any:
    """Run `code` (the body of a PHP function) with the client loaded; return what it
    returned, or {"code", "message", "data", "class"} of the YPTaskException it threw."""
    require_php()
    script = (
        "require getenv('YPTASK_PHP_CLIENT');"
        f"try {{ $out = ['ok' => (function () {{ {code} }})()]; }}"
        "catch (YPTaskException $e) {"
        " $out = ['code' => $e->getCode(), 'message' => $e->getMessage(),"
        "         'data' => $e->getData(), 'class' => $e->getErrorClass()]; }"
        "echo json_encode($out);")
    process = await asyncio.create_subprocess_exec(
        "php", "-r", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "YPTASK_URL": url, "YPTASK_PHP_CLIENT": str(PHP_CLIENT), **env})
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    return json.loads(out)


async def test_php_cast_returns_the_message_id(node):
    url = node.http_url + "/rpc"
    answer = await run_php("return yptask_cast('upai.echo', ['photo_id' => 7]);", url)
    assert isinstance(answer["ok"], str) and answer["ok"]
    mine = await run_php("return yptask_cast('upai.echo', [], ['id' => 'php-1', 'priority' => 2]);",
                         url)
    assert mine == {"ok": "php-1"}
    # The same id again is a duplicate, which the node reports to the Python client
    again = await asyncio.to_thread(Client(url).cast, "upai.echo", {}, id="php-1")
    assert again["duplicate"] is True


async def test_php_call_returns_the_result(node):
    url = node.http_url + "/rpc"
    answer = await run_php("return yptask_call('upai.echo', ['a' => [1, 'é'], 'b' => 1.5], 10);",
                           url)
    assert answer == {"ok": {"a": [1, "é"], "b": 1.5}}


async def test_php_errors_throw_with_code_and_data(node):
    url = node.http_url + "/rpc"
    nobody = await run_php("return yptask_call('nobody.listens', ['x' => 1]);", url)
    assert nobody["code"] == wire_code(NoSubscriber).jsonrpc_code
    assert nobody["class"] == "NoSubscriber"
    failed = await run_php("return yptask_call('sample.fail', ['reason' => 'disk full']);", url)
    assert failed["code"] == wire_code(HandlerError).jsonrpc_code
    assert failed["message"] == "ValueError: disk full"
    assert (failed["data"]["error_class"], failed["data"]["detail"]) == ("ValueError",
                                                                         "disk full")
    assert any("handle_fail" in line for line in failed["data"]["backtrace"])
    bad = await run_php("return yptask_call('upai.echo', [], -1);", url)
    assert bad["code"] == wire_code(ConfigError).jsonrpc_code and "'timeout'" in bad["message"]
    limit = node.config.max_body_bytes
    too_big = await run_php(f"return yptask_cast('upai.echo', str_repeat('x', {limit}));", url)
    assert too_big["code"] == wire_code(ProtocolError).jsonrpc_code
    assert str(limit) in too_big["message"]


async def test_php_url_constant_wins_and_unreachable_node_throws():
    url = closed_port_url()
    answer = await run_php(f"define('YPTASK_URL', '{url}'); return yptask_cast('upai.echo', []);",
                           "http://127.0.0.1:1/not-this-one")
    assert answer["code"] == 0
    assert f"cannot reach the node at {url}" in answer["message"]
