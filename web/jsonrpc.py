"""JSON-RPC 2.0 messages: a body parsed, a request object checked, answers written.

This module owns the JSON-RPC wire format of the publisher API (`yptask.web.rpc`
serves it): parsing a body strictly (UTF-8, no NaN or Infinity, bounded
nesting), `request_problem()` (the rules of a request object, checked by hand:
jsonrpcserver's jsonschema validation was two thirds of the cost per request),
the ids an answer may echo, and turning an exception into a JSON-RPC error
object through the one table in `yptask.errors`. Results are serialised here,
so a result that is not JSON becomes a -32603 error and never an HTTP 500.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from typing import Any

from yptask.errors import DecodeError, HandlerError, JournalError, wire_code, wire_name
from yptask.ingress import checks as ingress

__all__ = ["echoable_id", "error_data", "error_object", "internal_error", "parse",
           "request_problem", "response", "serialize", "settle_answer"]

log = logging.getLogger(__name__)

_REQUEST_MEMBERS = frozenset({"jsonrpc", "method", "params", "id"})


def error_data(exc: BaseException) -> dict[str, Any]:
    """The `data` object of a JSON-RPC error answering a yptask error."""
    if isinstance(exc, HandlerError):
        return {"error_class": str(exc.error_class), "detail": str(exc.detail),
                "backtrace": [str(line) for line in exc.backtrace]}
    if isinstance(exc, JournalError):
        return {"error_class": "JournalError", "reference": exc.reference}
    return {"error_class": wire_name(exc)}


def error_object(exc: BaseException, message: str | None = None,
                 data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-RPC error object for `exc`, coded by the table in `yptask.errors`."""
    return {"code": wire_code(exc).jsonrpc_code,
            "message": str(exc) if message is None else message,
            "data": error_data(exc) if data is None else data}


def internal_error(exc: BaseException, what: str) -> dict[str, Any]:
    """Log an unexpected exception; return an error object that leaks none of it."""
    reference = uuid.uuid4().hex[:12]
    log.exception("JSON-RPC %s failed unexpectedly (reference %s)", what, reference)
    return error_object(exc, f"Internal error: the node failed unexpectedly; its log has the "
                             f"details under reference {reference}",
                        {"error_class": "InternalError", "reference": reference})


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


def echoable_id(request: Any) -> Any:
    """The id an answer to `request` carries: its own if it has a valid one, else null."""
    request_id = request.get("id") if isinstance(request, dict) else None
    return request_id if _valid_id(request_id) else None


def response(error: dict[str, Any], request_id: Any) -> str:
    """The JSON text of an error answer."""
    return json.dumps({"jsonrpc": "2.0", "error": error, "id": request_id}, allow_nan=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse(body: bytes) -> Any:
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


def settle_answer(answers: list[str | None], index: int, request: dict[str, Any], ok: bool,
                  value: Any) -> None:
    """Put the JSON text answering `request` at `index`; a notification gets none."""
    if "id" not in request:
        return
    answer = ({"jsonrpc": "2.0", "result": value, "id": request["id"]} if ok
              else {"jsonrpc": "2.0", "error": value, "id": request["id"]})
    answers[index] = serialize(answer, request["method"])


def serialize(answer: Any, method: str) -> str:
    """JSON text of one response; a result that is not JSON becomes a -32603 error."""
    try:
        return json.dumps(answer, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        log.warning("JSON-RPC method %s returned a result that is not JSON: %s", method, exc)
        unsendable = error_object(
            exc, f"Internal error: the result of {method} cannot be sent as JSON ({exc})",
            {"error_class": "InternalError"})
        return response(unsendable, echoable_id(answer))
