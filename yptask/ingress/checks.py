"""The ingress rules: what every field of a cast or a call must be before the node takes it.

One set of rules for every surface (JSON-RPC in `yptask.web.rpc`, BERT-RPC in
`yptask.endpoints.bert`, and in-process callers through `yptask.node.Node`),
so a value refused on one is refused on all, with the same words. A refused
field raises `InvalidParams` (-32602, BERT server 102) naming the field and
saying what it must be; the caller's other messages are not affected.

The rules:

- a message name is a string of at most `MAX_NAME_CHARS` characters, dotted
  segments of ASCII letters, digits, `_` and `-` (`yptask.config.validate_message_name`);
- a message id is null or a string of 1 to `MAX_ID_CHARS` characters, valid
  Unicode (no lone surrogate: it could not be written as UTF-8), not starting
  with `TICK_ID_PREFIX` (only the timer leader casts those);
- a priority is an integer from `MIN_PRIORITY` (lowest, the default) to
  `MAX_PRIORITY`; higher is handled first;
- a call's timeout is a finite number of seconds, over 0 and at most
  `MAX_TIMEOUT_S`;
- a cast's `ttl_s` (over 0) and `delay_s` (0 or more) are finite numbers of
  seconds of at most `MAX_DELAY_S`; its `deadline` and `at` are epoch seconds
  within `MAX_DELAY_S` from now (checked together in `yptask.ingress.cast`);
- a `traceparent` is a W3C trace context (`yptask.ingress.trace`); a `parent`
  is a message id;
- a payload's strings (map keys too) are valid Unicode; a journaled payload
  (a cast's) is also exactly what JSON holds, so it comes back as it was sent:
  maps with string keys, lists, strings, booleans, null, finite floats and
  integers within 64 bits (what SQLite and most JSON readers hold).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from yptask.errors import InvalidParams

__all__ = [
    "MAX_DELAY_S",
    "MAX_ID_CHARS",
    "MAX_NAME_CHARS",
    "MAX_PRIORITY",
    "MAX_TIMEOUT_S",
    "MIN_PRIORITY",
    "TICK_ID_PREFIX",
    "bad_param",
    "check_epoch",
    "check_id",
    "check_name",
    "check_payload",
    "check_priority",
    "check_seconds",
    "check_timeout",
    "json_type",
    "shown",
    "valid_text",
]

MAX_ID_CHARS = 128
TICK_ID_PREFIX = "timer:"  # see yptask.timers.schedule.fire_id
MAX_NAME_CHARS = 255  # as validate_message_name
MIN_PRIORITY, MAX_PRIORITY = 0, 9
MAX_DELAY_S = 366 * 86_400.0  # a year and a day: how far ahead a cast may be due or expire
MAX_TIMEOUT_S = 86_400.0  # a day: a call waits no longer, and the timer stays representable
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1
MAX_SHOWN_CHARS = 40  # of a refused value echoed in an error: answers stay small
MAX_PATH_CHARS = 120

_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> bool:
    """True if `text` has no lone surrogate, so it can be written as UTF-8."""
    return text.isascii() or _SURROGATE.search(text) is None


# bool before int: a bool is an int in Python, but JSON tells them apart
_JSON_WORDS = ((type(None), "null"), (bool, "a boolean"), (int, "an integer"),
               (float, "a number"), (str, "a string"), (list, "an array"),
               (tuple, "a tuple"), (dict, "an object"))


def json_type(value: Any) -> str:
    """The JSON word for a value's type, for error messages."""
    return next((word for kind, word in _JSON_WORDS if isinstance(value, kind)),
                type(value).__name__)


def shown(value: Any) -> str:
    """A short description of a refused value: its type, and its start if it is a scalar."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        text = f"of {value.bit_length()} bits"  # str() refuses past 4300 digits
    else:
        text = repr(value) if isinstance(value, (bool, int, float, str)) else ""
    if len(text) > MAX_SHOWN_CHARS:
        text = text[:MAX_SHOWN_CHARS - 3] + "..."
    return f"{json_type(value)} {text}".rstrip()


def bad_param(method: str, param: str, wanted: str, value: Any) -> InvalidParams:
    """The error for a parameter that is not what it must be (-32602, naming it)."""
    return InvalidParams(f"invalid params for {method}: {param!r} must be {wanted}, "
                       f"got {shown(value)}")


def check_name(value: Any, method: str = "cast") -> str:
    """A string short enough to be a message name, or InvalidParams; `validate_message_name`
    (which echoes the whole name in its error) decides the rest."""
    if not isinstance(value, str):
        raise bad_param(method, "name", "a string (a dotted message name)", value)
    if len(value) > MAX_NAME_CHARS:
        raise bad_param(method, "name", f"a message name of at most {MAX_NAME_CHARS} "
                                        "characters", value)
    return str(value)  # an Erlang atom is a str subclass


def check_id(value: Any, method: str = "cast", *, tick: bool = False, param: str = "id"
             ) -> str | None:
    """A message id (None: the node picks one), or InvalidParams. Only the timer leader's
    ticks (`tick`) may carry an id in the form of a tick's, so none can be forged."""
    if value is None:
        return None
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS and valid_text(value):
        if value.startswith(TICK_ID_PREFIX) and not tick:
            raise bad_param(method, param, f"an id not starting with {TICK_ID_PREFIX!r} "
                                           "(the ids of timer ticks)", value)
        return str(value)
    raise bad_param(method, param, f"null or a string of 1 to {MAX_ID_CHARS} characters, "
                                   "valid Unicode", value)


