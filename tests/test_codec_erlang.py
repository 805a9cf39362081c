"""yptask.wire.codec against real Erlang, both ways.

The oracle is tests/erlang/term_oracle.escript: one long-running Erlang
process for the module, spoken to with {packet, 4} frames on its stdin and
stdout. Erlang -> Python: Erlang evaluates the source text of a term and
answers `term_to_binary(Term, Options)` (OTP 25's default, `minor_version`
0, 1 and 2, `compressed`), which `decode` must turn into the expected value.
Python -> Erlang: Erlang answers whether `binary_to_term` of `encode`'s bytes
is `=:=` to the term of a source text, and hands back its own re-encoding,
which must decode to the original value.

Needs `escript` on PATH: skipped without it, except in CI, where it fails.
"""

from __future__ import annotations

import datetime as dt
import os
import select
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yptask.wire.bertrpc import Call, ErrorReply, decode_packet, frame
from yptask.wire.codec import Atom, Opaque, as_bytes, encode
from yptask.wire.decode import decode

pytestmark = pytest.mark.erlang

ORACLE = Path(__file__).resolve().parent / "erlang" / "term_oracle.escript"
ANSWER_TIMEOUT = 10.0

OK, MISMATCH, BAD_TERM, BAD_SOURCE = 0, 1, 2, 3

MV0, MV1, MV2 = "[{minor_version, 0}]", "[{minor_version, 1}]", "[{minor_version, 2}]"
ALL_OPTIONS = ["[]", MV1, MV2, MV0, "[compressed]"]


# --------------------------------------------------------------------------- the oracle


class Oracle:
    """The client end of term_oracle.escript."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self._in = proc.stdin
        self._out = proc.stdout.fileno()

    def eval(self, source: str, options: str = "[]") -> bytes:
        """Return Erlang's `term_to_binary(Term, Options)` of the term `source` evaluates to."""
        opts = options.encode()
        status, body = self._request(b"e" + struct.pack(">I", len(opts)) + opts
                                     + source.encode())
        assert status == OK, f"Erlang could not evaluate {source!r}: {body.decode()}"
        return body

    def check(self, data: bytes, source: str) -> tuple[int, bytes]:
        """Ask whether `binary_to_term(data) =:= Term of source`; return (status, body)."""
        return self._request(b"c" + struct.pack(">I", len(data)) + data + source.encode())

    def assert_reads(self, data: bytes, source: str) -> bytes:
        """Assert Erlang reads `data` as the term of `source`; return its own re-encoding."""
        status, body = self.check(data, source)
        what = {MISMATCH: "Erlang read a different term", BAD_TERM: "Erlang refused the bytes",
                BAD_SOURCE: "the expected source does not evaluate"}.get(status)
        assert status == OK, (f"{what}: {body.decode(errors='replace')} "
                              f"(expected {source}, bytes {data!r})")
        return body

    def _request(self, body: bytes) -> tuple[int, bytes]:
        self._in.write(struct.pack(">I", len(body)) + body)
        self._in.flush()
        (length,) = struct.unpack(">I", self._read(4))
        answer = self._read(length)
        return answer[0], answer[1:]

    def _read(self, n: int) -> bytes:
        deadline = time.monotonic() + ANSWER_TIMEOUT
        chunks: list[bytes] = []
        while n:
            ready, _, _ = select.select([self._out], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"the Erlang oracle gave no answer within {ANSWER_TIMEOUT} s"
            chunk = os.read(self._out, n)
            assert chunk, f"the Erlang oracle exited (status {self.proc.poll()})"
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)


