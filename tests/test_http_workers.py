"""Tasks whose workers are HTTP endpoints: what the endpoint receives, and what its answers do.

A real node in this process delivers to a real aiohttp server on 127.0.0.1 that
records every request (and, per message name, answers, fails, hangs or holds
the request); the last tests go through PHP's own server (`php -S`) running a
script that reads the request body and answers JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from aiohttp import web
from support import until, wait_for

from yptask.errors import ConfigError, HandlerError, WorkerUnreachable
from yptask.node import Node

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Endpoint:
    """An HTTP endpoint that records what it receives. The message name says how it answers:
    `*.fail` 500 with a body, `*.hang` never, `*.hold` once `release` is set, `*.echo` the
    payload as JSON; anything else 204."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = asyncio.Event()
        self.in_flight = 0
        self.most_in_flight = 0
        self.app = web.Application()
        self.app.router.add_post("/{tail:.*}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"path": request.path, "headers": dict(request.headers),
                              "body": body})
        kind = body["name"].rpartition(".")[2]
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if kind == "fail":
                return web.Response(status=500, text="disk full on the endpoint")
            if kind == "hang":
                await asyncio.Event().wait()  # until the server is stopped
            if kind == "hold":
                await self.release.wait()
            if kind == "echo":
                return web.json_response({"echo": body["payload"], "id": body["meta"]["id"]})
            return web.Response(status=204)
        finally:
            self.in_flight -= 1

    def bodies(self, name: str) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["body"]["name"] == name]


async def serve(endpoint: Endpoint, sock: socket.socket) -> web.AppRunner:
    """Serve `endpoint` on the bound socket `sock` (listening from now on)."""
    runner = web.AppRunner(endpoint.app, shutdown_timeout=0.1)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


