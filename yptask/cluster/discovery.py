"""Discovery: finding the other nodes of this cluster over mDNS (python-zeroconf).

Each node registers one `_yptask._tcp.local.` service (the type is a setting, so
test runs can use their own) whose TXT says cluster, node, boot id, ports and
version: small facts only, since a TXT entry holds 255 bytes. It browses the
same type and reports every peer of its own cluster it resolves. Discovery is
a hint: the node then dials the peer's link port, where the cookie decides.

mDNS speaks only on the interfaces given (by default the node's link address,
127.0.0.1), so a default node never multicasts onto a real network. zeroconf
receives multicast on one socket bound to 0.0.0.0:5353 whatever interfaces it
is given, so that socket would also take (and answer) unicast queries sent to
any address of the machine, and multicast that another program joined on
other interfaces. On Linux, `_listen_only_to_joined_groups` gives it a socket
filter that keeps only multicast, and IP_MULTICAST_ALL off, so it hears the
groups joined on the given interfaces alone; unicast queries reach only the
per-interface sockets zeroconf binds to the addresses given.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

__all__ = ["DEFAULT_SERVICE_TYPE", "Discovery", "Sighting"]

log = logging.getLogger(__name__)

DEFAULT_SERVICE_TYPE = "_yptask._tcp.local."
RESOLVE_TIMEOUT_MS = 3000

# Linux socket options (linux/socket.h, linux/in.h), absent from the socket module.
SO_ATTACH_FILTER = 26
IP_MULTICAST_ALL = 49
# A classic BPF program: accept a datagram whose IPv4 destination is multicast
# (224.0.0.0/4), drop any other. SKF_NET_OFF (-0x100000) addresses the IP header.
_MULTICAST_ONLY = [
    (0x20, 0, 0, 0xFFF00010),  # ld [net + 16]       the destination address
    (0x54, 0, 0, 0xF0000000),  # and #0xf0000000
    (0x15, 0, 1, 0xE0000000),  # jeq #0xe0000000     multicast?
    (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1             keep all of it
    (0x06, 0, 0, 0),           # ret #0              drop
]


@dataclass(frozen=True)
class Sighting:
    """A peer seen on mDNS: where its link port is, and who it says it is."""

    name: str
    boot: str
    host: str
    port: int


class Discovery:
    """Register this node and report peers of its cluster. Create and use on the event loop."""

    def __init__(self, *, cluster: str, name: str, boot: str, host: str, port: int,
                 http: str, version: str, interfaces: list[str],
                 found: Callable[[Sighting], None],
                 service_type: str = DEFAULT_SERVICE_TYPE) -> None:
        self.cluster = cluster
        self.name = name
        self.service_type = service_type
        self._found = found
        self._interfaces = interfaces
        self._info = AsyncServiceInfo(
            service_type, f"{name}.{service_type}", port=port, parsed_addresses=[host],
            server=f"{name}.local.",
            properties={"cluster": cluster, "node": name, "boot": boot, "http": http,
                        "version": version})
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._resolving: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._zeroconf = AsyncZeroconf(interfaces=self._interfaces, ip_version=IPVersion.V4Only)
        await self._zeroconf.zeroconf.async_wait_for_start()
        _listen_only_to_joined_groups(self._zeroconf.zeroconf)
        await (await self._zeroconf.async_register_service(self._info, allow_name_change=False))
        self._browser = AsyncServiceBrowser(self._zeroconf.zeroconf, [self.service_type],
                                            handlers=[self._on_change])

    async def stop(self) -> None:
        """Say goodbye (peers drop us at once) and close the sockets."""
        for task in self._resolving:
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zeroconf is not None:
            await self._zeroconf.async_close()

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        # Runs on the loop and must not block: resolve in a task.
        if state_change is ServiceStateChange.Removed:
            return  # liveness comes from heartbeats, not from mDNS
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._resolving.add(task)
        task.add_done_callback(self._resolving.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        assert self._zeroconf is not None
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MS):
            log.debug("mDNS: could not resolve %s", name)
            return
        txt = info.decoded_properties
        addresses = info.parsed_addresses(IPVersion.V4Only)
        node, boot = txt.get("node"), txt.get("boot")
        if txt.get("cluster") != self.cluster or not node or not boot or node == self.name:
            return
        if not addresses or info.port is None:
            return
        self._found(Sighting(node, boot, addresses[0], info.port))


def _listen_only_to_joined_groups(zeroconf: Zeroconf) -> None:
    """Make zeroconf's wildcard socket hear only multicast of the groups it joined."""
    for reader in zeroconf.engine.readers:
        sock = reader.sock
        if sock.family != socket.AF_INET or sock.getsockname()[0] != "0.0.0.0":
            continue  # a socket bound to one of the given addresses: already its own
        if not sys.platform.startswith("linux"):
            log.warning("mDNS: on %s the socket on 0.0.0.0:5353 also answers unicast queries "
                        "sent to this machine's other addresses", sys.platform)
            return
        code = b"".join(struct.pack("HBBI", *op) for op in _MULTICAST_ONLY)
        program = ctypes.create_string_buffer(code)
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                        struct.pack("HL", len(_MULTICAST_ONLY), ctypes.addressof(program)))
        sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
