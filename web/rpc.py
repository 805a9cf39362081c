"""The publisher API: JSON-RPC 2.0 over `POST /rpc`, on jsonrpcserver 5 and aiohttp.

This module owns the JSON-RPC surface of a node: reading and capping the body,
parsing it, checking every request of a batch on its own (jsonrpcserver would
reject a whole batch for one bad element), the method table (`cast`, `call`,
`tasks.*`, `status`, `dead.*`) with its parameter checks, and turning every
exception into a JSON-RPC error through the one table in `yptask.errors`.

jsonrpcserver's jsonschema validation is replaced by `request_problem()`, a
hand-written check of the same rules (it was two thirds of the cost per
request). The publishing methods are the hot path and are answered here
directly: the casts of a body go to the journal together, in one group commit,
and a call runs as it comes; for them jsonrpcserver's task per request and
signature binding cost more than all the rest of a cast. The administration
methods go through jsonrpcserver. Results are serialised here, so a result
that is not JSON becomes a -32603 error and never an HTTP 500.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from jsonrpcserver import Error, Success, async_dispatch_to_serializable

from yptask.errors import (
    ConfigError,
    DecodeError,
    HandlerError,
    JournalError,
    NoSuchFunction,
    ProtocolError,
    Unauthorized,
    YPTaskError,
    wire_code,
)
from yptask.ingress import checks as ingress
from yptask.service import Service
from yptask.web.auth import Guard

__all__ = ["METHODS", "RPCEndpoint", "error_data", "request_problem"]

log = logging.getLogger(__name__)

_REQUEST_MEMBERS = frozenset({"jsonrpc", "method", "params", "id"})
_NO_ID = object()  # a notification's id: the request had no "id" member
MAX_DEAD_LETTERS = 1_000_000  # the largest `limit` dead.list accepts
PUBLIC_METHODS = frozenset({"cast", "call"})  # publishing; the rest is administration
# Amplification bound: the answers to the requests of a body that run nothing (invalid,
# unknown method, not allowed, params that do not fit a cast) come to at most this
# many times the body, plus the slack, or the body is refused as a whole before
# anything runs. Every other error answer is short (values are echoed cut short), so
# it stays within the bound too. Results of calls and admin methods are the handler's
# and may be any size: they are not bounded here.
ANSWER_FACTOR = 4
ANSWER_SLACK_BYTES = 4096


# ---------------------------------------------------------------- parameter checks


_bad = ingress.bad_param


def _string(method: str, param: str, value: Any, *, optional: bool = False) -> Any:
    if isinstance(value, str) or (optional and value is None):
        return value
    raise _bad(method, param, "a string" + (" or null" if optional else ""), value)


def _integer(method: str, param: str, value: Any, *, minimum: int = -2**63,
             maximum: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(method, param, "an integer", value)
    if not minimum <= value <= maximum:
        raise _bad(method, param, f"an integer from {minimum} to {maximum}", value)
    return value


# ---------------------------------------------------------------- the methods


async def _cast(node: Service, /, name: Any, msg: Any, id: Any = None,
                priority: Any = 0) -> Any:
    # The node checks every field of a cast (yptask.ingress.checks), whatever the surface.
    return await node.cast(name, msg, id=id, priority=priority)


async def _call(node: Service, /, name: Any, msg: Any, timeout: Any = 30) -> Any:
    return await node.call(_string("call", "name", name), msg,
                           timeout_s=ingress.check_timeout(timeout))


async def _tasks_list(node: Service, /) -> Any:
    return await node.list_tasks()


async def _tasks_get(node: Service, /, name: Any) -> Any:
    return await node.get_task(_string("tasks.get", "name", name))


async def _tasks_put(node: Service, /, definition: Any) -> Any:
    if not isinstance(definition, dict):
        raise _bad("tasks.put", "definition", "an object (a task definition)", definition)
    return await node.put_task(definition)


async def _tasks_delete(node: Service, /, name: Any) -> Any:
    return await node.delete_task(_string("tasks.delete", "name", name))


async def _tasks_restart(node: Service, /, name: Any) -> Any:
    return await node.restart_task(_string("tasks.restart", "name", name))


async def _timers_list(node: Service, /) -> Any:
    return await node.list_timers()


async def _timers_get(node: Service, /, name: Any) -> Any:
    return await node.get_timer(_string("timers.get", "name", name))


async def _timers_put(node: Service, /, definition: Any) -> Any:
    if not isinstance(definition, dict):
        raise _bad("timers.put", "definition", "an object (a timer definition)", definition)
    return await node.put_timer(definition)


async def _timers_delete(node: Service, /, name: Any) -> Any:
    return await node.delete_timer(_string("timers.delete", "name", name))


async def _failures_list(node: Service, /, limit: Any = 100) -> Any:
    return await node.failures(_integer("failures.list", "limit", limit, minimum=1,
                                        maximum=MAX_DEAD_LETTERS))


async def _metrics(node: Service, /, step: Any = 10, span: Any = 600) -> Any:
    return await node.metrics(_integer("metrics", "step", step, minimum=1, maximum=600),
                              _integer("metrics", "span", span, minimum=1, maximum=600))


async def _nodes(node: Service, /) -> Any:
    return await node.nodes()


async def _nodes_forget(node: Service, /, name: Any) -> Any:
    return await node.forget_node(_string("nodes.forget", "name", name))


async def _status(node: Service, /) -> Any:
    return await node.status()


async def _dead_list(node: Service, /, limit: Any = 100) -> Any:
    return await node.dead_letters(_integer("dead.list", "limit", limit, minimum=1,
                                                     maximum=MAX_DEAD_LETTERS))


async def _dead_replay(node: Service, /, id: Any, task: Any = None) -> Any:
    return await node.replay(_string("dead.replay", "id", id),
                             _string("dead.replay", "task", task, optional=True))


def error_data(exc: BaseException) -> dict[str, Any]:
    """The `data` object of a JSON-RPC error answering a yptask error."""
    if isinstance(exc, HandlerError):
        return {"error_class": str(exc.error_class), "detail": str(exc.detail),
                "backtrace": [str(line) for line in exc.backtrace]}
    if isinstance(exc, JournalError):
        return {"error_class": "JournalError", "reference": exc.reference}
    return {"error_class": type(exc).__name__}


def _error_object(exc: BaseException, message: str | None = None,
                  data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"code": wire_code(exc).jsonrpc_code,
            "message": str(exc) if message is None else message,
            "data": error_data(exc) if data is None else data}


def _internal_error(exc: BaseException, what: str) -> dict[str, Any]:
    """Log an unexpected exception; return an error object that leaks none of it."""
    reference = uuid.uuid4().hex[:12]
    log.exception("JSON-RPC %s failed unexpectedly (reference %s)", what, reference)
    return _error_object(exc, f"Internal error: the node failed unexpectedly; its log has the "
                              f"details under reference {reference}",
                         {"error_class": "InternalError", "reference": reference})


Method = Callable[..., Awaitable[Any]]


def _describe_param(param: inspect.Parameter) -> str:
    return param.name if param.default is param.empty else f"{param.name}={param.default!r}"


class _Signature:
    """Binds a request's params to a method's parameters, quickly, with a clear error."""

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())[1:]  # after the node
        self.names = [p.name for p in params]
        self.known = frozenset(self.names)
        self.defaults = [p.default for p in params]
        self.required = sum(1 for p in params if p.default is p.empty)
        self.usage = f"{name}({', '.join(_describe_param(p) for p in params)})"

    def bind(self, params: list[Any] | dict[str, Any]) -> list[Any]:
        """The arguments in parameter order, defaults filled in; ConfigError if they do
        not fit (-32602, naming the method and its parameters)."""
        if isinstance(params, list):
            if self.required <= len(params) <= len(self.names):
                return [*params, *self.defaults[len(params):]]
        elif params.keys() <= self.known and all(
                name in params for name in self.names[:self.required]):
            return [params.get(name, default)
                    for name, default in zip(self.names, self.defaults, strict=True)]
        try:  # only to word the error as Python would
            if isinstance(params, list):
                self.signature.bind(None, *params)
            else:
                self.signature.bind(None, **params)
            problem = "they do not fit"
        except TypeError as exc:
            problem = str(exc)
        raise ConfigError(f"invalid params for {self.name}: {problem}; it takes {self.usage}")


async def _invoke(fn: Method, signature: _Signature, node: Service,
                  params: list[Any] | dict[str, Any]) -> tuple[bool, Any]:
    """Run one method: (True, result), or (False, error object) for any failure:
    yptask errors by the wire table, anything else as a logged -32603."""
    try:
        return True, await fn(node, *signature.bind(params))
    except YPTaskError as exc:
        return False, _error_object(exc)
    except Exception as exc:
        return False, _internal_error(exc, f"method {signature.name}")


def _method(name: str, fn: Method) -> Method:
    """Wrap `fn(node, *params)` as a jsonrpcserver method that answers every failure itself."""
    signature = _Signature(name, fn)

    async def method(node: Service, /, *args: Any, **kwargs: Any) -> Any:
        ok, value = await _invoke(fn, signature, node, kwargs if kwargs else list(args))
        return Success(value) if ok else Error(**value)

    method.__name__ = method.__qualname__ = f"rpc_{name.replace('.', '_')}"
    # jsonrpcserver checks every call against inspect.signature(method), which is slow to
    # compute each time; the wrapper takes anything, so give it its signature once.
    method.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return method


_IMPLEMENTATIONS: dict[str, Method] = {
    "cast": _cast,
    "call": _call,
    "tasks.list": _tasks_list,
    "tasks.get": _tasks_get,
    "tasks.put": _tasks_put,
    "tasks.delete": _tasks_delete,
    "tasks.restart": _tasks_restart,
    "status": _status,
    "nodes": _nodes,
    "nodes.forget": _nodes_forget,
    "failures.list": _failures_list,
    "metrics": _metrics,
    "timers.list": _timers_list,
    "timers.get": _timers_get,
    "timers.put": _timers_put,
    "timers.delete": _timers_delete,
    "dead.list": _dead_list,
    "dead.replay": _dead_replay,
}

# The method table, passed to jsonrpcserver as `methods=` (never its global registry).
METHODS: dict[str, Method] = {name: _method(name, fn) for name, fn in _IMPLEMENTATIONS.items()}
_CAST = _Signature("cast", _cast)
_CALL = _Signature("call", _call)


# ---------------------------------------------------------------- requests and responses


def _valid_id(value: Any) -> bool:
    """Can `value` be a request id: can an answer echo it as JSON?"""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)  # 1e999 parses as infinity, which JSON cannot write
    return isinstance(value, str) and ingress.valid_text(value)


def request_problem(request: Any) -> str | None:
    """Say what makes `request` not a JSON-RPC 2.0 request object, or None if it is one."""
    if not isinstance(request, dict):
        return f"a request must be an object, got {ingress.json_type(request)}"
    if request.get("jsonrpc") != "2.0":
        return 'a request must have "jsonrpc": "2.0"'
    if not isinstance(request.get("method"), str):
        return 'a request must have a "method" member that is a string'
    if "params" in request and not isinstance(request["params"], (list, dict)):
        return '"params" must be an array (by position) or an object (by name)'
    if "id" in request and not _valid_id(request["id"]):
        return ('"id" must be a string (valid Unicode), a finite number or null, so that '
                "the answer can echo it; nothing was run")
    unknown = request.keys() - _REQUEST_MEMBERS
    if unknown:
        return (f"unknown member(s) {', '.join(sorted(map(repr, unknown)))}; a request has "
                "only jsonrpc, method, params and id")
    return None


def _echoable_id(request: Any) -> Any:
    """The id an answer to `request` carries: its own if it has a valid one, else null."""
    request_id = request.get("id") if isinstance(request, dict) else None
    return request_id if _valid_id(request_id) else None


def _response(error: dict[str, Any], request_id: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "error": error, "id": request_id}, allow_nan=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse(body: bytes) -> Any:
    """Parse a request body; raise DecodeError (-32700) saying what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"Parse error: the body is not UTF-8 ({exc.reason} at byte "
                          f"{exc.start}); send JSON encoded as UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise DecodeError(f"Parse error: the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise DecodeError("Parse error: the JSON is nested too deeply") from None


