"""The BERT codec: Python values <-> Erlang external term format (BERT).

This module owns the Python <-> term mapping (docs/protocol.md has the full
table). In short, encoding:

    str            -> binary (UTF-8)           Atom          -> atom (UTF-8 atom tag)
    int            -> small/integer/big        float         -> new float (64-bit)
    list           -> list                     tuple         -> tuple
    dict           -> map  (or {bert, dict, [{K, V}]} with bert_dicts=True)
    None           -> {bert, nil}              True / False  -> {bert, true} / {bert, false}
    aware datetime -> {bert, time, Mega, Sec, Micro}
    bytes          -> binary                   Opaque        -> its term, verbatim

and decoding is the inverse, so a JSON-compatible value comes back *equal*:
binaries decode to `str` (UTF-8; bytes that are not UTF-8 survive through
`surrogateescape`, see `as_bytes`), both maps and BERT dicts decode to `dict`,
the atoms `true`/`false` decode to bools as Erlang code writes them, charlists
(STRING_EXT) decode to lists of ints as Erlang reads them, and pids, ports and
references decode to `Opaque` values that encode back to the same bytes.

Hostile input is bounded: a nesting-depth cap; for compressed terms a cap on
the inflated size and on its ratio to the compressed size, both checked
before inflating; a budget of elements per decode (so a megabyte of NILs
cannot become a million objects); counts checked against the bytes left
before anything is allocated; and trailing bytes refused. `describe` names
a term by type and size in bounded work, for error messages about untrusted
terms. Every decode failure raises `DecodeError`; every value without a term
raises `EncodeError`.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from yptask.errors import DecodeError, EncodeError

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_INFLATED",
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_TERMS",
    "Atom",
    "Opaque",
    "as_bytes",
    "decode",
    "decoded_size",
    "describe",
    "encode",
]

MAGIC = 131
DEFAULT_MAX_DEPTH = 128
DEFAULT_MAX_INFLATED = 16 * 1024 * 1024
# Ordinary messages compress 3-20x; zlib's worst case is about 1000x, which only a
# bomb (or a wall of one repeated byte) reaches.
DEFAULT_MAX_RATIO = 64
# Elements (terms) one decode may build: a JSON-like message of 16 MiB has far fewer.
DEFAULT_MAX_TERMS = 1_000_000

# External term format tags (erts/emulator/beam/external.h).
NEW_FLOAT = 70
BIT_BINARY = 77
COMPRESSED = 80
NEW_PID = 88
NEW_PORT = 89
NEWER_REFERENCE = 90
SMALL_INTEGER = 97
INTEGER = 98
FLOAT = 99
ATOM = 100
REFERENCE = 101
PORT = 102
PID = 103
SMALL_TUPLE = 104
LARGE_TUPLE = 105
NIL = 106
STRING = 107
LIST = 108
BINARY = 109
SMALL_BIG = 110
LARGE_BIG = 111
NEW_REFERENCE = 114
SMALL_ATOM = 115
MAP = 116
ATOM_UTF8 = 118
SMALL_ATOM_UTF8 = 119
V4_PORT = 120

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_DOUBLE = struct.Struct(">d")
_TAG_U8 = struct.Struct(">BB")
_TAG_U32 = struct.Struct(">BI")
_TAG_I32 = struct.Struct(">Bi")
_TAG_DOUBLE = struct.Struct(">Bd")

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


class Atom(str):
    """An Erlang atom. A `str` subclass, so `Atom("ok") == "ok"`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


@dataclass(frozen=True)
class Opaque:
    """A pid, port or reference: kept as its raw term bytes (tag included) and sent back as is."""

    tag: int
    raw: bytes


_BERT = Atom("bert")
_NIL_TERM = b"\x68\x02\x64\x00\x04bert\x64\x00\x03nil"
_TRUE_TERM = b"\x68\x02\x64\x00\x04bert\x64\x00\x04true"
_FALSE_TERM = b"\x68\x02\x64\x00\x04bert\x64\x00\x05false"
_BERT_DICT_HEAD = b"\x68\x03\x64\x00\x04bert\x64\x00\x04dict"
_BERT_TIME_HEAD = b"\x68\x05\x64\x00\x04bert\x64\x00\x04time"


