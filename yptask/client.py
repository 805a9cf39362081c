"""A Python client for a node's JSON-RPC publisher API, on the standard library alone.

It owns the publisher's side of `POST /rpc`: `Client.cast`, `Client.call` and the
admin methods each send one JSON-RPC 2.0 request and return its result, over
an HTTP connection each thread keeps open (`yptask.http_connection`). An error
answer is raised as the yptask exception it stands for, found by its JSON-RPC
code in `yptask.errors.WIRE_CODES` (and, among classes sharing a code, by the
`error_class` in its data; only classes of that table are ever rebuilt).
`HandlerError` comes back with the handler's class, detail and traceback; a
code the table does not know raises `RemoteError`.

It imports neither aiohttp nor anything of the node, so a worker process can
use it to cast and call from inside a handler.

    >>> from yptask.client import Client
    >>> Client().cast("upai.photos.upload", {"photo_id": 7})
    {'id': '...', 'tasks': ['indexer', 'antispam'], 'duplicate': False}
"""

from __future__ import annotations

import base64
import itertools
import json
import ssl
import threading
import urllib.parse
from collections.abc import Mapping
from typing import Any, TypeVar

from yptask.errors import (
    WIRE_CODES,
    CallTimeout,
    EncodeError,
    HandlerError,
    ProtocolError,
    RemoteError,
    RPCError,
    YPTaskError,
)
from yptask.http_connection import HTTPConnection

__all__ = ["DEFAULT_URL", "Client", "error_from_jsonrpc"]

DEFAULT_URL = "http://127.0.0.1:8700/rpc"

_T = TypeVar("_T")


_ByName = dict[int, dict[str, type[YPTaskError]]]
_Default = dict[int, type[YPTaskError]]


def _classes_by_code() -> tuple[_ByName, _Default]:
    """Index WIRE_CODES by JSON-RPC code: {code: {class name: class}} and each code's default.

    The table lists specific classes before general ones, so the default for a code
    several classes share is the last, most general one (-32700 DecodeError,
    -32601 NoSuchFunction, -32603 YPTaskError).
    """
    by_name: _ByName = {}
    default: _Default = {}
    for cls, code in WIRE_CODES.items():
        if issubclass(cls, YPTaskError):
            by_name.setdefault(code.jsonrpc_code, {})[cls.__name__] = cls
            default[code.jsonrpc_code] = cls
    return by_name, default


_BY_CODE, _DEFAULT_FOR_CODE = _classes_by_code()


def error_from_jsonrpc(error: Mapping[str, Any]) -> YPTaskError:
    """Rebuild the yptask exception a JSON-RPC error object stands for."""
    code = error.get("code")
    message = str(error.get("message", ""))
    raw = error.get("data")
    data: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    error_class = str(data.get("error_class", ""))
    backtrace = data.get("backtrace")
    lines = [str(line) for line in backtrace] if isinstance(backtrace, list) else []
    if not isinstance(code, int) or code not in _BY_CODE:
        return RemoteError("jsonrpc", code if isinstance(code, int) else 0, error_class,
                           message, lines)
    cls = _BY_CODE[code].get(error_class, _DEFAULT_FOR_CODE[code])
    if issubclass(cls, HandlerError):  # error_class is the handler's exception class
        return HandlerError(error_class or "Error", str(data.get("detail", message)), lines)
    return cls(message)


