"""Messages delivered to php-fpm over FastCGI (yptask/workers/fastcgi*.py).

Against the real php-fpm (`php_fpm.PhpFpm`: its own config and socket in a temp dir)
running one PHP handler, `HANDLER`, that acts on the message's name: the meta in
`$_SERVER`, the body in php://input, JSON and text results, failure statuses and
exceptions, timeouts, php-fpm restarted or down, TCP as well as a Unix socket. The
protocol faults php-fpm cannot commit are played by a fake server (`fake_fastcgi`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_fastcgi import (
    PARAMS,
    STDERR,
    STDOUT,
    Answer,
    FakeFastCgi,
    answer_ok,
    end_request,
    record,
)
from php_fpm import PhpFpm, free_tcp_port, require_php_fpm
from support import wait_for

from yptask.errors import (
    CallTimeout,
    ConfigError,
    EncodeError,
    FastCgiError,
    HandlerError,
    WorkerUnreachable,
)
from yptask.workers.fastcgi import (
    MAX_PARAMS_BYTES,
    MAX_STDERR_BYTES,
    FastCgiAddress,
    FastCgiConnection,
    parse_cgi_answer,
)
from yptask.workers.fastcgi_backend import MAX_PARAM_VALUE_CHARS, FastCgiBackend
from yptask.workers.job import delivery_meta

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TIMEOUT_S = 10.0  # of a request that should be answered at once

# One handler for every test message, chosen by the message's name.
HANDLER = r"""<?php
$raw = file_get_contents('php://input');
$message = json_decode($raw, true);
switch ($_SERVER['YPTASK_NAME']) {
case 'php.echo':  // what the script was given
    header('Content-Type: application/json');
    $server = array_filter($_SERVER, 'is_string');
    echo json_encode(['server' => $server, 'body' => $message, 'pid' => getmypid()]);
    break;
case 'php.sum':
    header('Content-Type: application/json; charset=utf-8');
    echo json_encode(['sum' => array_sum($message['payload'])]);
    break;
case 'php.text':
    echo 'plain ', $message['payload'];
    break;
case 'php.nothing':
    break;
case 'php.fail':
    http_response_code(500);
    echo 'could not ', $message['payload'];
    break;
case 'php.throw':
    throw new RuntimeException('boom: ' . $message['payload']);
case 'php.sleep':
    sleep((int) $message['payload']);
    echo 'woke';
    break;
case 'php.pid':
    header('Content-Type: application/json');
    echo getmypid();
    break;
case 'php.size':
    header('Content-Type: application/json');
    echo strlen($message['payload']);
    break;
default:
    http_response_code(404);
    echo 'no handler for ', $_SERVER['YPTASK_NAME'];
}
"""


@pytest.fixture
def script(tmp_path: Path) -> str:
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "index.php").write_text(HANDLER)
    return str(folder / "index.php")


StartFpm = Callable[..., PhpFpm]


@pytest.fixture
def start_fpm(tmp_path: Path) -> Iterator[StartFpm]:
    """Start php-fpm (`start_fpm(tcp_port=None, max_requests=0)`); stopped at the end."""
    binary = require_php_fpm()
    started: list[PhpFpm] = []

    def start(**options: Any) -> PhpFpm:
        folder = tmp_path / f"fpm{len(started)}"
        folder.mkdir()
        fpm = PhpFpm(binary, folder, **options)
        started.append(fpm)
        fpm.start()
        return fpm

    yield start
    for fpm in started:
        fpm.stop()


@pytest.fixture
def fpm(start_fpm: StartFpm) -> PhpFpm:
    return start_fpm()


@pytest.fixture
def backends() -> Iterator[Callable[..., FastCgiBackend]]:
    """Make backends (`backends(address, script)`); each closed at the end."""
    made: list[FastCgiBackend] = []

    def make(address: str, script: str, **options: Any) -> FastCgiBackend:
        made.append(FastCgiBackend(address, script, **options))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def fake() -> Iterator[Callable[..., FakeFastCgi]]:
    """Start fake FastCGI servers (`fake(answers)`); each stopped at the end."""
    servers: list[FakeFastCgi] = []

    def start(*answers: Answer, early: bool = False) -> FakeFastCgi:
        servers.append(FakeFastCgi(list(answers), early=early))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def meta(**extra: Any) -> dict[str, Any]:
    return {**delivery_meta("m-1", 2, 1_700_000_000.5, 7, deadline=1_900_000_000.25,
                            trace_id=TRACE_ID), **extra}


# --- against php-fpm -------------------------------------------------------------------


def test_a_message_reaches_the_script_with_its_meta_and_body(fpm, script, backends):
    backend = backends(fpm.address, script)
    # When a message is delivered, the script sees its name and meta in $_SERVER...
    answer = backend.handle("php.echo", {"n": 1, "text": "é"}, meta(), TIMEOUT_S)
    server = answer["server"]
    assert server["YPTASK_NAME"] == "php.echo"
    assert server["YPTASK_ID"] == "m-1"
    assert server["YPTASK_ATTEMPT"] == "2"
    assert server["YPTASK_PRIORITY"] == "7"
    assert float(server["YPTASK_DEADLINE"]) == 1_900_000_000.25
    assert server["YPTASK_TRACE_ID"] == TRACE_ID
    assert server["HTTP_TRACEPARENT"] == meta()["traceparent"]
    assert server["REQUEST_METHOD"] == "POST"
    assert server["SCRIPT_FILENAME"] == script
    assert server["DOCUMENT_ROOT"] == str(Path(script).parent)
    assert server["CONTENT_TYPE"] == "application/json"
    assert server["GATEWAY_INTERFACE"] == "CGI/1.1"
    # ... and the message as the JSON body, the HTTP backend's.
    assert answer["body"] == {"name": "php.echo", "payload": {"n": 1, "text": "é"},
                              "meta": meta()}


def test_a_message_without_deadline_or_trace_has_no_such_parameters(fpm, script, backends):
    backend = backends(fpm.address, script)
    server = backend.handle("php.echo", None, delivery_meta("m-2", 1, 1.0, 5),
                            TIMEOUT_S)["server"]
    assert server["YPTASK_ID"] == "m-2"
    assert not {"YPTASK_DEADLINE", "YPTASK_TRACE_ID", "HTTP_TRACEPARENT"} & set(server)


def test_answers_become_results_json_text_or_none(fpm, script, backends):
    backend = backends(fpm.address, script)
    assert backend.handle("php.sum", [1, 2, 3.5], meta(), TIMEOUT_S) == {"sum": 6.5}
    assert backend.handle("php.text", "words", meta(), TIMEOUT_S) == "plain words"
    assert backend.handle("php.nothing", None, meta(), TIMEOUT_S) is None


def test_a_large_body_goes_through(fpm, script, backends):
    payload = "x" * (3 * 1024 * 1024)  # many records, more than a socket buffer holds
    backend = backends(fpm.address, script)
    assert backend.handle("php.size", payload, meta(), TIMEOUT_S) == len(payload)


def test_a_failure_status_is_a_handler_error_with_status_and_text(fpm, script, backends):
    backend = backends(fpm.address, script)
    with pytest.raises(HandlerError) as raised:
        backend.handle("php.fail", "do it", meta(), TIMEOUT_S)
    assert "status 500" in raised.value.detail
    assert "could not do it" in raised.value.detail
    with pytest.raises(HandlerError) as raised:
        backend.handle("php.unknown", None, meta(), TIMEOUT_S)
    assert "status 404" in raised.value.detail
    # The client is still good for the next message.
    assert backend.handle("php.text", "after", meta(), TIMEOUT_S) == "plain after"


def test_an_exception_in_the_script_is_a_handler_error_with_its_stderr(fpm, script, backends):
    backend = backends(fpm.address, script)
    with pytest.raises(HandlerError) as raised:
        backend.handle("php.throw", "bad input", meta(), TIMEOUT_S)
    assert "status 500" in raised.value.detail
    assert "Uncaught RuntimeException: boom: bad input" in raised.value.detail
    assert any("RuntimeException" in line for line in raised.value.backtrace)


def test_a_script_past_its_timeout_is_a_call_timeout_and_the_next_works(fpm, script,
                                                                       backends):
    backend = backends(fpm.address, script)
    with pytest.raises(CallTimeout):
        backend.handle("php.sleep", 5, meta(), 0.5)
    # The sleeping child keeps its request; the other of the two children takes the next.
    assert backend.handle("php.text", "awake", meta(), TIMEOUT_S) == "plain awake"


def test_with_keep_conn_the_connection_is_kept_between_messages(fpm, script, backends):
    backend = backends(fpm.address, script, keep_conn=True)
    pids = {backend.handle("php.pid", None, meta(), TIMEOUT_S) for _ in range(5)}
    assert len(pids) == 1  # one php-fpm child served them all: one connection


PID_PARAMS = {"SCRIPT_FILENAME": "", "REQUEST_METHOD": "POST", "YPTASK_NAME": "php.pid"}


def test_a_connection_closed_by_pm_max_requests_is_replaced(start_fpm, script):
    # Given a php-fpm whose children retire after one request each,
    fpm = start_fpm(max_requests=1)
    connection = FastCgiConnection(fpm.address)
    params = {**PID_PARAMS, "SCRIPT_FILENAME": script}
    try:
        first = int(connection.request(params, b"{}", TIMEOUT_S).body)
        # when the child closes its end of the kept connection (and waits for ours),
        wait_for(lambda: not connection.is_open(), 20, "the child to close its end")
        # the next request goes over a new connection, to another child,
        assert int(connection.request(params, b"{}", TIMEOUT_S).body) != first
        # and the retired child, its connection closed by us, exits.
        wait_for(lambda: first not in fpm.children(), 20, "the first child to exit")
    finally:
        connection.close()


def test_by_default_each_message_has_its_own_connection(start_fpm, script, backends):
    fpm = start_fpm(max_requests=1)  # a kept connection would meet a retiring child
    backend = backends(fpm.address, script)
    pids = [backend.handle("php.pid", None, meta(), TIMEOUT_S) for _ in range(6)]
    assert len(set(pids)) == 6


def test_php_fpm_restarted_between_messages_is_reconnected(start_fpm, script, backends):
    fpm = start_fpm()
    backend = backends(fpm.address, script)
    assert backend.handle("php.text", "one", meta(), TIMEOUT_S) == "plain one"
    fpm.stop()
    fpm.start()
    assert backend.handle("php.text", "two", meta(), TIMEOUT_S) == "plain two"


def test_php_fpm_down_is_unreachable(start_fpm, script, backends):
    fpm = start_fpm()
    backend = backends(fpm.address, script)
    assert backend.handle("php.text", "one", meta(), TIMEOUT_S) == "plain one"
    fpm.stop()
    with pytest.raises(WorkerUnreachable, match="not sent"):
        backend.handle("php.text", "two", meta(), TIMEOUT_S)
    with pytest.raises(WorkerUnreachable):  # and a client that never connected
        backends(fpm.address, script).handle("php.text", "three", meta(), TIMEOUT_S)
    fpm.start()
    assert backend.handle("php.text", "four", meta(), TIMEOUT_S) == "plain four"


def test_php_fpm_on_tcp(start_fpm, script, backends):
    fpm = start_fpm(tcp_port=free_tcp_port())
    assert fpm.address.startswith("127.0.0.1:")
    backend = backends(fpm.address, script)
    assert backend.handle("php.sum", [2, 3], meta(), TIMEOUT_S) == {"sum": 5}
    assert backend.handle("php.text", "again", meta(), TIMEOUT_S) == "plain again"


# --- protocol faults, played by a fake server (php-fpm cannot be made to commit them) ----


def client(server: FakeFastCgi, **options: Any) -> FastCgiConnection:
    return FastCgiConnection(server.address, **options)


PARAMS_OK = {"SCRIPT_FILENAME": "/srv/tasks/index.php", "REQUEST_METHOD": "POST"}


def cut_mid_record(conn) -> bool:
    conn.sendall(record(STDOUT, b"Status: 200\r\n\r\n" + b"x" * 90)[:40])
    return False


def silent(conn) -> bool:
    return True  # reads the request, never answers


def close_unanswered(conn) -> bool:
    return False


def endless_stdout(conn) -> bool:
    conn.sendall(record(STDOUT, b"Content-Type: text/plain\r\n\r\n"))
    chunk = record(STDOUT, b"y" * 32_000)
    while True:
        conn.sendall(chunk)  # until the client hangs up: OSError ends the connection


def sends(*records: bytes) -> Answer:
    def answer(conn) -> bool:
        conn.sendall(b"".join(records))
        return True
    return answer


def test_a_server_closing_mid_record_is_a_protocol_error_then_the_client_recovers(fake):
    server = fake(cut_mid_record, answer_ok())
    connection = client(server)
    with pytest.raises(FastCgiError, match="middle of a record"):
        connection.request(PARAMS_OK, b"{}", TIMEOUT_S)
    response = connection.request(PARAMS_OK, b"{}", TIMEOUT_S)
    assert (response.status, response.body) == (200, b"fake answer")
    connection.close()


@pytest.mark.parametrize(("answer", "error"), [
    (sends(record(STDOUT, b"Status: 200\r\n\r\n", version=2)), "version 2"),
    (sends(record(STDOUT, b"Status: 200\r\n\r\nok", request_id=2), end_request()),
     "request id 2"),
    (sends(record(STDOUT, b"Status: 200\r\n\r\n"), record(0x33, b"?")), "type 51"),
    (sends(record(PARAMS, b"\x04\x03HOMEbad")), "unexpected PARAMS"),
    (sends(record(STDOUT, b"Status: 200\r\n\r\n"), record(3, b"\0\0")), "END_REQUEST of 2"),
    (sends(record(STDOUT), end_request(protocol_status=2)), "FCGI_OVERLOADED"),
    (sends(record(STDOUT, b"no header block at all"), end_request()), "no CGI header"),
    (sends(record(STDOUT, b"Status: 200\r\nnot a header\r\n\r\n"), end_request()),
     "not 'Name: value'"),
    (sends(record(STDOUT, b"Status: two hundred\r\n\r\n"), end_request()),
     "not a three-digit"),
])
def test_a_malformed_answer_is_a_protocol_error(fake, answer, error):
    server = fake(answer, answer_ok())
    connection = client(server)
    with pytest.raises(FastCgiError, match=error):
        connection.request(PARAMS_OK, b"{}", TIMEOUT_S)
    # The broken connection was closed: the next request opens another, and works.
    assert connection.request(PARAMS_OK, b"{}", TIMEOUT_S).body == b"fake answer"
    assert server.connections == 2
    connection.close()


def test_an_endless_answer_is_cut_at_the_cap(fake):
    server = fake(endless_stdout, answer_ok())
    connection = client(server, max_response_bytes=256 * 1024)
    with pytest.raises(FastCgiError, match=f"passes {256 * 1024} bytes"):
        connection.request(PARAMS_OK, b"{}", TIMEOUT_S)
    assert connection.request(PARAMS_OK, b"{}", TIMEOUT_S).body == b"fake answer"
    connection.close()


def test_a_silent_server_is_a_call_timeout_and_the_next_request_works(fake):
    server = fake(silent, answer_ok())
    connection = client(server)
    with pytest.raises(CallTimeout):
        connection.request(PARAMS_OK, b"{}", 0.3)
    assert connection.request(PARAMS_OK, b"{}", TIMEOUT_S).body == b"fake answer"
    assert server.requests == 2
    connection.close()


def test_a_request_the_server_may_have_read_is_never_sent_again(fake):
    server = fake(close_unanswered, answer_ok())
    connection = client(server)
    with pytest.raises(FastCgiError, match="may have been handled"):
        connection.request(PARAMS_OK, b"{}", TIMEOUT_S)
    assert server.requests == 1  # read once, and not sent again on a fresh connection
    connection.close()


def test_a_connection_closed_while_idle_is_replaced_without_resending(fake):
    def answer_then_close(conn) -> bool:
        answer_ok()(conn)
        return False

    server = fake(answer_then_close)
    connection = client(server)
    assert connection.request(PARAMS_OK, b"{}", TIMEOUT_S).body == b"fake answer"
    wait_for(lambda: server.closed == 1, 10, "the server to close the connection")
    # When the server closed the idle connection, the next request goes over a new one,
    assert connection.request(PARAMS_OK, b"{}", TIMEOUT_S).body == b"fake answer"
    # once: each request was read by the server once.
    assert (server.connections, server.requests) == (2, 2)
    connection.close()


def test_an_answer_before_the_body_is_read_does_not_deadlock(fake):
    # Given a server that writes a long answer before it reads the request's body (as a
    # script that never reads php://input may), while the body is longer than the
    # socket buffers hold: the client must read while it writes.
    answer = b"a" * (4 * 1024 * 1024)
    server = fake(answer_ok(b"Content-Type: text/plain\r\n\r\n" + answer), early=True)
    connection = client(server)
    response = connection.request(PARAMS_OK, b"b" * (4 * 1024 * 1024), TIMEOUT_S)
    assert response.body == answer
    assert connection.request(PARAMS_OK, b"{}", TIMEOUT_S).body == answer
    connection.close()


def test_stderr_is_kept_bounded_and_app_status_read(fake):
    noise = b"e" * 40_000
    server = fake(sends(*[record(STDERR, noise)] * 4,
                        record(STDOUT, b"Status: 201 Created\r\nX-A: 1\n\nbody"),
                        end_request(app_status=3)))
    response = client(server).request(PARAMS_OK, b"{}", TIMEOUT_S)
    assert response.stderr == (noise * 4)[:MAX_STDERR_BYTES]
    assert (response.status, response.app_status) == (201, 3)
    assert response.headers == [("Status", "201 Created"), ("X-A", "1")]
    assert response.body == b"body"


def test_a_non_zero_app_status_is_a_handler_error(fake, backends):
    server = fake(sends(record(STDOUT, b"Content-Type: text/plain\r\n\r\nhalf done"),
                        end_request(app_status=3)))
    with pytest.raises(HandlerError, match="app status 3") as raised:
        backends(server.address, "/srv/tasks/index.php").handle("a.b", 1, meta(), TIMEOUT_S)
    assert "half done" in raised.value.detail


def test_a_broken_answer_through_the_backend_is_a_handler_error(fake, backends):
    server = fake(close_unanswered)
    backend = backends(server.address, "/srv/tasks/index.php")
    with pytest.raises(HandlerError) as raised:
        backend.handle("a.b", 1, meta(), TIMEOUT_S)
    assert raised.value.error_class == "FastCgiError"


def test_a_json_content_type_with_a_body_that_is_not_json_is_a_handler_error(fake, backends):
    server = fake(answer_ok(b"Content-Type: application/json\r\n\r\n{not json"))
    with pytest.raises(HandlerError, match="not JSON"):
        backends(server.address, "/srv/tasks/index.php").handle("a.b", 1, meta(), TIMEOUT_S)


# --- what the client sends ------------------------------------------------------------


def decoded_params(raw: bytes) -> dict[str, str]:
    """A PARAMS stream's name-value pairs (1- or 4-byte lengths)."""
    pairs, at = {}, 0

    def length() -> int:
        nonlocal at
        if raw[at] < 128:
            at += 1
            return raw[at - 1]
        at += 4
        return int(struct.unpack("!I", raw[at - 4:at])[0]) & 0x7FFFFFFF

    while at < len(raw):
        name_length, value_length = length(), length()
        name = raw[at:at + name_length].decode()
        pairs[name] = raw[at + name_length:at + name_length + value_length].decode()
        at += name_length + value_length
    return pairs