def _no_validation(request: Any) -> Any:
    return request  # request_problem() has already checked it


class RPCEndpoint:
    """The `POST /rpc` handler of one node."""

    def __init__(self, node: Service, guard: Guard | None = None) -> None:
        self.node = node
        self.guard = guard
        self.max_body_bytes = node.config.max_body_bytes

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one HTTP request: 200 with JSON, 204 for notifications, 413 if too big."""
        body = await self._read_body(request)
        if body is None:
            too_big = ProtocolError(
                f"Invalid request: the body is over this node's limit of {self.max_body_bytes}"
                " bytes (max_body_bytes); send smaller messages or split the batch")
            return web.Response(status=413, text=_response(_error_object(too_big), None),
                                content_type="application/json")
        try:
            answer = await self.dispatch(
                body, None if self.guard is None else Access(self.guard, request))
        except Exception as exc:
            answer = _response(_internal_error(exc, "request"), None)
        if answer is None:
            return web.Response(status=204)
        return web.Response(body=answer.encode(), content_type="application/json")

    async def _read_body(self, request: web.Request) -> bytes | None:
        """Read the body, or return None as soon as it is over the limit."""
        limit = self.max_body_bytes
        if request.content_length:
            if request.content_length > limit:
                return None
            try:  # one read of the announced length
                return await request.content.readexactly(request.content_length)
            except asyncio.IncompleteReadError as exc:  # the client went away mid-body
                return exc.partial
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def dispatch(self, body: bytes, access: Access | None = None) -> str | None:
        """Answer a request body with JSON text, or None when nothing is to be answered.

        `access` says what the request may call (None: anything)."""
        try:
            data = _parse(body)
        except DecodeError as exc:
            return _response(_error_object(exc), None)
        if isinstance(data, list) and not data:
            empty = ProtocolError("Invalid request: an empty batch; send at least one request")
            return _response(_error_object(empty), None)
        try:
            answers = await self._answer(data if isinstance(data, list) else [data], access,
                                         ANSWER_FACTOR * len(body) + ANSWER_SLACK_BYTES)
        except _TooManyErrors as exc:
            return _response(_error_object(exc), None)
        if not isinstance(data, list):
            return answers[0]
        parts = [answer for answer in answers if answer is not None]
        return f"[{','.join(parts)}]" if parts else None

    async def _answer(self, requests: list[Any], access: Access | None,
                      budget: int) -> list[str | None]:
        """Answer each request object (JSON text, or None for a notification), in order.

        Requests that are malformed, name no method, an admin method without the
        right to it, or a cast whose params do not fit, are answered first, each on
        its own, before anything runs: if those answers come to more than `budget`
        bytes, _TooManyErrors refuses the whole body and nothing runs. Then the casts
        of a body are journaled together in one group commit and calls run
        directly; the rest go to jsonrpcserver together, which runs them concurrently.
        """
        answers: list[str | None] = [None] * len(requests)
        casts: list[tuple[int, dict[str, Any], list[Any]]] = []
        calls: list[tuple[int, dict[str, Any]]] = []
        runnable: list[tuple[int, dict[str, Any]]] = []
        spent = 0
        for index, request in enumerate(requests):
            refused: YPTaskError | None = None
            problem = request_problem(request)
            if problem is not None:
                refused = ProtocolError(f"Invalid request: {problem}")
            elif (method := request["method"]) not in METHODS:
                refused = NoSuchFunction(f"Method not found: {ingress.shown(method)}; "
                                         "publishers use cast and call, docs/api.md lists "
                                         "every method")
            elif access is not None and not await access.allows(method):
                refused = Unauthorized(access.why(method))
            elif method == "cast":
                try:
                    casts.append((index, request, _CAST.bind(request.get("params", []))))
                except ConfigError as exc:
                    refused = exc
            else:
                (calls if method == "call" else runnable).append((index, request))
            if refused is None or (problem is None and "id" not in request):
                continue  # it runs, or it is a notification: no answer
            answer = _response(_error_object(refused), _echoable_id(request))
            answers[index] = answer
            spent += len(answer)
            if spent > budget:
                raise _TooManyErrors(index, budget, refused)
        work = [part for part in (casts and self._casts(casts, answers),
                                  *(self._call(index, request, answers)
                                    for index, request in calls),
                                  runnable and self._library(runnable, answers)) if part]
        if len(work) == 1:
            await work[0]
        elif work:
            await asyncio.gather(*work)
        return answers

    async def _casts(self, casts: list[tuple[int, dict[str, Any], list[Any]]],
                     answers: list[str | None]) -> None:
        """Journal the casts of a body in one group commit; answer each in its place."""
        arguments = [(args[0], args[1], args[2], args[3]) for _, _, args in casts]
        try:
            results = await self.node.cast_many(arguments)
        except YPTaskError as exc:  # the node refuses them all (it is stopping)
            results = [exc] * len(casts)
        except Exception as exc:
            failed = _internal_error(exc, "cast")
            for index, request, _ in casts:
                _settle_answer(answers, index, request, False, failed)
            return
        for (index, request, _), result in zip(casts, results, strict=True):
            if isinstance(result, YPTaskError):
                _settle_answer(answers, index, request, False, _error_object(result))
            else:
                _settle_answer(answers, index, request, True, result)

    async def _call(self, index: int, request: dict[str, Any],
                    answers: list[str | None]) -> None:
        ok, value = await _invoke(_call, _CALL, self.node, request.get("params", []))
        _settle_answer(answers, index, request, ok, value)

    async def _library(self, runnable: list[tuple[int, dict[str, Any]]],
                       answers: list[str | None]) -> None:
        """Run requests through jsonrpcserver, which runs them concurrently."""
        try:
            responses = await async_dispatch_to_serializable(
                "", methods=METHODS, context=self.node,
                deserializer=lambda _text: [request for _, request in runnable],
                validator=_no_validation)
        except Exception as exc:
            failed = _internal_error(exc, "batch" if len(runnable) > 1 else "request")
            responses = [{"jsonrpc": "2.0", "error": failed, "id": request["id"]}
                         for _, request in runnable if "id" in request]
        # jsonrpcserver answers in request order and leaves out the notifications.
        expecting = ((index, request) for index, request in runnable if "id" in request)
        for (index, request), response in zip(expecting, responses or (), strict=True):
            answers[index] = _serialize(response, request["method"])


class _TooManyErrors(ProtocolError):
    """Raised when the answers to a body's invalid requests would be too big next to it."""

    def __init__(self, index: int, budget: int, first: YPTaskError) -> None:
        super().__init__(
            f"Invalid request: the answers to the invalid requests up to element {index} "
            f"of this batch come to over {budget} bytes ({ANSWER_FACTOR} x the body + "
            f"{ANSWER_SLACK_BYTES} bytes), so nothing in it was run; fix or drop them. "
            f"The last: {str(first)[:200]}")


