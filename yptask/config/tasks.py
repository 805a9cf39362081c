"""Task definitions: the model, its validation, TOML loading, topics.

A task definition carries every field of the YPTask console plus yptask's
delivery settings. `TaskDef.from_dict` is the one way in from outside (TOML
files, the admin API, gossip): it checks every field and raises `ConfigError`
naming the field, so nothing invalid is ever half-applied.

Message names are dotted (`upai.photos.upload`); a task subscribes with
patterns in which `*` stands for exactly one segment and `#` for any number
of segments, zero included (AMQP topic rules).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yptask.config.endpoints import check_fastcgi, check_headers, check_script, check_url
from yptask.config.fields import boolean, checked_definition, number, read_toml, string
from yptask.errors import ConfigError

__all__ = ["ANY_NODE", "TaskDef", "load_tasks", "parse_rate", "topic_matches",
           "validate_message_name"]

_SEGMENT = r"[A-Za-z0-9_-]+"
_MESSAGE_NAME = re.compile(rf"{_SEGMENT}(\.{_SEGMENT})*")
_PATTERN = re.compile(rf"({_SEGMENT}|\*|#)(\.({_SEGMENT}|\*|#))*")
_TASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_WORKER_CLASS = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ANY_NODE = "*"


def validate_message_name(name: Any) -> str:
    """Return `name` if it is a valid message name; raise ConfigError saying why not."""
    if not isinstance(name, str) or not _MESSAGE_NAME.fullmatch(name) or len(name) > 255:
        raise ConfigError(f"invalid message name {name!r}: use dotted segments of letters, "
                          "digits, '_' and '-', e.g. 'upai.photos.upload'")
    return name


def topic_matches(pattern: str, name: str) -> bool:
    """Return True if message `name` matches subscription `pattern` (`*` one segment, `#` any)."""
    return _match(pattern.split("."), name.split("."))


def _match(pattern: list[str], name: list[str]) -> bool:
    if not pattern:
        return not name
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, name[i:]) for i in range(len(name) + 1))
    return bool(name) and head in ("*", name[0]) and _match(rest, name[1:])


@dataclass(frozen=True)
class TaskDef:
    """One task: what it subscribes to, how its workers start, how many run where."""

    name: str
    messages: tuple[str, ...]
    # Its workers: exactly one of these four (see _ONE_OF).
    worker_class: str = ""  # MODULE:CLASS, served by the Python runner
    command: tuple[str, ...] = ()  # or any argv that speaks the worker protocol
    url: str = ""  # or an HTTP endpoint each message is POSTed to
    fastcgi: str = ""  # or a FastCGI server ("unix:/path.sock" or "host:port")...
    script: str = ""  # ...and the script it runs (an absolute path): with fastcgi only
    headers: Mapping[str, str] = field(default_factory=dict)  # sent with every request to url
    group: str = "default"
    use_stdio: bool = False
    stdout: str = ""  # log file of the workers' stdout; "" = the node's log folder
    stderr: str = ""
    debug: bool = False
    max_idle_s: float = 300.0  # 0: never reap idle workers
    env: Mapping[str, str] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)
    nodes: Mapping[str, int] = field(default_factory=lambda: {ANY_NODE: 1})
    max_attempts: int = 5
    retry_backoff_s: float = 1.0
    message_timeout_s: float = 60.0
    shutdown_timeout_s: float = 10.0
    restart_generation: int = 0
    max_queue: int = 100_000  # messages waiting here for this task; past it, casts are refused
    # More than max_restarts worker restarts within restart_period_s put the task into a
    # visible backoff (exponential, capped) instead of restarting on.
    max_restarts: int = 5
    restart_period_s: float = 10.0
    # Paused: casts are accepted and journaled, nothing is handed to a worker (calls are
    # refused) until it is resumed; on every node, across restarts.
    paused: bool = False
    # Not accepting: casts and calls for it are refused with NotAccepting (the manual
    # degrade switch); what was journaled before is still delivered.
    accepting: bool = True
    # Priorities (0 lowest to 9): the one a cast without its own gets, and the lottery
    # tickets of each level (ten integers; empty: DEFAULT_TICKETS) that share this
    # task's workers among the levels waiting (yptask.delivery.lottery).
    default_priority: int = 0
    priority_tickets: tuple[int, ...] = ()
    # A message not handed to a worker within this many seconds of its cast expires
    # (0: never; a cast's own ttl_s or deadline comes first).
    message_ttl_s: float = 0.0
    # At most this many deliveries started in the whole cluster ("100/s", "6000/min",
    # "10/h"; "": no limit), per distinct value of the payload's `rate_limit_key` if set.
    rate_limit: str = ""
    rate_limit_key: str = ""
    # The degrade switch for some publishers only: casts and calls made with the publisher
    # token of one of these applications (names in the node's `api_tokens`) are refused
    # with NotAccepting; the others' are taken.
    refuse_tokens: tuple[str, ...] = ()
    # Where workers run and import from: `cwd` ("" = the node's data dir; relative to
    # it), `python_path` (relative to cwd) put before the Python workers' sys.path.
    cwd: str = ""
    python_path: tuple[str, ...] = ()
    # The workers' stdout/stderr files, written by the node: each rotated past log_max_mb
    # into FILE.1 .. FILE.<log_keep>; "json": one JSON object per line.
    log_max_mb: float = 10.0
    log_keep: int = 3
    log_format: str = "text"

    def subscribes_to(self, message_name: str) -> bool:
        """Return True if any of this task's patterns matches `message_name`."""
        return any(topic_matches(p, message_name) for p in self.messages)

    @property
    def remote(self) -> bool:
        """Whether this task's workers are an endpoint (HTTP, FastCGI), not processes."""
        return bool(self.url or self.fastcgi)

    def workers_on(self, node_name: str) -> int:
        """Return how many workers this task runs on `node_name` (the `*` row is the default)."""
        return self.nodes.get(node_name, self.nodes.get(ANY_NODE, 0))

    def to_dict(self) -> dict[str, Any]:
        """Return the definition as plain JSON/TOML-compatible data."""
        data = asdict(self)
        data["messages"] = list(self.messages)
        data["command"] = list(self.command)
        data["priority_tickets"] = list(self.priority_tickets)
        data["refuse_tokens"] = list(self.refuse_tokens)
        data["python_path"] = list(self.python_path)
        for key in _OMITTED_EMPTY:  # as a definition without them has always been written
            if not data[key]:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskDef:
        """Build a checked definition from plain data; raise ConfigError naming the bad field.

        An empty `worker_class`, `command`, `url`, `fastcgi` or `script` counts as not
        given: `to_dict` writes both of the first two, one of them empty, so that what it
        writes reads back."""
        if isinstance(data, Mapping):
            data = {key: value for key, value in data.items()
                    if not (key in _EMPTY_IS_UNSET and value in ("", [], ()))}
        label, values = checked_definition(data, _CHECKS, "task", ("name", "messages"))
        given = [key for key in _ONE_OF if values.get(key)]
        if len(given) != 1:
            raise ConfigError(f"{label}: give exactly one of 'worker_class' (MODULE:CLASS), "
                              "'command' (an argv list), 'url' (an HTTP endpoint) or "
                              "'fastcgi' (a FastCGI server's address)"
                              + (f"; got {', '.join(map(repr, given))}" if given else ""))
        _check_endpoint_fields(label, values)
        return cls(**values)


