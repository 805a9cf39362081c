"""The node's aiohttp application: which URL is served by what.

- `POST /rpc`: the JSON-RPC API (`yptask.web.rpc`); admin methods pass `Guard`.
- `GET /`: the console, a page of its own scripts and styles (`web/console/`,
  no CDN), after `POST /login` (the password or the admin token) or
  `GET /login?token=ADMIN_TOKEN` (the URL a node prints at start); `POST /logout`;
  `GET /session` tells the page its node and CSRF token.
- `GET /healthz`.
- `GET /metrics`: the node's Prometheus metrics (`yptask.endpoints.prometheus`), to the
  same credentials as the admin methods, and never to a page of another site.

Every request passes the allow-list when there is one, then `OriginCheck`
(its Host and Origin must be the node's own, and JSON-RPC must come as
application/json: `yptask.web.origin`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from yptask.access.policy import AccessPolicy
from yptask.endpoints.prometheus import CONTENT_TYPE, render
from yptask.log_limit import LogLimiter
from yptask.service import Service
from yptask.web.auth import SESSION_COOKIE, SESSION_TTL_S, Guard, is_loopback
from yptask.web.origin import OriginCheck
from yptask.web.rpc import RPCEndpoint

__all__ = ["GUARD", "NODE", "make_app"]

log = logging.getLogger(__name__)

NODE = web.AppKey("node", Service)
GUARD = web.AppKey("guard", Guard)
METRICS = web.AppKey("metrics", CollectorRegistry)
# What strangers cause (refused addresses, failed logins) is logged a line every few seconds.
STRANGERS = web.AppKey("strangers", LogLimiter)
CONSOLE = Path(__file__).resolve().parent / "console"

# aiohttp's own size check answers with a plain-text 413; allowing a little more than
# the node's limit leaves the size error to the JSON-RPC handler, which answers in JSON.
_HEADROOM_BYTES = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store"}
_PAGE_HEADERS = {**_NO_STORE, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                 "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                            "frame-ancestors 'none'"}


def make_app(node: Service, admin_token: str | None = None,
             access: AccessPolicy | None = None,
             metrics: CollectorRegistry | None = None) -> web.Application:
    """Build the node's HTTP application; `app[NODE]` is the node, `app[GUARD]` its rules.

    `access`: the node's access rules, shared with its other surfaces; by default
    the ones its config sets, with `admin_token` (`yptask.access.secrets`) as the
    admin token (without one, only the console password administers it).
    `metrics`: the node's Prometheus registry, served at `GET /metrics` (none: no route)."""
    config = node.config
    if access is None:
        access = AccessPolicy.from_config(config, admin_token)
    guard = Guard(access, config.http_host)
    if guard.console_refusal():
        log.warning("%s", guard.console_refusal())
    if access.publishing_open and not is_loopback(config.http_host):
        log.warning("SECURITY: this node listens on %s with no publisher tokens: anyone who "
                    "reaches it may cast and call", config.http_host)
    origins = OriginCheck(config.http_host, allowed_hosts=config.http_allowed_hosts,
                          allowed_origins=config.http_allowed_origins)
    # The allow-list check is a middleware only where there is a list: one less layer
    # around every request otherwise. It comes first: a stranger learns nothing more.
    app = web.Application(client_max_size=config.max_body_bytes + _HEADROOM_BYTES,
                          middlewares=[_allow_list] if access.allow_list else [])
    app[NODE] = node
    app[GUARD] = guard
    app[STRANGERS] = LogLimiter(log)
    # Every route passes the Host and Origin rules (`yptask.web.origin`).
    add = app.router.add_route
    add("POST", "/rpc", origins.guard(RPCEndpoint(node, guard).handle, json_body=True))
    for method, path, handler in (("GET", "/healthz", _healthz), ("GET", "/", _console),
                                  ("GET", "/login", _login_page), ("POST", "/login", _login),
                                  ("POST", "/logout", _logout), ("GET", "/session", _session),
                                  ("GET", "/console/{name}", _asset)):
        add(method, path, origins.guard(handler))
    if metrics is not None:
        app[METRICS] = metrics
        add("GET", "/metrics", origins.guard(_metrics))
    return app


@web.middleware
async def _allow_list(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.app[GUARD].access.address_allowed(request.remote):
        request.app[STRANGERS].warning("refused HTTP from %s: not in allow_from",
                                       request.remote)
        return web.Response(status=403, text="this address may not use this node\n")
    response: web.StreamResponse = await handler(request)
    return response


# The console's scripts and styles, by name: nothing else under /console/ is served.
_ASSETS = {path.name: path for path in CONSOLE.iterdir() if path.suffix in (".js", ".css")}


async def _asset(request: web.Request) -> web.StreamResponse:
    path = _ASSETS.get(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"X-Content-Type-Options": "nosniff"})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"node": request.app[NODE].name, "ok": True})


