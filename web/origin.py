"""Which HTTP requests a node answers at all: its own names in `Host`, its own `Origin`.

A browser will send requests to the node from any page its user opens: a
cross-site `fetch(..., {mode: "no-cors"})` or a form post (CSRF), or a page of
a domain the attacker points at 127.0.0.1 (DNS rebinding). Every request is
therefore checked before it reaches a handler, the way Jupyter and the
Kubernetes dashboard do:

- `Host` must name the node: `localhost`, an address literal the node listens
  on (any literal when it listens on every address: a rebinding attack needs a
  name), the machine's host names, or a name in `http_allowed_hosts`. A page on
  attacker.example that resolves to 127.0.0.1 still sends
  `Host: attacker.example`, and is refused (403).
- `Origin`, when a browser sends one, must be the node's own (the origin of the
  `Host` the request names) or one in `http_allowed_origins`; `Origin: null`
  (sandboxed frames, some redirects) is refused. A browser that sends
  `Sec-Fetch-Site: cross-site` on anything but a GET is refused too.
- `POST /rpc` must say `Content-Type: application/json`: a browser sends that
  only after a CORS preflight, which the node never grants, so a page cannot
  post JSON-RPC in plain text (`text/plain`, a form's types) behind its back.

Requests from programs (the CLI, curl, publishers' HTTP clients) send no
`Origin` and name the node in `Host`, so they pass unchanged.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from yptask.access.addresses import address_literal
from yptask.errors import ProtocolError, Unauthorized, YPTaskError, wire_code, wire_name
from yptask.log_limit import LogLimiter

__all__ = ["Handler", "OriginCheck", "host_name"]

log = logging.getLogger(__name__)

JSON = "application/json"
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})
_SEEN_LIMIT = 256
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def host_name(authority: str) -> str:
    """The host of a `Host` header's value, lower case, without port or brackets."""
    authority = authority.strip().lower()
    if authority.startswith("["):  # [::1]:8700
        return authority[1:].partition("]")[0]
    if authority.count(":") == 1:
        return authority.partition(":")[0]
    return authority  # a bare name, or a bare IPv6 literal


class OriginCheck:
    """The node's Host, Origin and Content-Type rules, as an aiohttp middleware."""

    def __init__(self, bind_host: str, *, allowed_hosts: Iterable[str] = (),
                 allowed_origins: Iterable[str] = ()) -> None:
        self.any_address = bind_host in _WILDCARDS
        names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
        names.update(host_name(name) for name in allowed_hosts)
        if address_literal(bind_host) is None and bind_host not in _WILDCARDS:
            names.add(bind_host.lower())  # the node was bound by a name
        self.names = frozenset(names)
        self.bind_address = address_literal(bind_host)
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self._seen: dict[str, bool] = {}  # Host header -> allowed? (the same few, mostly)
        self._refusals = LogLimiter(log)

    def host_allowed(self, authority: str) -> bool:
        known = self._seen.get(authority)
        if known is None:
            if len(self._seen) >= _SEEN_LIMIT:  # strangers may send any number of names
                self._seen.clear()
            known = self._seen[authority] = self._host_allowed(authority)
        return known

    def _host_allowed(self, authority: str) -> bool:
        host = host_name(authority)
        if host in self.names:
            return True
        address = address_literal(host)
        if address is None:
            return False
        return self.any_address or address.is_loopback or address == self.bind_address

    def origin_allowed(self, origin: str, authority: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        scheme, sep, rest = origin.partition("://")
        return bool(sep) and scheme in ("http", "https") and rest == authority.strip().lower()

    def refusal(self, request: web.Request) -> str | None:
        """Why `request` is refused, or None."""
        authority = request.headers.get("Host")
        if authority is not None and not self.host_allowed(authority):
            return (f"the Host header {authority[:80]!r} is not a name of this node (a page "
                    "may be trying DNS rebinding); add the name to http_allowed_hosts if it "
                    "is yours")
        origin = request.headers.get("Origin")
        if origin is not None and not self.origin_allowed(origin, authority or ""):
            return (f"requests from the web page at {origin[:80]!r} are refused: only this "
                    "node's own console may call it from a browser (http_allowed_origins "
                    "lists others)")
        if (request.method not in ("GET", "HEAD")
                and request.headers.get("Sec-Fetch-Site") == "cross-site" and origin is None):
            return "a cross-site request is refused"
        return None

    def guard(self, handler: Handler, *, json_body: bool = False) -> Handler:
        """`handler`, answering only the requests these rules let through; `json_body`:
        a POST must also say Content-Type: application/json.

        Each route's handler is wrapped once, when the app is built: an aiohttp
        middleware would cost every request a layer more (about 10 us a call)."""
        async def checked(request: web.Request) -> web.StreamResponse:
            why = self.refusal(request)
            if why is not None:
                # a page may send thousands: the log gets a line every few seconds
                self._refusals.warning("refused HTTP %s %s from %s: %s", request.method,
                                       request.path[:80], request.remote, why)
                return _refuse(request, 403, Unauthorized(why))
            if json_body and request.method == "POST" and request.content_type != JSON:
                return _refuse(request, 415, ProtocolError(
                    f"Invalid request: JSON-RPC wants Content-Type: {JSON}, got "
                    f"{request.headers.get('Content-Type', 'none')[:60]!r}"))
            return await handler(request)

        return checked

def _refuse(request: web.Request, status: int, error: YPTaskError) -> web.Response:
    if request.path == "/rpc":  # publishers read JSON-RPC errors
        return web.json_response(
            {"jsonrpc": "2.0", "id": None, "error": {
                "code": wire_code(error).jsonrpc_code, "message": str(error),
                "data": {"error_class": wire_name(error)}}}, status=status)
    return web.Response(status=status, text=f"{error}\n")
