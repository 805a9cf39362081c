"""The JSON-RPC method table: each method's parameters, bound and checked, then the service.

One entry per method of the publisher API (`cast`, `call`, `tasks.*`,
`timers.*`, `status`, `nodes*`, `failures.list`, `metrics`, `dead.*`, `cancel`,
`message.cancelled`, `scheduled.list`, `trace`, `messages.*`, `audit.list`,
`auth.whoami`): its signature is its parameters, by position or by name, with their defaults.
The publishing methods pass what they were sent to the node as it came: the
node checks every field of a cast and a call (`yptask.ingress.checks`),
whatever the surface. The admin methods, which only JSON-RPC offers, check
their own parameters here (a name is a string, a limit an integer in range,
a definition an object). Every refusal is an `InvalidParams` (-32602) naming
the method and the parameter. Each method the access policy calls a change
(`yptask.access.policy.kind_of`) is kept in the audit log once it ran, with
its outcome.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from jsonrpcserver import Error, Success

from yptask.access.policy import current_caller, kind_of
from yptask.errors import InvalidParams, YPTaskError, wire_name
from yptask.ingress import checks as ingress
from yptask.service import Service
from yptask.web.jsonrpc import error_object, internal_error

__all__ = ["CALL", "CAST", "MAX_DEAD_LETTERS", "METHODS", "Signature", "call", "invoke"]

MAX_DEAD_LETTERS = 1_000_000  # the largest `limit` dead.list accepts
MAX_LEDGER = 10_000  # the largest `limit` timers.ledger accepts
MAX_SPAN_S = 86_400  # metrics: a day of series is kept

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


def _object(method: str, param: str, value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(method, param, f"an object ({what})", value)
    return value


# ---------------------------------------------------------------- the methods


# JSON-RPC params may come by position, so the wire's order is this signature's.
async def _cast(node: Service, /, name: Any, msg: Any, id: Any = None,  # noqa: PLR0917
                priority: Any = None,
                ttl_s: Any = None, deadline: Any = None, delay_s: Any = None, at: Any = None,
                traceparent: Any = None, parent: Any = None) -> Any:
    """`cast`: its parameters are CastRequest's, in its order (the endpoint binds them)."""
    return await node.cast(name, msg, id=id, priority=priority, ttl_s=ttl_s, deadline=deadline,
                           delay_s=delay_s, at=at, traceparent=traceparent, parent=parent)


# JSON-RPC params may come by position: the wire's order is this signature's.
async def call(node: Service, /, name: Any, msg: Any, timeout: Any = 30,  # noqa: PLR0917
               traceparent: Any = None, parent: Any = None) -> Any:
    """`call`, answered by the endpoint directly (the hot path skips jsonrpcserver)."""
    return await node.call(name, msg, timeout_s=timeout, traceparent=traceparent,
                           parent=parent)


async def _tasks_list(node: Service, /) -> Any:
    return await node.tasks()


async def _tasks_get(node: Service, /, name: Any) -> Any:
    return await node.task(_string("tasks.get", "name", name))


async def _tasks_put(node: Service, /, definition: Any) -> Any:
    return await node.put_task(_object("tasks.put", "definition", definition,
                                       "a task definition"))


async def _tasks_delete(node: Service, /, name: Any) -> Any:
    return await node.delete_task(_string("tasks.delete", "name", name))


async def _tasks_restart(node: Service, /, name: Any) -> Any:
    return await node.restart(_string("tasks.restart", "name", name))


async def _tasks_pause(node: Service, /, name: Any) -> Any:
    return await node.pause(_string("tasks.pause", "name", name))


async def _tasks_resume(node: Service, /, name: Any) -> Any:
    return await node.resume(_string("tasks.resume", "name", name))


async def _timers_list(node: Service, /) -> Any:
    return await node.timers()


async def _timers_get(node: Service, /, name: Any) -> Any:
    return await node.timer(_string("timers.get", "name", name))


