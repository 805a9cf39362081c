"""Node settings: one node's model, its validation, and its TOML file.

`NodeConfig.from_dict` checks every setting (unknown or ill-typed ones raise
`ConfigError` naming the setting), so a node never starts half-configured.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from yptask.access.passwords import check_hash
from yptask.config.fields import boolean, checked_fields, number, string
from yptask.errors import ConfigError

__all__ = ["NodeConfig"]


@dataclass(frozen=True)
class NodeConfig:
    """One node's settings: who it is, where it keeps data, where it listens."""

    name: str = field(default_factory=lambda: socket.gethostname().split(".")[0] or "node")
    data_dir: Path = Path("yptask-data")
    http_host: str = "127.0.0.1"
    http_port: int = 8700  # 0: any free port
    bert_host: str = "127.0.0.1"
    bert_port: int = 8701  # 0: any free port
    # The Redis-protocol ingress (yptask/endpoints/resp.py), "HOST:PORT"; "": off.
    redis: str = ""
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
    # The cluster (see yptask/cluster/mesh.py). Nodes join when they share the cluster name
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
    # The timer leader's lease (see yptask/timers/lease.py): a dead leader's timers move to
    # another node this long after its last renewal.
    timer_lease_s: float = 3.0
    # A cast's own id is checked at its home node (see yptask/cluster/client_ids.py): answered
    # within this, or the local journal alone dedupes it; a claim not settled this long
    # (its node died before storing the message) is dropped.
    client_id_wait_s: float = 1.0
    client_id_pending_s: float = 10.0
    # The console's password, hashed (`yptask hash-password`); also guards the admin API.
    console_password_hash: str | None = None
    # The read-only role (yptask/access/policy.py): bearer tokens, and/or a file of them (one
    # a line, # comments), and a second console password, hashed like the first.
    viewer_tokens: tuple[str, ...] = ()
    viewer_tokens_file: Path | None = None
    viewer_password_hash: str | None = None
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
    max_redis_connections: int = 0
    http_head_timeout_s: float = 5.0  # a request head not complete this long after its start
    http_keepalive_timeout_s: float = 30.0  # a connection idle between requests this long
    bert_idle_timeout_s: float = 60.0  # a BERT-RPC connection with no whole frame this long
    redis_idle_timeout_s: float = 60.0  # a Redis-protocol connection with no whole command
    link_handshake_timeout_s: float = 5.0  # a link not authenticated this long after accept

    def __post_init__(self) -> None:
        for key in ("join", "allow_from", "http_allowed_hosts", "http_allowed_origins",
                    "viewer_tokens"):
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        for key in _PATHS:  # str paths too
            value = getattr(self, key)
            if isinstance(value, str):
                object.__setattr__(self, key, Path(value))

    @property
    def redis_host(self) -> str:
        """The host of the Redis-protocol listener ("" when it is off)."""
        return _host_port(self.redis)[0] if self.redis else ""

    @property
    def redis_port(self) -> int:
        """The port of the Redis-protocol listener (0 when it is off, or for any free one)."""
        return _host_port(self.redis)[1] if self.redis else 0

    def viewer_token_list(self) -> tuple[str, ...]:
        """The viewer tokens: those set and those in `viewer_tokens_file` (read now)."""
        if self.viewer_tokens_file is None:
            return self.viewer_tokens
        try:
            lines = self.viewer_tokens_file.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read viewer_tokens_file {self.viewer_tokens_file}: "
                              f"{exc.strerror}") from None
        listed = [line.strip() for line in lines if line.strip()
                  and not line.lstrip().startswith("#")]
        try:
            return self.viewer_tokens + _viewer_tokens(listed)
        except ConfigError as exc:
            raise ConfigError(f"viewer_tokens_file {self.viewer_tokens_file}: {exc}") from None

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
            key: base / value for key in _PATHS
            if key in data and key not in overrides and (value := getattr(config, key)) is not None
            and not value.is_absolute()})


_PATHS = ("data_dir", "tasks_file", "log_dir", "cookie_file", "viewer_tokens_file")


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ConfigError(f"must be a port number from 0 to 65535, got {value!r}")
    return value


def _host_port(value: str) -> tuple[str, int]:
    """HOST:PORT as (host, port); an IPv6 host may be bracketed ([::1]:8703)."""
    host, _, port = value.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _listen_address(value: Any) -> str:
    """A listener's HOST:PORT (port 0: any free one), or "" for none."""
    if not isinstance(value, str):
        raise ConfigError(f"must be a string HOST:PORT, or \"\" for off; got {value!r}")
    if value == "":
        return value
    host, sep, port = value.rpartition(":")
    if not (host.strip("[]") and sep and port.isdigit() and int(port) <= 65535):
        raise ConfigError(f"{value!r} is not HOST:PORT (e.g. \"127.0.0.1:8703\"), or \"\" "
                          "for off")
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


def _viewer_tokens(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError("must be a list of tokens")
    for token in value:
        if not isinstance(token, str) or len(token) < 16 or not token.isprintable() \
                or token != token.strip():
            raise ConfigError("a viewer token must be a string of at least 16 printable "
                              "characters, no spaces at its ends")
    return tuple(value)


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
    "name": string(re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"),
                    "letters, digits, '_', '.', '-'; at most 64 characters"),
    "data_dir": _path,
    "http_host": string(),
    "http_port": _port,
    "bert_host": string(),
    "bert_port": _port,
    "redis": _listen_address,
    "tasks_file": _path,
    "journal_sync": _sync_level,
    "accept_new_journal": boolean,
    "max_body_bytes": number(1024, integer=True),
    "max_payload_bytes": number(64, integer=True),
    "max_journal_mb": number(0.01),
    "dedupe_window_s": number(0),
    "log_dir": _path,
    "cluster": string(re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"),
                       "letters, digits, '_', '.', '-'; at most 64 characters"),
    "cookie": string(re.compile(r"\S{8,1024}"), "8 to 1024 characters, no spaces"),
    "cookie_file": _path,
    "link_host": string(),
    "link_port": _port,
    "join": _seeds,
    "mdns": boolean,
    "mdns_type": string(re.compile(r"_[a-z0-9-]{1,14}\._tcp\.local\."),
                         "like '_yptask._tcp.local.' (a label of at most 15 bytes)"),
    "heartbeat_s": number(0.05),
    "down_after_s": number(0.2),
    "timer_lease_s": number(0.3),
    "client_id_wait_s": number(0.01),
    "client_id_pending_s": number(0.1),
    "console_password_hash": _password_hash,
    "api_tokens": _tokens,
    "viewer_tokens": _viewer_tokens,
    "viewer_tokens_file": _path,
    "viewer_password_hash": _password_hash,
    "allow_from": _networks,
    "http_allowed_hosts": _names(re.compile(r"[A-Za-z0-9.:\[\]-]{1,255}"), "a host name"),
    "http_allowed_origins": _names(re.compile(r"https?://[A-Za-z0-9.:\[\]-]{1,255}"),
                                   "an origin like 'https://admin.example.com'"),
    "max_http_connections": number(0, integer=True),
    "max_bert_connections": number(0, integer=True),
    "max_link_connections": number(0, integer=True),
    "max_redis_connections": number(0, integer=True),
    "http_head_timeout_s": number(0.05),
    "http_keepalive_timeout_s": number(0.05),
    "bert_idle_timeout_s": number(0.05),
    "redis_idle_timeout_s": number(0.05),
    "link_handshake_timeout_s": number(0.05),
}
