"""Who may use the console and the admin API: the admin token, one password, sessions, CSRF.

Every node has an admin token: a random secret it keeps in its data dir
(`admin-token`, mode 0600, made at first start), so whoever can read the data
dir may administer the node, and nobody else, even on loopback. A node may
also have a console password (`console_password_hash`; make one with
`yptask hash-password`). The admin methods of the JSON-RPC API (everything but
`cast` and `call`) and the console then answer only:

- a browser session: the cookie set at login (HttpOnly, SameSite=Strict,
  Secure where the browser keeps it: HTTPS or loopback) together with the
  session's CSRF token in the `X-CSRF-Token` header, which a page on another
  site cannot read, so it cannot forge a change. One logs in with the password,
  or with the admin token (the login URL a node prints at start,
  `/login?token=...`, as Jupyter does);
- the admin token as `Authorization: Bearer TOKEN` (the CLI reads it from the
  data dir), or the password or the token as `Authorization: Basic` (any user
  name), for scripts (`YPTASK_PASSWORD`).

A viewer (a token of `viewer_tokens`, or the viewer password
`viewer_password_hash`, whose console session is then a viewer's) may call the
read methods and no change (`Forbidden`, -32024); `auth.whoami` tells a caller
its role. A publisher token (`api_tokens`, one per application) grants `cast` and `call`
only; without publisher tokens, publishing is open to whoever reaches the node.
An allow-list of networks (`allow_from`) closes every surface to other addresses.

The rules themselves (allow-list, tokens, the password and its throttle) are
`yptask.access.policy.AccessPolicy`, which the BERT-RPC endpoint asks too; this
module reads them off HTTP requests and keeps the console's sessions.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from yptask.access.addresses import is_loopback
from yptask.access.policy import (
    ADMIN,
    PUBLISHING,
    VIEWER,
    AccessPolicy,
    Caller,
    Role,
    current_caller,
    current_publisher,
    forbidden,
    may,
)
from yptask.errors import Forbidden, Unauthorized

__all__ = ["CSRF_HEADER", "SESSION_COOKIE", "SESSION_TTL_S", "Guard", "RequestAccess",
           "is_loopback"]

SESSION_COOKIE = "yptask_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 1000  # past this, the oldest session is forgotten
# The publishing methods a viewer's credentials may not call: casts and calls from a
# read-only console are changes (message.cancelled, a read, stays open).
VIEWER_REFUSED = frozenset({"cast", "call"})


@dataclass
class _Session:
    csrf: str
    expires: float
    role: Role = ADMIN
    who: str = "console password"  # how it was opened (the audit log's `who`)


class Guard:
    """The node's access rules (`AccessPolicy`) as HTTP applies them: to console pages,
    sessions and the JSON-RPC methods."""

    def __init__(self, access: AccessPolicy, http_host: str) -> None:
        self.access = access
        self.loopback = is_loopback(http_host)
        self._sessions: dict[str, _Session] = {}

    async def may_publish(self, request: web.Request) -> bool:
        """cast and call: open, unless tokens are configured (then a token, or admin rights)."""
        current_publisher.set(None)  # a keep-alive connection's last request said nothing
        if self.access.publishing_open:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        app = self.access.application(token.strip()) if scheme.lower() == "bearer" else None
        if app is not None:
            current_publisher.set(app)  # what this request publishes is that application's
            return True
        return await self.may_administer(request)

    def console_refusal(self) -> str | None:
        """Why the console is off, or None if it is served."""
        if not self.access.has_password and not self.loopback:
            return ("the console is off: this node listens beyond loopback and has no "
                    "console password; set console_password_hash in its config "
                    "(make one with `yptask hash-password`)")
        return None

    async def login(self, secret: str, address: str) -> tuple[str, str] | None:
        """Check the password, the viewer password or a token; return a new session's
        (cookie token, CSRF token), or None. The session has the role the secret gives."""
        caller = await self.access.secret_caller(secret, address)
        if caller is None:
            return None
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        if len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        self._sessions[token] = _Session(csrf, time.time() + SESSION_TTL_S, caller.role,
                                         caller.who)
        return token, csrf

    def logout(self, request: web.Request) -> None:
        self._sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)

    def _session(self, request: web.Request) -> _Session | None:
        """The request's live session, or None."""
        token = request.cookies.get(SESSION_COOKIE)
        session = self._sessions.get(token) if token else None
        if session is None:
            return None
        if session.expires < time.time():
            del self._sessions[token]  # type: ignore[arg-type]
            return None
        return session

    def session_csrf(self, request: web.Request) -> str | None:
        """The CSRF token of the request's live session, or None."""
        session = self._session(request)
        return None if session is None else session.csrf

    def session_role(self, request: web.Request) -> Role | None:
        """The role of the request's live session, or None."""
        session = self._session(request)
        return None if session is None else session.role

    def may_see_console(self, request: web.Request) -> bool:
        return self.session_csrf(request) is not None

    async def caller(self, request: web.Request) -> Caller | None:
        """Who the request shows it is, for an admin method: a session with its CSRF
        token, an admin or viewer token, or a password as HTTP Basic; None: nobody."""
        address = request.remote or ""
        session = self._session(request)
        if session is not None and hmac.compare_digest(session.csrf,
                                                       request.headers.get(CSRF_HEADER, "")):
            return Caller(session.role, "session", session.who, address)
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return self.access.token_caller(value.strip(), address)
        if scheme != "basic":
            return None
        try:
            _, _, secret = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return await self.access.secret_caller(secret, address)

    async def may_administer(self, request: web.Request) -> bool:
        """Admin rights: a session with its CSRF token, the admin token, or the password."""
        caller = await self.caller(request)
        return caller is not None and caller.role == ADMIN

    async def may_read(self, request: web.Request) -> bool:
        """An admin read (the metrics): admin or viewer rights."""
        return await self.caller(request) is not None

    def blocked_for_s(self, address: str) -> float:
        """How long an address with too many failed logins must wait (0: it may try)."""
        return self.access.blocked_for_s(address)


