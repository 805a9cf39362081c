"""What a host string names: an address literal, loopback or not (standard library only)."""

from __future__ import annotations

import ipaddress

__all__ = ["address_literal", "is_loopback"]


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