def as_bytes(text: str) -> bytes:
    """Return the exact bytes of a decoded binary (the inverse of how binaries decode)."""
    return text.encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------- encode


def encode(value: Any, *, bert_dicts: bool = False) -> bytes:
    """Return the BERT bytes (magic byte 131 first) of `value`.

    `bert_dicts=True` writes dicts as BERT 1.0 `{bert, dict, [...]}` tuples for
    peers whose decoder predates Erlang maps; the default writes maps.
    Raises `EncodeError` for a value that has no term.
    """
    out = bytearray(b"\x83")
    try:
        _encode(value, out, 0, bert_dicts)
    except UnicodeEncodeError as exc:
        raise EncodeError(f"string is not encodable as UTF-8: {exc.reason}") from None
    return bytes(out)


def _encode(v: Any, out: bytearray, depth: int, bert_dicts: bool) -> None:  # noqa: PLR0915
    # One flat if-chain, most frequent types first: the hot path of every message.
    if depth > DEFAULT_MAX_DEPTH:
        raise EncodeError(f"value nested deeper than {DEFAULT_MAX_DEPTH} levels")
    t = type(v)
    if t is str:
        b = v.encode("utf-8", "surrogateescape")
        out += _TAG_U32.pack(BINARY, len(b))
        out += b
    elif t is int:
        _encode_int(v, out)
    elif t is dict:
        if bert_dicts:
            out += _BERT_DICT_HEAD
            if not v:
                out.append(NIL)
                return
            out += _TAG_U32.pack(LIST, len(v))
            for key, item in v.items():
                out += _TAG_U8.pack(SMALL_TUPLE, 2)
                _encode(key, out, depth + 1, bert_dicts)
                _encode(item, out, depth + 1, bert_dicts)
            out.append(NIL)
        else:
            out += _TAG_U32.pack(MAP, len(v))
            for key, item in v.items():
                if type(key) is str:  # the common case, inlined: a call per key costs
                    b = key.encode("utf-8", "surrogateescape")
                    out += _TAG_U32.pack(BINARY, len(b))
                    out += b
                else:
                    _encode(key, out, depth + 1, bert_dicts)
                _encode(item, out, depth + 1, bert_dicts)
    elif t is list:
        if not v:
            out.append(NIL)
            return
        out += _TAG_U32.pack(LIST, len(v))
        for item in v:
            _encode(item, out, depth + 1, bert_dicts)
        out.append(NIL)
    elif t is Atom:
        _encode_atom(v, out)
    elif t is tuple:
        n = len(v)
        if n and v[0] == "bert" and type(v[0]) is Atom:
            raise EncodeError("a tuple may not start with the atom 'bert': BERT reserves it")
        out += _TAG_U8.pack(SMALL_TUPLE, n) if n < 256 else _TAG_U32.pack(LARGE_TUPLE, n)
        for item in v:
            _encode(item, out, depth + 1, bert_dicts)
    elif t is float:
        if not math.isfinite(v):
            raise EncodeError(f"{v!r} has no Erlang term; send null or a string instead")
        out += _TAG_DOUBLE.pack(NEW_FLOAT, v)
    elif t is bool:
        out += _TRUE_TERM if v else _FALSE_TERM
    elif v is None:
        out += _NIL_TERM
    else:
        _encode_other(v, out, depth, bert_dicts)