def _settle_answer(answers: list[str | None], index: int, request: dict[str, Any], ok: bool,
                   value: Any) -> None:
    """Put the JSON text answering `request` at `index`; a notification gets none."""
    if "id" not in request:
        return
    response = ({"jsonrpc": "2.0", "result": value, "id": request["id"]} if ok
                else {"jsonrpc": "2.0", "error": value, "id": request["id"]})
    answers[index] = _serialize(response, request["method"])


class Access:
    """What one HTTP request may call, asked of the node's Guard at most once per kind."""

    def __init__(self, guard: Guard, request: web.Request) -> None:
        self.guard = guard
        self.request = request
        self._answers: dict[bool, bool] = {}  # public method? -> allowed

    async def allows(self, method: str) -> bool:
        public = method in PUBLIC_METHODS
        if public not in self._answers:
            self._answers[public] = await (self.guard.may_publish(self.request) if public
                                           else self.guard.may_administer(self.request))
        return self._answers[public]

    def why(self, method: str) -> str:
        wait_s = self.guard.blocked_for_s(self.request.remote or "")
        if wait_s > 0:
            return (f"{method} is refused: too many failed password checks from this "
                    f"address; wait {int(wait_s) + 1} s")
        if method in PUBLIC_METHODS:
            return (f"{method} needs a publisher token: send Authorization: Bearer TOKEN "
                    "(YPTASK_TOKEN for the CLI)")
        return (f"{method} needs the node's admin token or console password: send "
                "Authorization: Bearer ADMIN_TOKEN (the file admin-token in the node's data "
                "dir, which the CLI reads itself: --data-dir or YPTASK_DATA_DIR), or the "
                "console password as HTTP Basic auth (YPTASK_PASSWORD), or log in to the "
                "console")


def _serialize(response: Any, method: str) -> str:
    """JSON text of one response; a result that is not JSON becomes a -32603 error."""
    try:
        return json.dumps(response, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        log.warning("JSON-RPC method %s returned a result that is not JSON: %s", method, exc)
        unsendable = _error_object(
            exc, f"Internal error: the result of {method} cannot be sent as JSON ({exc})",
            {"error_class": "InternalError"})
        return _response(unsendable, _echoable_id(response))