# What a browser says of a request a page of another site (or a sibling site) made.
_FOREIGN_FETCH = frozenset({"cross-site", "same-site"})


async def _metrics(request: web.Request) -> web.Response:
    """The Prometheus scrape: the admin or a viewer's credentials (a scraper sends the admin
    token or a viewer token as `Authorization: Bearer`), and never a request a page of
    another site made: a cross-origin GET carries no Origin, but a browser says so in
    Sec-Fetch-Site."""
    if request.headers.get("Sec-Fetch-Site", "") in _FOREIGN_FETCH:
        request.app[STRANGERS].warning("refused HTTP GET /metrics from %s: a page of "
                                       "another site asked", request.remote)
        return web.Response(status=403, text="metrics are not served to other sites' pages\n",
                            headers=_NO_STORE)
    if not await request.app[GUARD].may_read(request):
        return web.Response(status=401, headers={**_NO_STORE,
                                                 "WWW-Authenticate": 'Bearer realm="yptask"'},
                            text="metrics need the node's admin token or a viewer token: "
                                 "send Authorization: Bearer TOKEN (the admin token is the "
                                 "file admin-token in its data dir), or a console password "
                                 "as HTTP Basic auth\n")
    try:
        body = render(request.app[METRICS])  # on the loop: it reads the pools' state
    except Exception:  # a figure that cannot be read must not fail the node's other routes
        log.exception("a metrics scrape failed")
        return web.Response(status=500, text="the metrics could not be read; see the node's "
                                             "log\n", headers=_NO_STORE)
    return web.Response(body=body, headers={**_NO_STORE, "Content-Type": CONTENT_TYPE})


def _refused(guard: Guard) -> web.Response | None:
    why = guard.console_refusal()
    return None if why is None else web.Response(status=403, text=why + "\n")


async def _console(request: web.Request) -> web.StreamResponse:
    guard = request.app[GUARD]
    refused = _refused(guard)
    if refused is not None:
        return refused
    if not guard.may_see_console(request):
        raise web.HTTPSeeOther("/login")
    return web.FileResponse(CONSOLE / "index.html", headers=_PAGE_HEADERS)


async def _login_page(request: web.Request) -> web.StreamResponse:
    """The login form; with `?token=ADMIN_TOKEN` (the URL the node prints), a session."""
    refused = _refused(request.app[GUARD])
    if refused is not None:
        return refused
    if "token" in request.query:
        return await _open_session(request, request.query["token"])
    return web.FileResponse(CONSOLE / "login.html", headers=_PAGE_HEADERS)


async def _login(request: web.Request) -> web.StreamResponse:
    refused = _refused(request.app[GUARD])
    if refused is not None:
        return refused
    form = await request.post()
    password = form.get("password")
    return await _open_session(request, password if isinstance(password, str) else "")


async def _open_session(request: web.Request, secret: str) -> web.StreamResponse:
    """Log in with the password or the admin token: a session cookie, then the console."""
    guard = request.app[GUARD]
    address = request.remote or ""
    wait_s = guard.blocked_for_s(address)
    if wait_s > 0:
        request.app[STRANGERS].warning("console: refused a login from %s: too many failures",
                                       address)
        raise web.HTTPSeeOther(f"/login?failed=1&wait={int(wait_s) + 1}")
    session = await guard.login(secret, address)
    if session is None:
        request.app[STRANGERS].warning("console: a failed login from %s", address)
        raise web.HTTPSeeOther("/login?failed=1")
    response = web.HTTPSeeOther("/")
    response.set_cookie(SESSION_COOKIE, session[0], max_age=SESSION_TTL_S, httponly=True,
                        samesite="Strict", path="/",
                        secure=request.secure or is_loopback(request.url.host or ""))
    raise response


async def _logout(request: web.Request) -> web.StreamResponse:
    request.app[GUARD].logout(request)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def _session(request: web.Request) -> web.Response:
    """What the console page needs: its node, and the CSRF token of its session."""
    guard = request.app[GUARD]
    if guard.console_refusal() or not guard.may_see_console(request):
        return web.json_response({"error": "log in first"}, status=401, headers=_NO_STORE)
    node = request.app[NODE]
    return web.json_response({"node": node.name, "csrf": guard.session_csrf(request) or "",
                              "role": guard.session_role(request), "login": True},
                             headers=_NO_STORE)
