"""The Redis protocol (RESP), as a server reads requests and writes replies. Pure: no I/O.

`RequestParser` takes a connection's bytes as they come and gives back whole
commands, each a list of byte strings: RESP2 arrays of bulk strings
(`*2\\r\\n$4\\r\\nPING\\r\\n$2\\r\\nhi\\r\\n`, what every client sends) and inline
commands (`PING hi\\r\\n`, what a person types into a raw socket). It checks the
bounds of `RequestLimits` at each header, before any byte of the string it
announces is kept, so a connection holds at most one command's bytes plus
what one read brought. Anything else raises `ProtocolError` (malformed) or
`FrameError` (over a bound); either ends the connection.

Hand-written, not `hiredis.Reader`: hiredis parses a server's replies (every
RESP type, any size, no inline commands), while a server must refuse all but
arrays of bulk strings and bound each size as its header arrives, which would
need a second parser in front of hiredis anyway. Requests are two line types
and a length-prefixed string, below.

The reply encoders write RESP2, and RESP3 where the two differ (maps, null)
for a connection that said `HELLO 3`. `payload_of` is the rule for a message's
bytes: JSON when they are JSON, else the text as a string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from yptask.errors import FrameError, InvalidParams, ProtocolError

__all__ = ["RequestLimits", "RequestParser", "array", "bulk", "error", "integer", "map_reply",
           "null", "payload_of", "simple"]

CRLF = b"\r\n"
HEADER_MAX = 24  # "*" or "$", up to 20 digits, CRLF: a longer header line is garbage
_STAR, _DOLLAR, _LF = 0x2A, 0x24, 0x0A


@dataclass
class RequestLimits:
    """What one command may be: its arguments' count, one bulk string's size, an inline
    line's size, and all its bytes together."""

    max_args: int = 1024
    max_bulk: int = 1024 * 1024
    max_inline: int = 64 * 1024
    max_command: int = 1024 * 1024 + 64 * 1024


class RequestParser:
    """A connection's commands, parsed from its bytes as they arrive."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits  # may change between commands (once a client authenticates)
        self._buf = bytearray()
        self._pos = 0
        self._args: list[bytes] | None = None  # the array being read, if one is
        self._left = 0  # its arguments still to come
        self._bulk: int | None = None  # the size of the bulk string being read, if one is
        self._size = 0  # the bytes of the command being read, so far

    def feed(self, data: bytes) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed into a command."""
        return len(self._buf) - self._pos

    def next_command(self) -> list[bytes] | None:
        """The next whole command, or None until more bytes come."""
        while self._args is None:
            if self._pos >= len(self._buf):
                return None
            if self._buf[self._pos] != _STAR:
                inline = self._inline()
                if inline is None or inline:
                    return inline
                continue  # a blank line: nothing to do
            line = self._line()
            if line is None:
                return None
            count = _size(line, "multibulk length")
            if count > self.limits.max_args:
                raise FrameError(f"a command of {count} arguments is over the limit of "
                                 f"{self.limits.max_args}")
            if count:  # *0: an empty command, ignored
                self._args, self._left, self._size = [], count, len(line) + 2
        return self._rest_of_array()

    def _rest_of_array(self) -> list[bytes] | None:
        assert self._args is not None
        while self._left:
            if self._bulk is None:
                line = self._line()
                if line is None:
                    return None
                if line[:1] != b"$":
                    raise ProtocolError(f"expected '$', got {_shown(line[:1])}")
                self._bulk = self._checked_bulk(_size(line, "bulk length"), len(line))
            end = self._pos + self._bulk
            if len(self._buf) < end + 2:
                return None
            if self._buf[end:end + 2] != CRLF:
                raise ProtocolError("a bulk string is not followed by CRLF (its length is "
                                    "not what its header says)")
            self._args.append(bytes(self._buf[self._pos:end]))
            self._pos, self._bulk, self._left = end + 2, None, self._left - 1
        command, self._args = self._args, None
        return command

    def _checked_bulk(self, size: int, header: int) -> int:
        if size > self.limits.max_bulk:
            raise FrameError(f"a bulk string of {size} bytes is over the limit of "
                             f"{self.limits.max_bulk}")
        self._size += header + 2 + size + 2
        if self._size > self.limits.max_command:
            raise FrameError(f"a command of over {self._size} bytes is over the limit of "
                             f"{self.limits.max_command}")
        return size

    def _line(self) -> bytes | None:
        """A header line (without its CRLF), consumed; None until it is whole."""
        end = self._buf.find(CRLF, self._pos, self._pos + HEADER_MAX)
        if end < 0:
            if len(self._buf) - self._pos >= HEADER_MAX:
                raise ProtocolError("a header line is over 22 bytes (a type byte, a "
                                    "length, CRLF)")
            return None
        line = bytes(self._buf[self._pos:end])
        self._pos = end + 2
        return line

    def _inline(self) -> list[bytes] | None:
        """An inline command: words separated by spaces, ending in LF (or CRLF)."""
        first = self._buf[self._pos]
        if not (0x41 <= first <= 0x5A or 0x61 <= first <= 0x7A or first in b" \t\r\n"):
            raise ProtocolError(f"expected '*' or an inline command, got {_shown(bytes([first]))}")
        end = self._buf.find(b"\n", self._pos, self._pos + self.limits.max_inline + 1)
        if end < 0:
            if len(self._buf) - self._pos > self.limits.max_inline:
                raise FrameError(f"an inline command over {self.limits.max_inline} bytes")
            return None
        line = bytes(self._buf[self._pos:end]).rstrip(b"\r")
        self._pos = end + 1
        if any((byte < 0x20 and byte != 0x09) or byte == 0x7F for byte in line):
            raise ProtocolError("an inline command holds a control byte")
        return line.split()


