"""Failed password checks per address: past a few within a window, no more checks from it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["LoginThrottle"]


@dataclass
class LoginThrottle:
    """Failed logins per address: past `max_failures` within `window_s`, an address is
    refused without a password check until its oldest failure leaves the window."""

    max_failures: int = 10
    window_s: float = 60.0
    max_addresses: int = 10_000  # the table is bounded too: the oldest address goes first
    _failures: dict[str, list[float]] = field(default_factory=dict)

    def blocked_for_s(self, address: str, now: float | None = None) -> float:
        """How long `address` must wait before its next try (0: it may try now)."""
        now = time.monotonic() if now is None else now
        recent = [t for t in self._failures.get(address, ()) if t > now - self.window_s]
        if recent:
            self._failures[address] = recent
        else:
            self._failures.pop(address, None)
        if len(recent) < self.max_failures:
            return 0.0
        return recent[0] + self.window_s - now

    def failed(self, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if address not in self._failures and len(self._failures) >= self.max_addresses:
            del self._failures[next(iter(self._failures))]
        self._failures.setdefault(address, []).append(now)
