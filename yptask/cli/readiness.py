"""Telling a service manager how a node is doing: systemd's sd_notify protocol.

Under a unit with `Type=notify`, systemd names a datagram socket in
`$NOTIFY_SOCKET`; `yptask node` sends `READY=1` there once it serves (its
endpoints listen, its workers run), `STOPPING=1` when it starts to drain, and
`STATUS=...` lines that `systemctl status` shows. Without `$NOTIFY_SOCKET`
nothing is sent. A message that cannot be sent is logged and the node goes on:
being told about a node must never be what stops it.

The protocol is one datagram of `KEY=VALUE` lines per message, sent to an
AF_UNIX socket named by a path or, with a leading '@', in the abstract
namespace. That is a few lines, so they are written here rather than taken
from a package: the `sdnotify` package says nothing when a send fails, and a
failure here is to be logged.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

__all__ = ["NOTIFY_SOCKET", "Readiness"]

log = logging.getLogger(__name__)

NOTIFY_SOCKET = "NOTIFY_SOCKET"


class Readiness:
    """The node's messages to its service manager; each a no-op without a socket."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address  # what `sendto` takes; None: nobody to tell

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> Readiness:
        """Read `$NOTIFY_SOCKET` and remove it from the environment, so the node's workers
        (which inherit it) cannot speak for the node, as sd_notify's `unset_environment`."""
        env = os.environ if environ is None else environ
        value = env.pop(NOTIFY_SOCKET, "")
        if not value:
            return cls(None)
        if value.startswith("@"):  # the abstract namespace: a leading NUL byte
            return cls(b"\0" + value[1:].encode())
        if value.startswith("/"):
            return cls(value)
        log.warning("%s=%r is neither a path nor an abstract socket name (@NAME); "
                    "the service manager will not hear that the node is ready", NOTIFY_SOCKET,
                    value)
        return cls(None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def ready(self, status: str) -> bool:
        """The node serves: its endpoints listen and its workers run."""
        return self.send(READY="1", STATUS=status)

    def stopping(self, status: str) -> bool:
        """The node has begun to drain and stop."""
        return self.send(STOPPING="1", STATUS=status)

    def status(self, status: str) -> bool:
        """A line for `systemctl status`."""
        return self.send(STATUS=status)

    def send(self, **fields: str) -> bool:
        """Send one message of `KEY=VALUE` lines; whether it went. Never raises."""
        if self.address is None:
            return False
        # A value is one line: a newline would start another field.
        datagram = "".join(f"{key}={' '.join(value.splitlines())}\n"
                           for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never wait on a full queue: the node must not stall on its manager.
                sock.sendto(datagram, socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            log.warning("could not tell the service manager %s: %s",
                        ", ".join(f"{k}={v}" for k, v in fields.items() if k != "STATUS")
                        or "the status", exc)
            return False
        return True