def check_priority(value: Any, method: str = "cast") -> int:
    """A message priority, or InvalidParams."""
    if isinstance(value, int) and not isinstance(value, bool) \
            and MIN_PRIORITY <= value <= MAX_PRIORITY:
        return value
    raise bad_param(method, "priority", f"an integer from {MIN_PRIORITY} (lowest) to "
                                        f"{MAX_PRIORITY} (highest)", value)


def check_seconds(value: Any, param: str, *, minimum_exclusive: bool = False) -> float:
    """A cast's span of seconds (`ttl_s` over 0, `delay_s` 0 or more), or InvalidParams."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = _float(value)
        if (seconds > 0 or (seconds == 0 and not minimum_exclusive)) and seconds <= MAX_DELAY_S:
            return seconds
    floor = "over 0" if minimum_exclusive else "of 0 or more"
    raise bad_param("cast", param, f"a number of seconds {floor} and at most {MAX_DELAY_S:g}",
                    value)


def check_epoch(value: Any, param: str, now: float | None = None) -> float:
    """A cast's point in time (`deadline`, `at`) in epoch seconds, or InvalidParams: not more
    than MAX_DELAY_S from now either way (a time in milliseconds is refused, not misread)."""
    now = time.time() if now is None else now
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        when = _float(value)
        if abs(when - now) <= MAX_DELAY_S:
            return when
    raise bad_param("cast", param, "a time in epoch seconds (as time.time() gives it) within "
                                   "a year of now", value)


def _float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an int too big for a float
        return math.inf


def check_timeout(value: Any, method: str = "call") -> float:
    """A call's timeout in seconds, or InvalidParams."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = _float(value)
        if 0 < seconds <= MAX_TIMEOUT_S:
            return seconds
    raise bad_param(method, "timeout", f"a number of seconds over 0 and at most {MAX_TIMEOUT_S:g}",
                    value)


def check_payload(msg: Any, method: str, *, journaled: bool) -> None:
    """Refuse a payload a worker (or, `journaled`, the journal) cannot take as it is.

    The InvalidParams names where in the payload the refused value is (`msg.a[2]`).
    """
    problem = _payload_problem(msg, journaled)
    if problem is not None:
        path, what = problem
        raise InvalidParams(f"invalid params for {method}: {path} {what}")


# A node of the payload walk: (parent node, key or index); the root is None.
_Where = tuple[Any, Any] | None


def _payload_problem(msg: Any, journaled: bool) -> tuple[str, str] | None:
    """(where, what is wrong) of the first refused value in `msg`, or None.

    Iterative, so nesting costs no recursion; the path is built only on failure."""
    stack: list[tuple[Any, _Where]] = [(msg, None)]
    while stack:
        value, where = stack.pop()
        kind = type(value)
        if kind is str or isinstance(value, str):
            if not valid_text(value):
                return _path(where), "is a string with a lone surrogate (not valid Unicode)"
        elif kind is int:
            if journaled and not INT64_MIN <= value <= INT64_MAX:
                return _path(where), (f"is {shown(value)}, outside 64 bits "
                                      f"({INT64_MIN} to {INT64_MAX}); send it as a string")
        elif kind is float:
            if not math.isfinite(value):
                return _path(where), f"is {value!r}, which JSON cannot hold"
        elif kind is dict:
            for key, item in value.items():
                if isinstance(key, str):
                    if not valid_text(key):
                        return _path(where), ("has a key with a lone surrogate "
                                              "(not valid Unicode)")
                elif journaled:
                    return _path(where), (f"has the key {shown(key)}; a journaled message's "
                                          "map keys are strings (JSON has no other)")
                else:
                    stack.append((key, where))
                stack.append((item, (where, key)))
        elif kind is list or (kind is tuple and not journaled):
            stack.extend((item, (where, index)) for index, item in enumerate(value))
        elif journaled and kind not in (bool, type(None)):
            return _path(where), (f"is {json_type(value)}, which JSON does not have; a cast's "
                                  "payload is JSON (objects, arrays, strings, numbers, "
                                  "booleans, null)")
    return None


def _path(where: _Where) -> str:
    parts: list[str] = []
    while where is not None:
        where, key = where
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif isinstance(key, str) and key.isidentifier():
            parts.append(f".{key}")
        else:
            parts.append(f"[{repr(key)[:MAX_SHOWN_CHARS]}]")
    path = "msg" + "".join(reversed(parts))
    if len(path) > MAX_PATH_CHARS:
        path = path[:MAX_PATH_CHARS - 3] + "..."
    return path
