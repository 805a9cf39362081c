"""Who may do what on one node, whatever the transport: the rules both surfaces apply.

`AccessPolicy` owns the node's secrets as checks: the allow-list of networks
(`allow_from`), the publisher tokens (`api_tokens`, one per application; they
grant `cast`, `call` and `message.cancelled` only, and without any publishing is
open), the admin token (`yptask.access.secrets`) and the console password, and
the read-only role's tokens and password (`viewer_tokens`, `viewer_password_hash`).
The transports parse their own credentials (HTTP headers and sessions in
`yptask.web.auth`, `{info, auth, [Token]}` in `yptask.endpoints.bert`) and ask it.

Every method of every surface is classified here once (`kind_of`): publishing,
read, or change. A viewer may call the reads; the admin anything. A method not
named in `READING` is a change, so one added and forgotten here is refused to
viewers rather than opened to them.

Passwords are hashed with scrypt (`yptask.access.passwords`), which costs about
40 ms and 16 MiB a check on purpose: checks run one at a time on their own
thread, never on the executor the node uses for anything else, a few at most
wait for it, and an address with too many failures is refused without one
(`LoginThrottle`). Tokens are compared in constant time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from yptask.access.addresses import AllowList
from yptask.access.passwords import verify_password
from yptask.access.throttle import LoginThrottle

if TYPE_CHECKING:
    from yptask.config.node import NodeConfig

__all__ = ["ADMIN", "MAX_PENDING_CHECKS", "PUBLISHING", "READING", "VIEWER", "AccessPolicy",
           "Caller", "Kind", "Role", "current_caller", "current_publisher", "forbidden",
           "kind_of", "may"]

MAX_PENDING_CHECKS = 4  # password checks that may wait for the checking thread
# what a publisher token grants; the rest is admin. message.cancelled: a handler's
# BaseTask.cancelled() asks it with the same rights as its casts.
PUBLISHING = frozenset({"cast", "call", "message.cancelled"})
# The application (a name in `api_tokens`) whose token the request being served showed,
# None without one (open publishing, the admin). Set where a transport reads the token;
# read by the publisher, which refuses it for a task that lists it in `refuse_tokens`.
current_publisher: ContextVar[str | None] = ContextVar("current_publisher", default=None)
# The read methods of every surface (JSON-RPC names; BERT-RPC's map onto them): all a
# viewer may call. Anything not here and not PUBLISHING is a change, for the admin only.
READING = frozenset({
    "status", "nodes", "tasks.list", "tasks.get", "timers.list", "timers.get",
    "failures.list", "dead.list", "metrics", "scheduled.list", "trace", "audit.list",
    "auth.whoami", "messages.list", "messages.get", "timers.ledger"})

Role = Literal["admin", "viewer"]
Kind = Literal["publish", "read", "change"]
ADMIN: Role = "admin"
VIEWER: Role = "viewer"


def kind_of(method: str) -> Kind:
    """What a method does: publish (cast, call), read, or change (the default)."""
    if method in PUBLISHING:
        return "publish"
    return "read" if method in READING else "change"


def may(role: Role, method: str) -> bool:
    """May a caller with admin rights of `role` call `method` (publishing aside)?"""
    return role == ADMIN or kind_of(method) == "read"


def forbidden(method: str) -> str:
    """Why a viewer's change is refused."""
    return (f"{method} is a change and this caller is a viewer (read-only: a viewer token "
            "or the viewer password); changes need the admin token or the console password")


@dataclass(frozen=True)
class Caller:
    """Who is making the request being served: their role, how they showed it (`via`:
    token, password or session), in words (`who`, for the audit log), and from where."""

    role: Role
    via: str
    who: str
    address: str = ""


# The caller of the request being served, set where a transport checks its credentials;
# read by the audit log. None: nobody showed admin or viewer rights.
current_caller: ContextVar[Caller | None] = ContextVar("current_caller", default=None)


