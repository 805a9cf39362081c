"""What the commands read from their arguments and print: the CLI's shared formatting.

JSON arguments and number types for argparse; tables, per-node counts, clocks;
definitions as TOML tables (`to_toml`, which `task apply` / `timer apply` read back)
and the reading of such files; the progress bar `restart` draws on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO, TypeVar

from yptask.cli.exits import EXIT_OK, InputError
from yptask.errors import ConfigError, last_line

__all__ = [
    "ProgressBar",
    "ago",
    "clock",
    "dump",
    "json_argument",
    "per_node",
    "positive_float",
    "positive_int",
    "read_definitions",
    "show_definition",
    "table",
    "to_toml",
    "with_start_errors",
]

T = TypeVar("T")

# ---------------------------------------------------------------- arguments


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def json_argument(text: str, what: str) -> Any:
    """Parse a JSON command-line argument (`-` reads it from stdin)."""
    if text == "-":
        text = sys.stdin.read()

    # NaN and Infinity are refused here, as the node would refuse them, so that the
    # argument is named and the exit is EXIT_DATAERR before any node is asked.
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError as exc:
        raise InputError(f"argument {what} is not valid JSON: {exc}; quote it for the "
                         """shell, e.g. '{"photo_id": 7}'""") from None


# ---------------------------------------------------------------- output


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers aligned right."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    numeric = [bool(rows) and all(isinstance(row[i], int) for row in rows)
               for i in range(len(headers))]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.rjust(w) if right else cell.ljust(w)
                  for cell, w, right in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def per_node(workers: Any) -> str:
    """`{"c1": 2, "c2": 1}` as `c1=2 c2=1`."""
    if not isinstance(workers, Mapping) or not workers:
        return "-"
    return " ".join(f"{node}={count}" for node, count in sorted(workers.items()))


def with_start_errors(text: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """A table of tasks (a header, then one line per row) with, under each task whose
    workers cannot start, one short line: the exit and the last line they wrote to stderr."""
    lines = text.split("\n")
    out = lines[:1]
    for line, row in zip(lines[1:], rows, strict=True):
        out.append(line)
        error = row.get("start_error")
        if isinstance(error, Mapping):
            cause = last_line(str(error.get("stderr_tail") or "")) or str(error.get("error"))
            out.append(f"  cannot start: {error.get('exit') or '-'}: {cause}"[:200])
    return "\n".join(out)


def clock(when: Any) -> str:
    if not isinstance(when, (int, float)) or when <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def ago(member: Mapping[str, Any]) -> str:
    if member.get("self"):
        return "-"
    heard = member.get("last_heard_s")
    return f"{heard:.1f} s ago" if isinstance(heard, (int, float)) else "-"


# ---------------------------------------------------------------- definitions as TOML

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no TOML form")
        return repr(value)
    if isinstance(value, str):  # a JSON string is a TOML basic string, once DEL is escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise ValueError(f"{value!r} has no TOML form")


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) else _toml_value(key)


def to_toml(definition: Mapping[str, Any], table: str = "task") -> str:
    """A definition as a `[[task]]` (or `[[timer]]`) table that `apply` reads back.

    Raises ValueError if a value has no TOML form (a null in the settings).
    """
    return "\n".join([f"[[{table}]]"] + [f"{_toml_key(key)} = {_toml_value(value)}"
                                         for key, value in definition.items()])


def show_definition(args: argparse.Namespace, definition: Mapping[str, Any],
                    table: str) -> int:
    """Print a definition as a TOML table (as JSON with --json, or if TOML cannot hold it)."""
    if args.json:
        print(dump(definition))
        return EXIT_OK
    try:
        print(to_toml(definition, table))
    except ValueError as exc:
        print(f"yptask: showing {args.name} as JSON: {exc}", file=sys.stderr)
        print(dump(definition))
    return EXIT_OK


def read_definitions(path: str, load: Callable[[str], list[T]], table: str) -> list[T]:
    """The definitions of a TOML file; an InputError naming the file if it has none.

    `load` is the config model's own loader (the node checks definitions with the
    same code), so a bad file is refused here, before any node is asked.
    """
    try:
        items = load(path)
    except ConfigError as exc:
        message = str(exc)
        raise InputError(message if path in message else f"{path}: {message}") from None
    if not items:
        raise InputError(f"{path}: no [[{table}]] tables, nothing to apply")
    return items


# ---------------------------------------------------------------- progress


class ProgressBar:
    """One line on a stream: redrawn in place on a terminal; elsewhere drawn once, when done."""

    WIDTH = 30

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.live = stream.isatty()
        self._lock = threading.Lock()
        self._closed = False

    def _line(self, fraction: float, note: str) -> str:
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return f"{self.label} [{bar}] {fraction:4.0%}  {note}".rstrip()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed: progress is not worth failing for
            pass

    def update(self, fraction: float, note: str) -> None:
        with self._lock:
            if self.live and not self._closed:
                self._write("\r" + self._line(min(max(fraction, 0.0), 1.0), note) + "\x1b[K")

    def finish(self, note: str) -> None:
        """Draw the bar full and end its line; later updates are ignored."""
        with self._lock:
            if not self._closed:
                self._closed = True
                end = "\x1b[K\n" if self.live else "\n"
                self._write(("\r" if self.live else "") + self._line(1.0, note) + end)

    def abandon(self) -> None:
        """End the line where it stands (the operation failed); later updates are ignored."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if self.live:
                    self._write("\n")
