"""The PHP client's `YPTask\\Client` (clients/php/yptask.php) against a real node with
publisher tokens: the cast options reach the handler's meta, the node's errors come
back as one exception class per wire code, transport failures and timeouts as
`YPTask\\TransportError`, and the admin methods work with the admin token.

Each test runs real `php -r` scripts; the handler (tests/workers/sample.py `record`)
writes down the meta it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ALONE, ECHO, SAMPLE, TEST_WORKERS, read_records, until
from test_clients import PHP_CLIENT, closed_port_url, require_php

from yptask import errors
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.errors import YPTaskError, wire_code, wire_name
from yptask.ingress.trace import span_of
from yptask.node import Node

SHOP = "shop-token-0123456789"  # a publisher token of the node
BLOG = "blog-token-0123456789"  # another one, which the task "rec" refuses
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-00f067aa0ba902b7-01"

# Run `code` (a PHP function body; $yp is a YPTask\Client of URL and SETTINGS) and print
# what it returned, or the YPTask\Error it threw, as JSON.
PRELUDE = r"""
require getenv('YPTASK_PHP_CLIENT');
function error_of(YPTask\Error $e): array {
    return ['error' => get_class($e), 'code' => $e->getCode(), 'message' => $e->getMessage(),
            'data' => $e->getData(), 'class' => $e->getErrorClass(),
            'kinds' => array_values(class_parents($e))];
}
try {
    $yp = new YPTask\Client(getenv('URL'), json_decode(getenv('SETTINGS'), true));
    $out = ['ok' => (function () use ($yp) { %s })()];
} catch (YPTask\Error $e) {
    $out = error_of($e);
}
echo json_encode($out, JSON_PRESERVE_ZERO_FRACTION);
"""


async def php(code: str, url: str, env: dict[str, str] | None = None, **settings: Any) -> Any:
    """Run `code` with `$yp = new YPTask\\Client($url, $settings)` (and `env` added to the
    environment); return {"ok": value} or the error as {"error": class, "code", "message",
    "data", "class", "kinds"}."""
    require_php()
    process = await asyncio.create_subprocess_exec(
        "php", "-r", PRELUDE.replace("%s", code),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "URL": url, "SETTINGS": json.dumps(settings or {}),
             "YPTASK_PHP_CLIENT": str(PHP_CLIENT), **(env or {})})
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, (out + err).decode()
    return json.loads(out)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    """A node with publisher tokens SHOP and BLOG; task "rec" records `php.*` deliveries
    (and refuses BLOG's), "sample" (`sample.*`) dead-letters a failure at once."""
    rec = {"name": "rec", "messages": ["php.*"], "worker_class": "sample:Sample",
           "env": {"PYTHONPATH": str(TEST_WORKERS)}, "default_priority": 3,
           "settings": {"record_path": str(tmp_path / "rec.jsonl")}, "refuse_tokens": ["blog"]}
    started = await Node.start(
        NodeConfig(name="p1", data_dir=tmp_path / "data", api_tokens={"shop": SHOP, "blog": BLOG},
                   **ALONE),
        tasks=[TaskDef.from_dict(rec), TaskDef.from_dict(ECHO),
               TaskDef.from_dict({**SAMPLE, "max_attempts": 1})])
    try:
        yield started
    finally:
        await started.stop()


def rpc(node: Node) -> str:
    return node.http_url + "/rpc"


async def handled(node: Node, message_id: str) -> dict[str, Any]:
    """The record of the delivery of `message_id`, once its handler wrote it."""
    records = Path(node.config.data_dir).parent / "rec.jsonl"
    return await until(lambda: next((r for r in read_records(records) if r["id"] == message_id),
                                    None), what=f"message {message_id} handled")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.fixture
def full_port() -> Iterator[int]:
    """A port whose accept queue is full (listen(0), filled, never accepted): a new
    connection to it gets no answer to its SYN, so connecting hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                filler.setblocking(False)
                fillers.append(filler)
                filler.connect_ex(("127.0.0.1", port))
            yield port
        finally:
            for filler in fillers:
                filler.close()


# ------------------------------------------------------------------ cast options


async def test_each_cast_option_reaches_the_handlers_meta(node):
    url = rpc(node)
    before = time.time()
    answers = (await php(f"""
        return [
            'plain' => $yp->cast('php.record', ['n' => 1]),
            'priority' => $yp->cast('php.record', ['n' => 2], ['priority' => 7]),
            'lowest' => $yp->cast('php.record', ['n' => 3], ['priority' => '0']),
            'ttl' => $yp->cast('php.record', [], ['ttl_s' => 600]),
            'deadline' => $yp->cast('php.record', [], ['deadline' => {before + 900}]),
            'delay' => $yp->cast('php.record', [], ['delay_s' => 0.5]),
            'at' => $yp->cast('php.record', [], ['at' => {before + 1.0}]),
            'trace' => $yp->cast('php.record', [], ['traceparent' => '{TRACEPARENT}',
                                                   'parent' => 'php-root']),
            'mine' => $yp->cast('php.record', [], ['id' => 'php-7', 'priority' => null]),
        ];""", url, token=SHOP))["ok"]
    after = time.time()
    meta = {key: (await handled(node, answer["id"]))["meta"] for key, answer in answers.items()}
    assert meta["plain"]["priority"] == 3  # the task's default_priority
    assert (meta["priority"]["priority"], meta["lowest"]["priority"]) == (7, 0)
    assert before + 600 <= meta["ttl"]["deadline"] <= after + 600
    assert meta["deadline"]["deadline"] == before + 900
    assert "deadline" not in meta["plain"]
    for key in ("delay", "at"):
        assert answers[key]["not_before"] >= before + 0.5, answers[key]
        handed = await handled(node, answers[key]["id"])
        assert handed["at"] >= answers[key]["not_before"]
    assert answers["at"]["not_before"] == before + 1.0
    assert "not_before" not in answers["plain"]
    traced = meta["trace"]
    assert (traced["trace_id"], traced["parent_id"]) == (TRACE, "php-root")
    assert traced["traceparent"] == f"00-{TRACE}-{span_of(answers['trace']['id'])}-01"
    assert meta["plain"]["trace_id"] != TRACE
    assert (answers["mine"]["id"], meta["mine"]["id"]) == ("php-7", "php-7")
    again = await php("return $yp->cast('php.record', [], ['id' => 'php-7']);", url, token=SHOP)
    assert again["ok"]["duplicate"] is True


async def test_the_node_refuses_a_bad_option_by_name_and_the_client_a_misspelt_one(node):
    url = rpc(node)
    for option, value in [("priority", "12"), ("priority", "true"), ("ttl_s", "-1"),
                          ("delay_s", "'soon'"), ("traceparent", "'not-one'"),
                          ("id", "str_repeat('x', 129)"), ("parent", "''")]:
        bad = await php(f"return $yp->cast('php.record', [], ['{option}' => {value}]);", url,
                        token=SHOP)
        assert (bad["error"], bad["code"]) == ("YPTask\\InvalidParams", -32602), (option, bad)
        assert f"'{option}'" in bad["message"], (option, bad)
    both = await php("return $yp->cast('php.record', [], ['delay_s' => 5, 'at' => time() + 9]);",
                     url, token=SHOP)
    assert both["error"] == "YPTask\\InvalidParams" and "'delay_s'" in both["message"]
    # a misspelt option would be lost: the client refuses it, and sends nothing
    typo = await php("return $yp->cast('php.record', [], ['priorty' => 9]);", url, token=SHOP)
    assert typo["error"] == "YPTask\\InvalidParams" and "'priorty'" in typo["message"]
    assert "nothing was sent" in typo["message"]
    call_typo = await php("return $yp->call('php.record', [], 5, ['ttl_s' => 9]);", url,
                          token=SHOP)
    assert call_typo["error"] == "YPTask\\InvalidParams" and "'ttl_s'" in call_typo["message"]
    not_json = await php("return $yp->cast('php.record', ['x' => \"\\xff\"]);", url, token=SHOP)
    assert not_json["error"] == "YPTask\\InvalidParams" and "'msg'" in not_json["message"]
    assert not read_records(Path(node.config.data_dir).parent / "rec.jsonl")


async def test_cast_many_answers_each_cast_in_order(node):
    url = rpc(node)
    answers = (await php("""
        $out = [];
        foreach ($yp->castMany([['php.record', ['n' => 1], ['priority' => 8]],
                                ['php.record', ['n' => 2], ['priority' => 12]],
                                ['nobody.listens', []],
                                ['php.record', ['n' => 3]]]) as $one) {
            $out[] = $one instanceof YPTask\\Error ? error_of($one) : $one;
        }
        return [$out, $yp->castMany([])];""", url, token=SHOP))["ok"]
    results, empty = answers
    assert empty == []
    assert [r.get("error") for r in results] == [None, "YPTask\\InvalidParams", None, None]
    assert "'priority'" in results[1]["message"]
    assert results[2]["tasks"] == []  # a name nobody subscribes to is journaled for no task
    assert (await handled(node, results[0]["id"]))["meta"]["priority"] == 8
    assert (await handled(node, results[3]["id"]))["payload"] == {"n": 3}


# ------------------------------------------------------------------ call


async def test_a_call_returns_the_result_and_carries_its_trace(node):
    url = rpc(node)
    echoed = await php("return $yp->call('upai.echo', ['a' => [1, 'é'], 'b' => 1.5], 10);", url,
                       token=SHOP)
    assert echoed == {"ok": {"a": [1, "é"], "b": 1.5}}
    traced = await php(f"return $yp->call('php.record', ['n' => 1], 10,"
                       f" ['traceparent' => '{TRACEPARENT}', 'parent' => 'php-root']);", url,
                       token=SHOP)
    assert traced == {"ok": "recorded"}
    records = Path(node.config.data_dir).parent / "rec.jsonl"
    record = await until(lambda: read_records(records), what="the call recorded")
    assert (record[0]["meta"]["trace_id"], record[0]["meta"]["parent_id"]) == (TRACE, "php-root")


async def test_a_large_result_comes_back_whole(node):
    big = await php("return strlen($yp->call('upai.echo', str_repeat('é', 300000), 10));",
                    rpc(node), token=SHOP)
    assert big == {"ok": 600000}


async def test_a_batch_over_the_body_limit_is_refused_whole(node):
    limit = node.config.max_body_bytes
    half = limit // 2 + 1
    over = await php(f"""
        return $yp->castMany([['php.record', str_repeat('a', {half})],
                              ['php.record', str_repeat('b', {half})]]);""", rpc(node),
                     token=SHOP)
    assert (over["error"], over["code"]) == ("YPTask\\ProtocolError", -32600), over
    assert str(limit) in over["message"]
    assert not read_records(Path(node.config.data_dir).parent / "rec.jsonl")


async def test_a_handlers_exception_is_a_handler_error_with_its_class_and_traceback(node):
    failed = await php("""
        try { $yp->call('sample.fail', ['reason' => 'disk full']); }
        catch (YPTask\\HandlerError $e) {
            return [$e->getErrorClass(), $e->getDetail(), $e->getBacktrace(), $e->getCode()];
        }""", rpc(node), token=SHOP)
    error_class, detail, backtrace, code = failed["ok"]
    assert (error_class, detail, code) == ("ValueError", "disk full", -32000)
    assert any("handle_fail" in line for line in backtrace)


async def test_a_call_past_its_timeout_is_call_timeout(node):
    late = await php("return $yp->call('sample.sleep', ['seconds' => 3], 0.3);", rpc(node),
                     token=SHOP)
    assert (late["error"], late["code"]) == ("YPTask\\CallTimeout", -32003), late


async def test_an_unknown_name_is_no_subscriber(node):
    nobody = await php("return $yp->call('nobody.listens', ['x' => 1]);", rpc(node), token=SHOP)
    assert (nobody["error"], nobody["code"], nobody["class"]) == (
        "YPTask\\NoSubscriber", -32006, "NoSubscriber")
    assert nobody["kinds"] == ["YPTask\\Error", "RuntimeException", "Exception"]


# ------------------------------------------------------------------ tokens


async def test_tokens_decide_who_may_publish_and_administer(node):
    url = rpc(node)
    cast = "return $yp->cast('upai.echo', [])['tasks'];"
    assert await php(cast, url, token=SHOP) == {"ok": ["echo"]}
    assert await php(cast, url, admin_token=node.admin_token) == {"ok": ["echo"]}
    for settings in ({}, {"token": "not-the-token-000000"}):
        refused = await php(cast, url, **settings)
        assert (refused["error"], refused["code"]) == ("YPTask\\Unauthorized", -32015), refused
        assert "publisher token" in refused["message"]
    # a publisher token grants no admin method; the admin token is sent for those
    denied = await php("return $yp->status();", url, token=SHOP)
    assert denied["error"] == "YPTask\\Unauthorized" and "admin token" in denied["message"]
    both = await php("return [$yp->cast('upai.echo', [])['tasks'], $yp->status()['node']];",
                     url, token=SHOP, admin_token=node.admin_token)
    assert both == {"ok": [["echo"], "p1"]}
    # the environment gives them too
    from_env = await php(cast, url, env={"YPTASK_TOKEN": SHOP})
    assert from_env == {"ok": ["echo"]}
    # a refused application: NotAccepting, a kind of Overloaded
    blog = await php("return $yp->cast('php.record', []);", url, token=BLOG)
    assert (blog["error"], blog["code"]) == ("YPTask\\NotAccepting", -32018), blog
    assert "YPTask\\Overloaded" in blog["kinds"] and "'blog'" in blog["message"]
    bad = await php(cast, url, token="a\r\nX-Evil: 1")
    assert bad["error"] == "YPTask\\InvalidParams" and "'token'" in bad["message"]


# ------------------------------------------------------------------ transport


async def test_a_closed_port_is_a_transport_error_not_a_timeout():
    url = closed_port_url()
    refused = await php("return $yp->cast('upai.echo', []);", url, connect_timeout_s=30,
                        timeout_s=30)
    assert (refused["error"], refused["code"]) == ("YPTask\\TransportError", 0), refused
    assert f"cannot reach the node at {url}" in refused["message"]
    assert "refused" in refused["message"].lower()


async def test_a_node_that_never_answers_is_a_request_timeout(silent_port):
    url = f"http://127.0.0.1:{silent_port}/rpc"
    silent = await php("return $yp->status();", url, timeout_s=0.5, admin_token="x" * 20)
    assert silent["error"] == "YPTask\\RequestTimeout", silent
    assert "YPTask\\TransportError" in silent["kinds"] and "timeout_s" in silent["message"]
    # a call waits its own timeout, then the client's, before it gives up
    call = await php("return $yp->call('upai.echo', [], 0.2);", url, timeout_s=0.3)
    assert call["error"] == "YPTask\\RequestTimeout", call


async def test_a_connection_that_is_not_taken_is_a_connect_timeout(full_port):
    url = f"http://127.0.0.1:{full_port}/rpc"
    hung = await php("return $yp->cast('upai.echo', []);", url, connect_timeout_s=0.3,
                     timeout_s=30)
    assert hung["error"] == "YPTask\\RequestTimeout", hung
    assert "connect_timeout_s" in hung["message"]


async def test_settings_are_checked_before_anything_is_sent():
    for settings, field in [({"timeout_s": 0}, "timeout_s"), ({"timeout_s": "5"}, "timeout_s"),
                            ({"connect_timeout_s": -1}, "connect_timeout_s"),
                            ({"tokn": "x"}, "tokn")]:
        bad = await php("return 1;", closed_port_url(), **settings)
        assert bad["error"] == "YPTask\\InvalidParams" and f"'{field}'" in bad["message"], bad
    for wrong in ("ftp://127.0.0.1/rpc", "http:///rpc",
                  "http://127.0.0.1:8700/rpc HTTP/1.0\r\nX: y"):
        refused = await php("return 1;", wrong)
        assert refused["error"] == "YPTask\\InvalidParams" and "http(s)://" in refused["message"]


@pytest.fixture
async def canned() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An HTTP server on 127.0.0.1 that answers every request with the next of the raw
    responses the test puts in the list, then closes: for the answer shapes a node does
    not send itself (chunked, no length) but a proxy in front of it may."""
    async with canned_server(None) as served:
        yield served


@contextlib.asynccontextmanager
async def canned_server(tls: ssl.SSLContext | None) -> AsyncIterator[tuple[str, list[bytes]]]:
    """The server of `canned`, over TLS with `tls`."""
    responses: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"Content-Length: (\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            writer.write(responses.pop(0))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls)
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}/rpc", responses
    finally:
        server.close()
        await server.wait_closed()


