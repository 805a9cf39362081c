"""Task definitions and node settings: the models, their validation, TOML loading, topics.

A task definition carries every field of the YPTask console plus yptask's
delivery settings. `TaskDef.from_dict` is the one way in from outside (TOML
files, the admin API, gossip): it checks every field and raises `ConfigError`
naming the field, so nothing invalid is ever half-applied.

Message names are dotted (`upai.photos.upload`); a task subscribes with
patterns in which `*` stands for exactly one segment and `#` for any number
of segments, zero included (AMQP topic rules).
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from yptask.errors import ConfigError
from yptask.passwords import check_hash

__all__ = ["NodeConfig", "TaskDef", "load_tasks", "read_toml", "topic_matches",
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
    worker_class: str = ""  # MODULE:CLASS, served by the Python runner
    command: tuple[str, ...] = ()  # or any argv that speaks the worker protocol
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

    def subscribes_to(self, message_name: str) -> bool:
        """Return True if any of this task's patterns matches `message_name`."""
        return any(topic_matches(p, message_name) for p in self.messages)

    def workers_on(self, node_name: str) -> int:
        """Return how many workers this task runs on `node_name` (the `*` row is the default)."""
        return self.nodes.get(node_name, self.nodes.get(ANY_NODE, 0))

    def to_dict(self) -> dict[str, Any]:
        """Return the definition as plain JSON/TOML-compatible data."""
        data = asdict(self)
        data["messages"] = list(self.messages)
        data["command"] = list(self.command)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskDef:
        """Build a checked definition from plain data; raise ConfigError naming the bad field.

        An empty `worker_class` or `command` counts as not given: `to_dict` writes both,
        one of them empty, so that what it writes reads back."""
        if isinstance(data, Mapping):
            data = {key: value for key, value in data.items()
                    if not (key in _ONE_OF and value in ("", [], ()))}
        label, values = checked_definition(data, _CHECKS, "task", ("name", "messages"))
        if bool(values.get("worker_class")) == bool(values.get("command")):
            raise ConfigError(f"{label}: give exactly one of 'worker_class' (MODULE:CLASS) "
                              "or 'command' (an argv list)")
        return cls(**values)


_ONE_OF = ("worker_class", "command")  # how a task's workers start: exactly one of these


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


def _string(pattern: re.Pattern[str] | None = None, hint: str = "") -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ConfigError(f"must be a string, got {type(value).__name__}")
        if pattern is not None and not pattern.fullmatch(value):
            raise ConfigError(f"{value!r} is not valid: {hint}")
        return value
    return check


