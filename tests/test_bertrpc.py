"""BERT-RPC packets, framing and the error table, without processes."""

from __future__ import annotations

import os
import struct
import threading

import pytest

from yptask.errors import (
    WIRE_CODES,
    CallTimeout,
    DecodeError,
    FrameError,
    HandlerError,
    NoSuchFunction,
    NoSuchHandler,
    NoSuchModule,
    ProtocolError,
    RemoteError,
    YPTaskError,
    wire_code,
)
from yptask.wire import codec
from yptask.wire.bertrpc import (
    Call,
    Cast,
    ErrorReply,
    FrameReader,
    Info,
    NoReply,
    Reply,
    decode_packet,
    error_reply,
    frame,
)
from yptask.wire.codec import Atom
from yptask.wire.decode import decode


@pytest.mark.parametrize("packet", [
    Call("yptask", "handle", ["upai.echo", {"a": 1}, {}]),
    Cast("yptask", "handle", []),
    Reply({"x": [1, None]}),
    NoReply(),
    ErrorReply("user", 100, "ValueError", "bad", ["line 1", "line 2"]),
    Info("cache", [(Atom("access"), Atom("public"))]),
])
def test_packets_survive_framing(packet):
    data = frame(packet)
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert decode_packet(data[4:]) == packet


def test_call_is_the_bert_rpc_tuple():
    term = decode(frame(Call("yptask", "ping", []))[4:])
    assert term == (Atom("call"), Atom("yptask"), Atom("ping"), [])


@pytest.mark.parametrize("term", [
    [], (), (Atom("call"), "yptask", Atom("f"), []), (Atom("call"), Atom("m"), Atom("f"), "x"),
    (Atom("reply"),), (Atom("error"), (Atom("user"), 1)), (Atom("bogus"), 1),
    (Atom("info"), "x", []), 42,
])
def test_terms_that_are_not_packets_raise_protocol_error(term):
    with pytest.raises(ProtocolError):
        decode_packet(codec.encode(term))


def test_garbage_body_raises_decode_error():
    with pytest.raises(DecodeError):
        decode_packet(b"\x00garbage")


def test_every_error_class_has_a_wire_code_and_the_table_has_no_duplicates():
    assert wire_code(NoSuchModule("x")).bert_code == 1
    assert wire_code(NoSuchFunction).bert_code == 2
    assert wire_code(FrameError).bert_type == "protocol"
    assert wire_code(HandlerError("E", "d")).bert_type == "user"
    assert wire_code(KeyError()).bert_type == "server"
    pairs = [(c.bert_type, c.bert_code) for k, c in WIRE_CODES.items()
             if k not in (YPTaskError, BaseException)]
    assert len(pairs) == len(set(pairs))
    assert all(code.bert_code < 3 or code.bert_code >= 100 for code in WIRE_CODES.values())


@pytest.mark.parametrize("exc", [NoSuchModule("no m"), NoSuchFunction("no f"),
                                 NoSuchHandler("no h"), HandlerError("KeyError", "'k'", ["tb"])])
def test_error_replies_rebuild_the_same_error_on_the_other_side(exc):
    reply = decode_packet(frame(error_reply(exc))[4:])
    rebuilt = reply.to_exception()
    assert type(rebuilt) is type(exc)
    assert str(exc) in str(rebuilt) or rebuilt.detail == exc.detail


def test_unknown_error_codes_become_remote_errors():
    rebuilt = ErrorReply("server", 103, "CallTimeout", "slow").to_exception()
    assert isinstance(rebuilt, RemoteError) and rebuilt.code == 103
    assert wire_code(CallTimeout).bert_code == 103


def _pipe_with(data: bytes) -> int:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def test_a_frame_reader_reads_frames_then_none_at_end():
    fd = _pipe_with(frame(Reply(1)) + frame(Reply(2)))
    frames = FrameReader(fd)
    assert decode_packet(frames.read_frame()) == Reply(1)
    assert decode_packet(frames.buffered()) == Reply(2)  # it came with the first read
    assert frames.read_frame() is None
    os.close(fd)


def test_a_frame_reader_takes_a_frame_larger_than_one_read():
    body = frame(Reply("x" * 300_000))
    r, w = os.pipe()
    writer = threading.Thread(target=os.write, args=(w, body))
    writer.start()
    frames = FrameReader(r)
    assert decode_packet(frames.read_frame()) == Reply("x" * 300_000)
    writer.join()
    os.close(w)
    assert frames.read_frame() is None
    os.close(r)


@pytest.mark.parametrize(("data", "match"), [
    (b"\x00\x00", "inside a frame"),
    (b"\x00\x00\x00\x09\x83a", "inside a frame"),
    (b"\x7f\xff\xff\xff", "over the cap"),
    (b"\x00\x00\x00\x00", "empty frame"),
])
def test_bad_frames_raise_frame_error(data, match):
    fd = _pipe_with(data)
    with pytest.raises(FrameError, match=match):
        FrameReader(fd, max_frame=1024).read_frame()
    os.close(fd)