def test_long_parameters_take_four_byte_lengths(fake):
    server = fake(answer_ok())
    connection = client(server)
    params = {"SHORT": "v", "LONG_" + "N" * 200: "w" * 5000}
    connection.request(params, b"{}", TIMEOUT_S)
    assert decoded_params(server.params[0]) == params
    connection.close()


def test_bad_parameters_are_refused_before_anything_is_sent(fake):
    server = fake(answer_ok())
    connection = client(server)
    for params in ({"": "empty name"}, {"N": 3}, {"BIG": "x" * MAX_PARAMS_BYTES}):
        with pytest.raises(FastCgiError, match="not sent"):
            connection.request(params, b"{}", TIMEOUT_S)  # type: ignore[arg-type]
    assert server.connections == 0


def test_long_meta_values_stay_in_the_body_only(fake, backends):
    server = fake(answer_ok())
    backend = backends(server.address, "/srv/tasks/index.php")
    long_value = "v" * (MAX_PARAM_VALUE_CHARS + 1)
    backend.handle("a.b", 1, meta(note=long_value, flag=True, nested={"k": [1]}), TIMEOUT_S)
    params = decoded_params(server.params[0])
    assert "YPTASK_NOTE" not in params
    assert (params["YPTASK_FLAG"], params["YPTASK_NESTED"]) == ("1", '{"k":[1]}')
    assert json.loads(params["CONTENT_LENGTH"]) > MAX_PARAM_VALUE_CHARS


