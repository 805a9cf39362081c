"""The node's HTTP server: aiohttp's request handler held to the node's connection limits.

aiohttp bounds the size of a request head (`max_line_size`, `max_field_size`,
`max_headers`) and closes a connection idle for `keepalive_timeout`, but it
has no time limit on a head: its one timer is the keep-alive one, so a client
sending a head a byte at a time (slowloris) keeps its connection for as long
as an idle keep-alive may stay. Here each connection arms a loop timer when
the first byte of a head arrives while it waits for one, and cancels it when
the head is complete; a head still incomplete after `head_timeout_s` closes
the connection. That is one timer per connection only while its head is on
the way, and nothing per byte but a dict move (the limit's activity order).

The connections are capped (`ConnectionLimit`): at the cap, the connection
idle the longest between requests is closed to make room, if one is idle;
otherwise the new one is answered a 503 with `Connection: close` and closed.
The 503 is written before the request is read, as one write, and not lingered
over: under a flood, lingering would hold a descriptor per refusal.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from yptask.connection_limits import ConnectionLimit

__all__ = ["HTTPLimits", "HTTPServer"]

log = logging.getLogger(__name__)

BACKLOG = 1024  # connections the kernel queues for accept: room for a burst


@dataclass(frozen=True)
class HTTPLimits:
    """How many connections the server holds, and for how long (from NodeConfig)."""

    max_connections: int
    head_timeout_s: float
    keepalive_timeout_s: float


class HTTPServer:
    """Serves an aiohttp application on a bound socket; `cleanup` stops it.

    The node keeps it where it kept aiohttp's runner: `cleanup` closes the
    listening socket, then the runner closes the connections and the app.
    """

    def __init__(self, app: web.Application, limits: HTTPLimits) -> None:
        self.limits = limits
        self.connections: ConnectionLimit[_Handler] = ConnectionLimit(
            "HTTP", "max_http_connections", limits.max_connections, evict=_Handler.evict_if_idle)
        self._runner = web.AppRunner(app, handle_signals=False)
        self._server: asyncio.AbstractServer | None = None

    async def start(self, sock: socket.socket) -> None:
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, sock=sock, backlog=BACKLOG)

    async def cleanup(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._runner.cleanup()

    def _connection(self) -> _Handler:
        server = self._runner.server
        assert server is not None
        no_access_log: Any = None  # aiohttp takes None for "no access log"; its hint says Logger
        return _Handler(server, self.connections, self.limits.head_timeout_s,
                        loop=asyncio.get_running_loop(), access_log=no_access_log,
                        keepalive_timeout=self.limits.keepalive_timeout_s)


class _Handler(web.RequestHandler):
    """aiohttp's request handler, admitted by the limit, with a head timer.

    Between requests (every head received has been answered), bytes that do
    not complete a head are the start of one: they arm the head timer.
    """

    __slots__ = ("_admitted", "_head_timeout_s", "_head_timer", "_limit")

    def __init__(self, manager: web.Server, limit: ConnectionLimit[_Handler],
                 head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limit = limit
        self._head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._limit.admit(self):
            body = (self._limit.refusal() + "\n").encode()
            transport = cast(asyncio.Transport, transport)  # uvloop's is no asyncio subclass
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\n"
                            b"Content-Type: text/plain; charset=utf-8\r\n"
                            b"Content-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n"
                            b"\r\n%s" % (len(body), body))
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._limit.release(self)
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # a head is complete: the connection is active
            self._stop_head_timer()
            self._limit.touch(self)
        elif data and self._head_timer is None and self._between_requests():
            self._head_timer = self._loop.call_later(self._head_timeout_s, self._head_late)

    def evict_if_idle(self) -> bool:
        """Close this connection if it is idle between requests; say whether it was."""
        if self._head_timer is None and self._between_requests():
            self.force_close()
            return True
        return False

    def _between_requests(self) -> bool:
        """No request is queued or being answered: before the first head, or while
        aiohttp's loop waits for the next one."""
        if self._messages:
            return False
        waiter = self._waiter
        return self._request_count == 0 or (waiter is not None and not waiter.done())

    def _head_late(self) -> None:
        self._head_timer = None
        if self._between_requests():  # no head completed since the timer was armed
            log.debug("HTTP: closed a connection from %s: its request head took over %.1f s "
                      "(http_head_timeout_s)", self.peername, self._head_timeout_s)
            self.force_close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