def bound_socket() -> socket.socket:
    """A socket bound to a free port on 127.0.0.1, not yet listening: connections to it are
    refused until a server listens on it (so the port cannot be taken meanwhile)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[Endpoint, str]]:
    """A running endpoint and its base URL."""
    recorder = Endpoint()
    sock = bound_socket()
    runner = await serve(recorder, sock)
    try:
        yield recorder, f"http://127.0.0.1:{sock.getsockname()[1]}/tasks"
    finally:
        await runner.cleanup()
        sock.close()


StartNode = Callable[..., Awaitable[Node]]


def hook_task(url: str, **fields: Any) -> dict[str, Any]:
    return {"name": "hook", "messages": ["hook.*"], "url": url, "retry_backoff_s": 0.05,
            **fields}


async def test_a_cast_is_posted_as_json_with_its_meta_and_the_task_headers(
        endpoint: tuple[Endpoint, str], start_node: StartNode) -> None:
    server, base = endpoint
    # Given a task whose workers are an HTTP endpoint, with a token header
    node = await start_node(hook_task(f"{base}/hook?v=1",
                                      headers={"Authorization": "Bearer s3cret"}))
    # When a message is cast with a trace
    cast = await node.cast("hook.record", {"n": 1, "text": "é"}, traceparent=TRACEPARENT)
    # Then the endpoint gets one POST of the name, payload and meta as JSON
    (request,) = await until(lambda: server.requests, what="the cast to be posted")
    body = request["body"]
    assert request["path"] == "/tasks/hook"
    assert body["name"] == "hook.record" and body["payload"] == {"n": 1, "text": "é"}
    assert body["meta"]["id"] == cast["id"] and body["meta"]["attempt"] == 1
    assert body["meta"]["trace_id"] == TRACEPARENT.split("-")[1]
    headers = request["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["traceparent"] == body["meta"]["traceparent"]
    # And the 204 acked it: handled, nothing dead
    status = await until(lambda: _handled(node, 1), what="the cast acked")
    assert status["failed"] == 0 and status["pids"] == []
    assert await node.dead_letters() == []


async def _handled(node: Node, count: int) -> dict[str, Any] | None:
    status: dict[str, Any] = (await node.status())["tasks"]["hook"]
    return status if status["handled"] >= count else None


async def test_a_call_answers_with_the_json_body(endpoint: tuple[Endpoint, str],
                                                 start_node: StartNode) -> None:
    _, base = endpoint
    node = await start_node(hook_task(base))
    # When a call goes to the endpoint, its JSON answer is the result
    answer = await node.call("hook.echo", {"x": [1, 2]}, timeout_s=10)
    assert answer["echo"] == {"x": [1, 2]}
    # And several calls reuse the worker (one after the other, each answered)
    for n in range(3):
        assert (await node.call("hook.echo", {"n": n}, timeout_s=10))["echo"] == {"n": n}
    # A failure status is the call's error, with the status and the body
    with pytest.raises(HandlerError) as caught:
        await node.call("hook.fail", {}, timeout_s=10)
    assert "500" in str(caught.value) and "disk full on the endpoint" in str(caught.value)


async def test_a_failure_status_is_retried_then_dead_lettered_with_the_status(
        endpoint: tuple[Endpoint, str], start_node: StartNode) -> None:
    server, base = endpoint
    node = await start_node(hook_task(base, max_attempts=2))
    # When the endpoint answers 500 to a cast
    cast = await node.cast("hook.fail", {"n": 1})
    # Then it is tried max_attempts times, then dead-lettered with the status and body
    (letter,) = await until(node.dead_letters, what="the dead letter")
    assert letter["id"] == cast["id"] and letter["attempt"] == 2
    assert "HTTP 500" in letter["error"] and "disk full on the endpoint" in letter["error"]
    assert [b["meta"]["attempt"] for b in server.bodies("hook.fail")] == [1, 2]


async def test_an_endpoint_that_hangs_fails_that_attempt_and_others_are_served(
        endpoint: tuple[Endpoint, str], start_node: StartNode) -> None:
    server, base = endpoint
    # Given one worker and a timeout of half a second
    node = await start_node(hook_task(base, max_attempts=1, message_timeout_s=0.5))
    # When a message hangs on the endpoint, and another is cast behind it
    hung = await node.cast("hook.hang", {})
    await node.cast("hook.record", {"after": True})
    # Then the hung one fails (dead: one attempt) and the next one is delivered
    (letter,) = await until(node.dead_letters, what="the hung message to fail")
    assert letter["id"] == hung["id"] and letter["error_class"] == "CallTimeout"
    await until(lambda: server.bodies("hook.record"), what="the message behind it")
    await until(lambda: _handled(node, 1), what="it acked")
    # And the worker serves on
    assert (await node.call("hook.echo", {"still": "here"}, timeout_s=10))["echo"] == {
        "still": "here"}


async def test_an_endpoint_that_is_down_spends_no_attempt(
        start_node: StartNode, caplog: pytest.LogCaptureFixture) -> None:
    # Given an endpoint that refuses connections (its port bound, nobody listening)
    server = Endpoint()
    sock = bound_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/tasks"
    runner = None
    try:
        node = await start_node(hook_task(url, max_attempts=1, max_restarts=1))
        # When a message is cast to it, and a call is made
        cast = await node.cast("hook.record", {"n": 1})
        with pytest.raises(WorkerUnreachable, match="cannot connect"):
            await node.call("hook.echo", {}, timeout_s=10)
        # Then the task goes into backoff and the message waits, its attempt not spent
        await until(lambda: _state(node, "backoff"), what="the task to back off")
        assert await node.dead_letters() == []
        # (each restart logged in a line, an expected failure: no traceback)
        assert "unreachable; message" in caplog.text and "Traceback" not in caplog.text
        # And once the endpoint is up, it is delivered, as its first attempt
        runner = await serve(server, sock)
        (body,) = await until(lambda: server.bodies("hook.record"), timeout_s=30,
                              what="the delivery once the endpoint is up")
        assert body["meta"]["id"] == cast["id"] and body["meta"]["attempt"] == 1
        await until(lambda: _handled(node, 1), what="it acked")
        assert await node.dead_letters() == []
    finally:
        if runner is not None:
            await runner.cleanup()
        sock.close()


async def _state(node: Node, state: str) -> bool:
    return bool((await node.status())["tasks"]["hook"]["state"] == state)


async def test_workers_is_how_many_requests_are_in_flight_at_once(
        endpoint: tuple[Endpoint, str], start_node: StartNode) -> None:
    server, base = endpoint
    # Given three workers on this node
    node = await start_node(hook_task(base, nodes={"*": 3}))
    # When more messages than that are held by the endpoint
    for n in range(7):
        await node.cast("hook.hold", {"n": n})
    # Then three requests are in flight at once, never more
    await until(lambda: server.in_flight == 3, what="three requests in flight")
    status = (await node.status())["tasks"]["hook"]
    assert status["workers"] == {"n1": 3} and status["pids"] == []
    assert server.most_in_flight == 3
    # And once the endpoint answers, every message is handled
    server.release.set()
    await until(lambda: _handled(node, 7), what="all seven handled")
    assert server.most_in_flight == 3
    assert sorted(b["payload"]["n"] for b in server.bodies("hook.hold")) == list(range(7))


async def test_bad_endpoint_definitions_are_refused_naming_the_field(
        endpoint: tuple[Endpoint, str], start_node: StartNode) -> None:
    _, base = endpoint
    node = await start_node(hook_task(base))
    bad = [({"url": "ftp://127.0.0.1/x"}, "'url'.*scheme"),
           ({"url": "http://user:pw@127.0.0.1/x"}, "'url'.*no user or password"),
           ({"url": "http://127.0.0.1/été"}, "'url'.*ASCII"),
           ({"url": base, "command": ["true"]}, "exactly one of.*'command', 'url'"),
           ({"worker_class": "a:B", "script": "/srv/w.php"}, "'script'.*with 'fastcgi' only"),
           ({"fastcgi": "127.0.0.1:9000"}, "'script' is required with 'fastcgi'"),
           ({"fastcgi": "unix:relative.sock", "script": "/w.php"}, "'fastcgi'.*absolute"),
           ({"url": base, "headers": {"Content-Length": "1"}}, "'headers'.*set by the node"),
           ({"url": base, "headers": {"X-Token": "a\r\nInjected: 1"}}, "'headers'.*control")]
    for fields, error in bad:
        with pytest.raises(ConfigError, match=error):
            await node.put_task({"name": "other", "messages": ["other.*"], **fields})
    # And the node serves on, the refused definitions stored nowhere
    assert [t["name"] for t in await node.tasks()] == ["hook"]
    assert (await node.call("hook.echo", {"ok": 1}, timeout_s=10))["echo"] == {"ok": 1}


async def test_an_endpoint_task_reads_back_and_rolls_to_a_new_url(
        endpoint: tuple[Endpoint, str], start_node: StartNode) -> None:
    server, base = endpoint
    node = await start_node({"name": "plain", "messages": ["plain.*"],
                             "worker_class": "yptask.tasks.echo:Echo"})
    # A definition with an endpoint reads back as it was put; one without writes none
    put = await node.put_task(hook_task(f"{base}/a", headers={"X-App": "shop"}))
    assert put["url"] == f"{base}/a" and put["headers"] == {"X-App": "shop"}
    assert "url" not in await node.task("plain") and "headers" not in await node.task("plain")
    await node.cast("hook.record", {"to": "a"})
    await until(lambda: [r for r in server.requests if r["path"] == "/tasks/a"], what="a")
    # When its url changes, the new workers post to the new one
    await node.put_task(hook_task(f"{base}/b", headers={"X-App": "shop"}))
    await until(lambda: _rolled(node), what="the roll")
    await node.cast("hook.record", {"to": "b"})
    (request,) = await until(lambda: [r for r in server.requests if r["path"] == "/tasks/b"],
                             what="b")
    assert request["body"]["payload"] == {"to": "b"} and request["headers"]["X-App"] == "shop"


def _rolled(node: Node) -> bool:
    """Whether the task's last change (its rolling restart) has ended."""
    change = node.running.changes.get("hook")
    try:
        change is None or change.get(timeout=0)
    except pykka.Timeout:
        return False
    return True