async def test_chunked_and_unsized_answers_are_read_whole(canned):
    url, responses = canned
    def body(request_id: int) -> bytes:  # the client numbers its requests from 1
        return json.dumps({"jsonrpc": "2.0", "id": request_id,
                           "result": {"node": "x" * 70000}}).encode()

    first = body(1)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                      for part in (first[:5], first[5:40000], first[40000:]))
    responses.append(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
    responses.append(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + body(2))
    responses.append(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad")
    seen = await php("""
        $out = [strlen($yp->status()['node']), strlen($yp->status()['node'])];
        try { $yp->status(); } catch (YPTask\\TransportError $e) { $out[] = $e->getMessage(); }
        return $out;""", url, admin_token="x" * 20)
    assert seen["ok"][:2] == [70000, 70000]
    assert "HTTP 502 without JSON-RPC" in seen["ok"][2]


def self_signed(folder: Path) -> Path:
    """A certificate for 127.0.0.1 and its key, in one PEM file, made by `openssl`."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    pem = folder / "node.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(pem), "-out", str(folder / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    pem.write_text(pem.read_text() + (folder / "cert.pem").read_text())
    return folder / "cert.pem"


async def test_an_https_url_is_spoken_over_tls_and_its_certificate_checked(tmp_path):
    # A node serves plain HTTP; https is what a TLS proxy in front of it speaks.
    cert = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "node.pem")
    async with canned_server(tls) as (url, responses):
        body = b'{"jsonrpc": "2.0", "id": 1, "result": []}'
        responses.append(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        trusted = await php("return $yp->nodes();", url, admin_token="x" * 20,
                            ssl={"cafile": str(cert)})
        assert trusted == {"ok": []}, trusted
        unknown = await php("return $yp->nodes();", url, admin_token="x" * 20)
    assert unknown["error"] == "YPTask\\TransportError", unknown
    assert "certificate verify failed" in unknown["message"], unknown


# ------------------------------------------------------------------ admin


async def test_the_admin_methods_work_with_the_admin_token(node):
    url = rpc(node)
    admin = {"admin_token": node.admin_token}
    # Given a delayed cast and a paused task
    later = (await php(f"return $yp->cast('php.record', ['n' => 1], ['delay_s' => 3600,"
                       f" 'traceparent' => '{TRACEPARENT}']);", url, **admin))["ok"]
    seen = (await php(f"""
        $paused = $yp->pause('rec');
        try {{ $yp->call('php.record', [], 5); $refused = null; }}
        catch (YPTask\\TaskPaused $e) {{ $refused = $e->getCode(); }}
        $queued = $yp->cast('php.record', ['n' => 2])['id'];
        $resumed = $yp->resume('rec');
        return [
            'paused' => $paused['paused'], 'refused' => $refused, 'queued' => $queued,
            'resumed' => $resumed['paused'],
            'status' => $yp->status()['tasks']['rec']['state'] ?? null,
            'scheduled' => array_column($yp->scheduled(10), 'id'),
            'trace' => array_column($yp->trace('{TRACE}')['messages'], 'id'),
            'task' => $yp->task('rec')['name'],
            'tasks' => array_column($yp->tasks(), 'name'),
            'nodes' => array_column($yp->nodes(), 'name'),
            'cancel' => $yp->cancel('{later["id"]}'),
            'cancelled' => $yp->messageCancelled('{later["id"]}'),
            'after' => array_column($yp->scheduled(10), 'id'),
        ];""", url, **admin))["ok"]
    # Then each answered as the node says
    assert (seen["paused"], seen["refused"], seen["resumed"]) == (True, -32017, False)
    assert (await handled(node, seen["queued"]))["payload"] == {"n": 2}  # waited, then went
    assert seen["status"] in ("running", "idle", "starting")
    assert seen["scheduled"] == [later["id"]] and seen["after"] == []
    assert seen["trace"] == [later["id"]]
    assert seen["task"] == "rec" and sorted(seen["tasks"]) == ["echo", "rec", "sample"]
    assert seen["nodes"] == ["p1"]
    assert seen["cancel"]["cancelled"] == {"p1": ["rec"]} and seen["cancelled"] is True
    unknown = await php("return $yp->task('nope');", url, **admin)
    assert (unknown["error"], unknown["code"]) == ("YPTask\\UnknownTask", -32005)


async def test_dead_letters_and_failures_can_be_read_and_replayed(node):
    url = rpc(node)
    admin = {"admin_token": node.admin_token}
    failed = (await php("return $yp->cast('sample.fail', ['reason' => 'disk full'])['id'];",
                        url, **admin))["ok"]
    dead = await until(lambda: _dead_ids(url, admin), what="a dead letter")
    assert dead == [failed]
    seen = (await php(f"""
        return [$yp->replay('{failed}'), array_column($yp->failures(5), 'error'),
                array_keys($yp->metrics(10, 60))];""", url, **admin))["ok"]
    replayed, errors, _metrics = seen
    assert replayed == 1 and "disk full" in errors


async def _dead_ids(url: str, admin: dict[str, str]) -> list[str]:
    return (await php("return array_column($yp->deadLetters(10), 'id');", url, **admin))["ok"]


# ------------------------------------------------------------------ the error table


async def test_every_error_the_node_sends_has_its_class_in_php():
    """Each error the node can send (its code, and its class name as the node sends it)
    is rebuilt as the PHP class of the same name where that class has the code, else as
    the code's class."""
    classes = {cls for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, YPTaskError)}
    sent = sorted({(wire_code(cls).jsonrpc_code, wire_name(cls.__new__(cls)))  # no __init__
                   for cls in classes})
    answer = (await php(f"""
        $table = [];
        foreach (YPTask\\Errors::BY_CODE as $code => $class) {{ $table[$class][] = $code; }}
        foreach (YPTask\\Errors::BY_CLASS_NAME as $code => $named) {{
            foreach ($named as $class) {{ $table[$class][] = $code; }}
        }}
        $sent = json_decode('{json.dumps(sent)}', true);
        $rebuilt = array_map(fn ($pair) => get_class(YPTask\\Error::fromWire(
            ['code' => $pair[0], 'message' => 'm', 'data' => ['error_class' => $pair[1]]])),
            $sent);
        $defaults = array_map(fn ($pair) => YPTask\\Errors::BY_CODE[$pair[0]] ?? null, $sent);
        return [$table, $rebuilt, $defaults];""", closed_port_url()))["ok"]
    table, rebuilt, defaults = answer
    for (code, name), got, default in zip(sent, rebuilt, defaults, strict=True):
        assert default is not None, f"no PHP class for code {code} ({name})"
        mirrored = f"YPTask\\{name}"
        assert got == (mirrored if code in table.get(mirrored, []) else default), (code, name)
    assert {"YPTask\\IdPending", "YPTask\\NotAccepting", "YPTask\\InvalidParams",
            "YPTask\\TaskPaused", "YPTask\\Unauthorized"} <= set(rebuilt)
    unknown = await php("return get_class(YPTask\\Error::fromWire(['code' => -32099,"
                        " 'message' => 'new']));", closed_port_url())
    assert unknown == {"ok": "YPTask\\RemoteError"}
