"""HttpBackend against a real aiohttp server on 127.0.0.1: connections, answers, their bounds.

The backend blocks (it runs in a worker actor's thread), so each delivery runs in
a thread here while the server runs on the test's loop.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from support import until

from yptask.errors import CallTimeout, EncodeError, HandlerError, WorkerUnreachable
from yptask.workers import http_backend
from yptask.workers.http_backend import HttpBackend

BIG = 2000  # bytes of the big answers; the tests lower the backend's limit below it


class Server:
    """Answers by path; records each request's client port (one per connection)."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.app = web.Application()
        self.app.router.add_post("/{kind}", self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.ports.append(peer[1] if peer else 0)
        await request.read()
        kind = request.match_info["kind"]
        if kind == "big":
            return web.Response(body=b"x" * BIG, content_type="application/json")
        if kind == "chunked":  # no Content-Length: the size is known only by reading
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(BIG // 100):
                await response.write(b"y" * 100)
            await response.write_eof()
            return response
        if kind == "redirect":
            raise web.HTTPFound("/ok")
        if kind == "text":
            return web.Response(text="fine, thanks")
        if kind == "badjson":
            return web.Response(text="{not json", content_type="application/json")
        if kind == "hang":
            await asyncio.Event().wait()
        return web.json_response({"ok": True})


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str, web.AppRunner]]:
    served = Server()
    runner = web.AppRunner(served.app, keepalive_timeout=0.2, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield served, f"http://127.0.0.1:{port}", runner
    finally:
        await runner.cleanup()


async def deliver(backend: HttpBackend, payload: Any = None, timeout_s: float = 10.0) -> Any:
    return await asyncio.to_thread(backend.handle, "t.m", payload, {"id": "1"}, timeout_s)


async def test_messages_share_one_connection_and_survive_its_idle_close(server) -> None:
    served, base, runner = server
    backend = HttpBackend(f"{base}/ok")
    try:
        # Messages one after the other go on one kept-alive connection
        assert await deliver(backend) == {"ok": True}
        assert await deliver(backend) == {"ok": True}
        assert len(served.ports) == 2 and served.ports[0] == served.ports[1]
        # When the server closes it for being idle, the next message goes on a new one
        await until(lambda: not runner.server.connections,  # type: ignore[union-attr]
                    what="the server to close the idle connection")
        assert await deliver(backend) == {"ok": True}
        assert len(served.ports) == 3 and served.ports[2] != served.ports[0]
    finally:
        backend.close()


@pytest.mark.parametrize("kind", ["big", "chunked"])
async def test_an_answer_over_the_limit_fails_the_attempt(server, monkeypatch,
                                                          kind: str) -> None:
    _, base, _ = server
    monkeypatch.setattr(http_backend, "MAX_ANSWER_BYTES", BIG - 1)
    backend = HttpBackend(f"{base}/{kind}")
    try:
        with pytest.raises(HandlerError, match="limit"):
            await deliver(backend)
    finally:
        backend.close()
    # And one just under it is read whole (a JSON content type, not JSON: a failure too)
    monkeypatch.setattr(http_backend, "MAX_ANSWER_BYTES", BIG)
    backend = HttpBackend(f"{base}/{kind}")
    try:
        if kind == "big":
            with pytest.raises(HandlerError, match="not JSON"):
                await deliver(backend)
        else:
            assert await deliver(backend) == "y" * BIG  # not JSON by its type: its text
    finally:
        backend.close()


async def test_answers_other_than_a_json_2xx(server) -> None:
    _, base, _ = server
    # A redirect is not followed: it is a failure with its status
    with pytest.raises(HandlerError, match="HTTP 302"):
        await deliver(HttpBackend(f"{base}/redirect"))
    # A 2xx that is not JSON acks, its text the result
    assert await deliver(HttpBackend(f"{base}/text")) == "fine, thanks"
    # A JSON type with a body that is not JSON is a failure
    with pytest.raises(HandlerError, match="not JSON"):
        await deliver(HttpBackend(f"{base}/badjson"))


async def test_a_hang_times_out_and_the_next_message_is_delivered(server) -> None:
    _, base, _ = server
    backend = HttpBackend(f"{base}/hang")
    with pytest.raises(CallTimeout):
        await deliver(backend, timeout_s=0.3)
    backend.url = f"{base}/ok"  # the same backend, as a worker actor keeps it
    backend._target = "/ok"
    assert await deliver(backend) == {"ok": True}
    backend.close()


async def test_nothing_is_sent_that_cannot_be_json_or_cannot_connect() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    try:
        backend = HttpBackend(f"http://127.0.0.1:{sock.getsockname()[1]}/x")
        with pytest.raises(WorkerUnreachable, match="cannot connect"):
            await deliver(backend, {"a": 1})
        with pytest.raises(EncodeError, match="JSON"):
            await deliver(backend, {"a": b"bytes"})
    finally:
        sock.close()


async def test_https_that_fails_its_handshake_is_unreachable(server) -> None:
    _, base, _ = server
    # Given a server that speaks plain HTTP, reached with https://: no TLS, nothing sent
    backend = HttpBackend(base.replace("http://", "https://") + "/ok")
    with pytest.raises(WorkerUnreachable, match="cannot connect"):
        await deliver(backend)
    served, _, _ = server
    assert served.ports == []  # no request reached the server
