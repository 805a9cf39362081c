"""The checks every definition and setting goes through: known fields, typed values.

`checked_definition` and `checked_fields` run each field through its check and
raise `ConfigError` naming the field; `string`, `number` and `boolean` make the
checks themselves. Task, timer and node models all use these, so every
definition refuses bad input the same way.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from yptask.errors import ConfigError

__all__ = ["boolean", "checked_definition", "checked_fields", "number", "read_toml", "string"]


def checked_definition(data: Any, checks: Mapping[str, Callable[[Any], Any]], kind: str,
                       required: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """Check a definition (a task's, a timer's): a table of known, valid fields with the
    `required` ones present. Return its label for errors ("task 'x'") and its values."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a {kind} definition is a table/object, got {type(data).__name__}")
    name = data.get("name")
    label = f"{kind} {name!r}" if isinstance(name, str) else kind
    values = checked_fields(data, checks, f"{kind} field", f"{label}: field")
    for field_name in required:
        if field_name not in values:
            raise ConfigError(f"{label}: field {field_name!r} is required")
    return label, values


def checked_fields(data: Mapping[str, Any], checks: Mapping[str, Callable[[Any], Any]],
                   kind: str, label: str) -> dict[str, Any]:
    """Run each value through its key's check; refuse unknown keys, naming the bad one."""
    unknown = sorted(set(data) - set(checks))
    if unknown:
        raise ConfigError(f"unknown {kind}(s) {', '.join(map(str, unknown))}; known: "
                          f"{', '.join(sorted(checks))}")
    values = {}
    for key, value in data.items():
        try:
            values[key] = checks[key](value)
        except ConfigError as exc:
            raise ConfigError(f"{label} {key!r}: {exc}") from None
    return values


def string(pattern: re.Pattern[str] | None = None, hint: str = "") -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {type(value).__name__}")
        if pattern is not None and not pattern.fullmatch(value):
            raise ConfigError(f"{value!r} is not valid: {hint}")
        return value
    return check


def number(minimum: float, integer: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ConfigError(f"must be {'an integer' if integer else 'a number'}, "
                              f"got {value!r}")
        if not math.isfinite(value) or value < minimum:
            raise ConfigError(f"must be a finite number of at least {minimum}, got {value!r}")
        return value if integer else float(value)
    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}")
    return value


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """Read a TOML file; raise ConfigError saying which `what` file failed and why."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
