"""The BERT codec on its own: the mapping, BERT's conventions (`bert` as oracle), hostile input."""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import struct
import zlib

import bert
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yptask.errors import DecodeError, EncodeError, ProtocolError
from yptask.wire.codec import Atom, Opaque, as_bytes, encode
from yptask.wire.decode import decode

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=40,
)


@given(json_values)
def test_json_compatible_values_come_back_equal_and_of_the_same_types(value):
    back = decode(encode(value))
    assert back == value
    assert _types(back) == _types(value)


def _types(value):
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value)


# (the atoms true and false decode to bools, as Erlang code writes them: not round trips)
ATOMS = st.builds(Atom, st.text(max_size=50).filter(lambda t: t not in ("true", "false")))


@given(st.recursive(st.integers() | st.text() | ATOMS,
                    lambda children: st.tuples(children, children) | st.lists(children),
                    max_leaves=20))
def test_tuples_atoms_and_lists_round_trip(value):
    back = decode(encode(value))
    assert back == value
    assert _types(back) == _types(value)


@pytest.mark.parametrize("value", [
    0, 255, 256, -1, 2**31 - 1, -(2**31), 2**31, -(2**31) - 1, 2**64, -(2**64), 3**2000,
    0.0, -0.0, 0.1, -2.5e-10, 5e-324, 1.7976931348623157e308,
    "", "héllo ☃", "\U0001f600", [], [[]], (), ((), [()]), {}, {"a": {"b": [1, {}]}},
    Atom("ok"), Atom("héllo"), Atom("ü" * 255), None, True, False,
])
def test_edge_values_round_trip(value):
    back = decode(encode(value))
    assert back == value and type(back) is type(value)
    if isinstance(value, float):
        assert math.copysign(1, back) == math.copysign(1, value)


@given(st.binary())
def test_any_bytes_survive_as_a_binary(raw):
    assert as_bytes(decode(encode(raw))) == raw


def test_strings_are_utf8_binaries_and_dicts_are_maps():
    assert encode("é") == b"\x83m\x00\x00\x00\x02\xc3\xa9"
    assert encode({"a": 1}) == b"\x83t\x00\x00\x00\x01m\x00\x00\x00\x01aa\x01"
    assert encode(Atom("ok")) == b"\x83d\x00\x02ok"
    assert encode(1.5) == b"\x83F" + struct.pack(">d", 1.5)


# BERT's complex types, with the `bert` package as the oracle of its conventions.


@pytest.mark.parametrize("value", [None, True, False, {}, {"a": 1, "b": [None, True]}])
def test_bert_complex_types_match_the_bert_package(value):
    mine = encode(value, bert_dicts=True)
    assert _bytes_to_str(bert.decode(mine)) == value
    assert decode(bert.encode(value)) == value


def test_times_match_the_bert_package():
    naive = dt.datetime(2009, 10, 11, 14, 12, 1, 446228)
    aware = naive.replace(tzinfo=dt.UTC)
    assert decode(bert.encode(naive)) == aware
    assert bert.decode(encode(aware)) == naive
    assert encode(aware) == bert.encode(naive)
    paris = aware.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert decode(encode(paris)) == aware


def test_nil_and_booleans_are_byte_identical_to_the_bert_package():
    for value in (None, True, False):
        assert encode(value) == bert.encode(value)


def _bytes_to_str(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, dict):
        return {_bytes_to_str(k): _bytes_to_str(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bytes_to_str(v) for v in value]
    return value


def test_erlang_boolean_atoms_decode_to_bools_and_other_atoms_stay_atoms():
    assert decode(b"\x83d\x00\x04true") is True
    assert decode(b"\x83w\x05false") is False
    assert decode(b"\x83w\x04none") == Atom("none")
    assert type(decode(b"\x83s\x03nil")) is Atom


def test_charlists_decode_to_lists_of_ints():
    assert decode(b"\x83k\x00\x03abc") == [97, 98, 99]


def test_old_float_ext_decodes():
    text = b"%-31s" % (b"%.20e" % 0.1)
    assert decode(b"\x83c" + text.replace(b" ", b"\x00")) == 0.1


def test_pids_decode_to_opaque_values_that_encode_back_verbatim():
    pid = b"\x83X" + b"w\x0dnonode@nohost" + bytes(12)
    value = decode(pid)
    assert isinstance(value, Opaque)
    assert encode(value) == pid
    assert decode(encode({"who": value})) == {"who": value}


def test_compressed_terms_decode():
    body = encode(["x" * 1000])[1:]
    packed = b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body)
    assert decode(packed) == ["x" * 1000]


