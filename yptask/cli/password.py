"""`yptask hash-password`: a `console_password_hash` (or `viewer_password_hash`, the
read-only console password) for the node config.

The password is typed twice at a terminal, or read as one line from stdin.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from yptask.cli.connect import Subparsers, add_command
from yptask.cli.exits import EXIT_OK, InputError
from yptask.errors import ConfigError

__all__ = ["add_parsers"]


def _hash_password(args: argparse.Namespace) -> int:
    """Print a hash for `console_password_hash` or `viewer_password_hash`, of a password
    typed (or piped) in."""
    from yptask.access.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("console password: ")
        if getpass.getpass("again: ") != password:
            raise InputError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    try:
        print(hash_password(password))
    except ConfigError as exc:
        raise InputError(str(exc)) from None
    return EXIT_OK


def add_parsers(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `hash-password`."""
    add_command(sub, "hash-password", _hash_password, "print a console_password_hash (or a "
                "viewer_password_hash: the read-only one) for the node config (reads the "
                "password from the terminal or stdin)",
                "print a console password hash for the node config")