@pytest.fixture(scope="module")
def erlang() -> Iterator[Oracle]:
    escript = shutil.which("escript")
    if escript is None:
        if os.environ.get("CI"):
            pytest.fail("escript is not on PATH, and CI is set: CI must run the Erlang "
                        "interop tests (install Erlang/OTP)")
        pytest.skip("escript is not on PATH: install Erlang/OTP to run the codec interop tests")
    proc = subprocess.Popen([escript, str(ORACLE)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        yield Oracle(proc)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End of input makes the oracle halt; kill it (by its pid) if it does not."""
    try:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait()
    finally:
        assert proc.stdout is not None
        proc.stdout.close()


# --------------------------------------------------------------------------- helpers


def shape(value: Any) -> Any:
    """`value` with the type of every part spelled out: True != 1, Atom("a") != "a"."""
    if isinstance(value, dict):
        return ("dict", frozenset((shape(k), shape(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(shape(v) for v in value))
    return (type(value), value)


def erlang_source(value: Any) -> str:
    """The Erlang source text of the term yptask's mapping gives a JSON-compatible value."""
    if value is None or isinstance(value, bool):
        return {None: "{bert, nil}", True: "{bert, true}", False: "{bert, false}"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return float_source(value)
    if isinstance(value, str):
        return "<<" + ",".join(str(b) for b in as_bytes(value)) + ">>"
    if isinstance(value, list):
        return "[" + ", ".join(erlang_source(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{erlang_source(k)} => {erlang_source(v)}" for k, v in value.items())
        return "#{" + ", ".join(pairs) + "}"
    raise TypeError(f"no Erlang source for {value!r}")


def float_source(value: float) -> str:
    """Python's shortest round-trip repr, in Erlang's float syntax (a dot is required)."""
    mantissa, e, exponent = repr(value).partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    return mantissa + e + exponent


# The same instant Erlang's calendar computes, so the oracle does not share our arithmetic.
TIME_SOURCE = ("begin S = calendar:datetime_to_gregorian_seconds({{2024,1,2},{3,4,5}})"
               " - 62167219200, {bert, time, S div 1000000, S rem 1000000, 678901} end")
TIME_VALUE = dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)


# --------------------------------------------------------------------------- Erlang -> Python

ERLANG_TERMS: list[tuple[str, Any]] = [
    # atoms: ASCII, Latin-1, beyond Latin-1 (OTP 25 writes 'é' as ATOM_EXT, '☃' as UTF-8)
    ("ok", Atom("ok")),
    ("'hello world'", Atom("hello world")),
    ("''", Atom("")),
    ("true", True),
    ("false", False),
    ("'é'", Atom("é")),
    ("'☃'", Atom("☃")),
    ("'Ünïcødé ☃'", Atom("Ünïcødé ☃")),
    ("list_to_atom(lists:duplicate(255, 9731))", Atom("☃" * 255)),  # 765 bytes: ATOM_UTF8_EXT
    # floats
    ("0.1", 0.1),
    ("-2.5e-10", -2.5e-10),
    ("5.0e-324", 5e-324),
    ("1.7976931348623157e308", 1.7976931348623157e308),
    ("2.2250738585072014e-308", 2.2250738585072014e-308),
    ("1.0e16", 1e16),
    ("0.0", 0.0),
    ("-1.5", -1.5),
    # integers, small to big
    ("0", 0),
    ("255", 255),
    ("256", 256),
    ("-1", -1),
    ("-2147483648", -(2**31)),
    ("2147483647", 2**31 - 1),
    ("2147483648", 2**31),
    ("-2147483649", -(2**31) - 1),
    ("-(1 bsl 64)", -(2**64)),
    ("lists:foldl(fun(_, A) -> A * 3 end, 1, lists:seq(1, 200))", 3**200),
    ("1 bsl 2100", 2**2100),  # 263 bytes: LARGE_BIG_EXT
    ("-(1 bsl 2100)", -(2**2100)),
    # tuples
    ("{}", ()),
    ("{a, {b, {c, {}}}}", (Atom("a"), (Atom("b"), (Atom("c"), ())))),
    ("{1, [2, {3}], <<\"x\">>}", (1, [2, (3,)], "x")),
    ("list_to_tuple(lists:seq(1, 300))", tuple(range(1, 301))),  # LARGE_TUPLE_EXT
    # lists and charlists
    ("[]", []),
    ("\"abc\"", [97, 98, 99]),  # STRING_EXT
    ("\"\"", []),
    ("\"h☃\"", [104, 9731]),
    ("[1, [2, []], <<\"x\">>]", [1, [2, []], "x"]),
    ("lists:seq(1, 1000)", list(range(1, 1001))),
    # binaries
    ("<<>>", ""),
    ("<<\"héllo ☃\"/utf8>>", "héllo ☃"),
    # maps
    ("#{}", {}),
    ("#{<<\"a\">> => 1, <<\"b\">> => [true, false]}", {"a": 1, "b": [True, False]}),
    ("#{<<\"outer\">> => #{<<\"inner\">> => #{<<\"x\">> => #{}}}}",
     {"outer": {"inner": {"x": {}}}}),
    ("#{a => 1, 2 => {b}}", {Atom("a"): 1, 2: (Atom("b"),)}),
    ("maps:from_list([{integer_to_binary(I), I} || I <- lists:seq(1, 40)])",
     {str(i): i for i in range(1, 41)}),  # over 32 keys: a hash map in Erlang
    # BERT complex types
    ("{bert, nil}", None),
    ("{bert, true}", True),
    ("{bert, false}", False),
    ("{bert, dict, []}", {}),
    ("{bert, dict, [{<<\"a\">>, 1}, {b, [{bert, nil}]}]}", {"a": 1, Atom("b"): [None]}),
    ("{bert, dict, [{<<\"d\">>, {bert, dict, [{<<\"e\">>, {bert, true}}]}}]}",
     {"d": {"e": True}}),
    (TIME_SOURCE, TIME_VALUE),
    # BERT-RPC packets
    ("{call, yptask, handle, [<<\"upai.echo\">>, #{<<\"a\">> => 1}, #{}]}",
     (Atom("call"), Atom("yptask"), Atom("handle"), ["upai.echo", {"a": 1}, {}])),
    ("{cast, yptask, ping, []}", (Atom("cast"), Atom("yptask"), Atom("ping"), [])),
    ("{reply, pong}", (Atom("reply"), Atom("pong"))),
    ("{noreply}", (Atom("noreply"),)),
    ("{info, stream, []}", (Atom("info"), Atom("stream"), [])),
    ("{error, {user, 100, <<\"ValueError\">>, <<\"x\">>, [<<\"tb\">>]}}",
     (Atom("error"), (Atom("user"), 100, "ValueError", "x", ["tb"]))),
]


@pytest.mark.parametrize("options", ALL_OPTIONS)
@pytest.mark.parametrize(("source", "expected"), ERLANG_TERMS,
                         ids=[source[:40] for source, _ in ERLANG_TERMS])
def test_terms_erlang_writes_decode_to_the_mapped_value(erlang, source, expected, options):
    assert shape(decode(erlang.eval(source, options))) == shape(expected)


def test_the_options_write_the_tags_the_tests_claim(erlang):
    # OTP 25's default writes ASCII and Latin-1 atoms as ATOM_EXT and NEW_FLOAT_EXT floats
    assert erlang.eval("abc")[1] == 100
    assert erlang.eval("'é'") == b"\x83\x64\x00\x01\xe9"
    assert erlang.eval("'☃'")[1] == 119
    assert erlang.eval("0.1")[1] == 70
    # minor_version 2 (OTP 26+'s default): every atom SMALL_ATOM_UTF8_EXT
    assert erlang.eval("abc", MV2)[1] == 119
    assert erlang.eval("'é'", MV2) == b"\x83\x77\x02\xc3\xa9"
    # minor_version 0: the old FLOAT_EXT, 31 bytes of text
    assert erlang.eval("0.1", MV0)[1] == 99
    assert len(erlang.eval("0.1", MV0)) == 33
    assert erlang.eval("1 bsl 2100")[1] == 111
    assert erlang.eval("\"abc\"")[1] == 107


def test_binaries_that_are_not_utf8_survive_as_their_bytes(erlang):
    value = decode(erlang.eval("<<255, 0, 128, \"ok\">>"))
    assert as_bytes(value) == b"\xff\x00\x80ok"
    erlang.assert_reads(encode(value), "<<255, 0, 128, \"ok\">>")


@pytest.mark.parametrize("options", ["[compressed]", "[{compressed, 9}]",
                                     "[compressed, {minor_version, 2}]",
                                     "[compressed, {minor_version, 0}]"])
def test_compressed_terms_decode(erlang, options):
    source = ("{lists:duplicate(300, {ok, 'é☃', 1.5, <<\"abc\">>}), lists:seq(1, 200),"
              " #{<<\"k\">> => lists:duplicate(100, 1 bsl 100)}}")
    data = erlang.eval(source, options)
    assert data[1] == 80  # COMPRESSED: Erlang only compresses when it pays
    expected = ([(Atom("ok"), Atom("é☃"), 1.5, "abc")] * 300, list(range(1, 201)),
                {"k": [2**100] * 100})
    assert shape(decode(data)) == shape(expected)


def test_bert_rpc_packets_from_erlang_parse_as_packets(erlang):
    call = erlang.eval("{call, yptask, handle, [<<\"upai.echo\">>, #{<<\"a\">> => 1}, #{}]}",
                       MV2)
    assert decode_packet(call) == Call("yptask", "handle", ["upai.echo", {"a": 1}, {}])
    error = erlang.eval("{error, {user, 100, <<\"ValueError\">>, <<\"x\">>, [<<\"tb\">>]}}")
    assert decode_packet(error) == ErrorReply("user", 100, "ValueError", "x", ["tb"])


def test_a_latin1_atom_is_not_mistaken_for_the_utf8_atom_with_the_same_bytes(erlang):
    # The atom of the two characters 'Ã' '©': OTP 25 writes it as ATOM_EXT (Latin-1 text)
    # with the bytes C3 A9, the same bytes a UTF-8 atom tag gives the atom 'é'.
    latin1 = erlang.eval("list_to_atom([195, 169])")
    assert latin1 == b"\x83\x64\x00\x02\xc3\xa9"
    utf8 = erlang.eval("'é'", MV2)
    assert utf8 == b"\x83\x77\x02\xc3\xa9"
    assert decode(utf8) == Atom("é")
    # ... whichever was decoded first
    assert decode(latin1) == Atom("Ã©")
    erlang.assert_reads(encode(decode(latin1)), "list_to_atom([195, 169])")


# --------------------------------------------------------------------------- pids, ports, refs


@pytest.mark.parametrize("options", ["[]", MV2])
@pytest.mark.parametrize(("source", "tag"), [
    ("self()", 88),                                          # NEW_PID_EXT
    ("begin R = make_ref(), put(oracle_ref, R), R end", 90),  # NEWER_REFERENCE_EXT
    ("hd(erlang:ports())", 89),                              # NEW_PORT_EXT
])
def test_pids_refs_and_ports_come_back_to_erlang_as_the_same_term(erlang, source, tag, options):
    data = erlang.eval(source, options)
    value = decode(data)
    assert isinstance(value, Opaque)
    assert value.tag == tag
    assert encode(value) == data
    same = "get(oracle_ref)" if "make_ref" in source else source
    erlang.assert_reads(encode(value), same)


def test_a_ref_is_not_read_back_as_another_ref(erlang):
    ref = decode(erlang.eval("make_ref()"))
    status, printed = erlang.check(encode(ref), "make_ref()")
    assert status == MISMATCH, printed


def test_opaque_terms_nested_in_containers_round_trip(erlang):
    source = "{self(), [hd(erlang:ports())], #{<<\"pid\">> => self()}}"
    value = decode(erlang.eval(source, MV2))
    pid, (port,), holder = value
    assert (type(pid), type(port), holder) == (Opaque, Opaque, {"pid": pid})
    erlang.assert_reads(encode(value), source)


# --------------------------------------------------------------------------- Python -> Erlang

PYTHON_VALUES: list[tuple[Any, str]] = [
    ("héllo ☃", "<<\"héllo ☃\"/utf8>>"),
    ("", "<<>>"),
    ({"a": 1, "b": {"c": []}}, "#{<<\"a\">> => 1, <<\"b\">> => #{<<\"c\">> => []}}"),
    ({}, "#{}"),
    ({"outer": {"inner": {}}, "list": [{}]},
     "#{<<\"outer\">> => #{<<\"inner\">> => #{}}, <<\"list\">> => [#{}]}"),
    (None, "{bert, nil}"),
    (True, "{bert, true}"),
    (False, "{bert, false}"),
    (Atom("ok"), "ok"),
    (Atom(""), "''"),
    (Atom("é"), "'é'"),
    (Atom("☃"), "'☃'"),
    (Atom("Ünïcødé ☃"), "'Ünïcødé ☃'"),
    (Atom("☃" * 255), "list_to_atom(lists:duplicate(255, 9731))"),
    (0.1, "0.1"),
    (-2.5e-10, "-2.5e-10"),
    (5e-324, "5.0e-324"),
    (1.7976931348623157e308, "1.7976931348623157e308"),
    (1e16, "1.0e16"),
    (0, "0"),
    (255, "255"),
    (256, "256"),
    (-1, "-1"),
    (-(2**31), "-2147483648"),
    (2**31 - 1, "2147483647"),
    (2**31, "2147483648"),
    (-(2**31) - 1, "-2147483649"),
    (-(2**64), "-(1 bsl 64)"),
    (3**200, "lists:foldl(fun(_, A) -> A * 3 end, 1, lists:seq(1, 200))"),
    (2**2100, "1 bsl 2100"),
    (-(2**2100), "-(1 bsl 2100)"),
    ((), "{}"),
    ((1, (2, (3, ()))), "{1, {2, {3, {}}}}"),
    ((Atom("ok"), "x", [None]), "{ok, <<\"x\">>, [{bert, nil}]}"),
    (tuple(range(300)), "list_to_tuple(lists:seq(0, 299))"),
    ([], "[]"),
    ([1, [2, []]], "[1, [2, []]]"),
    ([97, 98, 99], "\"abc\""),
    (TIME_VALUE, TIME_SOURCE),
    ((Atom("call"), Atom("yptask"), Atom("handle"), ["upai.echo", {"a": 1}, {}]),
     "{call, yptask, handle, [<<\"upai.echo\">>, #{<<\"a\">> => 1}, #{}]}"),
]


@pytest.mark.parametrize(("value", "source"), PYTHON_VALUES,
                         ids=[source[:40] for _, source in PYTHON_VALUES])
def test_values_yptask_encodes_are_the_terms_erlang_expects(erlang, value, source):
    back = erlang.assert_reads(encode(value), source)
    assert shape(decode(back)) == shape(value)


def test_bytes_encode_as_binaries(erlang):
    erlang.assert_reads(encode(b"\xff\x00ok"), "<<255, 0, \"ok\">>")


def test_bert_dicts_encode_as_bert_dict_tuples(erlang):
    value = {"a": 1, "b": {"c": None}, "d": {}}
    source = ("{bert, dict, [{<<\"a\">>, 1}, {<<\"b\">>, {bert, dict, [{<<\"c\">>, {bert, nil}}]}},"
              " {<<\"d\">>, {bert, dict, []}}]}")
    erlang.assert_reads(encode(value, bert_dicts=True), source)
    erlang.assert_reads(encode({}, bert_dicts=True), "{bert, dict, []}")
    assert decode(erlang.eval(source, MV2)) == value


def test_aware_datetimes_encode_as_bert_time_in_utc(erlang):
    paris_winter = dt.timezone(dt.timedelta(hours=1))
    same_instant = dt.datetime(2024, 1, 2, 4, 4, 5, 678901, tzinfo=paris_winter)
    back = erlang.assert_reads(encode(same_instant), TIME_SOURCE)
    assert decode(back) == TIME_VALUE


def test_bert_rpc_packets_yptask_frames_are_what_erlang_expects(erlang):
    call = frame(Call("yptask", "handle", ["upai.echo", {"a": 1}, {}]))
    erlang.assert_reads(call[4:], "{call, yptask, handle, [<<\"upai.echo\">>, #{<<\"a\">> => 1},"
                                  " #{}]}")
    error = frame(ErrorReply("user", 100, "ValueError", "x", ["tb"]))
    erlang.assert_reads(error[4:], "{error, {user, 100, <<\"ValueError\">>, <<\"x\">>,"
                                   " [<<\"tb\">>]}}")


def test_the_oracle_tells_a_wrong_term_and_bad_bytes_apart(erlang):
    status, printed = erlang.check(encode([1, 2]), "[1, 3]")
    assert (status, printed) == (MISMATCH, b"[1,2]")
    status, _ = erlang.check(b"\x83\x00", "x")
    assert status == BAD_TERM
    status, _ = erlang.check(encode(1) + b"\x00", "1")
    assert status == BAD_TERM  # bytes left over are refused, not ignored


# --------------------------------------------------------------------------- property

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**300), 2**300) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: (st.lists(children, max_size=5)
                      | st.dictionaries(st.text(max_size=8), children, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=50, deadline=None)
@given(value=json_values)
def test_json_values_reach_erlang_as_erlang_reads_them_and_come_back(erlang, value):
    source = erlang_source(value)
    # Python -> Erlang: the very term Erlang makes of the source
    back = erlang.assert_reads(encode(value), source)
    assert shape(decode(back)) == shape(value)
    # Erlang -> Python: OTP 26+'s default encoding of that term
    assert shape(decode(erlang.eval(source, MV2))) == shape(value)
