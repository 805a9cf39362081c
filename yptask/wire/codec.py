"""The BERT term types and the encoder: Python values -> Erlang external term format.

This module owns the Python <-> term mapping (docs/protocol.md has the full
table): the tags, `Atom` and `Opaque`, the caps every decode applies by
default, and `encode`. In short, encoding:

    str            -> binary (UTF-8)           Atom          -> atom (UTF-8 atom tag)
    int            -> small/integer/big        float         -> new float (64-bit)
    list           -> list                     tuple         -> tuple
    dict           -> map  (or {bert, dict, [{K, V}]} with bert_dicts=True)
    None           -> {bert, nil}              True / False  -> {bert, true} / {bert, false}
    aware datetime -> {bert, time, Mega, Sec, Micro}
    bytes          -> binary                   Opaque        -> its term, verbatim

and decoding (`yptask.wire.decode`) is the inverse, so a JSON-compatible value
comes back *equal*. Every value without a term raises `EncodeError`.
"""

from __future__ import annotations

import datetime as _dt
import math
import struct
from dataclasses import dataclass
from typing import Any

from yptask.errors import EncodeError
from yptask.wire.describe import describe

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_INFLATED",
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_TERMS",
    "Atom",
    "Opaque",
    "as_bytes",
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

_U16 = struct.Struct(">H")
_TAG_U8 = struct.Struct(">BB")
_TAG_U32 = struct.Struct(">BI")
_TAG_I32 = struct.Struct(">Bi")
_TAG_DOUBLE = struct.Struct(">Bd")

EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


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


_NIL_TERM = b"\x68\x02\x64\x00\x04bert\x64\x00\x03nil"
_TRUE_TERM = b"\x68\x02\x64\x00\x04bert\x64\x00\x04true"
_FALSE_TERM = b"\x68\x02\x64\x00\x04bert\x64\x00\x05false"
_BERT_DICT_HEAD = b"\x68\x03\x64\x00\x04bert\x64\x00\x04dict"
_BERT_TIME_HEAD = b"\x68\x05\x64\x00\x04bert\x64\x00\x04time"


def as_bytes(text: str) -> bytes:
    """Return the exact bytes of a decoded binary (the inverse of how binaries decode)."""
    return text.encode("utf-8", "surrogateescape")


_atom_terms: dict[str, bytes] = {}  # atom text -> its encoded term (bounded, like decode's)
ATOM_CACHE_LIMIT = 4096  # atoms each cache keeps: an atom table cannot grow without end


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
        micros = (v - EPOCH) // _dt.timedelta(microseconds=1)
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
    if len(_atom_terms) < ATOM_CACHE_LIMIT:
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
