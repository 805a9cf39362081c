"""A worker log file that is rotated by size: `LogSettings`, `RotatingLog`.

The node writes its workers' stdout and stderr (see `yptask.workers.output`), so
that a worker writing without end fills at most `keep + 1` files of `max_bytes`:
`FILE`, then `FILE.1` (the newest rotated) to `FILE.<keep>` (the oldest), as
`logging.handlers.RotatingFileHandler` names them. Only whole lines are written,
and a file is rotated between lines, never inside one: a file is over `max_bytes`
only when it holds one line longer than that.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

__all__ = ["LogSettings", "RotatingLog"]

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


@dataclass(frozen=True)
class LogSettings:
    """How the node writes one task's worker output: rotation, format, and the names a
    JSON line carries."""

    max_bytes: int = 10 * 1024 * 1024
    keep: int = 3  # rotated files kept; 0: the full file is started afresh
    json: bool = False  # one JSON object per line, instead of the line as written
    node: str = ""
    task: str = ""


class RotatingLog:
    """One log file, rotated past `max_bytes`; opened on first write. Not thread-safe:
    one thread writes it."""

    def __init__(self, path: str, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max(1, max_bytes)
        self.keep = keep
        self._fd = -1
        self._size = 0

    def write(self, data: bytes) -> None:
        """Append whole lines (`data` ends with a newline), rotating between lines as
        the file fills. Raises OSError (the disk is full, the folder gone)."""
        if self._fd < 0:
            self.open()
        while data:
            room = self.max_bytes - self._size
            if len(data) <= room:
                piece = data
            else:
                cut = data.rfind(b"\n", 0, max(room, 0)) + 1  # after the last line that fits
                if cut == 0:
                    if self._size:
                        self._rotate()
                        continue
                    # one line longer than a whole file: it gets a file of its own
                    cut = data.find(b"\n") + 1 or len(data)
                piece = data[:cut]
            self._write_all(piece)
            data = data[len(piece):]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def open(self, *, truncate: bool = False) -> None:
        """Open the file (it is opened on first write otherwise); raise OSError."""
        self._fd = os.open(self.path, _FLAGS | (os.O_TRUNC if truncate else 0), 0o644)
        self._size = os.fstat(self._fd).st_size

    def _rotate(self) -> None:
        self.close()
        if self.keep == 0:
            self.open(truncate=True)
            return
        for number in range(self.keep - 1, 0, -1):
            older = f"{self.path}.{number}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{number + 1}")
        with contextlib.suppress(FileNotFoundError):  # removed by hand: start a new one
            os.replace(self.path, f"{self.path}.1")
        self.open()

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            self._size += written
            view = view[written:]
