"""BERT-RPC: {packet, 4} framing and the call / cast / reply / error / info packets.

A frame is a 4-byte big-endian length followed by that many bytes of one BERT
term, exactly as an Erlang port or socket opened with `{packet, 4}` sends it.
Packets (bert-rpc.org, BERT-RPC 1.0):

    {call, Module, Function, Args}  ->  {reply, Result} | {error, Error}
    {cast, Module, Function, Args}  ->  {noreply}       | {error, Error}
    {info, Command, Options}           (modifies the next packet; never answered)

    Error = {Type, Code, Class, Detail, Backtrace}
            Type = protocol | server | user | proxy

This module is shared by the worker side (blocking reads on file descriptors)
and the node side (`yptask.workers.connection`, from threads and the loop), so it imports
only the standard library and yptask's protocol modules.
"""

from __future__ import annotations

import os
import struct
import traceback
from dataclasses import dataclass, field
from typing import Any

from yptask.errors import (
    EncodeError,
    FrameError,
    HandlerError,
    NoSuchFunction,
    NoSuchHandler,
    NoSuchModule,
    ProtocolError,
    RemoteError,
    YPTaskError,
    error_class_for,
    wire_code,
    wire_name,
)
from yptask.wire import codec
from yptask.wire.codec import Atom
from yptask.wire.decode import decode
from yptask.wire.describe import describe

__all__ = [
    "DEFAULT_MAX_FRAME",
    "Call",
    "Cast",
    "ErrorReply",
    "FrameReader",
    "Info",
    "NoReply",
    "Reply",
    "answer_result",
    "check_length",
    "decode_packet",
    "error_reply",
    "frame",
    "parse_packet",
    "write_frame",
]

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
READ_SIZE = 64 * 1024  # the most a FrameReader reads at once
_HEADER = struct.Struct(">I")

CALL, CAST, REPLY, NOREPLY, ERROR, INFO = (
    Atom("call"), Atom("cast"), Atom("reply"), Atom("noreply"), Atom("error"), Atom("info"))


# --------------------------------------------------------------------------- packets


@dataclass(frozen=True)
class Call:
    """`{call, Module, Function, Args}`: run Module:Function(Args) and answer its result."""

    module: str
    function: str
    args: list[Any]

    def to_term(self) -> Any:
        return (CALL, Atom(self.module), Atom(self.function), self.args)


@dataclass(frozen=True)
class Cast(Call):
    """`{cast, Module, Function, Args}`: accept, answer `{noreply}`, then run it."""

    def to_term(self) -> Any:
        return (CAST, Atom(self.module), Atom(self.function), self.args)


@dataclass(frozen=True)
class Reply:
    """`{reply, Result}`: the answer to a call."""

    result: Any

    def to_term(self) -> Any:
        return (REPLY, self.result)


@dataclass(frozen=True)
class NoReply:
    """`{noreply}`: the answer to a cast."""

    def to_term(self) -> Any:
        return (NOREPLY,)


@dataclass(frozen=True)
class ErrorReply:
    """`{error, {Type, Code, Class, Detail, Backtrace}}`: a failed call or cast."""

    type: str
    code: int
    error_class: str
    detail: str
    backtrace: list[str] = field(default_factory=list)

    def to_term(self) -> Any:
        return (ERROR, (Atom(self.type), self.code, self.error_class, self.detail,
                        self.backtrace))

    def to_exception(self, *, from_node: bool = False) -> YPTaskError:
        """Rebuild the error on this side: user errors become `HandlerError`, the rest by code.

        A worker's codes map to the few errors a worker may send; another node's
        (`from_node`) to any error class of the wire table.
        """
        if self.type == "user":
            return HandlerError(self.error_class, self.detail, self.backtrace)
        known = {("server", 1): NoSuchModule, ("server", 2): NoSuchFunction,
                 ("server", 100): NoSuchHandler, ("server", 101): EncodeError}
        cls = error_class_for(self.type, self.code) if from_node else known.get(
            (self.type, self.code))
        if cls is not None:
            return cls(self.detail)
        if self.type == "protocol":
            return ProtocolError(f"peer reported: {self.error_class}: {self.detail}")
        return RemoteError(self.type, self.code, self.error_class, self.detail, self.backtrace)


@dataclass(frozen=True)
class Info:
    """`{info, Command, Options}`: modifies the next packet; never answered."""

    command: str
    options: list[Any]

    def to_term(self) -> Any:
        return (INFO, Atom(self.command), self.options)


Packet = Call | Cast | Reply | NoReply | ErrorReply | Info


def error_reply(exc: BaseException, *, with_traceback: bool = False) -> ErrorReply:
    """Return the `ErrorReply` for an exception, coded by the table in `yptask.errors`."""
    code = wire_code(exc)
    if isinstance(exc, HandlerError):
        return ErrorReply(code.bert_type, code.bert_code, exc.error_class, exc.detail,
                          exc.backtrace)
    backtrace = traceback.format_exception(exc) if with_traceback else []
    return ErrorReply(code.bert_type, code.bert_code, wire_name(exc), str(exc), backtrace)


