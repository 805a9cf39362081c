"""The secrets a node keeps in its data dir: the cluster cookie and the admin token.

Each is a random string made at the node's first start, in a file only the
node's user may read (0600), and kept across restarts. Whoever can read the
data dir holds them: the cookie joins a cluster, the admin token administers
the node (`yptask.access.policy`), which is how the CLI on the same machine gets in
without a password.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from yptask.errors import ConfigError

__all__ = ["ADMIN_TOKEN_FILE", "COOKIE_FILE", "cluster_cookie", "read_admin_token", "read_or_make"]

ADMIN_TOKEN_FILE = "admin-token"
COOKIE_FILE = "cookie"
MIN_SECRET_CHARS = 8


def read_or_make(path: Path, what: str, *, make: bool = True) -> str:
    """The secret in `path`; a new random one first if `make` and the file is missing."""
    if make:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(24) + "\n")
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_CHARS:
        raise ConfigError(f"the {what} in {path} is shorter than {MIN_SECRET_CHARS} characters")
    return secret


def read_admin_token(data_dir: Path) -> str | None:
    """The admin token of the node whose data dir this is, or None if it cannot be read."""
    try:
        return read_or_make(data_dir / ADMIN_TOKEN_FILE, "admin token", make=False)
    except ConfigError:
        return None


def cluster_cookie(cookie: str | None, cookie_file: Path | None, data_dir: Path) -> bytes:
    """The cluster cookie: as given, from its file, or a random one kept in the data dir."""
    if cookie is not None:
        return cookie.encode()
    path = cookie_file or data_dir / COOKIE_FILE
    return read_or_make(path, "cluster cookie", make=cookie_file is None).encode()
