"""`FastCgiBackend`: a task's messages delivered to php-fpm (any FastCGI responder) as
requests to one script, one at a time, over one kept connection.

Each message is a POST to `script` whose body is the JSON of `{"name": ..., "payload":
..., "meta": {...}}`, the body the HTTP backend sends, so one PHP script can serve
both. The name and the meta are also CGI parameters (`$_SERVER` in PHP): YPTASK_NAME,
YPTASK_ID, YPTASK_ATTEMPT, YPTASK_PRIORITY, YPTASK_PUBLISHED_AT, YPTASK_DEADLINE,
YPTASK_TRACE_ID, YPTASK_PARENT_ID when the message has them (each meta key as
YPTASK_<KEY>), and HTTP_TRACEPARENT. A status under 300 is the handler's success: a
JSON body (Content-Type JSON) is decoded as its result, any other non-empty body is
returned as text, no body is None. A status of 300 or more, or a non-zero application
status, raises `HandlerError` with the status and the start of the body and stderr.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from typing import Any

from yptask.errors import ConfigError, EncodeError, FastCgiError, HandlerError
from yptask.workers.fastcgi import FastCgiConnection, FastCgiResponse

__all__ = ["ERROR_TEXT_BYTES", "MAX_PARAM_VALUE_CHARS", "FastCgiBackend"]

log = logging.getLogger(__name__)

ERROR_TEXT_BYTES = 4096  # of a failure's body, and of its stderr, kept in its error
MAX_PARAM_VALUE_CHARS = 1024  # a longer meta value is left out of the parameters (not the body)
_STDERR_LOG_CHARS = 1024  # of a success's stderr (PHP warnings), logged
_BACKTRACE_LINES = 50
_PARAM_KEY = re.compile(r"[^A-Za-z0-9]")


class FastCgiBackend:
    """Delivers messages to one FastCGI server and script; used by one thread at a time."""

    def __init__(self, address: str, script: str, *, connect_timeout_s: float = 5.0,
                 max_response_bytes: int = 16 * 1024 * 1024, keep_conn: bool = False) -> None:
        """Check `address` ('unix:/abs/path' or 'host:port') and `script` (an absolute
        path on the FastCGI server's side) now, raising ConfigError; connect later.

        `keep_conn`: as `FastCgiConnection`'s. Off by default, as in nginx: php-fpm gives a
        kept connection a child of its own until it closes (so a pool smaller than the
        task's workers starves some of them), and a child retiring at `pm.max_requests`
        drops a message written in the instant it closes, which would cost an attempt.
        A connection per message costs about 50 us more (a local socket)."""
        if not isinstance(script, str) or not posixpath.isabs(script) or "\0" in script \
                or script.endswith("/"):
            raise ConfigError(f"a FastCGI task's script must be an absolute file path "
                              f"('/srv/tasks/index.php'), not {script!r}")
        self.address = address
        self.script = script
        self._connection = FastCgiConnection(address, connect_timeout_s=connect_timeout_s,
                                             max_response_bytes=max_response_bytes,
                                             keep_conn=keep_conn)
        folder, file_name = posixpath.split(script)
        self._fixed = {
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": "yptask",
            "REQUEST_METHOD": "POST",
            "SCRIPT_FILENAME": script,
            "SCRIPT_NAME": "/" + file_name,
            "REQUEST_URI": "/" + file_name,
            "DOCUMENT_URI": "/" + file_name,
            "DOCUMENT_ROOT": folder or "/",
            "QUERY_STRING": "",
            "CONTENT_TYPE": "application/json",
            "HTTP_ACCEPT": "application/json",
        }

    def handle(self, name: str, payload: Any, meta: dict[str, Any], timeout_s: float) -> Any:
        """Deliver one message; return the result (None if the answer has no body).

        Raise HandlerError (a failure answer: a Status of 300 or more, or an app status
        != 0, with the status and the first ~4 KiB of body and stderr in the message; or
        a broken answer), CallTimeout (no answer in time), WorkerUnreachable (could not
        connect / nothing was sent), or EncodeError (the message has no JSON: not sent)."""
        try:
            body = json.dumps({"name": name, "payload": payload, "meta": meta},
                              allow_nan=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:  # a call's payload from BERT: bytes, a tuple key
            raise EncodeError(f"the message cannot be sent as JSON: {exc}") from None
        params = self.params(name, meta, len(body))
        try:
            response = self._connection.request(params, body, timeout_s)
        except FastCgiError as exc:  # after the request may have been read: an attempt spent
            raise HandlerError("FastCgiError", str(exc)) from None
        if response.status >= 300 or response.app_status != 0:
            raise self._failure(response)
        if response.stderr:
            log.warning("FastCGI script %s wrote to stderr for message %s: %s", self.script,
                        meta.get("id"), _text(response.stderr, _STDERR_LOG_CHARS))
        return self._result(response)

    def close(self) -> None:
        """Close the connection (the next message opens a new one). Never raises."""
        self._connection.close()

    def params(self, name: str, meta: dict[str, Any], content_length: int) -> dict[str, str]:
        """The CGI parameters of one message: the fixed ones, its name and its meta."""
        params = {**self._fixed, "CONTENT_LENGTH": str(content_length), "YPTASK_NAME": name}
        for key, value in meta.items():
            text = _param_text(value)
            if text is None or len(text) > MAX_PARAM_VALUE_CHARS:
                continue  # still in the body's meta
            params["YPTASK_" + _PARAM_KEY.sub("_", str(key)).upper()] = text
        traceparent = meta.get("traceparent")
        if isinstance(traceparent, str) and len(traceparent) <= MAX_PARAM_VALUE_CHARS:
            params["HTTP_TRACEPARENT"] = traceparent
        return params

    def _failure(self, response: FastCgiResponse) -> HandlerError:
        detail = f"status {response.status}"
        if response.app_status:
            detail += f", app status {response.app_status}"
        detail += f" from {self.script} at {self.address}"
        if response.body:
            detail += f": {_text(response.body, ERROR_TEXT_BYTES)}"
        if response.stderr:
            detail += f"; stderr: {_text(response.stderr, ERROR_TEXT_BYTES)}"
        stderr_lines = _text(response.stderr, ERROR_TEXT_BYTES).splitlines()
        return HandlerError("HTTPError", detail, stderr_lines[:_BACKTRACE_LINES])

    def _result(self, response: FastCgiResponse) -> Any:
        if not response.body:
            return None
        if not _is_json(response.header("Content-Type") or ""):
            return response.body.decode("utf-8", "replace")
        try:
            return json.loads(response.body)
        except ValueError as exc:  # UnicodeDecodeError included
            raise HandlerError("FastCgiError", f"{self.script} answered {response.status} "
                               f"with a JSON Content-Type but a body that is not JSON: "
                               f"{exc}") from None


def _param_text(value: Any) -> str | None:
    """A meta value as a parameter's text: bools as 1 or 0, None left out."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (str, int, float)):
        return str(value)
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


def _text(data: bytes, limit: int) -> str:
    """The start of `data` as text, cut at `limit` bytes (marked when cut)."""
    text = data[:limit].decode("utf-8", "replace").strip()
    return text + " [...]" if len(data) > limit else text


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")