# Values without a term are refused at encode, with a clear error.


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, {1, 2}, object(),
                                   dt.datetime(2020, 1, 1), (Atom("bert"), Atom("nil")),
                                   Atom("a" * 256), "\ud800"])
def test_values_without_a_term_raise_encode_error(value):
    with pytest.raises(EncodeError):
        encode(value)


def test_self_referential_value_is_refused_not_a_crash():
    loop: list = []
    loop.append(loop)
    with pytest.raises(EncodeError, match="nested deeper"):
        encode(loop)


# Hostile input: every failure is one DecodeError (a ProtocolError), never anything else.


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"\x82a\x01", "first byte"),
    (b"\x83", "truncated"),
    (b"\x83m\x00\x00\x00\x05ab", "truncated binary"),
    (b"\x83a\x01\x00", "left over"),
    (b"\x83l\xff\xff\xff\xffj", "claims"),
    (b"\x83t\xff\xff\xff\xff", "claims"),
    (b"\x83l\x00\x00\x00\x01a\x01a\x02", "improper"),
    (b"\x83M\x00\x00\x00\x01\x07\xff", "bitstrings"),
    (b"\x83q\x64\x00\x01m\x64\x00\x01f\x01", "unsupported term tag"),
    (b"\x83t\x00\x00\x00\x01l\x00\x00\x00\x00ja\x01", "map keys must be"),
    (b"\x83h\x02d\x00\x04bertd\x00\x05regex", "complex type"),
    (b"\x83\x00", "unsupported term tag"),
])
def test_malformed_terms_raise_decode_error(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode(data)


def test_nesting_past_the_depth_cap_is_refused():
    deep = b"\x83" + b"l\x00\x00\x00\x01" * 200 + b"j" * 201
    with pytest.raises(DecodeError, match="deep"):
        decode(deep)
    assert decode(b"\x83" + b"l\x00\x00\x00\x01" * 10 + b"j" * 11, max_depth=11)


def test_compressed_term_past_the_inflation_cap_is_refused():
    body = encode(b"\x00" * 10_000_000)[1:]
    bomb = b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body, 9)
    assert len(bomb) < 20_000
    with pytest.raises(DecodeError, match="over the cap"):
        decode(bomb, max_inflated=1_000_000)


def test_compressed_term_that_lies_about_its_size_is_refused():
    body = encode("x" * 100)[1:]
    liar = b"\x83P" + struct.pack(">I", 10) + zlib.compress(body)
    with pytest.raises(DecodeError, match="declared size"):
        decode(liar)


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_decode_error(data):
    try:
        decode(b"\x83" + data)
    except DecodeError as exc:
        assert isinstance(exc, ProtocolError)


@settings(max_examples=300)
@given(json_values, st.data())
def test_corrupted_valid_terms_raise_only_decode_error(value, data):
    raw = bytearray(encode(value))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    with contextlib.suppress(DecodeError):
        decode(bytes(raw[:cut]))


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x83F" + struct.pack(">d", math.inf), "not finite"),
    (b"\x83F" + struct.pack(">d", math.nan), "not finite"),
    (b"\x83c" + b"1_5".ljust(31, b"\x00"), "malformed float"),
    (b"\x83t\x00\x00\x00\x01l\x00\x00\x00\x01a\x01ja\x01", "map keys must be"),
])
def test_values_json_cannot_hold_are_refused_at_decode(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode(data)


def test_bytes_after_a_compressed_stream_are_refused():
    body = encode("x" * 100)[1:]
    packed = b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body) + b"junk"
    with pytest.raises(DecodeError, match="declared size"):
        decode(packed)
