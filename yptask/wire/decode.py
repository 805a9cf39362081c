"""The BERT decoder: Erlang external term format -> Python values, bounded.

The inverse of `yptask.wire.codec` (docs/protocol.md has the table):
binaries decode to `str` (UTF-8; bytes that are not UTF-8 survive through
`surrogateescape`, see `codec.as_bytes`), both maps and BERT dicts decode to
`dict`, the atoms `true`/`false` decode to bools as Erlang code writes them,
charlists (STRING_EXT) decode to lists of ints as Erlang reads them, and pids,
ports and references decode to `Opaque` values that encode back to the same
bytes.

Hostile input is bounded: a nesting-depth cap; for compressed terms a cap on
the inflated size and on its ratio to the compressed size, both checked
before inflating; a budget of elements per decode (so a megabyte of NILs
cannot become a million objects); counts checked against the bytes left
before anything is allocated; and trailing bytes refused. Every decode
failure raises `DecodeError`.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import struct
import zlib
from typing import Any

from yptask.errors import DecodeError
from yptask.wire.codec import (
    ATOM,
    ATOM_CACHE_LIMIT,
    ATOM_UTF8,
    BINARY,
    BIT_BINARY,
    COMPRESSED,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_INFLATED,
    DEFAULT_MAX_RATIO,
    DEFAULT_MAX_TERMS,
    EPOCH,
    FLOAT,
    INTEGER,
    LARGE_BIG,
    LARGE_TUPLE,
    LIST,
    MAGIC,
    MAP,
    NEW_FLOAT,
    NEW_PID,
    NEW_PORT,
    NEW_REFERENCE,
    NEWER_REFERENCE,
    NIL,
    PID,
    PORT,
    REFERENCE,
    SMALL_ATOM,
    SMALL_ATOM_UTF8,
    SMALL_BIG,
    SMALL_INTEGER,
    SMALL_TUPLE,
    STRING,
    V4_PORT,
    Atom,
    Opaque,
)
from yptask.wire.describe import describe

__all__ = ["decode", "decoded_size"]

# Defined here, not imported: CPython compiles a method call on an imported name as an
# attribute load plus a call, which costs this hot path about a tenth of its speed.
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_DOUBLE = struct.Struct(">d")


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


_atom_cache: dict[bytes, Any] = {
    b"true": True, b"false": False,
}


def _atom(raw: bytes, encoding: str) -> Any:
    value = _atom_cache.get(raw)
    if value is None:
        value = Atom(raw.decode(encoding))
        # ASCII bytes mean the same atom in latin-1 and UTF-8, so only they are cached.
        if len(_atom_cache) < ATOM_CACHE_LIMIT and raw.isascii():
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
        return EPOCH + _dt.timedelta(seconds=mega * 1_000_000 + sec, microseconds=micro)
    raise DecodeError(f"unsupported BERT complex type {{bert, {describe(kind)}, ...}}")