# How a task's workers start: exactly one of these.
_ONE_OF = ("worker_class", "command", "url", "fastcgi")
_EMPTY_IS_UNSET = (*_ONE_OF, "script")
# Written by to_dict only when set: a definition without them reads the same on a node
# that does not know them.
_OMITTED_EMPTY = ("url", "fastcgi", "script", "headers")


def _check_endpoint_fields(label: str, values: Mapping[str, Any]) -> None:
    """`script` goes with `fastcgi` (and is required by it), `headers` with `url`."""
    if values.get("fastcgi") and not values.get("script"):
        raise ConfigError(f"{label}: field 'script' is required with 'fastcgi' (the "
                          "absolute path of the script the FastCGI server runs)")
    if values.get("script") and not values.get("fastcgi"):
        raise ConfigError(f"{label}: field 'script' is for a task with 'fastcgi' only")
    if values.get("headers") and not values.get("url"):
        raise ConfigError(f"{label}: field 'headers' is for a task with 'url' only")


def _messages(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError("must be a non-empty list of message names or patterns")
    for pattern in value:
        if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
            raise ConfigError(f"{pattern!r} is not a message name or pattern "
                              "(dotted segments; '*' = one segment, '#' = any)")
    return tuple(dict.fromkeys(value))


def _command(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) and a for a in value):
        raise ConfigError("must be a list of non-empty strings (an argv), e.g. "
                          '["ruby", "worker.rb"]')
    return tuple(value)


