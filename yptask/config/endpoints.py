"""The checks of a remote task's endpoint fields: `url`, `headers`, `fastcgi`, `script`.

A task whose workers are an HTTP endpoint names it with `url` (and may add
`headers` to every request); one served by a FastCGI server names its address
with `fastcgi` and the script it runs with `script`. Each check raises
`ConfigError` saying what is wrong; `TaskDef` names the field.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from yptask.errors import ConfigError

__all__ = ["MAX_HEADERS", "RESERVED_HEADERS", "check_fastcgi", "check_headers", "check_script",
           "check_url"]

MAX_URL_CHARS = 2048
MAX_HEADERS = 64
MAX_HEADER_CHARS = 8192
# RFC 9110 token characters: what a header name is made of.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
# Set by the node on every request (framing, the body's type, the trace): a task cannot.
RESERVED_HEADERS = frozenset({"content-length", "content-type", "transfer-encoding", "host",
                              "connection", "keep-alive", "upgrade", "te", "trailer",
                              "traceparent", "expect", "accept-encoding"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}))"
                        r":([0-9]{1,5})")
_MAX_UNIX_PATH = 107  # sun_path holds 108 bytes, the last one a NUL


def check_url(value: Any) -> str:
    """An HTTP endpoint: http:// or https://, a host, no user or password in it."""
    if not isinstance(value, str):
        raise ConfigError(f"must be a string such as \"http://127.0.0.1:8080/tasks\", got "
                          f"{type(value).__name__}")
    if len(value) > MAX_URL_CHARS or _CONTROL.search(value) or " " in value \
            or not value.isascii():
        raise ConfigError(f"must be a URL of at most {MAX_URL_CHARS} ASCII characters with no "
                          "spaces or control characters (percent-encode the others; a "
                          "host's international name in its xn-- form)")
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{value!r:.100}: the scheme must be http or https, got "
                          f"{parts.scheme or 'none'!r}")
    if "@" in parts.netloc:
        raise ConfigError(f"{value!r:.100}: no user or password in the URL; send a token "
                          "in 'headers' instead")
    if not parts.hostname:
        raise ConfigError(f"{value!r:.100}: the URL has no host")
    try:
        parts.port  # noqa: B018 - raises on a port out of range or not a number
    except ValueError:
        raise ConfigError(f"{value!r:.100}: the port must be a number from 1 to 65535"
                          ) from None
    if parts.fragment:
        raise ConfigError(f"{value!r:.100}: a URL of an endpoint has no #fragment")
    return value


def check_headers(value: Any) -> dict[str, str]:
    """Headers sent with every request: a table of name = "value"."""
    if not isinstance(value, Mapping):
        raise ConfigError('must be a table of header name = "value", e.g. '
                          '{ Authorization = "Bearer ..." }')
    if len(value) > MAX_HEADERS:
        raise ConfigError(f"at most {MAX_HEADERS} headers, got {len(value)}")
    seen: set[str] = set()
    for name, item in value.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ConfigError(f"{name!r:.80} is not a header name (letters, digits and "
                              "!#$%&'*+.^_`|~-)")
        if name.lower() in RESERVED_HEADERS:
            raise ConfigError(f"{name!r} is set by the node on every request; a task "
                              "cannot set it")
        if name.lower() in seen:
            raise ConfigError(f"{name!r} is given twice (header names ignore case)")
        seen.add(name.lower())
        if not isinstance(item, str) or len(item) > MAX_HEADER_CHARS or not item.isascii() \
                or _CONTROL.search(item.replace("\t", "")):  # a tab is allowed, CR/LF never
            raise ConfigError(f"{name}: the value must be a string of at most "
                              f"{MAX_HEADER_CHARS} ASCII characters with no control "
                              "characters")
    return dict(value)


def check_fastcgi(value: Any) -> str:
    """A FastCGI server's address: "unix:/absolute/path.sock" or "host:port"."""
    if not isinstance(value, str):
        raise ConfigError('must be a string: "unix:/run/php/fpm.sock" or "127.0.0.1:9000", '
                          f"got {type(value).__name__}")
    if value.startswith("unix:"):
        path = value[len("unix:"):]
        if not path.startswith("/") or "\x00" in path or \
                len(path.encode("utf-8", "surrogateescape")) > _MAX_UNIX_PATH:
            raise ConfigError(f"{value!r:.100}: a socket's path must be absolute, at most "
                              f"{_MAX_UNIX_PATH} bytes, e.g. \"unix:/run/php/fpm.sock\"")
        return value
    match = _HOST_PORT.fullmatch(value)
    if match is None or not 1 <= int(match[2]) <= 65535:
        raise ConfigError(f"{value!r:.100} is not an address: use \"HOST:PORT\" (port 1 to "
                          "65535) or \"unix:/absolute/path.sock\"")
    return value


def check_script(value: Any) -> str:
    """The script a FastCGI server runs for each message: an absolute path."""
    if not isinstance(value, str) or not value.startswith("/") or _CONTROL.search(value) \
            or len(value) > 4096:
        raise ConfigError(f"must be an absolute path, e.g. \"/srv/app/worker.php\", got "
                          f"{value!r:.100}")
    return value