def answer_result(answer: Packet, expected: type[Reply | NoReply] = Reply) -> Any:
    """Return what an answer to a call (or, with `expected=NoReply`, a cast) carries.

    An `{error, ...}` answer raises its rebuilt error; an answer of any other kind
    raises `ProtocolError`.
    """
    if isinstance(answer, expected):
        return answer.result if isinstance(answer, Reply) else None
    if isinstance(answer, ErrorReply):
        raise answer.to_exception()
    raise ProtocolError(f"expected {expected.__name__}, got {type(answer).__name__}")


def parse_packet(term: Any) -> Packet:
    """Return the packet a decoded term is; raise `ProtocolError` if it is none."""
    if type(term) is not tuple or not term:
        raise ProtocolError(f"a BERT-RPC packet is a tuple, got {describe(term)}")
    kind = term[0]
    if (kind in (CALL, CAST)) and len(term) == 4:
        _, module, function, args = term
        if type(module) is not Atom or type(function) is not Atom:
            raise ProtocolError("call/cast module and function must be atoms")
        if type(args) is not list:
            raise ProtocolError("call/cast arguments must be a list")
        return (Call if kind == CALL else Cast)(module, function, args)
    if kind == REPLY and len(term) == 2:
        return Reply(term[1])
    if kind == NOREPLY and len(term) == 1:
        return NoReply()
    if kind == ERROR and len(term) == 2:
        return _parse_error(term[1])
    if kind == INFO and len(term) == 3:
        if type(term[1]) is not Atom or type(term[2]) is not list:
            raise ProtocolError("info command must be an atom and its options a list")
        return Info(term[1], term[2])
    raise ProtocolError(f"not a BERT-RPC packet: {describe(term)}")


def _parse_error(body: Any) -> ErrorReply:
    if type(body) is not tuple or len(body) != 5:
        raise ProtocolError("error body must be {Type, Code, Class, Detail, Backtrace}")
    etype, code, eclass, detail, backtrace = body
    if type(etype) is not Atom or type(code) is not int:
        raise ProtocolError("error type must be an atom and its code an integer")
    if not isinstance(backtrace, list):
        raise ProtocolError("error backtrace must be a list")
    return ErrorReply(str(etype), code, _text(eclass), _text(detail),
                      [_text(x) for x in backtrace])


def _text(value: Any) -> str:
    # an error's class, detail and backtrace lines are binaries; anything else is shown short
    return str(value) if isinstance(value, str) else describe(value)


# --------------------------------------------------------------------------- frames


def frame(packet: Packet | Any) -> bytes:
    """Return the framed bytes of a packet (or of any term)."""
    term = packet.to_term() if hasattr(packet, "to_term") else packet
    body = codec.encode(term)
    return _HEADER.pack(len(body)) + body


def check_length(header: bytes, max_frame: int) -> int:
    """Return the body length a 4-byte header announces; raise `FrameError` past `max_frame`."""
    length: int = _HEADER.unpack(header)[0]
    if length > max_frame:
        raise FrameError(f"frame of {length} bytes is over the cap of {max_frame}")
    if length == 0:
        raise FrameError("empty frame")
    return length


class FrameReader:
    """The frames arriving on a blocking fd, read in chunks of up to READ_SIZE bytes:
    frames that wait together (pipelined calls, or their answers) cost one read."""

    def __init__(self, fd: int, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.fd = fd
        self.max_frame = max_frame
        self._buffer = bytearray()

    def buffered(self) -> bytes | None:
        """The next frame's body if all of it has been read, else None; `FrameError` if
        its header is bad (the stream cannot be re-synchronised after that)."""
        if len(self._buffer) < 4:
            return None
        end = 4 + check_length(bytes(self._buffer[:4]), self.max_frame)
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[4:end])
        del self._buffer[:end]
        return body

    def fill(self) -> bool:
        """Read what has arrived, blocking until something has. False at the end of
        input; `FrameError` if the input ends inside a frame."""
        chunk = os.read(self.fd, READ_SIZE)
        if chunk:
            self._buffer += chunk
            return True
        if self._buffer:
            raise FrameError(f"input ended inside a frame ({len(self._buffer)} bytes of it "
                             "read)")
        return False

    def read_frame(self) -> bytes | None:
        """The next frame's body, waiting for it; None at a clean end of input."""
        while (body := self.buffered()) is None:
            if not self.fill():
                return None
        return body


def write_frame(fd: int, data: bytes) -> None:
    """Write already-framed bytes to a blocking fd, all of them."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def decode_packet(body: bytes) -> Packet:
    """Return the packet in a frame body; raise `ProtocolError` (or `DecodeError`) if none."""
    return parse_packet(decode(body))