def test_a_payload_with_no_json_is_refused_unsent(fake, backends):
    server = fake(answer_ok())
    with pytest.raises(EncodeError):
        backends(server.address, "/srv/x.php").handle("a.b", b"\xff", meta(), TIMEOUT_S)
    assert server.connections == 0


def test_nothing_listening_is_unreachable(tmp_path):
    with pytest.raises(WorkerUnreachable, match="not sent"):
        FastCgiConnection(f"unix:{tmp_path}/none.sock").request(PARAMS_OK, b"", TIMEOUT_S)
    with pytest.raises(WorkerUnreachable, match="not sent"):
        FastCgiConnection(f"127.0.0.1:{free_tcp_port()}").request(PARAMS_OK, b"", TIMEOUT_S)


# --- addresses and CGI answers, pure ----------------------------------------------------


@pytest.mark.parametrize(("text", "path", "host", "port"), [
    ("unix:/run/php/fpm.sock", "/run/php/fpm.sock", "", 0),
    ("127.0.0.1:9000", None, "127.0.0.1", 9000),
    ("[::1]:9000", None, "::1", 9000),
    ("php.internal:65535", None, "php.internal", 65535),
])
def test_addresses_parse(text, path, host, port):
    address = FastCgiAddress.parse(text)
    assert (address.path, address.host, address.port) == (path, host, port)


