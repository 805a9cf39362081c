"""The message browser's parameters checked: a filter (`messages.list`, `messages.bulk`),
a page (limit, cursor), a payload field path. Every refusal is an InvalidParams naming the
parameter; nothing here touches the journal.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from yptask.errors import InvalidParams
from yptask.ingress import checks
from yptask.store.messages import MessageFilter

__all__ = ["FILTER_PARAMS", "MAX_LIMIT", "STATES", "check_filter", "check_limit", "cursor_of",
           "parse_cursor"]

MAX_LIMIT = 1000
# the states a filter may ask for; "dead" takes the expired dead letters too
STATES = {"queued": ("queued",), "delayed": ("delayed",), "inflight": ("inflight",),
          "retrying": ("retrying",), "dead": ("dead", "expired"), "expired": ("expired",),
          "done": ("done",), "cancelled": ("cancelled",)}
FILTER_PARAMS = ("task", "state", "name", "priority", "since", "until", "where")
MAX_WHERE_FIELDS = 8
MAX_PATH_DEPTH = 8
_SEGMENT = re.compile(r"[A-Za-z0-9_$@-]{1,64}\Z")  # a payload key a dotted path may name

_bad = checks.bad_param


def check_filter(params: dict[str, Any], method: str, prefix: str = "") -> MessageFilter:
    """The filter `params` ask for (FILTER_PARAMS, each optional); `prefix` names where they
    came from in errors ("filter." in a bulk change)."""
    task, state, name = params.get("task"), params.get("state"), params.get("name")
    if task is not None and not isinstance(task, str):
        raise _bad(method, prefix + "task", "a task name (a string) or null", task)
    if state is not None and state not in STATES:
        raise _bad(method, prefix + "state", f"one of {', '.join(STATES)}, or null", state)
    if name is not None and not (isinstance(name, str)
                                 and 0 < len(name) <= checks.MAX_NAME_CHARS):
        raise _bad(method, prefix + "name", "a message name (a string; '*' matches any run "
                   "of characters) or null", name)
    priority = params.get("priority")
    if priority is not None:
        try:
            priority = checks.check_priority(priority, method)
        except InvalidParams:
            raise _bad(method, prefix + "priority", "an integer from 0 to 9, or null",
                       priority) from None
    return MessageFilter(
        task=task, states=None if state is None else STATES[state], name=name,
        priority=priority, since=_time(params.get("since"), method, prefix + "since"),
        until=_time(params.get("until"), method, prefix + "until"),
        where=_where(params.get("where"), method, prefix + "where"))


def check_limit(value: Any, method: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise _bad(method, "limit", f"an integer from 1 to {MAX_LIMIT}", value)
    return value


def cursor_of(item: dict[str, Any]) -> str:
    """The cursor that pages on after `item` (opaque to callers)."""
    key = json.dumps([item["published_at"], item["id"], item["task"]])
    return base64.urlsafe_b64encode(key.encode()).decode()


def parse_cursor(value: Any, method: str) -> tuple[float, str, str] | None:
    """The key a cursor from `cursor_of` names, or None for none."""
    if value is None:
        return None
    try:
        at, message_id, task = json.loads(base64.urlsafe_b64decode(str(value).encode()))
        if isinstance(value, str) and isinstance(at, int | float) and isinstance(
                message_id, str) and isinstance(task, str):
            return float(at), message_id, task
    except (ValueError, TypeError, binascii.Error):
        pass
    raise _bad(method, "cursor", "null or the `next` of a previous page", value)


def _time(value: Any, method: str, param: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not math.isfinite(value):
        raise _bad(method, param, "a time (epoch seconds) or null", value)
    return float(value)


def _where(value: Any, method: str, param: str) -> tuple[tuple[str, Any], ...]:
    """{"user.id": 42, ...} as (SQLite JSON path, value) pairs: payload fields equal to
    scalars (a JSON null matches a field that is null)."""
    if value is None:
        return ()
    wanted = (f"an object of up to {MAX_WHERE_FIELDS} payload fields (dotted paths such "
              "as \"user.id\") and the values they must equal (strings, numbers, booleans "
              "or null)")
    if not isinstance(value, dict) or not 0 < len(value) <= MAX_WHERE_FIELDS:
        raise _bad(method, param, wanted, value)
    pairs = []
    for path, equal in value.items():
        segments = path.split(".") if isinstance(path, str) else []
        if not 0 < len(segments) <= MAX_PATH_DEPTH or not all(map(_SEGMENT.match, segments)):
            raise _bad(method, param, f"{wanted}; field {path!r} is no such path", value)
        if (isinstance(equal, float) and not math.isfinite(equal)) or \
                not (equal is None or isinstance(equal, str | int | float | bool)):
            raise _bad(method, param, f"{wanted}; field {path!r} has no scalar value", value)
        pairs.append(("$" + "".join(f'."{s}"' for s in segments), equal))
    return tuple(pairs)