class Client:
    """Speaks JSON-RPC to one node. Thread-safe: each thread keeps its own connection open."""

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 10.0, *,
                 password: str | None = None, admin_token: str | None = None,
                 token: str | None = None) -> None:
        """Credentials, the first given is sent: `password`, the node's console password
        (HTTP Basic), or `admin_token`, its admin token (the file admin-token in its data
        dir), for its admin methods; `token`, a publisher token, for cast and call on a
        node that wants one."""
        self.url = url
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if password:
            basic = base64.b64encode(f"yptask:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {basic}"
        elif admin_token or token:
            token = admin_token or token
            self._headers["Authorization"] = f"Bearer {token}"
        self._ids = itertools.count(1)
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RPCError(f"a node's URL is http(s)://HOST:PORT/rpc, got {url!r}")
        self._tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._address = (parts.hostname, parts.port or (443 if self._tls else 80))
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._local = threading.local()  # this thread's open connection, if any

    # ------------------------------------------------------------------ publishing

    def cast(self, name: str, msg: Any, *, id: str | None = None, priority: int | None = None,
             ttl_s: float | None = None, deadline: float | None = None,
             delay_s: float | None = None, at: float | None = None,
             traceparent: str | None = None, parent: str | None = None) -> dict[str, Any]:
        """Publish `msg` under `name`; return {"id", "tasks", "duplicate"} once it is stored.

        priority: 0 (lowest) to 9, default each task's own; ttl_s or deadline (epoch
        seconds): expire unless handed to a worker by then; delay_s or at: deliver no
        sooner (the answer then has "not_before"); traceparent: the W3C trace to join;
        parent: the id of the message whose handler casts this one. docs/api.md has more.
        """
        params = {"name": name, "msg": msg, "id": id, "priority": priority, "ttl_s": ttl_s,
                  "deadline": deadline, "delay_s": delay_s, "at": at,
                  "traceparent": traceparent, "parent": parent}
        params = {key: value for key, value in params.items()
                  if value is not None or key in ("name", "msg")}
        return _expect(self.request("cast", params), dict, "cast")

    def call(self, name: str, msg: Any, *, timeout: float = 30.0,
             traceparent: str | None = None, parent: str | None = None) -> Any:
        """Have one subscribed worker handle `msg`; return its result (waits up to `timeout` s).

        traceparent: the W3C trace to join; parent: the id of the message whose handler
        calls."""
        params = {"name": name, "msg": msg, "timeout": timeout}
        params.update({key: value for key, value in (("traceparent", traceparent),
                                                     ("parent", parent)) if value is not None})
        return self.request("call", params, timeout_s=timeout + self.timeout_s)

    # ------------------------------------------------------------------ admin

    def tasks(self) -> list[dict[str, Any]]:
        """Every task definition."""
        return _expect(self.request("tasks.list"), list, "tasks.list")

    def task(self, name: str) -> dict[str, Any]:
        """One task definition; raises UnknownTask if there is none by that name."""
        return _expect(self.request("tasks.get", {"name": name}), dict, "tasks.get")

    def put_task(self, definition: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace a task; return the definition as stored, with `changed`
        (false: it was stored already, so nothing was written and no worker restarted)."""
        return _expect(self.request("tasks.put", {"definition": dict(definition)}), dict,
                       "tasks.put")

    def delete_task(self, name: str) -> Any:
        """Delete a task; its workers finish their current message and stop."""
        return self.request("tasks.delete", {"name": name})

    def restart(self, name: str) -> dict[str, Any]:
        """Rolling restart of a task's workers."""
        return _expect(self.request("tasks.restart", {"name": name}), dict, "tasks.restart")

    def pause(self, name: str) -> dict[str, Any]:
        """Pause a task on every node: its casts are journaled and wait for the resume."""
        return _expect(self.request("tasks.pause", {"name": name}), dict, "tasks.pause")

    def resume(self, name: str) -> dict[str, Any]:
        """Resume a paused task: what waited is delivered."""
        return _expect(self.request("tasks.resume", {"name": name}), dict, "tasks.resume")

    def status(self) -> dict[str, Any]:
        """The node's status: per task, workers, state and counters."""
        return _expect(self.request("status"), dict, "status")

    def timers(self) -> list[dict[str, Any]]:
        """Every timer with its last fire, next fire, last error and the leader firing it."""
        return _expect(self.request("timers.list"), list, "timers.list")

    def timer(self, name: str) -> dict[str, Any]:
        return _expect(self.request("timers.get", {"name": name}), dict, "timers.get")

    def put_timer(self, definition: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a timer, on every node of the cluster."""
        return _expect(self.request("timers.put", {"definition": definition}), dict,
                       "timers.put")

    def delete_timer(self, name: str) -> Any:
        return self.request("timers.delete", {"name": name})

    def timer_ledger(self, name: str, limit: int = 100, before: float | None = None
                     ) -> dict[str, Any]:
        """What became of a timer's ticks, newest first, from every live node."""
        return _expect(self.request("timers.ledger", {"name": name, "limit": limit,
                                                      "before": before}), dict, "timers.ledger")

    def run_timer(self, name: str) -> dict[str, Any]:
        """Cast a timer's message once, now."""
        return _expect(self.request("timers.run_now", {"name": name}), dict, "timers.run_now")

    def pause_timer(self, name: str) -> dict[str, Any]:
        return _expect(self.request("timers.pause", {"name": name}), dict, "timers.pause")

    def resume_timer(self, name: str) -> dict[str, Any]:
        return _expect(self.request("timers.resume", {"name": name}), dict, "timers.resume")

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's members as the node sees them, itself first."""
        return _expect(self.request("nodes"), list, "nodes")

    def forget_node(self, name: str) -> Any:
        """Take a node that is gone for good off the timer lease's roster."""
        return self.request("nodes.forget", {"name": name})

    def dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters, at most `limit`."""
        return _expect(self.request("dead.list", {"limit": limit}), list, "dead.list")

    def replay(self, id: str, task: str | None = None) -> int:
        """Requeue a dead letter (for one task, or all it died in); return how many."""
        return _expect(self.request("dead.replay", {"id": id, "task": task}), int,
                       "dead.replay")

    def cancel(self, id: str) -> dict[str, Any]:
        """Cancel a message's waiting deliveries on every node (admin); return
        {"cancelled": {node: [task]}, "running": {node: [task]}, "unreached": [node]}."""
        return _expect(self.request("cancel", {"id": id}), dict, "cancel")

    def message_cancelled(self, id: str) -> bool:
        """Was the message cancelled on this node? (What `BaseTask.cancelled` asks.)"""
        return _expect(self.request("message.cancelled", {"id": id}), bool,
                       "message.cancelled")

    def scheduled(self, limit: int = 100) -> list[dict[str, Any]]:
        """What waits on the node for a later time (delayed casts, retries), soonest first."""
        return _expect(self.request("scheduled.list", {"limit": limit}), list,
                       "scheduled.list")

    def audit(self, limit: int = 100, before: str | None = None,
              target: str | None = None) -> list[dict[str, Any]]:
        """The audit log's entries, newest first (admin or viewer): those older than the
        entry `before` (an id), about `target` only if given."""
        params: dict[str, Any] = {"limit": limit}
        if before is not None:
            params["before"] = before
        if target is not None:
            params["target"] = target
        return _expect(self.request("audit.list", params), list, "audit.list")

    def whoami(self) -> dict[str, Any]:
        """This client's role on the node: {"role": "admin"|"viewer", "via": ...}."""
        return _expect(self.request("auth.whoami", {}), dict, "auth.whoami")

    def trace(self, id: str) -> dict[str, Any]:
        """The messages of a trace (a trace id, or a message id whose trace is meant), on
        every live node (admin): {"trace_id", "messages", "unreached"}."""
        return _expect(self.request("trace", {"id": id}), dict, "trace")

    # ------------------------------------------------------------------ the wire

    def request(self, method: str, params: Mapping[str, Any] | list[Any] | None = None, *,
                timeout_s: float | None = None) -> Any:
        """Send one JSON-RPC request; return its result or raise its error."""
        request_id = next(self._ids)
        payload: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": request_id}
        if params is not None:
            payload["params"] = params if isinstance(params, list) else dict(params)
        try:
            body = json.dumps(payload, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise EncodeError(f"cannot send {method}: its params are not JSON ({exc})") from None
        status, raw = self._post(body, self.timeout_s if timeout_s is None else timeout_s)
        try:
            answer = json.loads(raw)
        except ValueError:
            if status != 200:
                raise RPCError(f"{self.url} answered HTTP {status} without a JSON-RPC body; "
                               "check that the URL is a yptask node's /rpc endpoint") from None
            raise ProtocolError(f"{self.url} answered something that is not JSON: "
                                f"{raw[:80]!r}") from None
        if not isinstance(answer, dict) or answer.get("jsonrpc") != "2.0":
            raise ProtocolError(f"{self.url} answered something that is not a JSON-RPC 2.0 "
                                f"response: {raw[:80]!r}")
        error = answer.get("error")
        if isinstance(error, Mapping):
            raise error_from_jsonrpc(error)
        if "result" not in answer or answer.get("id") != request_id:
            raise ProtocolError(f"{self.url} answered request {request_id} with a response "
                                f"that has no result or another id: {raw[:80]!r}")
        return answer["result"]

    def _post(self, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """POST on this thread's open connection (a node is reached directly, never
        through a proxy). A connection the node closed while it was idle is opened
        again once: the request never reached the node."""
        for attempt in (1, 2):
            conn: HTTPConnection | None = getattr(self._local, "conn", None)
            reused = conn is not None and conn.is_open
            try:
                if conn is None or not conn.is_open:
                    conn = self._local.conn = HTTPConnection(
                        *self._address, self._path, self._headers, timeout_s=timeout_s,
                        tls=self._tls)
                return conn.post(body, timeout_s)
            except ConnectionError as exc:  # closed, reset, broken pipe
                self._drop()
                if reused and attempt == 1:
                    continue
                raise self._unreachable(exc) from None
            except TimeoutError:
                self._drop()
                raise self._timeout(timeout_s) from None
            except ProtocolError:
                self._drop()
                raise
            except OSError as exc:
                self._drop()
                raise self._unreachable(exc) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close this thread's connection (others close when their thread's Client goes)."""
        self._drop()

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()

    def _timeout(self, timeout_s: float) -> CallTimeout:
        return CallTimeout(f"no answer from the yptask node at {self.url} within {timeout_s} s; "
                           "check that the node is not overloaded, or raise timeout_s")

    def _unreachable(self, reason: object) -> RPCError:
        return RPCError(f"cannot reach the yptask node at {self.url}: {reason}; check that "
                        "`yptask node` is running and that the URL's host and port match its "
                        "http_host and http_port")


def _expect(value: Any, kind: type[_T], method: str) -> _T:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"{method} answered {type(value).__name__}, expected {kind.__name__}")
    return value
