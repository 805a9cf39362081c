"""The publisher API: JSON-RPC 2.0 over `POST /rpc`, on jsonrpcserver 5 and aiohttp.

This module owns the `POST /rpc` endpoint of a node: reading and capping the
body, answering every request of a batch on its own (jsonrpcserver would
reject a whole batch for one bad element), asking each request's rights of the
Guard (`yptask.web.auth.RequestAccess`), and the bound on what a body's refusals
may cost. The wire format is `yptask.web.jsonrpc`, the method table
`yptask.web.methods`; the node behind is a `yptask.service.Service`, which
checks every field of a cast and a call.

The publishing methods are the hot path and are answered here directly: the
casts of a body go to the journal together, in one group commit, and a call
runs as it comes; for them jsonrpcserver's task per request and signature
binding cost more than all the rest of a cast. The administration methods go
through jsonrpcserver.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from aiohttp import web
from jsonrpcserver import async_dispatch_to_serializable

from yptask.access.policy import kind_of
from yptask.errors import (
    DecodeError,
    Forbidden,
    InvalidParams,
    NoSuchFunction,
    ProtocolError,
    YPTaskError,
)
from yptask.ingress import checks as ingress
from yptask.ingress.cast import CastRequest
from yptask.ingress.trace import check_traceparent
from yptask.service import Service
from yptask.web.auth import Guard, RequestAccess
from yptask.web.jsonrpc import (
    echoable_id,
    error_data,
    error_object,
    internal_error,
    parse,
    request_problem,
    response,
    serialize,
    settle_answer,
)
from yptask.web.methods import CALL, CAST, METHODS, call, invoke

__all__ = ["ANSWER_FACTOR", "ANSWER_SLACK_BYTES", "METHODS", "RPCEndpoint", "error_data",
           "request_problem"]

log = logging.getLogger(__name__)

# Amplification bound: the answers to the requests of a body that run nothing (invalid,
# unknown method, not allowed, params that do not fit a cast) come to at most this
# many times the body, plus the slack, or the body is refused as a whole before
# anything runs. Every other error answer is short (values are echoed cut short), so
# it stays within the bound too. Results of calls and admin methods are the handler's
# and may be any size: they are not bounded here.
ANSWER_FACTOR = 4
ANSWER_SLACK_BYTES = 4096


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
            return web.Response(status=413, text=response(error_object(too_big), None),
                                content_type="application/json")
        try:
            answer = await self.dispatch(
                body, None if self.guard is None else RequestAccess(self.guard, request),
                traceparent=header_traceparent(request.headers.get("traceparent")))
        except Exception as exc:
            answer = response(internal_error(exc, "request"), None)
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

    async def dispatch(self, body: bytes, access: RequestAccess | None = None, *,
                       traceparent: str | None = None) -> str | None:
        """Answer a request body with JSON text, or None when nothing is to be answered.

        `access` says what the request may call (None: anything); `traceparent` (the
        HTTP header's) is that of every cast and call of the body that brings none."""
        try:
            data = parse(body)
        except DecodeError as exc:
            return response(error_object(exc), None)
        if isinstance(data, list) and not data:
            empty = ProtocolError("Invalid request: an empty batch; send at least one request")
            return response(error_object(empty), None)
        try:
            answers = await self._answer(data if isinstance(data, list) else [data], access,
                                         ANSWER_FACTOR * len(body) + ANSWER_SLACK_BYTES,
                                         traceparent)
        except _TooManyErrors as exc:
            return response(error_object(exc), None)
        if not isinstance(data, list):
            return answers[0]
        parts = [answer for answer in answers if answer is not None]
        return f"[{','.join(parts)}]" if parts else None

    async def _answer(self, requests: list[Any], access: RequestAccess | None,
                      budget: int, traceparent: str | None = None) -> list[str | None]:
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
        forbidden_kept = False  # a viewer's refused change: the first of a body is audited
        for index, request in enumerate(requests):
            refused: YPTaskError | None = None
            problem = request_problem(request)
            if problem is not None:
                refused = ProtocolError(f"Invalid request: {problem}")
            elif (method := request["method"]) not in METHODS:
                refused = NoSuchFunction(f"Method not found: {ingress.shown(method)}; "
                                         "publishers use cast and call, docs/api.md lists "
                                         "every method")
            elif access is not None and (why := await access.refusal(method)) is not None:
                refused = why
                if isinstance(why, Forbidden) and kind_of(method) == "change" \
                        and not forbidden_kept:
                    forbidden_kept = True
                    await self.node.audited(method, _args_of(request.get("params")),
                                            "Forbidden")
            elif method == "cast":
                try:
                    casts.append((index, request, CAST.bind(request.get("params", []))))
                except InvalidParams as exc:
                    refused = exc
            else:
                (calls if method == "call" else runnable).append((index, request))
            if refused is None or (problem is None and "id" not in request):
                continue  # it runs, or it is a notification: no answer
            answer = response(error_object(refused), echoable_id(request))
            answers[index] = answer
            spent += len(answer)
            if spent > budget:
                raise _TooManyErrors(index, budget, refused)
        work = [part for part in (casts and self._casts(casts, answers, traceparent),
                                  *(self._call(index, request, answers, traceparent)
                                    for index, request in calls),
                                  runnable and self._library(runnable, answers)) if part]
        if len(work) == 1:
            await work[0]
        elif work:
            await asyncio.gather(*work)
        return answers

    async def _casts(self, casts: list[tuple[int, dict[str, Any], list[Any]]],
                     answers: list[str | None], traceparent: str | None = None) -> None:
        """Journal the casts of a body in one group commit; answer each in its place."""
        arguments = [CastRequest(*args) for _, _, args in casts]
        if traceparent is not None:  # the header's, for those that bring none
            arguments = [replace(cast, traceparent=traceparent) if cast.traceparent is None
                         else cast for cast in arguments]
        try:
            results = await self.node.cast_many(arguments)
        except YPTaskError as exc:  # the node refuses them all (it is stopping)
            results = [exc] * len(casts)
        except Exception as exc:
            failed = internal_error(exc, "cast")
            for index, request, _ in casts:
                settle_answer(answers, index, request, False, failed)
            return
        for (index, request, _), result in zip(casts, results, strict=True):
            if isinstance(result, YPTaskError):
                settle_answer(answers, index, request, False, error_object(result))
            else:
                settle_answer(answers, index, request, True, result)

    async def _call(self, index: int, request: dict[str, Any],
                    answers: list[str | None], traceparent: str | None = None) -> None:
        params = request.get("params", [])
        if traceparent is not None:
            params = _with_traceparent(params, traceparent)
        ok, value = await invoke(call, CALL, self.node, params)
        settle_answer(answers, index, request, ok, value)

    async def _library(self, runnable: list[tuple[int, dict[str, Any]]],
                       answers: list[str | None]) -> None:
        """Run requests through jsonrpcserver, which runs them concurrently."""
        try:
            responses = await async_dispatch_to_serializable(
                "", methods=METHODS, context=self.node,
                deserializer=lambda _text: [request for _, request in runnable],
                validator=_no_validation)
        except Exception as exc:
            failed = internal_error(exc, "batch" if len(runnable) > 1 else "request")
            responses = [{"jsonrpc": "2.0", "error": failed, "id": request["id"]}
                         for _, request in runnable if "id" in request]
        # jsonrpcserver answers in request order and leaves out the notifications.
        expecting = ((index, request) for index, request in runnable if "id" in request)
        for (index, request), answer in zip(expecting, responses or (), strict=True):
            answers[index] = serialize(answer, request["method"])


def _args_of(params: Any) -> list[Any]:
    """A request's params as the audit log reads a target off them (by position)."""
    if isinstance(params, dict):
        return [next((params[key] for key in ("definition", "name", "id") if key in params),
                     None)]
    return params if isinstance(params, list) else []


def header_traceparent(header: str | None) -> str | None:
    """The HTTP `traceparent` header, if it is a valid one. One that cannot be parsed is
    ignored, as W3C Trace Context asks: the casts and calls then start a trace of their own."""
    if header is None:
        return None
    try:
        check_traceparent(header)
    except InvalidParams:
        log.debug("ignored an invalid traceparent header: %r", header[:100])
        return None
    return header.strip()


def _with_traceparent(params: Any, traceparent: str) -> Any:
    """A call's params with the header's traceparent where they bring none of their own
    (params that do not fit are left as they are, for the binding to refuse)."""
    where = CALL.names.index("traceparent")
    if isinstance(params, dict):
        return params if params.get("traceparent") is not None else \
            {**params, "traceparent": traceparent}
    if isinstance(params, list) and CALL.required <= len(params) <= len(CALL.names):
        if len(params) > where and params[where] is not None:
            return params
        padded = [*params, *CALL.defaults[len(params):]]
        padded[where] = traceparent
        return padded
    return params


class _TooManyErrors(ProtocolError):
    """Raised when the answers to a body's invalid requests would be too big next to it."""

    def __init__(self, index: int, budget: int, first: YPTaskError) -> None:
        super().__init__(
            f"Invalid request: the answers to the invalid requests up to element {index} "
            f"of this batch come to over {budget} bytes ({ANSWER_FACTOR} x the body + "
            f"{ANSWER_SLACK_BYTES} bytes), so nothing in it was run; fix or drop them. "
            f"The last: {str(first)[:200]}")
