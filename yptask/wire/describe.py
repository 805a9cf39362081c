"""Naming a term of any size in bounded work, for error messages about untrusted terms."""

from __future__ import annotations

from typing import Any

__all__ = ["describe"]


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
