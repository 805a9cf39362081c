"""Discovery: finding the other nodes of this cluster over mDNS (python-zeroconf).

Each node registers one `_yptask._tcp.local.` service (the type is a setting, so
test runs can use their own) whose TXT says cluster, node, boot id, ports and
version: small facts only, since a TXT entry holds 255 bytes. It browses the
same type and reports every peer of its own cluster it resolves. Discovery is
a hint: the node then dials the peer's link port, where the cookie decides.

mDNS speaks only on the interfaces given (by default the node's link address,
127.0.0.1), so a default node never multicasts onto a real network.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

__all__ = ["DEFAULT_SERVICE_TYPE", "Discovery", "Sighting"]

log = logging.getLogger(__name__)

DEFAULT_SERVICE_TYPE = "_yptask._tcp.local."
RESOLVE_TIMEOUT_MS = 3000


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