class AccessPolicy:
    """The node's access rules, independent of transport."""

    def __init__(self, *, password_hash: str | None = None, admin_token: str | None = None,
                 tokens: Mapping[str, str] | None = None, allow_from: Sequence[str] = (),
                 throttle: LoginThrottle | None = None, viewer_tokens: Sequence[str] = (),
                 viewer_password_hash: str | None = None) -> None:
        self.password_hash = password_hash
        self.admin_token = admin_token
        self.viewer_tokens = tuple(viewer_tokens)
        self.viewer_password_hash = viewer_password_hash
        self.tokens = dict(tokens or {})  # application -> its publisher API token
        self.allow_list = AllowList(allow_from)
        self.throttle = throttle or LoginThrottle()
        self._good_passwords: dict[str, Role] = {}  # digests of passwords verified: role
        self._checker: ThreadPoolExecutor | None = None  # scrypt's own thread, made on need
        self._pending_checks = 0

    @classmethod
    def from_config(cls, config: NodeConfig, admin_token: str | None = None) -> AccessPolicy:
        """The rules a node's config sets; `admin_token`: the one in its data dir."""
        return cls(password_hash=config.console_password_hash, admin_token=admin_token,
                   tokens=config.api_tokens, allow_from=config.allow_from,
                   viewer_tokens=config.viewer_token_list(),
                   viewer_password_hash=config.viewer_password_hash)

    @property
    def has_password(self) -> bool:
        """Is there a console password (the admin's or the viewer's)?"""
        return self.password_hash is not None or self.viewer_password_hash is not None

    @property
    def publishing_open(self) -> bool:
        """May anyone who reaches the node cast and call (no publisher tokens)?"""
        return not self.tokens

    def address_allowed(self, remote: str | None) -> bool:
        """Is a peer at `remote` on the allow-list (when there is one)?"""
        return self.allow_list.allows(remote)

    def application(self, token: str) -> str | None:
        """The application a publisher token belongs to, or None."""
        for name, known in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return name
        return None

    def is_admin_token(self, token: str) -> bool:
        return self.admin_token is not None and hmac.compare_digest(
            self.admin_token.encode(), token.encode())

    def is_viewer_token(self, token: str) -> bool:
        return any(hmac.compare_digest(known.encode(), token.encode())
                   for known in self.viewer_tokens)

    def token_caller(self, token: str, address: str = "") -> Caller | None:
        """Who a bearer token makes its holder: the admin, a viewer, or nobody (None)."""
        if self.is_admin_token(token):
            return Caller(ADMIN, "token", "admin token", address)
        if self.is_viewer_token(token):
            return Caller(VIEWER, "token", "viewer token", address)
        return None

    def blocked_for_s(self, address: str) -> float:
        """How long an address with too many failed logins must wait (0: it may try)."""
        return self.throttle.blocked_for_s(address)

    async def secret_ok(self, secret: str, address: str) -> bool:
        """Is `secret` the admin token or the (admin's) password? Failures count against
        `address`."""
        caller = await self.secret_caller(secret, address)
        return caller is not None and caller.role == ADMIN

    async def secret_caller(self, secret: str, address: str) -> Caller | None:
        """Who `secret` makes its holder: a token (admin or viewer), the console password
        (admin) or the viewer password; None for none of them. Failures count against
        `address`."""
        caller = self.token_caller(secret, address)
        if caller is not None:
            return caller
        if not self.has_password or self.throttle.blocked_for_s(address) > 0:
            return None
        # a password that passed is remembered (as a digest), so its next use costs nothing
        key = hashlib.sha256(secret.encode()).hexdigest()
        role = self._good_passwords.get(key)
        if role is None:
            for candidate, encoded in ((ADMIN, self.password_hash),
                                       (VIEWER, self.viewer_password_hash)):
                if encoded is not None and await self._verify(secret, encoded):
                    role = self._good_passwords[key] = candidate
                    break
        if role is None:
            self.throttle.failed(address)
            return None
        return Caller(role, "password", "console password" if role == ADMIN
                      else "viewer password", address)

    async def _verify(self, password: str, encoded: str) -> bool:
        """scrypt, on its own thread, one at a time; False at once when too many wait."""
        if self._pending_checks >= MAX_PENDING_CHECKS:
            return False
        if self._checker is None:
            self._checker = ThreadPoolExecutor(1, thread_name_prefix="password-check")
        self._pending_checks += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._checker, verify_password, password, encoded)
        finally:
            self._pending_checks -= 1

    def close(self) -> None:
        if self._checker is not None:
            self._checker.shutdown(wait=False, cancel_futures=True)
