"""`yptask node`: run a node in the foreground until SIGTERM or SIGINT.

Reads the node config (the packaged default unless `--config` names one),
applies the command-line overrides, logs with the node name in every record,
prints the node's addresses when it is ready, and stops gracefully on SIGTERM,
SIGINT or SIGHUP: running messages finish, workers exit, the journal closes. It raises
its soft open-file limit to the hard one first (`yptask.connection_limits`). Under a
service manager (`$NOTIFY_SOCKET`, systemd's `Type=notify`) it says when it is ready
and when it starts to stop (`yptask.cli.readiness`).

The node's event loop is uvloop's: it takes about a sixth off the node's CPU
per request, which is most of what a call or a cast costs it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from yptask.cli.connect import Subparsers
from yptask.cli.exits import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE, quiet_stdout
from yptask.cli.readiness import Readiness
from yptask.errors import ConfigError

__all__ = ["add_parsers", "run"]


class _NodeNameFilter(logging.Filter):
    """Puts the node's name on every log record, whichever library logs it."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        return True


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8700)")
    return host or "127.0.0.1", int(port)


def add_parsers(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `node` and its options."""
    parser = sub.add_parser("node", help="run a node in the foreground",
                            description=__doc__.splitlines()[0])
    parser.set_defaults(run=run, parser=parser)
    parser.add_argument("--config", type=Path, help="node config file (TOML, a [node] table)")
    parser.add_argument("--name", help="node name (default: the host name)")
    parser.add_argument("--data-dir", type=Path, help="journal, task store and worker logs")
    parser.add_argument("--http", type=_host_port, metavar="HOST:PORT",
                        help="JSON-RPC (POST /rpc) and console (/) address")
    parser.add_argument("--bert", type=_host_port, metavar="HOST:PORT",
                        help="BERT-RPC TCP endpoint address")
    parser.add_argument("--redis", metavar="HOST:PORT",
                        help="Redis-protocol ingress address (casts; default: off)")
    parser.add_argument("--link", type=_host_port, metavar="HOST:PORT",
                        help="inter-node link address; mDNS speaks on this interface only")
    parser.add_argument("--join", action="append", metavar="HOST:PORT",
                        help="another node's link address, a static seed (repeatable)")
    parser.add_argument("--cluster", help="cluster name: nodes join only their own cluster")
    parser.add_argument("--cookie-file", type=Path,
                        help="file holding the cluster cookie (the secret every node shares)")
    parser.add_argument("--no-mdns", dest="mdns", action="store_false", default=None,
                        help="find peers only through --join seeds")
    parser.add_argument("--tasks", type=Path, help="task definitions seeding a new node (TOML)")
    parser.add_argument("--accept-new-journal", dest="accept_new_journal", action="store_true",
                        default=None, help="start even if the journal is not the one this "
                        "node last ran with (emptied or replaced): what it held is lost")
    parser.add_argument("--log-level", default="INFO")


def run(args: argparse.Namespace) -> int:
    """Run a node until a stop signal; return the exit code."""
    import uvloop

    from yptask.config.node import NodeConfig
    from yptask.connection_limits import raise_fd_limit

    # Taken out of the environment before any worker inherits it.
    readiness = Readiness.from_environment()

    overrides: dict[str, Any] = {"name": args.name, "data_dir": args.data_dir,
                                 "tasks_file": args.tasks}
    if args.http:
        overrides["http_host"], overrides["http_port"] = args.http
    if args.bert:
        overrides["bert_host"], overrides["bert_port"] = args.bert
    if args.link:
        overrides["link_host"], overrides["link_port"] = args.link
    overrides.update(redis=args.redis, join=args.join, cluster=args.cluster,
                     cookie_file=args.cookie_file, mdns=args.mdns,
                     accept_new_journal=args.accept_new_journal)
    path = args.config or Path(str(resources.files("yptask.conf") / "yptask.toml"))
    try:
        config = NodeConfig.load(path, **overrides)
    except ConfigError as exc:
        print(f"yptask node: {exc}", file=sys.stderr)
        readiness.status(f"not started: {exc}")
        return EXIT_CONFIG
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_NodeNameFilter(config.name))
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s [%(node)s] %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    # Before any socket: the connection caps are set under the limit this leaves.
    raise_fd_limit()
    return uvloop.run(_run(config, readiness))


async def _run(config: Any, readiness: Readiness) -> int:
    from yptask.node import Node

    readiness.status("starting: checking the journal, starting the workers")
    try:
        node = await Node.start(config)
    except ConfigError as exc:
        print(f"yptask node: {exc}", file=sys.stderr)
        readiness.status(f"not started: {exc}")
        return EXIT_CONFIG
    except OSError as exc:
        print(f"yptask node: cannot start: {exc}", file=sys.stderr)
        readiness.status(f"not started: {exc}")
        return EXIT_UNAVAILABLE
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP too: a terminal closing (or an init system) must not kill the node undrained.
    # It stops, as for SIGTERM; config is read at start, so a restart applies a new one.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, stop.set)
    try:
        _tell(f"yptask node {node.name} ready\n"
              f"  JSON-RPC  {node.http_url}/rpc\n"
              f"  BERT-RPC  {node.bert_address}\n"
              f"  Redis     {node.redis_address or '-'}\n"
              f"  link      {node.cluster.link_address if node.cluster else '-'}\n"
              f"  data      {node.data_dir}\n"
              f"  console   {node.http_url}/login?token={node.admin_token}")
        readiness.ready(f"serving: JSON-RPC {node.http_url}/rpc, BERT-RPC {node.bert_address}")
        await stop.wait()
        readiness.stopping("stopping: running messages finish first")
        _tell(f"yptask node {node.name} stopping: running messages finish first")
    finally:  # whatever happened above, the node drains and its threads end
        await node.stop()
    return EXIT_OK


def _tell(lines: str) -> None:
    """Print to stdout; once nobody reads it (a closed pipe), say nothing more there. A
    node must still stop (its actor and journal threads would keep the process alive)."""
    try:
        print(lines, flush=True)
    except (OSError, ValueError):
        quiet_stdout()
