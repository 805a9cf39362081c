"""One keep-alive HTTP/1.1 connection that POSTs to one URL: the Python client's transport.

`HTTPConnection.post` sends a request in one write and reads its answer: the
status, and the body framed by Content-Length, by chunked encoding or by the
end of the connection. That is all a JSON-RPC answer needs. http.client, which
this replaces, parses every answer's headers with the email package and writes
a request's head and body separately; for a sequential call that was about 140
of the client's 210 µs of CPU, and the second write made the node read twice.

A peer that closes the connection before the first byte of an answer raises
`ConnectionClosed`: on a reused keep-alive connection that means the node had
closed it while it was idle, and the request never reached it. A peer that
closes in the middle of an answer, or answers something that is not HTTP,
raises `ProtocolError`.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping

from yptask.errors import ProtocolError

__all__ = ["ConnectionClosed", "HTTPConnection"]

_READ_BYTES = 64 * 1024
_MAX_HEAD_BYTES = 64 * 1024  # an answer's status line and headers; more is not a node
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class ConnectionClosed(ConnectionError):
    """The peer closed the connection before it began to answer."""


class HTTPConnection:
    """An open connection to `host:port`, POSTing to `path` with fixed `headers`.

    Not thread-safe: a thread keeps its own (see `yptask.client.Client`).
    """

    def __init__(self, host: str, port: int, path: str, headers: Mapping[str, str], *,
                 timeout_s: float, tls: ssl.SSLContext | None = None) -> None:
        """Connect now; raises OSError (TimeoutError past `timeout_s`) if that fails."""
        sock = socket.create_connection((host, port), timeout=timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = tls.wrap_socket(sock, server_hostname=host) if tls else sock
        except BaseException:
            sock.close()
            raise
        self._timeout_s = timeout_s
        self._buffer = bytearray()
        self._answer_begun = False  # whether a byte of the current answer has arrived
        self._open = True
        authority = f"[{host}]" if ":" in host else host
        fixed = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._head = (f"POST {path} HTTP/1.1\r\nHost: {authority}:{port}\r\n{fixed}"
                      "Content-Length: ").encode("latin-1")

    @property
    def is_open(self) -> bool:
        """False once the connection is closed, by either side."""
        return self._open

    def post(self, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """Send `body`; return the answer's status and body. Every read and write gives
        up after `timeout_s` (TimeoutError); the connection is then closed."""
        if not self._open:
            raise ConnectionClosed("the connection is closed")
        try:
            if timeout_s != self._timeout_s:
                self._sock.settimeout(timeout_s)
                self._timeout_s = timeout_s
            self._answer_begun = False
            self._sock.sendall(b"%s%d\r\n\r\n%s" % (self._head, len(body), body))
            return self._answer()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._open = False
        self._buffer.clear()
        self._sock.close()

    # ------------------------------------------------------------------ the answer

    def _answer(self) -> tuple[int, bytes]:
        status, headers, keep_open = self._head_of_answer()
        while 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            status, headers, keep_open = self._head_of_answer()
        if status in (204, 304):  # never a body
            body = b""
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            body = self._chunked_body()
        elif b"content-length" in headers:
            length = headers[b"content-length"]
            if not length.isdigit():
                raise ProtocolError(f"the node answered a Content-Length of {length!r}")
            body = self._take(int(length))
        else:  # the body runs to the end of the connection
            body = self._rest()
            keep_open = False
        if not keep_open:
            self.close()
        return status, body

    def _head_of_answer(self) -> tuple[int, dict[bytes, bytes], bool]:
        """The status, the headers (names in lower case) and whether the connection stays open."""
        end = self._find(b"\r\n\r\n")
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        del self._buffer[:end + 4]
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"the node answered something that is not HTTP: "
                                f"{lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get(b"connection", b"").lower()
        if version == b"HTTP/1.0":
            return int(code), headers, connection == b"keep-alive"
        return int(code), headers, connection != b"close"

    def _chunked_body(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            end = self._find(b"\r\n")
            size_field = bytes(self._buffer[:end]).split(b";")[0].strip()
            del self._buffer[:end + 2]
            if not size_field or size_field.strip(_HEX_DIGITS):  # int() would take "-1", "0x1"
                raise ProtocolError(f"the node answered a chunk of size {size_field[:20]!r}")
            size = int(size_field, 16)
            if size == 0:
                while (end := self._find(b"\r\n")) > 0:  # trailers, up to an empty line
                    del self._buffer[:end + 2]
                del self._buffer[:2]
                return b"".join(chunks)
            chunks.append(self._take(size))
            self._take(2)  # the CRLF that ends a chunk

    def _find(self, separator: bytes) -> int:
        """Where `separator` starts in the buffer, reading until it is there."""
        while (index := self._buffer.find(separator)) < 0:
            if len(self._buffer) > _MAX_HEAD_BYTES:
                raise ProtocolError(f"the node answered {len(self._buffer)} bytes without "
                                    "the end of a line or of a head")
            self._fill()
        return index

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._fill()
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        return taken

    def _rest(self) -> bytes:
        while chunk := self._sock.recv(_READ_BYTES):
            self._buffer += chunk
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest

    def _fill(self) -> None:
        chunk = self._sock.recv(_READ_BYTES)
        if not chunk:
            if not self._answer_begun:
                raise ConnectionClosed("the node closed the connection without an answer")
            raise ProtocolError("the node closed the connection in the middle of its answer")
        self._answer_begun = True
        self._buffer += chunk
