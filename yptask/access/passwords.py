"""Console passwords: scrypt hashes (standard library), made and checked in one place."""

from __future__ import annotations

import hashlib
import hmac
import os

from yptask.errors import ConfigError

__all__ = ["check_hash", "hash_password", "verify_password"]

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$hash`, for `console_password_hash`."""
    if len(password) < 8:
        raise ConfigError("a console password needs at least 8 characters")
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def check_hash(encoded: str) -> str:
    """Return `encoded` if it is a hash `hash_password` makes; raise ConfigError if not."""
    parts = encoded.split("$")
    try:
        ok = (len(parts) == 6 and parts[0] == "scrypt" and all(p.isdigit() for p in parts[1:4])
              and len(bytes.fromhex(parts[4])) >= 8 and len(bytes.fromhex(parts[5])) == 32)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError("not a password hash; make one with `yptask hash-password`")
    return encoded


def verify_password(password: str, encoded: str) -> bool:
    _, n, r, p, salt, digest = encoded.split("$")
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), dklen=32,
                               n=int(n), r=int(r), p=int(p), maxmem=2**26)
    return hmac.compare_digest(candidate, bytes.fromhex(digest))
