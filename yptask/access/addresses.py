"""Addresses: what a host string names (a literal, loopback or not), and the allow-list.

Standard library only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

__all__ = ["AllowList", "address_literal", "is_loopback"]


def address_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `host` spells out, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Does `host` ("localhost", 127.0.0.1, ::1, ...) name this machine's loopback?"""
    if host == "localhost":
        return True
    address = address_literal(host)
    return address is not None and address.is_loopback


class AllowList:
    """The networks a node serves (`allow_from`); with none, every address is served."""

    def __init__(self, networks: Sequence[str] = ()) -> None:
        self.networks = [ipaddress.ip_network(net, strict=False) for net in networks]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def allows(self, remote: str | None) -> bool:
        """Is a peer at `remote` on the list (when there is one)?"""
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(remote or "")
        except ValueError:
            return False
        return any(address in network for network in self.networks)