def _size(line: bytes, what: str) -> int:
    digits = line[1:]
    if not digits.isdigit():
        raise ProtocolError(f"invalid {what} {_shown(digits)}"
                            + (": negative" if digits.startswith(b"-") else ""))
    return int(digits)


def _shown(data: bytes) -> str:
    """Untrusted bytes in an error: short, printable."""
    return repr(data[:20])


# ---------------------------------------------------------------------- replies

def simple(text: str) -> bytes:
    return b"+" + text.encode() + CRLF


def error(text: str) -> bytes:
    """An error line; `text` starts with its code (ERR, NOAUTH, ...). One line, always."""
    return b"-" + text.replace("\r", " ").replace("\n", " ").encode(errors="replace") + CRLF


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def bulk(data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return b"$%d\r\n%s\r\n" % (len(raw), raw)


def null(protocol: int) -> bytes:
    return b"_\r\n" if protocol == 3 else b"$-1\r\n"


def array(items: list[bytes]) -> bytes:
    """An array of replies already encoded."""
    return b"*%d\r\n" % len(items) + b"".join(items)


def map_reply(pairs: list[tuple[str, bytes]], protocol: int) -> bytes:
    """A map (RESP3), or the flat array of keys and values RESP2 sends in its place."""
    body = b"".join(bulk(key) + value for key, value in pairs)
    return (b"%%%d\r\n" if protocol == 3 else b"*%d\r\n") % (
        len(pairs) if protocol == 3 else 2 * len(pairs)) + body


# ---------------------------------------------------------------------- payloads

class _NotJSON(Exception):
    """The bytes are no JSON value (NaN and Infinity are not JSON)."""


def payload_of(data: bytes) -> Any:
    """A message's payload from its bytes: the JSON value they are, or else their text.

    Never a silent change: bytes that are not UTF-8, and JSON that would not
    come back as it was sent (a key given twice, a number a 64-bit float or
    integer cannot hold exactly, nesting too deep to decode) are refused with
    `InvalidParams` rather than decoded into something else or kept as text."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidParams(f"the message is not UTF-8 text (byte {exc.start}); send "
                            "binary data encoded, e.g. as base64") from None
    try:
        return json.loads(text, parse_constant=_not_json, parse_float=_exact_float,
                          parse_int=_exact_int, object_pairs_hook=_unique_keys)
    except (_NotJSON, json.JSONDecodeError):
        return text
    except RecursionError:
        raise InvalidParams("the message is JSON nested too deep to decode") from None


def _not_json(constant: str) -> Any:
    raise _NotJSON(constant)


def _exact_float(text: str) -> float:
    value = float(text)
    if Decimal(text) != Decimal(repr(value)):  # 0.1 is 0.1; 0.10000000000000000001 is not
        raise InvalidParams(f"the message is JSON with the number {text[:40]}, which a 64-bit "
                            "float cannot hold exactly; send it as a string")
    return value


def _exact_int(text: str) -> int:
    if len(text.lstrip("-")) > 20:  # beyond 64 bits whatever the digits (the node says so)
        raise InvalidParams(f"the message is JSON with the integer {text[:40]}..., over 64 "
                            "bits; send it as a string")
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise InvalidParams(f"the message is JSON with the key {key[:40]!r} twice; "
                                "decoding it would keep only the last")
        value[key] = item
    return value
