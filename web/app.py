"""The node's aiohttp application: which URL is served by what.

- `POST /rpc`: the JSON-RPC API (`yptask.web.rpc`); admin methods pass `Guard`.
- `GET /`: the console, a page of its own scripts and styles (`web/console/`,
  no CDN), after `GET|POST /login`; `POST /logout`; `GET /session` tells the
  page its node and CSRF token.
- `GET /healthz`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from yptask.web.auth import SESSION_COOKIE, SESSION_TTL_S, Guard, is_loopback
from yptask.web.rpc import PublisherNode, RPCEndpoint

__all__ = ["GUARD", "NODE", "make_app"]

log = logging.getLogger(__name__)

NODE = web.AppKey("node", PublisherNode)
GUARD = web.AppKey("guard", Guard)
CONSOLE = Path(__file__).resolve().parent / "console"

# aiohttp's own size check answers with a plain-text 413; allowing a little more than
# the node's limit leaves the size error to the JSON-RPC handler, which answers in JSON.
_HEADROOM_BYTES = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store"}
_PAGE_HEADERS = {**_NO_STORE, "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
                 "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                            "frame-ancestors 'none'"}


def make_app(node: PublisherNode) -> web.Application:
    """Build the node's HTTP application; `app[NODE]` is the node, `app[GUARD]` its rules."""
    config = node.config
    guard = Guard(config.console_password_hash, config.http_host, tokens=config.api_tokens,
                  allow_from=config.allow_from)
    if guard.console_refusal():
        log.warning("%s", guard.console_refusal())
    if not (guard.required or guard.tokens) and not is_loopback(config.http_host):
        log.warning("SECURITY: this node listens on %s with no auth at all (no console "
                    "password, no API tokens): anyone who reaches it may edit its tasks, and "
                    "task commands run anything on every node", config.http_host)
    # The allow-list check is a middleware only where there is a list: one less layer
    # around every request otherwise.
    app = web.Application(client_max_size=config.max_body_bytes + _HEADROOM_BYTES,
                          middlewares=[_allow_list] if guard.networks else [])
    app[NODE] = node
    app[GUARD] = guard
    app.router.add_post("/rpc", RPCEndpoint(node, guard).handle)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/", _console)
    app.router.add_get("/login", _login_page)
    app.router.add_post("/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_get("/session", _session)
    app.router.add_static("/console/", CONSOLE, append_version=True)
    return app


@web.middleware
async def _allow_list(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.app[GUARD].address_allowed(request.remote):
        log.warning("refused HTTP from %s: not in allow_from", request.remote)
        return web.Response(status=403, text="this address may not use this node\n")
    response: web.StreamResponse = await handler(request)
    return response


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"node": request.app[NODE].name, "ok": True})


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
    refused = _refused(request.app[GUARD])
    if refused is not None:
        return refused
    if not request.app[GUARD].required:
        raise web.HTTPSeeOther("/")
    return web.FileResponse(CONSOLE / "login.html", headers=_PAGE_HEADERS)


async def _login(request: web.Request) -> web.StreamResponse:
    guard = request.app[GUARD]
    refused = _refused(guard)
    if refused is not None:
        return refused
    form = await request.post()
    password = form.get("password")
    session = await guard.login(password) if isinstance(password, str) else None
    if session is None:
        log.warning("console: a failed login from %s", request.remote)
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
                              "login": guard.required}, headers=_NO_STORE)
