"""Where the chaos run's nodes live: loopback, or one network namespace each.

`Loopback` puts the three nodes on 127.0.0.1, each on its own ports; it cannot
partition a node. `Namespaces` gives each node a namespace with its own
address in 198.18.0.0/24 (reserved for benchmarking), wired by veth pairs
into a bridge in a fourth namespace; the calling thread (and every thread and
process it starts afterwards) moves into that bridge namespace, so the harness
reaches every node directly and the machine's own network is never touched.
A partition cuts one node off from the other nodes (blackhole routes on both
sides) while the harness still reaches it, as a client on the node's side of
the cut would. Needs root and `ip netns`; every namespace is deleted at the
end, pass or fail.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import uuid
from typing import Any

CLONE_NEWNET = 0x40000000


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def star(bridge: str, spaces: list[str], addresses: list[str]) -> None:
    """Namespace `bridge` with a bridge br0, and one namespace per address joined to it
    by a veth (p<i> on the bridge, eth0 inside), addressed /24 and up."""
    ip("netns", "add", bridge)
    ip("-n", bridge, "link", "add", "br0", "type", "bridge")
    ip("-n", bridge, "link", "set", "br0", "up")
    for i, (space, address) in enumerate(zip(spaces, addresses, strict=True)):
        ip("netns", "add", space)
        ip("-n", bridge, "link", "add", f"p{i}", "type", "veth", "peer", "name", "eth0",
           "netns", space)
        ip("-n", bridge, "link", "set", f"p{i}", "master", "br0", "up")
        ip("-n", space, "addr", "add", f"{address}/24", "dev", "eth0")
        ip("-n", space, "link", "set", "eth0", "up")
        ip("-n", space, "link", "set", "lo", "up")


def namespaces_unavailable() -> str | None:
    """Why namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    probe = f"ypt-probe-{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], check=False,
                      capture_output=True).returncode != 0:
        return "`ip netns add` is refused here"
    subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


class Loopback:
    """Every node on 127.0.0.1; no partitions."""

    why_no_partition: str | None = "nodes share loopback; a partition needs `ip netns`"

    def __init__(self, nodes: int) -> None:
        self.addresses = ["127.0.0.1"] * nodes

    def __enter__(self) -> Loopback:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def prefix(self, index: int) -> list[str]:
        """What runs a command in node `index`'s network: nothing, here."""
        return []

    def cut(self, index: int, off: bool) -> None:
        raise RuntimeError(self.why_no_partition)


class Namespaces:
    """A bridge namespace (the harness's) and one namespace per node."""

    why_no_partition: str | None = None

    def __init__(self, nodes: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.bridge = f"ypt{tag}br"
        self.spaces = [f"ypt{tag}n{i}" for i in range(1, nodes + 1)]
        self.addresses = [f"198.18.0.{10 + i}" for i in range(1, nodes + 1)]
        self._home: int | None = None  # the namespace we came from, to go back to

    def __enter__(self) -> Namespaces:
        try:
            star(self.bridge, self.spaces, self.addresses)
            ip("-n", self.bridge, "addr", "add", "198.18.0.1/24", "dev", "br0")
            ip("-n", self.bridge, "link", "set", "lo", "up")
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
            _setns(f"/run/netns/{self.bridge}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self._home is not None:
            _setns_fd(self._home)
            os.close(self._home)
            self._home = None
        for space in [*self.spaces, self.bridge]:  # deleting a namespace removes its links
            subprocess.run(["ip", "netns", "del", space], check=False, capture_output=True)

    def prefix(self, index: int) -> list[str]:
        return ["ip", "netns", "exec", self.spaces[index]]

    def cut(self, index: int, off: bool) -> None:
        """Cut node `index` off from the other nodes (`off`), or mend the cut."""
        verb = "add" if off else "del"
        for other, address in enumerate(self.addresses):
            if other != index:
                ip("-n", self.spaces[index], "route", verb, "blackhole", f"{address}/32")
                ip("-n", self.spaces[other], "route", verb, "blackhole",
                   f"{self.addresses[index]}/32")


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _setns_fd(fd)
    finally:
        os.close(fd)


def _setns_fd(fd: int) -> None:
    # os.setns is Python 3.12+; the libc call moves only the calling thread
    libc: Any = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")
