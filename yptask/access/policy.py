"""Who may do what on one node, whatever the transport: the rules both surfaces apply.

`AccessPolicy` owns the node's secrets as checks: the allow-list of networks
(`allow_from`), the publisher tokens (`api_tokens`, one per application; they
grant `cast`, `call` and `message.cancelled` only, and without any publishing is
open), the admin token (`yptask.access.secrets`) and the console password. The transports
parse their own credentials (HTTP headers and sessions in `yptask.web.auth`,
`{info, auth, [Token]}` in `yptask.endpoints.bert`) and ask it.

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
from typing import TYPE_CHECKING

from yptask.access.addresses import AllowList
from yptask.access.passwords import verify_password
from yptask.access.throttle import LoginThrottle

if TYPE_CHECKING:
    from yptask.config.node import NodeConfig

__all__ = ["MAX_PENDING_CHECKS", "PUBLISHING", "AccessPolicy", "current_publisher"]

MAX_PENDING_CHECKS = 4  # password checks that may wait for the checking thread
# what a publisher token grants; the rest is admin. message.cancelled: a handler's
# BaseTask.cancelled() asks it with the same rights as its casts.
PUBLISHING = frozenset({"cast", "call", "message.cancelled"})
# The application (a name in `api_tokens`) whose token the request being served showed,
# None without one (open publishing, the admin). Set where a transport reads the token;
# read by the publisher, which refuses it for a task that lists it in `refuse_tokens`.
current_publisher: ContextVar[str | None] = ContextVar("current_publisher", default=None)


class AccessPolicy:
    """The node's access rules, independent of transport."""

    def __init__(self, *, password_hash: str | None = None, admin_token: str | None = None,
                 tokens: Mapping[str, str] | None = None, allow_from: Sequence[str] = (),
                 throttle: LoginThrottle | None = None) -> None:
        self.password_hash = password_hash
        self.admin_token = admin_token
        self.tokens = dict(tokens or {})  # application -> its publisher API token
        self.allow_list = AllowList(allow_from)
        self.throttle = throttle or LoginThrottle()
        self._good_passwords: set[str] = set()  # digests of passwords already verified
        self._checker: ThreadPoolExecutor | None = None  # scrypt's own thread, made on need
        self._pending_checks = 0

    @classmethod
    def from_config(cls, config: NodeConfig, admin_token: str | None = None) -> AccessPolicy:
        """The rules a node's config sets; `admin_token`: the one in its data dir."""
        return cls(password_hash=config.console_password_hash, admin_token=admin_token,
                   tokens=config.api_tokens, allow_from=config.allow_from)

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

    def blocked_for_s(self, address: str) -> float:
        """How long an address with too many failed logins must wait (0: it may try)."""
        return self.throttle.blocked_for_s(address)

    async def secret_ok(self, secret: str, address: str) -> bool:
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