async def _timers_put(node: Service, /, definition: Any) -> Any:
    return await node.put_timer(_object("timers.put", "definition", definition,
                                        "a timer definition"))


async def _timers_delete(node: Service, /, name: Any) -> Any:
    return await node.delete_timer(_string("timers.delete", "name", name))


async def _timers_ledger(node: Service, /, name: Any, limit: Any = 100, before: Any = None
                         ) -> Any:
    if before is not None and (isinstance(before, bool)
                               or not isinstance(before, (int, float))):
        raise _bad("timers.ledger", "before", "null or a tick time (epoch seconds)", before)
    return await node.timer_ledger(_string("timers.ledger", "name", name),
                                   _integer("timers.ledger", "limit", limit, minimum=1,
                                            maximum=MAX_LEDGER),
                                   None if before is None else float(before))


async def _timers_run_now(node: Service, /, name: Any) -> Any:
    return await node.run_timer(_string("timers.run_now", "name", name))


async def _timers_pause(node: Service, /, name: Any) -> Any:
    return await node.pause_timer(_string("timers.pause", "name", name))


async def _timers_resume(node: Service, /, name: Any) -> Any:
    return await node.resume_timer(_string("timers.resume", "name", name))


async def _failures_list(node: Service, /, limit: Any = 100) -> Any:
    return await node.failures(_integer("failures.list", "limit", limit, minimum=1,
                                        maximum=MAX_DEAD_LETTERS))


async def _metrics(node: Service, /, step: Any = None, span: Any = 600) -> Any:
    """`metrics`: `step` (a multiple of 10 s) defaults by `span` (10, 60 or 600 s)."""
    span_s = _integer("metrics", "span", span, minimum=10, maximum=MAX_SPAN_S)
    return await node.metrics(None if step is None else _integer(
        "metrics", "step", step, minimum=10, maximum=span_s), span_s)


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


async def _cancel(node: Service, /, id: Any) -> Any:
    """`cancel`: the node checks the id (InvalidParams naming 'id')."""
    return await node.cancel(id)


async def _message_cancelled(node: Service, /, id: Any) -> Any:
    return await node.message_cancelled(id)


async def _trace(node: Service, /, id: Any) -> Any:
    """`trace`: the node checks the id (InvalidParams naming 'id')."""
    return await node.trace(id)


async def _scheduled_list(node: Service, /, limit: Any = 100) -> Any:
    return await node.scheduled(_integer("scheduled.list", "limit", limit, minimum=1,
                                         maximum=MAX_DEAD_LETTERS))


# The message browser checks its own params (yptask.delivery.message_params), by name.
async def _messages_list(node: Service, /, task: Any = None,  # noqa: PLR0917
                         state: Any = None, name: Any = None, priority: Any = None,
                         since: Any = None, until: Any = None, where: Any = None,
                         limit: Any = 100, cursor: Any = None) -> Any:
    return await node.list_messages({"task": task, "state": state, "name": name,
                                     "priority": priority, "since": since, "until": until,
                                     "where": where, "limit": limit, "cursor": cursor})


async def _messages_get(node: Service, /, id: Any) -> Any:
    return await node.get_message(id)


async def _messages_bulk(node: Service, /, action: Any, ids: Any = None,  # noqa: PLR0917
                         filter: Any = None, priority: Any = None,
                         confirm_count: Any = None) -> Any:
    return await node.bulk_messages({"action": action, "ids": ids, "filter": filter,
                                     "priority": priority, "confirm_count": confirm_count})


async def _audit_list(node: Service, /, limit: Any = 100, before: Any = None,
                      target: Any = None) -> Any:
    return await node.audit(_integer("audit.list", "limit", limit, minimum=1, maximum=10_000),
                            _string("audit.list", "before", before, optional=True),
                            _string("audit.list", "target", target, optional=True))