class RequestAccess:
    """What one HTTP request may call, asked of the node's Guard at most once per kind.

    The caller it finds is set as `current_caller` for what the request runs (the
    audit log reads it)."""

    def __init__(self, guard: Guard, request: web.Request) -> None:
        self.guard = guard
        self.request = request
        self._publish: bool | None = None
        self._asked = False
        self._caller: Caller | None = None

    async def refusal(self, method: str) -> Unauthorized | None:
        """Why the request may not call `method` (Unauthorized, or Forbidden for a
        viewer's change), or None if it may."""
        if method in PUBLISHING:
            if method in VIEWER_REFUSED and await self._is_viewer():
                return Forbidden(forbidden(method))
            if self._publish is None:
                self._publish = await self.guard.may_publish(self.request)
            return None if self._publish else Unauthorized(self.why(method))
        caller = await self._who()
        if caller is None:
            return Unauthorized(self.why(method))
        return None if may(caller.role, method) else Forbidden(forbidden(method))

    async def _who(self) -> Caller | None:
        if not self._asked:
            self._asked = True
            self._caller = await self.guard.caller(self.request)
            current_caller.set(self._caller)
        return self._caller

    async def _is_viewer(self) -> bool:
        """Does the request show a viewer's credentials (asked only of one that shows any:
        the hot path of a cast carries none)?"""
        request = self.request
        if "Authorization" not in request.headers and SESSION_COOKIE not in request.cookies:
            return False
        caller = await self._who()
        return caller is not None and caller.role == VIEWER

    async def allows(self, method: str) -> bool:
        return await self.refusal(method) is None

    def why(self, method: str) -> str:
        wait_s = self.guard.blocked_for_s(self.request.remote or "")
        if wait_s > 0:
            return (f"{method} is refused: too many failed password checks from this "
                    f"address; wait {int(wait_s) + 1} s")
        if method in PUBLISHING:
            return (f"{method} needs a publisher token: send Authorization: Bearer TOKEN "
                    "(YPTASK_TOKEN for the CLI)")
        return (f"{method} needs the node's admin token or console password: send "
                "Authorization: Bearer ADMIN_TOKEN (the file admin-token in the node's data "
                "dir, which the CLI reads itself: --data-dir or YPTASK_DATA_DIR), or the "
                "console password as HTTP Basic auth (YPTASK_PASSWORD), or log in to the "
                "console")
