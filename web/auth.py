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

A publisher token (`api_tokens`, one per application) grants `cast` and `call`
only; without publisher tokens, publishing is open to whoever reaches the node.
An allow-list of networks (`allow_from`) closes every surface to other addresses.

Passwords are hashed with scrypt (`yptask.access.passwords`), which costs about 40 ms
and 16 MiB a check on purpose: checks run one at a time on their own thread,
never on the executor the node uses for anything else, a few at most wait for
it, and an address with too many failures is refused without one
(`LoginThrottle`). Tokens are compared in constant time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiohttp import web

from yptask.access.addresses import is_loopback
from yptask.access.passwords import verify_password

__all__ = ["CSRF_HEADER", "SESSION_COOKIE", "SESSION_TTL_S", "Guard", "LoginThrottle",
           "is_loopback"]

SESSION_COOKIE = "yptask_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 1000  # past this, the oldest session is forgotten
MAX_PENDING_CHECKS = 4  # password checks that may wait for the checking thread


@dataclass
class _Session:
    csrf: str
    expires: float


@dataclass
class LoginThrottle:
    """Failed logins per address: past `max_failures` within `window_s`, an address is
    refused without a password check until its oldest failure leaves the window."""

    max_failures: int = 10
    window_s: float = 60.0
    max_addresses: int = 10_000  # the table is bounded too: the oldest address goes first
    _failures: dict[str, list[float]] = field(default_factory=dict)

    def blocked_for_s(self, address: str, now: float | None = None) -> float:
        """How long `address` must wait before its next try (0: it may try now)."""
        now = time.monotonic() if now is None else now
        recent = [t for t in self._failures.get(address, ()) if t > now - self.window_s]
        if recent:
            self._failures[address] = recent
        else:
            self._failures.pop(address, None)
        if len(recent) < self.max_failures:
            return 0.0
        return recent[0] + self.window_s - now

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if address not in self._failures and len(self._failures) >= self.max_addresses:
            del self._failures[next(iter(self._failures))]
        self._failures.setdefault(address, []).append(now)


class Guard:
    """The node's access rules, applied to console pages and admin methods."""

    def __init__(self, password_hash: str | None, http_host: str, *,
                 admin_token: str | None = None, tokens: Mapping[str, str] | None = None,
                 allow_from: Sequence[str] = (),
                 throttle: LoginThrottle | None = None) -> None:
        self.password_hash = password_hash
        self.admin_token = admin_token
        self.loopback = is_loopback(http_host)
        self.tokens = dict(tokens or {})  # application -> its publisher API token
        self.networks = [ipaddress.ip_network(net, strict=False) for net in allow_from]
        self.throttle = throttle or LoginThrottle()
        self._sessions: dict[str, _Session] = {}
        self._good_passwords: set[str] = set()  # digests of passwords already verified
        self._checker: ThreadPoolExecutor | None = None  # scrypt's own thread, made on need
        self._pending_checks = 0

    @property
    def required(self) -> bool:
        """Is there a console password (besides the admin token)?"""
        return self.password_hash is not None

    def address_allowed(self, remote: str | None) -> bool:
        """Is a peer at `remote` on the allow-list (when there is one)?"""
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(remote or "")
        except ValueError:
            return False
        return any(address in network for network in self.networks)

    def application(self, token: str) -> str | None:
        """The application a publisher token belongs to, or None."""
        for name, known in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return name
        return None

    def is_admin_token(self, token: str) -> bool:
        return self.admin_token is not None and hmac.compare_digest(
            self.admin_token.encode(), token.encode())

    async def may_publish(self, request: web.Request) -> bool:
        """cast and call: open, unless tokens are configured (then a token, or admin rights)."""
        if not self.tokens:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.application(token.strip()) is not None:
            return True
        return await self.may_administer(request)

    def console_refusal(self) -> str | None:
        """Why the console is off, or None if it is served."""
        if self.password_hash is None and not self.loopback:
            return ("the console is off: this node listens beyond loopback and has no "
                    "console password; set console_password_hash in its config "
                    "(make one with `yptask hash-password`)")
        return None

    async def login(self, secret: str, address: str) -> tuple[str, str] | None:
        """Check the password (or the admin token); return a new session's
        (cookie token, CSRF token), or None."""
        if not await self._secret_ok(secret, address):
            return None
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        if len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        self._sessions[token] = _Session(csrf, time.time() + SESSION_TTL_S)
        return token, csrf

    def logout(self, request: web.Request) -> None:
        self._sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)

    def session_csrf(self, request: web.Request) -> str | None:
        """The CSRF token of the request's live session, or None."""
        token = request.cookies.get(SESSION_COOKIE)
        session = self._sessions.get(token) if token else None
        if session is None:
            return None
        if session.expires < time.time():
            del self._sessions[token]  # type: ignore[arg-type]
            return None
        return session.csrf

    def may_see_console(self, request: web.Request) -> bool:
        return self.session_csrf(request) is not None

    async def may_administer(self, request: web.Request) -> bool:
        """A change or an admin read: a session with its CSRF token, the admin token,
        or the password."""
        csrf = self.session_csrf(request)
        if csrf is not None and hmac.compare_digest(csrf, request.headers.get(CSRF_HEADER, "")):
            return True
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return self.is_admin_token(value.strip())
        if scheme != "basic":
            return False
        try:
            _, _, secret = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return await self._secret_ok(secret, request.remote or "")

    def blocked_for_s(self, address: str) -> float:
        """How long an address with too many failed logins must wait (0: it may try)."""
        return self.throttle.blocked_for_s(address)

    async def _secret_ok(self, secret: str, address: str) -> bool:
        """Is `secret` the admin token or the password? Failures count against `address`."""
        if self.is_admin_token(secret):
            return True
        if self.password_hash is None or self.throttle.blocked_for_s(address) > 0:
            return False
        # a password that passed is remembered (as a digest), so its next use costs nothing
        key = hashlib.sha256(secret.encode()).hexdigest()
        if key in self._good_passwords:
            return True
        if await self._verify(secret):
            self._good_passwords.add(key)
            return True
        self.throttle.failed(address)
        return False

    async def _verify(self, password: str) -> bool:
        """scrypt, on its own thread, one at a time; False at once when too many wait."""
        assert self.password_hash is not None
        if self._pending_checks >= MAX_PENDING_CHECKS:
            return False
        if self._checker is None:
            self._checker = ThreadPoolExecutor(1, thread_name_prefix="password-check")
        self._pending_checks += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._checker, verify_password, password, self.password_hash)
        finally:
            self._pending_checks -= 1

    def close(self) -> None:
        if self._checker is not None:
            self._checker.shutdown(wait=False, cancel_futures=True)
