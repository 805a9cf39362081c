"""The node's ports: taken or checked before any worker runs, so a port in use fails the start.

HTTP is bound at once (workers learn the node's URL when they start); the
BERT-RPC and link ports are only probed, and bound later by their endpoints.
An error names the option that sets the port and what to do.
"""

from __future__ import annotations

import socket

__all__ = ["bind_http", "check_free"]


def check_free(ports: list[tuple[str, str, int]]) -> None:
    """Raise OSError, naming the option, if one of (option, host, port) cannot be bound."""
    for option, host, port in ports:
        if port == 0:
            continue
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise _in_use(option, host, port, exc) from None


def bind_http(host: str, port: int) -> tuple[socket.socket, str]:
    """The listening HTTP socket and the node's URL on it."""
    try:
        listening = socket.create_server((host, port))
    except OSError as exc:
        raise _in_use("--http", host, port, exc) from None
    host, port = listening.getsockname()[:2]
    return listening, f"http://{host}:{port}"


def _in_use(option: str, host: str, port: int, exc: OSError) -> OSError:
    """The error of a port the node cannot listen on, naming the option that sets it."""
    return OSError(exc.errno, f"{option} {host}:{port} cannot be listened on: "
                              f"{exc.strerror or exc} (in use by another program?); give "
                              f"{option} another HOST:PORT, or 0 for any free port")
