"""`HttpBackend`: a task's messages POSTed as JSON to its HTTP endpoint, one at a time.

One keep-alive connection per remote worker actor (the standard library's
`http.client`, blocking, in the actor's thread). Each message is one POST of
`{"name": ..., "payload": ..., "meta": {...}}` with `Content-Type:
application/json`, a `traceparent` header when the message has a trace, and
the task's own `headers`. A 2xx answer is the handler's success, and a JSON
body (Content-Type JSON) is its result; any other status (a redirect too: none
is followed) is a `HandlerError` carrying the status and the first bytes of
the body. An answer is read up to MAX_ANSWER_BYTES, no more. The connection is
dropped after any error and made afresh for the next message.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from yptask.errors import CallTimeout, EncodeError, HandlerError, WorkerUnreachable

__all__ = ["ERROR_BODY_BYTES", "MAX_ANSWER_BYTES", "HttpBackend"]

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 16 * 1024 * 1024  # an answer's body beyond this fails the attempt
ERROR_BODY_BYTES = 4096  # of a failure's body, kept in its error
CONNECT_TIMEOUT_S = 10.0  # at most (and at most the message's own timeout)
_CHUNK = 64 * 1024
# A reused connection the server had closed (its keep-alive ran out) fails like this
# before any answer: the message is sent again once, on a fresh connection.
_STALE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError,
          http.client.RemoteDisconnected)


class _Stale(Exception):
    """A reused connection was found closed before any answer."""


class HttpBackend:
    """Delivers messages to one HTTP endpoint over one keep-alive connection."""

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None) -> None:
        self.url = url
        parts = urllib.parse.urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._headers = dict(headers or {})
        self._conn: http.client.HTTPConnection | None = None

    def handle(self, name: str, payload: Any, meta: dict[str, Any], timeout_s: float) -> Any:
        """POST one message and return its result; raise as `RemoteBackend.handle` says."""
        try:
            body = json.dumps({"name": name, "payload": payload, "meta": meta},
                              allow_nan=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:  # a call's payload from BERT: bytes, a tuple key
            raise EncodeError(f"the message cannot be sent as JSON: {exc}") from None
        headers = {**self._headers, "Content-Type": "application/json"}
        if not any(key.lower() == "accept" for key in self._headers):  # the task's wins
            headers["Accept"] = "application/json"
        if isinstance(meta.get("traceparent"), str):
            headers["traceparent"] = meta["traceparent"]
        deadline = time.monotonic() + timeout_s
        try:
            try:
                return self._exchange(body, headers, deadline)
            except _Stale:
                self.close()  # the server closed it while idle: once more, afresh
                return self._exchange(body, headers, deadline)
        except BaseException:
            self.close()  # whatever state it is in, the next message gets a new one
            raise

    def _exchange(self, body: bytes, headers: dict[str, str], deadline: float) -> Any:
        reused = self._conn is not None and self._conn.sock is not None
        conn = self._connected(deadline)
        sock = conn.sock  # the response keeps reading from it after a "Connection: close"
        try:
            sock.settimeout(_remaining(deadline))
            conn.request("POST", self._target, body, headers)
            response = conn.getresponse()
            status, reason = response.status, response.reason
            data = self._read(sock, response, deadline)
        except TimeoutError:
            raise CallTimeout(f"no answer from {self.url} in time") from None
        except _STALE as exc:
            if reused:
                raise _Stale from exc
            raise HandlerError("HTTPError", f"{self.url} closed the connection without an "
                               f"answer: {type(exc).__name__}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise HandlerError("HTTPError", f"{self.url}: the answer broke off: "
                               f"{type(exc).__name__}: {exc}") from None
        if not 200 <= status < 300:
            text = data[:ERROR_BODY_BYTES].decode("utf-8", "replace")
            raise HandlerError("HTTPError", f"HTTP {status} {reason} from {self.url}"
                               + (f": {text}" if text else ""))
        content_type = response.getheader("Content-Type", "") or ""
        if not data:
            return None
        if not _is_json(content_type):  # text, as a FastCGI script's answer is read
            return data.decode("utf-8", "replace")
        try:
            return json.loads(data)
        except ValueError as exc:  # UnicodeDecodeError included
            raise HandlerError("HTTPError", f"{self.url} answered {status} with a body that "
                               f"is not JSON: {exc}") from None

    def _connected(self, deadline: float) -> http.client.HTTPConnection:
        """The open connection, or a new one; WorkerUnreachable if none can be made."""
        if self._conn is not None and self._conn.sock is not None:
            return self._conn
        timeout = min(CONNECT_TIMEOUT_S, _remaining(deadline))
        conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
            if self._https else http.client.HTTPConnection(self._host, self._port,
                                                           timeout=timeout))
        try:
            conn.connect()
        except (OSError, http.client.HTTPException) as exc:  # refused, no route, TLS, DNS
            conn.close()
            raise WorkerUnreachable(f"cannot connect to {self.url}: {exc}") from None
        self._conn = conn
        return conn

    def _read(self, sock: socket.socket, response: http.client.HTTPResponse,
              deadline: float) -> bytes:
        """The body, up to MAX_ANSWER_BYTES (a longer one fails the attempt)."""
        length = response.length  # None: chunked, or until the server closes
        if length is not None and length > MAX_ANSWER_BYTES:
            raise HandlerError("HTTPError", f"{self.url} answered {response.status} with a "
                               f"body of {length} bytes, over the {MAX_ANSWER_BYTES}-byte "
                               "limit")
        chunks: list[bytes] = []
        size = 0
        while True:
            sock.settimeout(_remaining(deadline))
            chunk = response.read(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise HandlerError("HTTPError", f"{self.url} answered {response.status} with "
                                   f"a body over the {MAX_ANSWER_BYTES}-byte limit")
            chunks.append(chunk)

    def close(self) -> None:
        """Close the connection (the next message opens a new one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _remaining(deadline: float) -> float:
    """Seconds left until `deadline`; a passed one is a timeout now."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise CallTimeout("the message's timeout passed")
    return left


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")
