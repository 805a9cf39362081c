"""FastCGI 1.0's records, the client's side, pure (no I/O): a request encoded
(`encode_request`), an answer's records read as their bytes arrive (`AnswerReader`),
and its STDOUT stream read as a CGI answer (`parse_cgi_answer`) into a
`FastCgiResponse`. `yptask.workers.fastcgi` moves the bytes.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from yptask.errors import FastCgiError

__all__ = ["MAX_PARAMS_BYTES", "MAX_STDERR_BYTES", "REQUEST_ID", "AnswerReader",
           "FastCgiResponse", "encode_params", "encode_request", "parse_cgi_answer"]

log = logging.getLogger(__name__)

# Record types and constants of the FastCGI 1.0 specification.
VERSION = 1
BEGIN_REQUEST, ABORT_REQUEST, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 2, 3, 4, 5, 6, 7
RESPONDER = 1
KEEP_CONN = 1
_HEADER = struct.Struct("!BBHHBx")  # version, type, request id, content length, padding
_BEGIN_BODY = struct.Struct("!HB5x")  # role, flags
_END_BODY = struct.Struct("!IB3x")  # app status, protocol status
_PROTOCOL_STATUS = {1: "FCGI_CANT_MPX_CONN", 2: "FCGI_OVERLOADED", 3: "FCGI_UNKNOWN_ROLE"}
_RECORD_NAMES = {1: "BEGIN_REQUEST", 2: "ABORT_REQUEST", 4: "PARAMS", 5: "STDIN", 8: "DATA",
                 9: "GET_VALUES", 10: "GET_VALUES_RESULT", 11: "UNKNOWN_TYPE"}

REQUEST_ID = 1  # one request at a time per connection: it never needs another
_CHUNK = 32 * 1024  # content bytes per STDIN/PARAMS record (at most 65 535)
MAX_PARAMS_BYTES = 64 * 1024  # all parameters, encoded: far above what a delivery sends
MAX_STDERR_BYTES = 64 * 1024  # kept of an answer's stderr; the rest is counted, not kept
_STATUS_VALUE = re.compile(r"([1-9][0-9]{2})(?:\s.*)?", re.DOTALL)


@dataclass
class FastCgiResponse:
    """A FastCGI server's answer: the CGI status and headers, the body, what it wrote to
    stderr (the first MAX_STDERR_BYTES), and END_REQUEST's application status."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stderr: bytes = b""
    app_status: int = 0

    def header(self, name: str) -> str | None:
        """The value of the first header called `name` (any case), if any."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


def parse_cgi_answer(stdout: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """A STDOUT stream as (status, headers, body): the header block ends at the first
    blank line (CRLF or LF); `Status:` gives the status (200 without one). An empty
    stream is a 200 with no body. Raises FastCgiError for a block that is not headers."""
    if not stdout:
        return 200, [], b""
    ends = [(at, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (at := stdout.find(sep)) >= 0]
    if not ends:
        raise FastCgiError(f"the answer has no CGI header block (no blank line in its "
                           f"{len(stdout)} bytes: {stdout[:60]!r})")
    at, length = min(ends)
    headers: list[tuple[str, str]] = []
    status = 200
    for line in re.split(r"\r?\n", stdout[:at].decode("latin-1")) if at else []:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or not name.isprintable():
            raise FastCgiError(f"the answer's CGI header line {line[:80]!r} is not "
                               "'Name: value'")
        value = value.strip()
        if name.lower() == "status":
            match = _STATUS_VALUE.fullmatch(value)
            if match is None:
                raise FastCgiError(f"the answer's Status header {value[:40]!r} is not a "
                                   "three-digit status")
            status = int(match.group(1))
        headers.append((name, value))
    return status, headers, stdout[at + length:]


def _record(kind: int, content: bytes | memoryview) -> bytes:
    return _HEADER.pack(VERSION, kind, REQUEST_ID, len(content), 0) + bytes(content)


def _stream(kind: int, content: bytes) -> list[bytes]:
    """`content` as records of `kind`, then the empty record that ends the stream."""
    view = memoryview(content)
    records = [_record(kind, view[at:at + _CHUNK]) for at in range(0, len(content), _CHUNK)]
    records.append(_record(kind, b""))
    return records


def _length(size: int) -> bytes:
    return bytes((size,)) if size < 128 else struct.pack("!I", size | 0x80000000)


def encode_params(params: Mapping[str, str]) -> bytes:
    """Name-value pairs as FastCGI encodes them; raises FastCgiError for an empty name, a
    value that is not text, or more than MAX_PARAMS_BYTES in all."""
    out = bytearray()
    for name, value in params.items():
        if not isinstance(name, str) or not name or not isinstance(value, str):
            raise FastCgiError(f"FastCGI parameter {name!r}={value!r:.40}: names and values "
                               "are text, names not empty; the request was not sent")
        name_bytes, value_bytes = name.encode("utf-8", "replace"), value.encode("utf-8", "replace")
        out += _length(len(name_bytes)) + _length(len(value_bytes)) + name_bytes + value_bytes
        if len(out) > MAX_PARAMS_BYTES:
            raise FastCgiError(f"the FastCGI parameters pass {MAX_PARAMS_BYTES} bytes (at "
                               f"{name[:40]!r}); the request was not sent")
    return bytes(out)


def encode_request(params: Mapping[str, str], body: bytes, *, keep_conn: bool = True) -> bytes:
    """One whole request: BEGIN_REQUEST (responder, keep the connection), PARAMS, STDIN."""
    begin = _record(BEGIN_REQUEST, _BEGIN_BODY.pack(RESPONDER, KEEP_CONN if keep_conn else 0))
    return b"".join([begin, *_stream(PARAMS, encode_params(params)), *_stream(STDIN, body)])


class AnswerReader:
    """Reads one request's answer records as their bytes arrive."""

    def __init__(self, max_stdout: int) -> None:
        self.max_stdout = max_stdout
        self.buffer = bytearray()
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.stderr_dropped = 0
        self.end: tuple[int, int] | None = None  # END_REQUEST's app and protocol status

    def feed(self, data: bytes) -> None:
        """Take bytes that arrived; raises FastCgiError for a record we cannot accept."""
        self.buffer += data
        at = 0
        while self.end is None and len(self.buffer) - at >= _HEADER.size:
            version, kind, request_id, length, padding = _HEADER.unpack_from(self.buffer, at)
            if version != VERSION:
                raise FastCgiError(f"the server sent a record of FastCGI version {version}, "
                                   f"not {VERSION}: it does not speak FastCGI")
            end = at + _HEADER.size + length
            if len(self.buffer) < end + padding:
                break
            self._take(kind, request_id, bytes(self.buffer[at + _HEADER.size:end]))
            at = end + padding
        del self.buffer[:at]

    def _take(self, kind: int, request_id: int, content: bytes) -> None:
        if request_id != REQUEST_ID:
            raise FastCgiError(f"the server sent a record for request id {request_id}; the "
                               f"request sent was {REQUEST_ID}")
        if kind == STDOUT:
            if len(self.stdout) + len(content) > self.max_stdout:
                raise FastCgiError(f"the answer passes {self.max_stdout} bytes; cut off")
            self.stdout += content
        elif kind == STDERR:
            room = max(0, MAX_STDERR_BYTES - len(self.stderr))
            self.stderr += content[:room]
            self.stderr_dropped += max(0, len(content) - room)
        elif kind == END_REQUEST:
            if len(content) < _END_BODY.size:
                raise FastCgiError(f"the server sent an END_REQUEST of {len(content)} bytes, "
                                   f"not {_END_BODY.size}")
            app_status, protocol_status = _END_BODY.unpack_from(content)
            if protocol_status:
                raise FastCgiError("the server refused the request: "
                                   + _PROTOCOL_STATUS.get(protocol_status,
                                                          f"protocol status {protocol_status}"))
            self.end = (app_status, protocol_status)
        else:
            raise FastCgiError("the server sent an unexpected "
                               f"{_RECORD_NAMES.get(kind, f'type {kind}')} record")

    def response(self) -> FastCgiResponse:
        status, headers, body = parse_cgi_answer(bytes(self.stdout))
        if self.stderr_dropped:
            log.info("a FastCGI answer wrote %d bytes to stderr; kept the first %d",
                     len(self.stderr) + self.stderr_dropped, len(self.stderr))
        return FastCgiResponse(status, headers, body, bytes(self.stderr),
                               self.end[0] if self.end else 0)
