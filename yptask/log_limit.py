"""Log lines a stranger can cause, held to one every few seconds.

A refused connection, a bad frame or a failed login is worth a line; a
thousand of them a second would be an attack on the log (and the disk under
it). A `LogLimiter` writes its line at most once every `every_s`; the lines it
holds back in between are counted, and the count goes with the next one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["EVERY_S", "LogLimiter"]

EVERY_S = 10.0


class LogLimiter:
    """One kind of warning, written at most once every `every_s` (use on one thread)."""

    def __init__(self, logger: logging.Logger, every_s: float = EVERY_S) -> None:
        self.logger = logger
        self.every_s = every_s
        self._held = 0  # lines held back since the last one written
        self._next = 0.0  # monotonic time from which the next line may be written

    def warning(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        if self._held:
            msg += " (and %d more such line(s) held back in the %.0f s before)"
            args = (*args, self._held, self.every_s)
        self.logger.warning(msg, *args)
        self._held = 0
        self._next = now + self.every_s
