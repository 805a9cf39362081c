"""A fake FastCGI server for the faults php-fpm cannot be made to commit: a record cut
off, a malformed record, another request id, an endless answer, records a server never
sends. It is a real socket on 127.0.0.1 and reads each request record by record, as
php-fpm does; only its answers are scripted.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from collections.abc import Callable

__all__ = ["END_REQUEST", "PARAMS", "STDERR", "STDOUT", "Answer", "FakeFastCgi", "answer_ok",
           "end_request", "record"]

BEGIN_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 3, 4, 5, 6, 7
_HEADER = struct.Struct("!BBHHBx")

# An answer writes to the connection after a whole request was read; True keeps the
# connection for the next request, False closes it.
Answer = Callable[[socket.socket], bool]


def record(kind: int, content: bytes = b"", *, request_id: int = 1, version: int = 1,
           padding: int = 0) -> bytes:
    return _HEADER.pack(version, kind, request_id, len(content), padding) + content \
        + b"\0" * padding


def end_request(app_status: int = 0, protocol_status: int = 0) -> bytes:
    return record(END_REQUEST, struct.pack("!IB3x", app_status, protocol_status))


def answer_ok(stdout: bytes = b"Content-Type: text/plain\r\n\r\nfake answer") -> Answer:
    """An answer of `stdout` (a CGI header block and body), then END_REQUEST."""
    def answer(conn: socket.socket) -> bool:
        for at in range(0, len(stdout), 65_535):  # a record holds at most 65 535 bytes
            conn.sendall(record(STDOUT, stdout[at:at + 65_535]))
        conn.sendall(record(STDOUT) + end_request())
        return True
    return answer


class FakeFastCgi:
    """Serves one connection at a time; request n (from 0) gets `answers[n]`, the last
    answer repeating. Counts the connections and the whole requests it read."""

    def __init__(self, answers: list[Answer], *, early: bool = False) -> None:
        self.answers = answers
        self.early = early  # answer once the parameters are read, before the body
        self.connections = 0
        self.requests = 0
        self.closed = 0  # connections it closed, or saw closed
        self.params: list[bytes] = []  # each request's PARAMS stream, raw
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, name="fake-fastcgi", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._listener.close()
        assert not self._thread.is_alive(), "the fake FastCGI server did not stop"

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._listener], [], [], 0.05)[0]:
                continue
            conn, _ = self._listener.accept()
            self.connections += 1
            with conn:
                conn.settimeout(10)  # nothing here may hang the test run
                try:
                    while self._read_request(conn):
                        if not self.early and not self._answer(conn):
                            break
                except OSError:
                    pass
            self.closed += 1

    def _answer(self, conn: socket.socket) -> bool:
        answer = self.answers[min(self.requests, len(self.answers) - 1)]
        self.requests += 1
        return answer(conn)

    def _read_request(self, conn: socket.socket) -> bool:
        """Read one request up to its empty STDIN record; False at the end of the stream."""
        params = bytearray()
        while True:
            head = _read_exactly(conn, _HEADER.size)
            if head is None:
                return False
            _, kind, _, length, padding = _HEADER.unpack(head)
            content = _read_exactly(conn, length + padding)
            if content is None:
                return False
            if kind == PARAMS:
                params += content[:length]
                if length == 0 and self.early:
                    self._answer(conn)
            if kind == STDIN and length == 0:
                self.params.append(bytes(params))
                return True


def _read_exactly(conn: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)
