"""A blocking FastCGI client for one thread: one request at a time to php-fpm (or any
FastCGI responder) over one kept connection, and the answer as a `FastCgiResponse`.

Hand-written because no maintained FastCGI *client* library for Python exists: the
packages that speak the protocol are servers, or unmaintained early releases. The
client's side of FastCGI 1.0 is small: records with an 8-byte header; BEGIN_REQUEST
(role RESPONDER, FCGI_KEEP_CONN), the PARAMS stream (name-value pairs with 1- or
4-byte lengths) and the STDIN stream go out; STDOUT and STDERR come back until
END_REQUEST. The STDOUT stream is a CGI answer: a header block (`Status:` among it),
a blank line, the body. The records are `yptask.workers.fastcgi_records`'s (pure);
this module moves their bytes.

The connection stays open between requests. One that the server closed while idle
(php-fpm's `pm.max_requests`, a reload) is seen before anything is written, and the
request goes over a fresh connection instead; a request is never sent twice once a
byte of it may have reached the server. Writing and reading interleave (poll), so a
server that answers before it has read a large body does not deadlock us.

Errors: `WorkerUnreachable` (could not connect, or nothing of the request was
written), `CallTimeout` (no complete answer within the request's timeout),
`FastCgiError` (the server broke the protocol, closed mid-answer, or answered more
than `max_response_bytes`); an address that is not one raises `ConfigError`. After
any error the connection is closed; the next request opens a new one.
"""

from __future__ import annotations

import logging
import re
import select
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

from yptask.errors import CallTimeout, ConfigError, FastCgiError, WorkerUnreachable
from yptask.workers.fastcgi_records import (
    MAX_PARAMS_BYTES,
    MAX_STDERR_BYTES,
    AnswerReader,
    FastCgiResponse,
    encode_request,
    parse_cgi_answer,
)

__all__ = ["MAX_PARAMS_BYTES", "MAX_STDERR_BYTES", "FastCgiAddress", "FastCgiConnection",
           "FastCgiResponse", "encode_request", "parse_cgi_answer"]

log = logging.getLogger(__name__)

_SEND_BYTES = 256 * 1024
_READ_BYTES = 64 * 1024
_MAX_SUN_PATH = 107  # bytes of a Unix socket's path (sun_path is 108 with its NUL)
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,252})")


