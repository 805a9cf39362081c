"""Talking to a node: its URL, the admin token, the client, and the options every
command that talks to one takes.

The node is `--url URL`, else `$YPTASK_URL`, else http://127.0.0.1:8700/rpc; a
bare `HOST:PORT` is completed to `http://HOST:PORT/rpc`. Admin commands need the
node's admin token: for a node on this machine's loopback it is read from the
node's data dir (`--data-dir`, else `$YPTASK_DATA_DIR`, else ./yptask-data, as for
`yptask node`); `$YPTASK_ADMIN_TOKEN` gives it directly, `$YPTASK_PASSWORD` the
console password instead. A node with publisher tokens wants one for cast and
call (or the admin token): `$YPTASK_TOKEN`.

Each request goes through `yptask.client.Client` (standard library only); the
node's error answers come back as the exceptions `yptask.cli.exits.guarded`
turns into exit codes.
"""

from __future__ import annotations

import argparse
import os
import urllib.parse
from pathlib import Path

from yptask.cli.exits import Command, guarded
from yptask.client import DEFAULT_URL, Client

__all__ = ["REQUEST_TIMEOUT_S", "Subparsers", "add_command", "client", "node_url"]

# A node gives up on its actors after 120 s (ASK_TIMEOUT_S); wait a little longer than that,
# so a slow admin operation ends with the node's own error rather than a client timeout.
REQUEST_TIMEOUT_S = 150.0

Subparsers = argparse._SubParsersAction  # what `add_subparsers` returns; `add_parsers` fills it


def node_url(text: str) -> str:
    """Complete `HOST:PORT` or `http://HOST:PORT` to the node's JSON-RPC URL."""
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http URL, e.g. "
                                         f"{DEFAULT_URL}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/rpc")
    return urllib.parse.urlunsplit(parts)


def _common_options() -> argparse.ArgumentParser:
    """--url, --json and --data-dir: the parent parser of every command `add_command` adds."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", type=node_url,
                        default=os.environ.get("YPTASK_URL") or DEFAULT_URL,
                        help=f"the node's JSON-RPC URL (default: $YPTASK_URL, else {DEFAULT_URL})")
    common.add_argument("--json", action="store_true", help="print the raw JSON answer")
    common.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("YPTASK_DATA_DIR") or "yptask-data"),
                        help="the node's data dir, where its admin token is (default: "
                             "$YPTASK_DATA_DIR, else ./yptask-data)")
    return common


def add_command(sub: Subparsers[argparse.ArgumentParser], name: str, run: Command,
                description: str, summary: str | None = None) -> argparse.ArgumentParser:
    """Add a command that talks to a node: the common options, `run` guarded.

    `summary` is its line in `yptask --help` (default: the description).
    """
    command: argparse.ArgumentParser = sub.add_parser(
        name, parents=[_common_options()], help=summary or description,
        description=description)
    command.set_defaults(run=guarded(run), parser=command)
    return command


def client(args: argparse.Namespace) -> Client:
    """A client for the node of `--url`, with every credential the environment offers."""
    return Client(args.url, timeout_s=REQUEST_TIMEOUT_S,
                  password=os.environ.get("YPTASK_PASSWORD"), admin_token=_admin_token(args),
                  token=os.environ.get("YPTASK_TOKEN"))


def _admin_token(args: argparse.Namespace) -> str | None:
    """$YPTASK_ADMIN_TOKEN, else the token in the data dir, but only for a node on
    loopback: the token of a node here is never sent to another machine."""
    from yptask.access.addresses import is_loopback
    from yptask.access.secrets import read_admin_token

    if os.environ.get("YPTASK_ADMIN_TOKEN"):
        return os.environ["YPTASK_ADMIN_TOKEN"]
    if not is_loopback(urllib.parse.urlsplit(args.url).hostname or ""):
        return None
    return read_admin_token(args.data_dir)