def _encode_other(v: Any, out: bytearray, depth: int, bert_dicts: bool) -> None:
    """Encode the rarer types and subclasses of the common ones."""
    if isinstance(v, bool):
        out += _TRUE_TERM if v else _FALSE_TERM
    elif isinstance(v, Atom):
        _encode_atom(v, out)
    elif isinstance(v, str):
        _encode(str(v), out, depth, bert_dicts)
    elif isinstance(v, int):
        _encode_int(int(v), out)
    elif isinstance(v, float):
        _encode(float(v), out, depth, bert_dicts)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        b = bytes(v)
        out += _TAG_U32.pack(BINARY, len(b))
        out += b
    elif isinstance(v, dict):
        _encode(dict(v), out, depth, bert_dicts)
    elif isinstance(v, list):
        _encode(list(v), out, depth, bert_dicts)
    elif isinstance(v, tuple):
        _encode(tuple(v), out, depth, bert_dicts)
    elif isinstance(v, _dt.datetime):
        if v.tzinfo is None or v.utcoffset() is None:
            raise EncodeError("a naive datetime is ambiguous; give it a tzinfo")
        micros = (v - _EPOCH) // _dt.timedelta(microseconds=1)
        secs, micro = divmod(micros, 1_000_000)
        mega, sec = divmod(secs, 1_000_000)
        out += _BERT_TIME_HEAD
        for part in (mega, sec, micro):
            _encode_int(part, out)
    elif isinstance(v, Opaque):
        out += v.raw
    else:
        raise EncodeError(f"{type(v).__name__} has no BERT term: {describe(v, 60)}")


def _encode_int(v: int, out: bytearray) -> None:
    if 0 <= v < 256:
        out += _TAG_U8.pack(SMALL_INTEGER, v)
    elif -2147483648 <= v <= 2147483647:
        out += _TAG_I32.pack(INTEGER, v)
    else:
        magnitude = -v if v < 0 else v
        n = (magnitude.bit_length() + 7) // 8
        out += _TAG_U8.pack(SMALL_BIG, n) if n < 256 else _TAG_U32.pack(LARGE_BIG, n)
        out.append(1 if v < 0 else 0)
        out += magnitude.to_bytes(n, "little")


def _encode_atom(v: str, out: bytearray) -> None:
    cached = _atom_terms.get(v)
    if cached is not None:
        out += cached
        return
    start = len(out)
    _encode_new_atom(v, out)
    if len(_atom_terms) < _ATOM_CACHE_LIMIT:
        _atom_terms[str(v)] = bytes(out[start:])


def _encode_new_atom(v: str, out: bytearray) -> None:
    # ASCII atoms use ATOM_EXT, the tag BERT 1.0 decoders know; others the UTF-8 tags.
    if len(v) > 255:
        raise EncodeError(f"atom longer than 255 characters: {v[:40]!r}...")
    b = v.encode("utf-8")
    if len(b) == len(v):
        out.append(ATOM)
        out += _U16.pack(len(b))
    elif len(b) < 256:
        out += _TAG_U8.pack(SMALL_ATOM_UTF8, len(b))
    else:
        out.append(ATOM_UTF8)
        out += _U16.pack(len(b))
    out += b


# --------------------------------------------------------------------------- decode


