"""How many connections a node holds: its open-file limit, each surface's cap, the refusals.

A node raises its soft open-file limit to the hard one at start
(`raise_fd_limit`): under the usual soft limit of 1 024, a thousand idle
connections stop all service. Each surface (HTTP, BERT-RPC, link, Redis protocol)
then caps its connections (`ConnectionLimit`), below the limit by default
(`default_caps`), so that workers' pipes, the journal and the other surfaces
always find a descriptor. A connection past a cap is refused with a clear
answer, and the refusals are logged at most every `REPORT_EVERY_S` with their
count (`RefusalLog`), not once each: under attack, one line per refusal would
be an attack on the log.

At its cap a surface may first evict one of its connections instead of
refusing the new one: HTTP evicts the idlest keep-alive (clients expect a
server to close idle keep-alives, and open a new one). The others refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from yptask.config.node import NodeConfig

__all__ = ["Caps", "ConnectionLimit", "RefusalLog", "caps", "default_caps", "guarded",
           "raise_fd_limit"]

log = logging.getLogger(__name__)

REPORT_EVERY_S = 10.0
FD_RESERVE_MIN = 256  # descriptors kept for workers' pipes and logs, the journal, mDNS
FD_RESERVE_SHARE = 8  # ... or an eighth of the limit, if that is more
EVICT_SCAN = 16  # at the cap, how many of the least recently active connections to try
# Each surface's share of what is left, and its ceiling: a few thousand HTTP
# connections, fewer for BERT-RPC and Redis-protocol clients, a few hundred for peers.
_SHARES = {"http": (0.6, 4096), "bert": (0.2, 1024), "link": (0.05, 256),
           "redis": (0.1, 1024)}

C = TypeVar("C", bound=Hashable)
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class Caps:
    """The connection cap of each surface."""

    http: int
    bert: int
    link: int
    redis: int


def default_caps(fd_limit: int) -> Caps:
    """Each surface's cap under an open-file limit, leaving room for everything else."""
    room = max(fd_limit - max(FD_RESERVE_MIN, fd_limit // FD_RESERVE_SHARE), 3)
    return Caps(**{surface: max(1, min(ceiling, int(room * share)))
                   for surface, (share, ceiling) in _SHARES.items()})


def caps(config: NodeConfig) -> Caps:
    """A node's caps: its settings, and for each left at 0 the default under its fd limit."""
    default = default_caps(fd_limit())
    return Caps(http=config.max_http_connections or default.http,
                bert=config.max_bert_connections or default.bert,
                link=config.max_link_connections or default.link,
                redis=config.max_redis_connections or default.redis)


def fd_limit() -> int:
    """This process's soft open-file limit."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_fd_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the soft limit now.

    Never fails: a limit that cannot be raised is logged and kept.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:  # Linux refuses it for files: take the kernel's cap
        with contextlib.suppress(OSError, ValueError):
            target = int(Path("/proc/sys/fs/nr_open").read_text())
    if target in (resource.RLIM_INFINITY, soft):
        log.info("open files: soft limit %s (the hard limit)", soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError) as exc:
        log.warning("open files: cannot raise the soft limit from %s to %s (%s); the "
                    "connection caps are set under %s", soft, target, exc, soft)
        return soft
    log.info("open files: soft limit raised from %s to %s", soft, target)
    return target


class RefusalLog:
    """Logs a surface's refusals: the first at once, then their count every `every_s`."""

    def __init__(self, surface: str, setting: str, every_s: float = REPORT_EVERY_S) -> None:
        self.surface, self.setting, self.every_s = surface, setting, every_s
        self._pending = 0
        self._next = 0.0  # monotonic time of the next line allowed
        self._cap = 0
        self._flush: asyncio.TimerHandle | None = None

    def refused(self, cap: int) -> None:
        """Count one refused connection at `cap`; log if the last line is old enough."""
        self._pending += 1
        self._cap = cap
        now = time.monotonic()
        if now >= self._next:
            self._report(now)
        elif self._flush is None:  # the count so far is said when the window ends
            self._flush = asyncio.get_running_loop().call_later(self._next - now, self._late)

    def _late(self) -> None:
        self._flush = None
        if self._pending:
            self._report(time.monotonic())

    def _report(self, now: float) -> None:
        log.warning("%s: refused %d new connection(s) at the cap of %d open ones (setting "
                    "%s); this line repeats at most every %.0f s", self.surface,
                    self._pending, self._cap, self.setting, self.every_s)
        self._pending = 0
        self._next = now + self.every_s


class ConnectionLimit(Generic[C]):
    """The open connections of one surface, and its cap.

    `admit` a connection when it opens, `release` it when it closes, `touch` it
    when it is active (the least recently touched is the first one `evict` is
    asked to close at the cap; `evict(conn)` returns True if it did).
    """

    def __init__(self, surface: str, setting: str, cap: int, *,
                 evict: Callable[[C], bool] | None = None) -> None:
        self.surface, self.setting, self.cap = surface, setting, cap
        self._evict = evict
        self._open: OrderedDict[C, None] = OrderedDict()  # least recently active first
        self.refusals = RefusalLog(surface, setting)

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, conn: C) -> bool:
        """Take `conn` in if there is room (made by evicting one, if allowed); else count
        the refusal and return False."""
        if len(self._open) >= self.cap and not self._evicted_one():
            self.refusals.refused(self.cap)
            return False
        self._open[conn] = None
        return True

    def touch(self, conn: C) -> None:
        if conn in self._open:
            self._open.move_to_end(conn)

    def release(self, conn: C) -> None:
        self._open.pop(conn, None)

    def refusal(self) -> str:
        """What a refused client is told."""
        return (f"this node is at its cap of {self.cap} open {self.surface} connections "
                f"(setting {self.setting}); try again shortly")

    def _evicted_one(self) -> bool:
        if self._evict is None:
            return False
        for conn in list(itertools.islice(self._open, EVICT_SCAN)):
            if self._evict(conn):
                self.release(conn)
                return True
        return False


def guarded(limit: ConnectionLimit[asyncio.StreamWriter], handler: StreamHandler,
            refuse: Callable[[asyncio.StreamWriter, str], None]) -> StreamHandler:
    """A stream server's connection callback that keeps `limit`: `handler` serves a
    connection admitted; one past the cap gets `refuse(writer, why)`, then is closed.
    A connection counts until it is closed, even if `handler` returns before that
    (a link lives on in its own tasks)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not limit.admit(writer):
            refuse(writer, limit.refusal())
            writer.close()
            return
        try:
            await handler(reader, writer)
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        finally:
            limit.release(writer)
    return serve