def _number(minimum: float, integer: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ConfigError(f"must be {'an integer' if integer else 'a number'}, "
                              f"got {value!r}")
        if not math.isfinite(value) or value < minimum:
            raise ConfigError(f"must be a finite number of at least {minimum}, got {value!r}")
        return value if integer else float(value)
    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}")
    return value


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
    "name": _string(_TASK_NAME, "start with a letter; letters, digits, '_', '.', '-'; "
                                "at most 64 characters"),
    "messages": _messages,
    "worker_class": _string(_WORKER_CLASS, "use MODULE:CLASS, e.g. 'myapp.tasks:Resizer'"),
    "command": _command,
    "group": _string(),
    "use_stdio": _boolean,
    "stdout": _string(),
    "stderr": _string(),
    "debug": _boolean,
    "max_idle_s": _number(0),
    "env": _env,
    "settings": _settings,
    "nodes": _nodes,
    "max_attempts": _number(1, integer=True),
    "retry_backoff_s": _number(0),
    "message_timeout_s": _number(0.001),
    "shutdown_timeout_s": _number(0),
    "restart_generation": _number(0, integer=True),
    "max_queue": _number(1, integer=True),
    "max_restarts": _number(0, integer=True),
    "restart_period_s": _number(0.001),
}


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """Read a TOML file; raise ConfigError saying which `what` file failed and why."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_tasks(path: str | Path) -> list[TaskDef]:
    """Read task definitions (`[[task]]` tables) from a TOML file."""
    data = read_toml(path, "task")
    tasks = [TaskDef.from_dict(entry) for entry in data.get("task", [])]
    names = [t.name for t in tasks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{path}: task(s) defined twice: {', '.join(duplicates)}")
    return tasks


@dataclass(frozen=True)
class NodeConfig:
    """One node's settings: who it is, where it keeps data, where it listens."""

    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0] or "node")
    data_dir: Path = Path("yptask-data")
    http_host: str = "127.0.0.1"
    http_port: int = 8700  # 0: any free port
    bert_host: str = "127.0.0.1"
    bert_port: int = 8701  # 0: any free port
    tasks_file: Path | None = None  # first-start task definitions; None: the examples in conf/
    journal_sync: str = "NORMAL"  # SQLite synchronous: OFF | NORMAL | FULL | EXTRA
    # Start even if the journal is not the one this node last ran with (emptied, replaced):
    # what the old one held is then lost. Without it, such a node refuses to start.
    accept_new_journal: bool = False
    max_body_bytes: int = 1024 * 1024  # JSON-RPC request body cap
    max_payload_bytes: int = 1024 * 1024  # one message's encoded payload cap
    dedupe_window_s: float = 24 * 3600.0  # how long a done message's id is remembered
    max_journal_mb: float = 4096.0  # past this journal size on disk, casts are refused
    log_dir: Path | None = None  # workers' stdout/stderr; None: data_dir / "logs"
    # The cluster (see yptask/cluster.py). Nodes join when they share the cluster name
    # and the cookie; a node with neither set keeps a random cookie in its data dir.
    cluster: str = "yptask"
    cookie: str | None = None  # the shared secret itself ...
    cookie_file: Path | None = None  # ... or a file holding it (like ~/.erlang.cookie)
    link_host: str = "127.0.0.1"  # inter-node links; mDNS speaks on this interface only
    link_port: int = 8702  # 0: any free port
    join: tuple[str, ...] = ()  # static seeds, HOST:PORT of other nodes' link ports
    mdns: bool = True
    mdns_type: str = "_yptask._tcp.local."
    heartbeat_s: float = 0.5
    down_after_s: float = 3.0  # silent this long: declared down (suspect at half)
    # The timer leader's lease (see yptask/timer_lease.py): a dead leader's timers move to
    # another node this long after its last renewal.
    timer_lease_s: float = 3.0
    # A cast's own id is checked at its home node (see yptask/client_ids.py): answered
    # within this, or the local journal alone dedupes it; a claim not settled this long
    # (its node died before storing the message) is dropped.
    client_id_wait_s: float = 1.0
    client_id_pending_s: float = 10.0
    # The console's password, hashed (`yptask hash-password`); also guards the admin API.
    console_password_hash: str | None = None
    # Publisher tokens, application name -> token: when set, cast and call need one.
    api_tokens: Mapping[str, str] = field(default_factory=dict)
    allow_from: tuple[str, ...] = ()  # networks (CIDR) that may connect; empty: any
    # Host names the HTTP API answers to besides localhost, its address and the machine's
    # names (a request naming another host is refused: DNS rebinding), and the origins of
    # web pages other than its own console that may call it from a browser.
    http_allowed_hosts: tuple[str, ...] = ()
    http_allowed_origins: tuple[str, ...] = ()
    # Connections (see yptask/connection_limits.py); a cap of 0 is set from the open-file limit.
    max_http_connections: int = 0
    max_bert_connections: int = 0
    max_link_connections: int = 0
    http_head_timeout_s: float = 5.0  # a request head not complete this long after its start
    http_keepalive_timeout_s: float = 30.0  # a connection idle between requests this long
    bert_idle_timeout_s: float = 60.0  # a BERT-RPC connection with no whole frame this long
    link_handshake_timeout_s: float = 5.0  # a link not authenticated this long after accept

    def __post_init__(self) -> None:
        for key in ("join", "allow_from", "http_allowed_hosts", "http_allowed_origins"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        for key in ("data_dir", "tasks_file", "log_dir", "cookie_file"):  # str paths too
            value = getattr(self, key)
            if isinstance(value, str):
                object.__setattr__(self, key, Path(value))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeConfig:
        """Build a checked node config from plain data (the [node] table of the TOML file)."""
        return cls(**checked_fields(data, _NODE_CHECKS, "node setting", "node setting"))

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> NodeConfig:
        """Read the `[node]` table of a TOML file, then apply command-line overrides."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f).get("node", {})
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        base = Path(path).resolve().parent
        config = cls.from_dict({**data, **{k: v for k, v in overrides.items() if v is not None}})
        # Relative paths in a config file are relative to the file, not to the cwd.
        return replace(config, **{
            key: base / value for key in ("data_dir", "tasks_file", "log_dir", "cookie_file")
            if key in data and key not in overrides and (value := getattr(config, key)) is not None
            and not value.is_absolute()})


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"must be a port number from 0 to 65535, got {value!r}")
    return value


def _path(value: Any) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise ConfigError(f"must be a path, got {value!r}")
    return Path(value)


def _seeds(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError("must be a list of HOST:PORT link addresses")
    for seed in value:
        host, sep, port = seed.rpartition(":") if isinstance(seed, str) else ("", "", "")
        if not (host and sep and port.isdigit() and 0 < int(port) <= 65535):
            raise ConfigError(f"{seed!r} is not HOST:PORT (a node's link address)")
    return tuple(value)


def _tokens(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError("must be a table of application name = token")
    for name, token in value.items():
        if not isinstance(token, str) or len(token) < 16 or not token.isprintable():
            raise ConfigError(f"the token of {name!r} must be a string of at least 16 "
                              "printable characters")
    return dict(value)


def _networks(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError("must be a list of networks, e.g. [\"10.0.0.0/8\", \"127.0.0.1\"]")
    for network in value:
        try:
            ipaddress.ip_network(network, strict=False)
        except (TypeError, ValueError):
            raise ConfigError(f"{network!r} is not a network (CIDR) or an address") from None
    return tuple(value)


def _names(pattern: re.Pattern[str], what: str) -> Callable[[Any], tuple[str, ...]]:
    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"must be a list, each {what}")
        for item in value:
            if not isinstance(item, str) or not pattern.fullmatch(item):
                raise ConfigError(f"{item!r} is not {what}")
        return tuple(value)
    return check


def _password_hash(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError("must be a string made by `yptask hash-password`")
    return check_hash(value)


def _sync_level(value: Any) -> str:
    if not isinstance(value, str) or value.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ConfigError(f"must be OFF, NORMAL, FULL or EXTRA, got {value!r}")
    return value.upper()


_NODE_CHECKS: dict[str, Callable[[Any], Any]] = {
    "name": _string(re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"),
                    "letters, digits, '_', '.', '-'; at most 64 characters"),
    "data_dir": _path,
    "http_host": _string(),
    "http_port": _port,
    "bert_host": _string(),
    "bert_port": _port,
    "tasks_file": _path,
    "journal_sync": _sync_level,
    "accept_new_journal": _boolean,
    "max_body_bytes": _number(1024, integer=True),
    "max_payload_bytes": _number(64, integer=True),
    "max_journal_mb": _number(0.01),
    "dedupe_window_s": _number(0),
    "log_dir": _path,
    "cluster": _string(re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"),
                       "letters, digits, '_', '.', '-'; at most 64 characters"),
    "cookie": _string(re.compile(r"\S{8,1024}"), "8 to 1024 characters, no spaces"),
    "cookie_file": _path,
    "link_host": _string(),
    "link_port": _port,
    "join": _seeds,
    "mdns": _boolean,
    "mdns_type": _string(re.compile(r"_[a-z0-9-]{1,14}\._tcp\.local\."),
                         "like '_yptask._tcp.local.' (a label of at most 15 bytes)"),
    "heartbeat_s": _number(0.05),
    "down_after_s": _number(0.2),
    "timer_lease_s": _number(0.3),
    "client_id_wait_s": _number(0.01),
    "client_id_pending_s": _number(0.1),
    "console_password_hash": _password_hash,
    "api_tokens": _tokens,
    "allow_from": _networks,
    "http_allowed_hosts": _names(re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}"), "a host name"),
    "http_allowed_origins": _names(re.compile(r"https?://[A-Za-z0-9.:\[\]-]{1,255}"),
                                   "an origin like 'https://admin.example.com'"),
    "max_http_connections": _number(0, integer=True),
    "max_bert_connections": _number(0, integer=True),
    "max_link_connections": _number(0, integer=True),
    "http_head_timeout_s": _number(0.05),
    "http_keepalive_timeout_s": _number(0.05),
    "bert_idle_timeout_s": _number(0.05),
    "link_handshake_timeout_s": _number(0.05),
}