@dataclass(frozen=True)
class FastCgiAddress:
    """Where a FastCGI server listens: `unix:/abs/path`, or `host:port` (`[v6]:port`)."""

    text: str
    path: str | None = None  # the Unix socket's, or None for TCP
    host: str = ""
    port: int = 0

    @classmethod
    def parse(cls, text: str) -> FastCgiAddress:
        """The address `text` names; raises ConfigError saying what is wrong with it."""
        if not isinstance(text, str) or not text:
            raise ConfigError(f"a FastCGI address is 'unix:/abs/path' or 'host:port', "
                              f"not {text!r}")
        if text.startswith("unix:"):
            path = text[len("unix:"):]
            if not path.startswith("/") or "\0" in path:
                raise ConfigError(f"FastCGI address {text!r}: the socket path must be "
                                  "absolute ('unix:/run/php/fpm.sock')")
            if len(path.encode("utf-8")) > _MAX_SUN_PATH:
                raise ConfigError(f"FastCGI address {text!r}: a Unix socket path has at most "
                                  f"{_MAX_SUN_PATH} bytes")
            return cls(text, path=path)
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"FastCGI address {text!r} is neither 'unix:/abs/path' nor "
                              "'host:port'")
        return cls(text, host=_checked_host(text, host), port=_checked_port(text, port_text))

    def connect(self, timeout_s: float) -> socket.socket:
        """A new connected socket; raises OSError (TimeoutError) if that fails."""
        if self.path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout_s)
                sock.connect(self.path)
            except BaseException:
                sock.close()
                raise
            return sock
        sock = socket.create_connection((self.host, self.port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _checked_host(text: str, host: str) -> str:
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            socket.inet_pton(socket.AF_INET6, inner)
        except OSError:
            raise ConfigError(f"FastCGI address {text!r}: {inner!r} is not an IPv6 "
                              "address") from None
        return inner
    if ":" in host:
        raise ConfigError(f"FastCGI address {text!r}: write an IPv6 address in brackets "
                          "('[::1]:9000')")
    if not _HOST_NAME.fullmatch(host):
        raise ConfigError(f"FastCGI address {text!r}: {host!r} is not a host name or address")
    return host


def _checked_port(text: str, port_text: str) -> int:
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"FastCGI address {text!r}: the port must be a number from 1 to "
                          "65535")
    return int(port_text)


class _NotSent(Exception):
    """Nothing of the request was written: it may go over another connection."""


class FastCgiConnection:
    """A FastCGI client for one thread: `request` sends one request over a kept
    connection and reads its whole answer. Not thread-safe."""

    def __init__(self, address: str, *, connect_timeout_s: float = 5.0,
                 max_response_bytes: int = 16 * 1024 * 1024, keep_conn: bool = True) -> None:
        """Check the address now (ConfigError); connect at the first request.

        `keep_conn=False` asks the server to close the connection after each answer:
        php-fpm gives a kept connection's child to it alone until it closes, so each
        open connection holds one child (`pm.max_children` must cover them)."""
        self.address = FastCgiAddress.parse(address)
        if not connect_timeout_s > 0 or not max_response_bytes > 0:
            raise ConfigError("a FastCGI connection's connect_timeout_s and "
                              "max_response_bytes must be positive")
        self.connect_timeout_s = connect_timeout_s
        self.max_response_bytes = max_response_bytes
        self.keep_conn = keep_conn
        self._sock: socket.socket | None = None

    def request(self, params: Mapping[str, str], body: bytes,
                timeout_s: float) -> FastCgiResponse:
        """Send one request and return its answer, read in full within `timeout_s`.

        Raises WorkerUnreachable (not sent: no connection, or it closed before a byte
        was written), CallTimeout, or FastCgiError (see the module's docstring)."""
        deadline = time.monotonic() + timeout_s
        # Bad parameters raise here, before any I/O.
        data = encode_request(params, body, keep_conn=self.keep_conn)
        try:
            if self._sock is not None and self.is_open():
                try:
                    return self._exchange(self._sock, data, deadline, timeout_s)
                except _NotSent:
                    log.debug("FastCGI connection to %s closed while idle; reconnecting",
                              self.address.text)
            self._drop()
            self._sock = sock = self._connect(deadline)
            try:
                return self._exchange(sock, data, deadline, timeout_s)
            except _NotSent as exc:
                raise WorkerUnreachable(f"FastCGI server {self.address.text} closed the "
                                        f"connection at once ({exc}); the request was not "
                                        "sent") from None
        except BaseException:
            self._drop()
            raise

    def is_open(self) -> bool:
        """Whether a connection is open and the server has not closed it (php-fpm's
        child closes its end after its `pm.max_requests`, and waits for ours)."""
        if self._sock is None:
            return False
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        # Readable while idle: the server closed it, or sent bytes nobody asked for;
        # either way it cannot carry a request.
        return not poller.poll(0)

    def close(self) -> None:
        """Close the connection, if open. Never raises."""
        self._drop()

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _connect(self, deadline: float) -> socket.socket:
        try:
            sock = self.address.connect(min(self.connect_timeout_s,
                                            max(deadline - time.monotonic(), 0.001)))
        except OSError as exc:
            raise WorkerUnreachable(f"could not connect to FastCGI server "
                                    f"{self.address.text}: {exc}; the request was not "
                                    "sent") from None
        sock.setblocking(False)
        return sock

    def _exchange(self, sock: socket.socket, data: bytes, deadline: float,
                  timeout_s: float) -> FastCgiResponse:
        """Write `data` and read the answer, both as the socket allows; close the
        connection after unless the whole request went out and the answer ended clean."""
        reader = AnswerReader(self.max_response_bytes)
        view, sent = memoryview(data), 0
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while reader.end is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CallTimeout(f"FastCGI server {self.address.text} did not answer within "
                                  f"{timeout_s:g} s")
            poller.modify(sock, select.POLLIN | (select.POLLOUT if sent < len(data) else 0))
            ready = poller.poll(max(1, int(remaining * 1000) + 1))
            mask = ready[0][1] if ready else 0
            if mask & (select.POLLIN | select.POLLHUP | select.POLLERR):
                self._receive(sock, reader, sent)
            elif mask & select.POLLOUT:
                sent += self._send(sock, view[sent:sent + _SEND_BYTES], sent)
        # Answered before it read the whole request, or sent more than asked: not reusable.
        if sent < len(data) or reader.buffer or not self.keep_conn:
            self._drop()
        return reader.response()

    def _receive(self, sock: socket.socket, reader: AnswerReader, sent: int) -> None:
        try:
            chunk = sock.recv(_READ_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            if sent == 0:
                raise _NotSent(str(exc)) from None
            raise FastCgiError(f"FastCGI server {self.address.text} broke the connection "
                               f"({exc}) before it answered in full") from None
        if chunk:
            reader.feed(chunk)
        elif sent == 0:
            raise _NotSent("end of stream")
        else:
            where = "in the middle of a record" if reader.buffer else "before END_REQUEST"
            raise FastCgiError(f"FastCGI server {self.address.text} closed the connection "
                               f"{where}; the request may have been handled (php-fpm closes "
                               "a kept connection after pm.max_requests, or its child died)")

    def _send(self, sock: socket.socket, chunk: memoryview, sent: int) -> int:
        try:
            return sock.send(chunk)
        except BlockingIOError:
            return 0
        except OSError as exc:
            if sent == 0:
                raise _NotSent(str(exc)) from None
            raise FastCgiError(f"FastCGI server {self.address.text} closed the connection "
                               f"while the request was being sent ({exc})") from None