def _env(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table of NAME = \"value\"")
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
            raise ConfigError(f"{key!r} is not an environment variable name")
        if not isinstance(item, str):
            raise ConfigError(f"{key}: value must be a string, got {item!r}")
    return dict(value)


def _settings(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError("must be a table with string keys")
    return dict(value)


def _priority(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise ConfigError(f"must be an integer from 0 (lowest) to 9, got {value!r}")
    return value


def _tickets(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or (value and len(value) != 10) or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 1_000_000
            for n in value) or (value and not any(value)):
        raise ConfigError("must be ten integers from 0 to 1000000, the lottery tickets of "
                          "priorities 0 to 9 (not all 0), or [] for the defaults; got "
                          f"{value!r:.80}")
    return tuple(value)


_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*")
RATE_UNITS_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
                "h": 3600.0, "hour": 3600.0}


def parse_rate(text: str) -> tuple[float, float] | None:
    """A rate limit's (count, per seconds), e.g. "100/s" -> (100.0, 1.0); "" -> None."""
    if not text:
        return None
    match = _RATE.fullmatch(text)
    if match is None:
        raise ConfigError(f"{text!r} is not a rate: use COUNT/UNIT, UNIT one of s, min, h "
                          "(e.g. \"100/s\", \"6000/min\")")
    count = float(match[1])
    if count <= 0:
        raise ConfigError(f"{text!r}: the count must be over 0 (\"\" is no limit)")
    return count, RATE_UNITS_S[match[2]]


def _rate(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"must be a string such as \"100/s\" or \"6000/min\", got {value!r}")
    parse_rate(value)
    return value


def _token_names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(name, str) and 0 < len(name) <= 255 for name in value):
        raise ConfigError("must be a list of application names (those of the nodes' "
                          f"api_tokens), e.g. [\"appname\"]; got {value!r:.80}")
    return tuple(dict.fromkeys(value))


def _folders(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(path, str) and path and "\0" not in path for path in value):
        raise ConfigError("must be a list of directories (relative to the task's cwd), e.g. "
                          f"[\"src\"]; got {value!r:.80}")
    return tuple(value)


def _log_keep(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ConfigError(f"must be an integer from 0 to 100 (rotated files kept), got {value!r}")
    return value


def _nodes(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise ConfigError('must be a table of node name = worker count ("*" = any node)')
    for key, count in value.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{key!r} is not a node name")
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 1000:
            raise ConfigError(f"{key}: worker count must be an integer from 0 to 1000, "
                              f"got {count!r}")
    return dict(value)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "name": string(_TASK_NAME, "start with a letter; letters, digits, '_', '.', '-'; "
                                "at most 64 characters"),
    "messages": _messages,
    "worker_class": string(_WORKER_CLASS, "use MODULE:CLASS, e.g. 'myapp.tasks:Resizer'"),
    "command": _command,
    "url": check_url,
    "fastcgi": check_fastcgi,
    "script": check_script,
    "headers": check_headers,
    "group": string(),
    "use_stdio": boolean,
    "stdout": string(),
    "stderr": string(),
    "debug": boolean,
    "max_idle_s": number(0),
    "env": _env,
    "settings": _settings,
    "nodes": _nodes,
    "max_attempts": number(1, integer=True),
    "retry_backoff_s": number(0),
    "message_timeout_s": number(0.001),
    "shutdown_timeout_s": number(0),
    "restart_generation": number(0, integer=True),
    "max_queue": number(1, integer=True),
    "max_restarts": number(0, integer=True),
    "restart_period_s": number(0.001),
    "paused": boolean,
    "accepting": boolean,
    "default_priority": _priority,
    "priority_tickets": _tickets,
    "message_ttl_s": number(0),
    "rate_limit": _rate,
    "rate_limit_key": string(re.compile(r"|[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*"),
                             "a key of the message payload, dotted for a nested one"),
    "refuse_tokens": _token_names,
    "cwd": string(re.compile(r"[^\0]*"), "a directory path"),
    "python_path": _folders,
    "log_max_mb": number(0.001),
    "log_keep": _log_keep,
    "log_format": string(re.compile(r"text|json"), 'use "text" or "json"'),
}


def load_tasks(path: str | Path) -> list[TaskDef]:
    """Read task definitions (`[[task]]` tables) from a TOML file."""
    data = read_toml(path, "task")
    tasks = [TaskDef.from_dict(entry) for entry in data.get("task", [])]
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: task(s) defined twice: {', '.join(duplicates)}")
    return tasks
