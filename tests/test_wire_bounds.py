"""Bounds on what untrusted BERT input can make the node allocate, compute and write.

The codec's own caps (inflation ratio, term count) as a table of small inputs,
the safe description of terms in error messages, and then real `yptask node`
subprocesses that are sent decompression bombs on their BERT-RPC and link
ports while another connection keeps calling.
"""

from __future__ import annotations

import struct
import zlib

import pytest

from yptask import codec
from yptask.bertrpc import parse_packet
from yptask.codec import decode, describe, encode
from yptask.errors import DecodeError, ProtocolError


def compressed(value: object, level: int = 9) -> bytes:
    body = encode(value)[1:]
    return b"\x83P" + struct.pack(">I", len(body)) + zlib.compress(body, level)


# --------------------------------------------------------------------------- the codec


def test_a_compressed_term_that_inflates_past_the_ratio_cap_is_refused_before_inflating():
    bomb = compressed(b"\x00" * 1_000_000)
    assert len(bomb) * codec.DEFAULT_MAX_RATIO < 1_000_000
    with pytest.raises(DecodeError, match="ratio"):
        decode(bomb)


def test_a_compressed_term_within_the_ratio_cap_decodes():
    value = ["abc", 1, 2.5, {"k": "v"}] * 50
    data = compressed(value)
    assert len(encode(value)) < len(data) * codec.DEFAULT_MAX_RATIO
    assert decode(data) == value


def test_the_ratio_cap_is_exact_at_its_edge():
    data = compressed("x" * 20_000)
    size = struct.unpack(">I", data[2:6])[0]
    ratio = -(-size // len(data))  # the smallest cap that admits it
    assert decode(data, max_ratio=ratio) == "x" * 20_000
    with pytest.raises(DecodeError, match="ratio"):
        decode(data, max_ratio=ratio - 1)


@pytest.mark.parametrize("value", [[None] * 5000, [[]] * 5000, [{}] * 5000,
                                   {str(i): i for i in range(2500)}, [(1, 2)] * 2000])
def test_a_term_with_more_elements_than_the_budget_is_refused(value):
    data = encode(value)
    assert decode(data, max_terms=20_000) == value
    with pytest.raises(DecodeError, match="elements"):
        decode(data, max_terms=4000)


def test_the_term_budget_counts_the_whole_term_not_one_container():
    value = [[1] * 100] * 100  # 100 lists of 100: 10 100 elements in all
    assert decode(encode(value), max_terms=10_100) == value
    with pytest.raises(DecodeError, match="elements"):
        decode(encode(value), max_terms=10_099)


def test_inflated_nils_cannot_become_millions_of_objects():
    bomb = compressed([[]] * 2_000_000)  # about 2 MB of NIL bytes, 2 M empty lists
    with pytest.raises(DecodeError, match="ratio"):
        decode(bomb)
    with pytest.raises(DecodeError, match="elements"):
        decode(bomb, max_ratio=10_000)


HUGE_TERMS = {
    "str": lambda: "x" * 10_000_000, "bytes": lambda: b"x" * 10_000_000,
    "list": lambda: list(range(1_000_000)), "tuple": lambda: tuple(range(1_000_000)),
    "dict": lambda: {i: "v" * 1000 for i in range(100_000)}, "bignum": lambda: 7 ** 1_000_000,
    "nested": lambda: [[[["deep" * 1000] * 100]]],
    "bert": lambda: (codec.Atom("bert"), ["y" * 100] * 100_000)}


@pytest.mark.parametrize("make", HUGE_TERMS.values(), ids=HUGE_TERMS.keys())
def test_describe_is_short_whatever_the_term(make):
    text = describe(make())
    assert 0 < len(text) <= 120


def test_describe_says_type_and_size():
    assert describe([1, 2, 3]) == "[1, 2, 3]"
    assert describe(list(range(1_000_000))).startswith("<list of 1000000>[0, 1, 2")
    assert describe("x" * 10_000).startswith("<str of 10000 chars>'xxx")
    assert "bits" in describe(7 ** 100_000)


def test_a_huge_term_in_a_protocol_error_gives_a_short_message():
    with pytest.raises(ProtocolError) as caught:
        parse_packet(["z" * 1_000_000] * 1000)
    assert len(str(caught.value)) < 300
    with pytest.raises(ProtocolError) as caught:
        parse_packet((codec.Atom("nope"), "z" * 1_000_000))
    assert len(str(caught.value)) < 300


def test_a_huge_bert_complex_kind_gives_a_short_message():
    data = b"\x83h\x02d\x00\x04bert" + encode(["q" * 1000] * 1000)[1:]
    with pytest.raises(DecodeError) as caught:
        decode(data)
    assert len(str(caught.value)) < 300
