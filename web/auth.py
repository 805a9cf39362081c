"""Who may use the console and the admin API: one password, sessions, CSRF tokens.

A node with `console_password_hash` set (make one with `yptask hash-password`)
asks for the password before the console, and the admin methods of the
JSON-RPC API (everything but `cast` and `call`) answer only:

- a browser session: the cookie set at login (HttpOnly, SameSite=Strict,
  Secure where the browser keeps it: HTTPS or loopback) together with the
  session's CSRF token in the `X-CSRF-Token` header, which a page on another
  site cannot read, so it cannot forge a change; or
- the password itself, `Authorization: Basic` (any user name): for the CLI
  and scripts (`YPTASK_PASSWORD`).

Without a password hash, everyone who reaches the node may use the admin API
(a node bound beyond loopback says so loudly at start), and the console is
served only on loopback: a node bound elsewhere refuses it, saying why.
Passwords are hashed with scrypt (`yptask.passwords`), compared in constant time.

Publishers may be given tokens, one per application (`api_tokens`): then
`cast` and `call` need `Authorization: Bearer TOKEN` (or, over BERT-RPC, an
`{info, auth, [Token]}` packet first on the connection), and with no console
password the admin methods need a token too. An allow-list of networks
(`allow_from`) closes every surface to other addresses.
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
from dataclasses import dataclass

from aiohttp import web

from yptask.passwords import verify_password

__all__ = ["CSRF_HEADER", "SESSION_COOKIE", "SESSION_TTL_S", "Guard", "is_loopback"]

SESSION_COOKIE = "yptask_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Session:
    csrf: str
    expires: float


class Guard:
    """The node's access rules, applied to console pages and admin methods."""

    def __init__(self, password_hash: str | None, http_host: str, *,
                 tokens: Mapping[str, str] | None = None,
                 allow_from: Sequence[str] = ()) -> None:
        self.password_hash = password_hash
        self.loopback = is_loopback(http_host)
        self.tokens = dict(tokens or {})  # application -> its publisher API token
        self.networks = [ipaddress.ip_network(net, strict=False) for net in allow_from]
        self._sessions: dict[str, _Session] = {}
        self._good_passwords: set[str] = set()  # digests of passwords already verified

    @property
    def required(self) -> bool:
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

    async def may_publish(self, request: web.Request) -> bool:
        """cast and call: open, unless tokens are configured (then a token, or admin rights)."""
        if not self.tokens:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.application(token.strip()) is not None:
            return True
        return self.required and await self.may_administer(request)

    def console_refusal(self) -> str | None:
        """Why the console is off, or None if it is served."""
        if self.password_hash is None and not self.loopback:
            return ("the console is off: this node listens beyond loopback and has no "
                    "console password; set console_password_hash in its config "
                    "(make one with `yptask hash-password`)")
        return None

    async def login(self, password: str) -> tuple[str, str] | None:
        """Check the password; return a new session's (cookie token, CSRF token)."""
        if self.password_hash is None or not await self._password_ok(password):
            return None
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
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
        return not self.required or self.session_csrf(request) is not None

    async def may_administer(self, request: web.Request) -> bool:
        """A change or an admin read: a session with its CSRF token, or the password.

        Without a console password, a publisher token when tokens are configured,
        else anyone (a node beyond loopback with no auth at all warns at start)."""
        if not self.required:
            return not self.tokens or await self.may_publish(request)
        csrf = self.session_csrf(request)
        if csrf is not None and hmac.compare_digest(csrf, request.headers.get(CSRF_HEADER, "")):
            return True
        return await self._basic_ok(request.headers.get("Authorization", ""))

    async def _basic_ok(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            _, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return await self._password_ok(password)

    async def _password_ok(self, password: str) -> bool:
        assert self.password_hash is not None
        # scrypt is slow on purpose: off the event loop, and a password that passed is
        # remembered (as a digest)
        key = hashlib.sha256(password.encode()).hexdigest()
        if key in self._good_passwords:
            return True
        if await asyncio.to_thread(verify_password, password, self.password_hash):
            self._good_passwords.add(key)
            return True
        return False