async def _whoami(node: Service, /) -> Any:
    """`auth.whoami`: the caller's role, and how it showed it (token, password, session)."""
    caller = current_caller.get()
    if caller is None:  # an endpoint that checks no credentials (a node run in-process)
        return {"role": "admin", "via": "unchecked"}
    return {"role": caller.role, "via": caller.via}


def _audited(name: str, fn: Method) -> Method:
    """`fn`, reporting each run (and its outcome) to the node's audit log."""
    async def run(node: Service, /, *args: Any) -> Any:
        try:
            result = await fn(node, *args)
        except YPTaskError as exc:
            await node.audited(name, args, wire_name(exc))
            raise
        except Exception:
            await node.audited(name, args, "InternalError")
            raise
        await node.audited(name, args, "ok", result)
        return result

    run.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
    return run


# ---------------------------------------------------------------- binding and the table


Method = Callable[..., Awaitable[Any]]


def _describe_param(param: inspect.Parameter) -> str:
    return param.name if param.default is param.empty else f"{param.name}={param.default!r}"


class Signature:
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
        """The arguments in parameter order, defaults filled in; InvalidParams if they do
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
        raise InvalidParams(f"invalid params for {self.name}: {problem}; it takes {self.usage}")


async def invoke(fn: Method, signature: Signature, node: Service,
                 params: list[Any] | dict[str, Any]) -> tuple[bool, Any]:
    """Run one method: (True, result), or (False, error object) for any failure:
    yptask errors by the wire table, anything else as a logged -32603."""
    try:
        return True, await fn(node, *signature.bind(params))
    except YPTaskError as exc:
        return False, error_object(exc)
    except Exception as exc:
        return False, internal_error(exc, f"method {signature.name}")


def _method(name: str, fn: Method) -> Method:
    """Wrap `fn(node, *params)` as a jsonrpcserver method that answers every failure itself
    (and keeps a change in the audit log)."""
    signature = Signature(name, fn)
    if kind_of(name) == "change":
        fn = _audited(name, fn)

    async def method(node: Service, /, *args: Any, **kwargs: Any) -> Any:
        ok, value = await invoke(fn, signature, node, kwargs if kwargs else list(args))
        return Success(value) if ok else Error(**value)

    method.__name__ = method.__qualname__ = f"rpc_{name.replace('.', '_')}"
    # jsonrpcserver checks every call against inspect.signature(method), which is slow to
    # compute each time; the wrapper takes anything, so give it its signature once.
    method.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    return method


_IMPLEMENTATIONS: dict[str, Method] = {
    "cast": _cast,
    "call": call,
    "tasks.list": _tasks_list,
    "tasks.get": _tasks_get,
    "tasks.put": _tasks_put,
    "tasks.delete": _tasks_delete,
    "tasks.restart": _tasks_restart,
    "tasks.pause": _tasks_pause,
    "tasks.resume": _tasks_resume,
    "status": _status,
    "nodes": _nodes,
    "nodes.forget": _nodes_forget,
    "failures.list": _failures_list,
    "metrics": _metrics,
    "timers.list": _timers_list,
    "timers.get": _timers_get,
    "timers.put": _timers_put,
    "timers.delete": _timers_delete,
    "timers.ledger": _timers_ledger,
    "timers.run_now": _timers_run_now,
    "timers.pause": _timers_pause,
    "timers.resume": _timers_resume,
    "dead.list": _dead_list,
    "dead.replay": _dead_replay,
    "cancel": _cancel,
    "message.cancelled": _message_cancelled,
    "scheduled.list": _scheduled_list,
    "trace": _trace,
    "messages.list": _messages_list,
    "messages.get": _messages_get,
    "messages.bulk": _messages_bulk,
    "audit.list": _audit_list,
    "auth.whoami": _whoami,
}

# The method table, passed to jsonrpcserver as `methods=` (never its global registry).
METHODS: dict[str, Method] = {name: _method(name, fn) for name, fn in _IMPLEMENTATIONS.items()}
CAST = Signature("cast", _cast)
CALL = Signature("call", call)