@pytest.mark.parametrize(("text", "error"), [
    ("", "not ''"),
    ("unix:run/fpm.sock", "absolute"),
    ("unix:/" + "d" * 120, "at most 107 bytes"),
    ("localhost", "neither"),
    (":9000", "neither"),
    ("::1:9000", "brackets"),
    ("[nope]:9000", "not an IPv6"),
    ("host name:9000", "not a host name"),
    ("127.0.0.1:0", "port must be"),
    ("127.0.0.1:70000", "port must be"),
    ("127.0.0.1:http", "port must be"),
])
def test_bad_addresses_are_config_errors(text, error):
    with pytest.raises(ConfigError, match=error):
        FastCgiAddress.parse(text)


@pytest.mark.parametrize("script", ["index.php", "", "/srv/tasks/", "/srv/\0.php"])
def test_a_script_must_be_an_absolute_file_path(script):
    with pytest.raises(ConfigError, match="absolute file path"):
        FastCgiBackend("unix:/run/php/fpm.sock", script)


@pytest.mark.parametrize(("stdout", "status", "headers", "body"), [
    (b"", 200, [], b""),
    (b"Content-Type: text/plain\r\n\r\nhi\r\n\r\nthere", 200,
     [("Content-Type", "text/plain")], b"hi\r\n\r\nthere"),
    (b"Status: 404 Not Found\nX: y\n\nnone", 404, [("Status", "404 Not Found"), ("X", "y")],
     b"none"),
    (b"Status: 302\r\n\r\n", 302, [("Status", "302")], b""),
])
def test_cgi_answers_parse(stdout, status, headers, body):
    assert parse_cgi_answer(stdout) == (status, headers, body)