def decode(data: bytes | bytearray | memoryview, *, max_depth: int = DEFAULT_MAX_DEPTH,
           max_inflated: int = DEFAULT_MAX_INFLATED, max_ratio: int = DEFAULT_MAX_RATIO,
           max_terms: int = DEFAULT_MAX_TERMS) -> Any:
    """Return the Python value of one whole BERT term (magic byte first).

    Raises `DecodeError` for anything else: a wrong magic byte, a truncated or
    unknown term, nesting deeper than `max_depth`, a compressed term that
    inflates past `max_inflated` bytes or past `max_ratio` times its own size,
    more than `max_terms` elements in all, or bytes left over after the term.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if not data:
        raise DecodeError("empty term")
    if data[0] != MAGIC:
        raise DecodeError(f"not a BERT term: first byte is {data[0]}, expected 131")
    budget = _Budget(max_terms)
    try:
        if len(data) > 1 and data[1] == COMPRESSED:
            data = _inflate(data, max_inflated, max_ratio)
        value, pos = _decode(data, 1, max_depth, budget)
    except DecodeError:
        raise
    except (IndexError, struct.error):
        raise DecodeError("truncated term") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"atom is not valid text: {exc.reason}") from None
    except RecursionError:
        raise DecodeError("term nested too deeply") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise DecodeError(f"invalid term: {exc}") from None
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} bytes left over after the term")
    return value


def decoded_size(data: bytes) -> int:
    """The bytes a decode of `data` will walk: its inflated size if it is compressed."""
    if len(data) >= 6 and data[1] == COMPRESSED:
        return int(_U32.unpack_from(data, 2)[0])
    return len(data)


def _inflate(data: bytes, max_inflated: int, max_ratio: int) -> bytes:
    (size,) = _U32.unpack_from(data, 2)
    if size > min(max_inflated, max_ratio * len(data)):
        raise DecodeError(
            f"compressed term of {len(data)} bytes inflates to {size}, over the cap here "
            f"(at most {max_inflated} bytes, and a compression ratio of at most {max_ratio}); "
            "send it uncompressed or in smaller parts")
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(data[6:], size + 1)
    except zlib.error as exc:
        raise DecodeError(f"compressed term is corrupt: {exc}") from None
    if (len(body) != size or inflater.unconsumed_tail or inflater.unused_data
            or not inflater.eof):
        raise DecodeError("compressed term does not inflate to its declared size")
    return b"\x83" + body


class _Budget:
    """The elements one decode may still build (each container pays for its elements)."""

    __slots__ = ("terms",)

    def __init__(self, terms: int) -> None:
        self.terms = terms


_atom_terms: dict[str, bytes] = {}  # atom text -> its encoded term (bounded, like below)
_atom_cache: dict[bytes, Any] = {
    b"true": True, b"false": False,
}
_ATOM_CACHE_LIMIT = 4096


def _atom(raw: bytes, encoding: str) -> Any:
    value = _atom_cache.get(raw)
    if value is None:
        value = Atom(raw.decode(encoding))
        # ASCII bytes mean the same atom in latin-1 and UTF-8, so only they are cached.
        if len(_atom_cache) < _ATOM_CACHE_LIMIT and raw.isascii():
            _atom_cache[raw] = value
    return value


def _decode(data: bytes, pos: int, depth: int, budget: _Budget) -> tuple[Any, int]:  # noqa: PLR0915
    # One flat if-chain, most frequent tags first: on this hot path it beats a dispatch table.
    if depth < 0:
        raise DecodeError("term nested deeper than the depth cap")
    tag = data[pos]
    if tag == BINARY:
        (n,) = _U32.unpack_from(data, pos + 1)
        end = pos + 5 + n
        if end > len(data):
            raise DecodeError("truncated binary")
        return data[pos + 5:end].decode("utf-8", "surrogateescape"), end
    if tag == SMALL_INTEGER:
        return data[pos + 1], pos + 2
    if tag == ATOM:  # what yptask and OTP 25 write for ASCII atoms
        n = (data[pos + 1] << 8) | data[pos + 2]
        end = pos + 3 + n
        if end > len(data):
            raise DecodeError("truncated atom")
        return _atom(data[pos + 3:end], "latin-1"), end
    if tag == SMALL_ATOM_UTF8:  # what OTP 26+ writes
        n = data[pos + 1]
        end = pos + 2 + n
        if end > len(data):
            raise DecodeError("truncated atom")
        return _atom(data[pos + 2:end], "utf-8"), end
    if tag == MAP:
        (n,) = _U32.unpack_from(data, pos + 1)
        _check_count(data, pos + 5, 2 * n, budget)
        pos += 5
        result: dict[Any, Any] = {}
        for _ in range(n):
            if data[pos] == BINARY:  # the common case, inlined: a call per key costs
                (size,) = _U32.unpack_from(data, pos + 1)
                end = pos + 5 + size
                if end > len(data):
                    raise DecodeError("truncated binary")
                key, pos = data[pos + 5:end].decode("utf-8", "surrogateescape"), end
            else:
                key, pos = _decode(data, pos, depth - 1, budget)
            value, pos = _decode(data, pos, depth - 1, budget)
            try:
                result[key] = value
            except TypeError:
                raise DecodeError("map keys must be scalars or tuples of them, "
                                  f"not {type(key).__name__}") from None
        return result, pos
    if tag in (SMALL_TUPLE, LARGE_TUPLE):
        if tag == SMALL_TUPLE:
            n, pos = data[pos + 1], pos + 2
        else:
            (n,) = _U32.unpack_from(data, pos + 1)
            pos += 5
        _check_count(data, pos, n, budget)
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos, depth - 1, budget)
            items.append(item)
        if n and items[0] == "bert" and type(items[0]) is Atom:
            return _bert_complex(items), pos
        return tuple(items), pos
    if tag == LIST:
        (n,) = _U32.unpack_from(data, pos + 1)
        _check_count(data, pos + 5, n, budget)
        pos += 5
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos, depth - 1, budget)
            items.append(item)
        if data[pos] != NIL:
            raise DecodeError("improper lists are not supported")
        return items, pos + 1
    if tag == NIL:
        return [], pos + 1
    if tag == INTEGER:
        return _I32.unpack_from(data, pos + 1)[0], pos + 5
    if tag == NEW_FLOAT:
        value = _DOUBLE.unpack_from(data, pos + 1)[0]
        if value - value != 0.0:  # inf or nan: no JSON value, and Erlang never writes one
            raise DecodeError("float is not finite")
        return value, pos + 9
    return _decode_rare(data, pos, tag, depth, budget)


def _decode_rare(data: bytes, pos: int, tag: int, depth: int, budget: _Budget
                 ) -> tuple[Any, int]:
    if tag in (SMALL_BIG, LARGE_BIG):
        if tag == SMALL_BIG:
            n, pos = data[pos + 1], pos + 2
        else:
            (n,) = _U32.unpack_from(data, pos + 1)
            pos += 5
        end = pos + 1 + n
        if end > len(data):
            raise DecodeError("truncated big integer")
        magnitude = int.from_bytes(data[pos + 1:end], "little")
        return (-magnitude if data[pos] else magnitude), end
    if tag in (ATOM_UTF8, ATOM, SMALL_ATOM):
        if tag == SMALL_ATOM:
            n, pos = data[pos + 1], pos + 2
        else:
            (n,) = _U16.unpack_from(data, pos + 1)
            pos += 3
        end = pos + n
        if end > len(data):
            raise DecodeError("truncated atom")
        return _atom(data[pos:end], "utf-8" if tag == ATOM_UTF8 else "latin-1"), end
    if tag == STRING:
        (n,) = _U16.unpack_from(data, pos + 1)
        end = pos + 3 + n
        if end > len(data):
            raise DecodeError("truncated string")
        _check_count(data, pos + 3, n, budget)
        return list(data[pos + 3:end]), end
    if tag == FLOAT:
        text = data[pos + 1:pos + 32].split(b"\x00", 1)[0]
        if len(text) == 0 or pos + 32 > len(data):
            raise DecodeError("truncated float")
        if not _FLOAT_TEXT.fullmatch(text):
            raise DecodeError(f"malformed float text {text!r}")
        value = float(text.decode("ascii"))
        if not math.isfinite(value):
            raise DecodeError("float is not finite")
        return value, pos + 32
    if tag in _OPAQUE_TAGS:
        end = _skip_opaque(data, pos, tag, budget)
        return Opaque(tag, data[pos:end]), end
    if tag == COMPRESSED:
        raise DecodeError("a compressed term may only wrap the whole term")
    if tag == BIT_BINARY:
        raise DecodeError("bitstrings that are not whole bytes are not supported")
    raise DecodeError(f"unsupported term tag {tag}")


_FLOAT_TEXT = re.compile(rb"\s*[-+]?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?\s*")
_OPAQUE_TAGS = frozenset({NEW_PID, PID, NEW_PORT, PORT, V4_PORT, NEWER_REFERENCE,
                          NEW_REFERENCE, REFERENCE})
_OPAQUE_FIXED = {NEW_PID: 12, PID: 9, NEW_PORT: 8, PORT: 5, V4_PORT: 12, REFERENCE: 5}


def _skip_opaque(data: bytes, pos: int, tag: int, budget: _Budget) -> int:
    """Return the end of a pid/port/reference term starting at `pos`."""
    if tag in (NEWER_REFERENCE, NEW_REFERENCE):
        (id_words,) = _U16.unpack_from(data, pos + 1)
        node, node_end = _decode(data, pos + 3, 0, budget)
        end: int = node_end + (4 if tag == NEWER_REFERENCE else 1) + 4 * id_words
    else:
        node, node_end = _decode(data, pos + 1, 0, budget)
        end = node_end + _OPAQUE_FIXED[tag]
    if not isinstance(node, Atom) or end > len(data):
        raise DecodeError("malformed pid, port or reference")
    return end


def _check_count(data: bytes, pos: int, count: int, budget: _Budget) -> None:
    # Every element takes at least one byte: refuse impossible counts before allocating.
    if count > len(data) - pos:
        raise DecodeError(f"term claims {count} elements but only {len(data) - pos} bytes remain")
    budget.terms -= count
    if budget.terms < 0:
        raise DecodeError("term has more elements than the cap allows; send fewer, or "
                          "split the message")


def describe(term: Any, limit: int = 80) -> str:
    """A short text for a term of any size: its start as Python shows it, and the sizes
    of what is cut. The work is bounded by `limit`, never by the term, so an
    untrusted term of many megabytes costs an error message no more than a small one."""
    parts: list[str] = []
    _describe_into(term, parts, [limit])
    text = "".join(parts)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe_into(v: Any, parts: list[str], left: list[int]) -> None:
    # `left` is the characters still to write; a container stops at the first item
    # that finds none left, so the walk visits about `limit` items at most.
    def put(text: str) -> None:
        parts.append(text)
        left[0] -= len(text)

    if isinstance(v, (str, bytes, bytearray)):
        if len(v) <= left[0]:
            put(repr(v))
        else:  # the size first, so that cutting the text never cuts it
            unit = "chars" if isinstance(v, str) else "bytes"
            put(f"<{type(v).__name__} of {len(v)} {unit}>{v[:max(left[0], 8)]!r}")
    elif isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
        put(f"<integer of {v.bit_length()} bits>")  # str() of a bignum is quadratic
    elif isinstance(v, (list, tuple, dict)):
        if len(v) > 8:
            put(f"<{type(v).__name__} of {len(v)}>")
        brackets = "()" if isinstance(v, tuple) else "{}" if isinstance(v, dict) else "[]"
        items: Any = v.items() if isinstance(v, dict) else v
        put(brackets[0])
        for index, item in enumerate(items):
            if left[0] <= 0:
                put("...")
                break
            if index:
                put(", ")
            if isinstance(v, dict):
                _describe_into(item[0], parts, left)
                put(": ")
                _describe_into(item[1], parts, left)
            else:
                _describe_into(item, parts, left)
        put(brackets[1])
    else:
        put(repr(v)[:max(left[0], 8)])


def _bert_complex(items: list[Any]) -> Any:
    """Turn a decoded `{bert, ...}` tuple into its Python value."""
    kind = items[1] if len(items) > 1 else None
    if len(items) == 2 and (kind is True or kind is False):
        return kind
    if type(kind) is not Atom:
        raise DecodeError(f"unsupported BERT complex type {{bert, {describe(kind)}, ...}}")
    if kind == "nil" and len(items) == 2:
        return None
    if kind == "dict" and len(items) == 3 and isinstance(items[2], list):
        result = {}
        for pair in items[2]:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise DecodeError("a BERT dict must be a list of {Key, Value} pairs")
            result[pair[0]] = pair[1]
        return result
    if kind == "time" and len(items) == 5 and all(type(x) is int for x in items[2:]):
        mega, sec, micro = items[2:]
        return _EPOCH + _dt.timedelta(seconds=mega * 1_000_000 + sec, microseconds=micro)
    raise DecodeError(f"unsupported BERT complex type {{bert, {describe(kind)}, ...}}")