# ------------------------------------------------------------------ through php -S

PHP_WORKER = textwrap.dedent("""\
    <?php
    // A task endpoint in PHP: the message is the JSON body of the POST.
    $request = json_decode(file_get_contents('php://input'), true);
    $line = json_encode(['name' => $request['name'], 'payload' => $request['payload'],
                         'meta' => $request['meta'],
                         'token' => $_SERVER['HTTP_X_TOKEN'] ?? null]);
    file_put_contents(getenv('RECORD_PATH'), $line . "\\n", FILE_APPEND | LOCK_EX);
    if ($request['name'] === 'php.sum') {
        header('Content-Type: application/json');
        echo json_encode(['sum' => array_sum($request['payload']['numbers'])]);
        return;
    }
    http_response_code(204);
    """)


@pytest.fixture
def php_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`php -S` on a free port of 127.0.0.1 serving PHP_WORKER; its URL and record file."""
    if shutil.which("php") is None:
        if os.environ.get("CI"):
            pytest.fail("php-cli is not installed; CI must run the PHP endpoint tests")
        pytest.skip("php-cli is not installed")
    script = tmp_path / "worker.php"
    script.write_text(PHP_WORKER)
    record = tmp_path / "php-record.jsonl"
    log = tmp_path / "php-server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(["php", "-S", "127.0.0.1:0", str(script)], stdout=out,
                                  stderr=subprocess.STDOUT, cwd=tmp_path,
                                  env={**os.environ, "RECORD_PATH": str(record)})
    try:
        port = wait_for(lambda: _php_port(log), timeout_s=20, what="php -S to say its port")
        yield f"http://127.0.0.1:{port}/worker.php", record
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _php_port(log: Path) -> int | None:
    match = re.search(r"Development Server \(http://127\.0\.0\.1:(\d+)\) started",
                      log.read_text(errors="replace"))
    return int(match[1]) if match else None


async def test_a_php_script_behind_php_s_takes_a_cast_and_answers_a_call(
        php_server: tuple[str, Path], start_node: StartNode) -> None:
    url, record = php_server
    node = await start_node({"name": "php", "messages": ["php.*"], "url": url,
                             "headers": {"X-Token": "t0k"}, "nodes": {"*": 2}})
    # When a cast goes to the PHP endpoint
    cast = await node.cast("php.record", {"user": 7})
    # Then the script reads it from php://input, with its meta and the task's header
    (line,) = await until(lambda: _lines(record), what="the PHP script to record the cast")
    assert line["payload"] == {"user": 7} and line["meta"]["id"] == cast["id"]
    assert line["token"] == "t0k"
    # And a call returns what the script echoes as JSON
    assert await node.call("php.sum", {"numbers": [1, 2, 39]}, timeout_s=10) == {"sum": 42}
    status = await until(lambda: _handled_php(node), what="both handled")
    assert status["failed"] == 0


async def _handled_php(node: Node) -> dict[str, Any] | None:
    status: dict[str, Any] = (await node.status())["tasks"]["php"]
    return status if status["handled"] >= 2 else None


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_an_endpoint_task_resizes_and_its_idle_workers_are_reaped(
        endpoint: tuple[Endpoint, str], start_node: StartNode) -> None:
    server, base = endpoint
    # Given an endpoint task with two workers, reaped after half a second idle
    node = await start_node(hook_task(base, nodes={"*": 2}, max_idle_s=0.5))
    assert (await node.status())["tasks"]["hook"]["workers"] == {"n1": 2}
    # When its count changes, workers are added (no process: no pid)
    await node.put_task(hook_task(base, nodes={"*": 3}, max_idle_s=0.5))
    status = await until(lambda: _workers(node, 3), what="three workers")
    assert status["pids"] == []
    # And idle, they are reaped; a message then starts one again on demand
    await until(lambda: _workers(node, 0), what="the idle workers reaped")
    assert (await node.call("hook.echo", {"back": 1}, timeout_s=10))["echo"] == {"back": 1}
    await node.cast("hook.record", {"n": 1})
    await until(lambda: server.bodies("hook.record"), what="the cast after the reap")


async def _workers(node: Node, count: int) -> dict[str, Any] | None:
    status: dict[str, Any] = (await node.status())["tasks"]["hook"]
    return status if status["workers"] == {"n1": count} else None
