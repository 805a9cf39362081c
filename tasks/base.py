"""`BaseTask`: the class a Python worker subclasses, and the handler naming rule.

A message named `upai.photos.upload` is handled by `handle_photos_upload`
(the first segment, the application prefix, dropped) or by
`handle_upai_photos_upload` (the whole name); `@handles("any.name")` binds a
method to explicit names. A class in which one message could reach two
methods is refused when it is defined, with the pair named.

Imports only the standard library and yptask's protocol modules: a worker
process starts from here.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from yptask.errors import ConfigError

if TYPE_CHECKING:
    from yptask.client import Client

__all__ = ["BaseTask", "Message", "handler_names", "handles"]

HANDLER_PREFIX = "handle_"
CANCELLED_CACHE_S = 0.2  # how long `cancelled()` trusts its last answer: a loop may call it
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Message:
    """The message a handler is running for: its name, payload and delivery metadata."""

    name: str
    payload: Any
    id: str | None = None
    attempt: int = 1
    meta: dict[str, Any] = field(default_factory=dict)


def handles(*names: str) -> Callable[[_F], _F]:
    """Bind a method to explicit message names, whatever the method is called."""
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError("@handles needs one or more non-empty message names")

    def mark(func: _F) -> _F:
        func._yptask_handles = (*getattr(func, "_yptask_handles", ()), *names)  # type: ignore[attr-defined]
        return func

    return mark


def handler_names(name: str) -> tuple[str, ...]:
    """Return the method suffixes the naming rule tries for a message name, in order."""
    segments = name.split(".")
    whole = "_".join(segments)
    return ("_".join(segments[1:]), whole) if len(segments) > 1 else (whole,)


class BaseTask:
    """Base class of Python workers: define `handle_*` methods, optionally `setup`/`teardown`.

    One instance lives per worker process. `settings` are the task's settings
    from its definition, `logger` logs under the task's name, and `message`
    is the message being handled (None between messages).
    """

    _by_suffix: ClassVar[dict[str, str]] = {}
    _by_name: ClassVar[dict[str, str]] = {}

    def __init__(self, settings: dict[str, Any] | None = None, *, task_name: str = "") -> None:
        self.task_name = task_name or type(self).__name__
        self.settings: dict[str, Any] = dict(settings or {})
        self.logger = logging.getLogger(f"yptask.tasks.{self.task_name}")
        self.message: Message | None = None
        self._rpc: Client | None = None  # the node's JSON-RPC client, made on first use
        self._cancel_seen: tuple[str, float, bool] | None = None  # (id, asked at, answer)

    def cast(self, name: str, msg: Any, **options: Any) -> dict[str, Any]:
        """Publish a message from inside a handler, through the node that runs this worker.

        It carries on the trace of the message being handled, with that message as its
        parent (`yptask trace` shows the tree); `options` are `Client.cast`'s."""
        return self._client().cast(name, msg, **{**self._cause(), **options})

    def call(self, name: str, msg: Any, timeout: float = 30.0) -> Any:
        """Call another task from inside a handler. Never call a name that only this task
        handles with one worker: the call would wait for this very worker. It carries on
        the trace of the message being handled, as `cast` does."""
        return self._client().call(name, msg, timeout=timeout, **self._cause())

    def cancelled(self) -> bool:
        """Has the message being handled been cancelled (`yptask cancel ID`)? A long job
        asks it at its safe points and returns early when True. The node is asked at most
        every CANCELLED_CACHE_S; False between messages or for a message without an id."""
        mid = self.message.id if self.message is not None else None
        if not mid:
            return False
        now = time.monotonic()
        seen = self._cancel_seen
        if seen is not None and seen[0] == mid and (seen[2] or now - seen[1] < CANCELLED_CACHE_S):
            return seen[2]  # a cancel is for good: once True, never asked again
        answer = self._client().message_cancelled(mid)
        self._cancel_seen = (mid, now, answer)
        return answer

    def _cause(self) -> dict[str, Any]:
        """The trace options of what this handler sends: its message's trace, its id."""
        meta = self.message.meta if self.message is not None else {}
        cause = {"traceparent": meta.get("traceparent"), "parent": meta.get("id")}
        return {key: value for key, value in cause.items() if isinstance(value, str)}

    def _client(self) -> Client:
        if self._rpc is None:
            from yptask.client import Client  # standard library only, like the runner

            url = os.environ.get("YPTASK_URL")
            if not url:
                raise ConfigError("cast/call from a task need YPTASK_URL, which the node "
                                  "sets for its workers; outside a node, set it yourself")
            self._rpc = Client(url)
        return self._rpc

    def setup(self) -> None:
        """Run once per worker process, before the first message."""

    def teardown(self) -> None:
        """Run once per worker process, after the last message."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        by_suffix: dict[str, str] = {}
        by_name: dict[str, str] = {}
        for attr in dir(cls):
            member = getattr(cls, attr, None)
            if not callable(member):
                continue
            if attr.startswith(HANDLER_PREFIX) and len(attr) > len(HANDLER_PREFIX):
                by_suffix[attr[len(HANDLER_PREFIX):]] = attr
            for name in getattr(member, "_yptask_handles", ()):
                if by_name.get(name, attr) != attr:
                    raise ConfigError(f"{cls.__qualname__}: message {name!r} is bound to both "
                                      f"{by_name[name]}() and {attr}()")
                by_name[name] = attr
        _refuse_ambiguity(cls.__qualname__, by_suffix, by_name)
        cls._by_suffix = by_suffix
        cls._by_name = by_name

    @classmethod
    def handler_for(cls, name: str) -> str | None:
        """Return the name of the method that handles a message name, or None."""
        method = cls._by_name.get(name)
        if method is not None:
            return method
        for suffix in handler_names(name):
            method = cls._by_suffix.get(suffix)
            if method is not None:
                return method
        return None

    @classmethod
    def handled(cls) -> list[str]:
        """Return what this class handles: explicit names and `handle_*` method names."""
        return sorted(cls._by_name) + sorted(HANDLER_PREFIX + s for s in cls._by_suffix)


def _refuse_ambiguity(owner: str, by_suffix: dict[str, str], by_name: dict[str, str]) -> None:
    """Raise ConfigError if one message name could reach two different methods."""
    for suffix, method in by_suffix.items():
        for other, other_method in by_suffix.items():
            if other.endswith("_" + suffix):
                prefix = other[: -len(suffix) - 1]
                example = f"{prefix}.{suffix.replace('_', '.')}"
                raise ConfigError(
                    f"{owner}: message {example!r} would match both {method}() and "
                    f"{other_method}(); rename one or bind names with @handles")
    for name, method in by_name.items():
        for suffix in handler_names(name):
            derived = by_suffix.get(suffix)
            if derived is not None and derived != method:
                raise ConfigError(f"{owner}: message {name!r} is bound to {method}() by @handles "
                                  f"and matches {derived}() by name; keep one")
