"""`yptask status` and `yptask nodes`: how a node's tasks and the cluster's members are.

`status` prints, per task, its workers per node, queued, in flight, handled,
failed and state (and why its workers cannot start, if they cannot); `nodes` lists
the members with their state, addresses, boot time and when they were last heard,
or `--forget`s one that is gone for good.
"""

from __future__ import annotations

import argparse

from yptask.cli.connect import Subparsers, add_command, client
from yptask.cli.exits import EXIT_OK
from yptask.cli.formats import ago, clock, dump, per_node, table, with_start_errors

__all__ = ["add_parsers"]


def _status(args: argparse.Namespace) -> int:
    status = client(args).status()
    if args.json:
        print(dump(status))
        return EXIT_OK
    tasks = status.get("tasks") or {}
    print(f"node {status.get('node')}, up {status.get('uptime_s')} s")
    named = sorted(tasks.items())
    rows = [[name, per_node(t.get("workers")), t.get("queued", 0), t.get("in_flight", 0),
             t.get("handled", 0), t.get("failed", 0), t.get("state", "-")] for name, t in named]
    print(with_start_errors(
        table(["TASK", "WORKERS", "QUEUED", "IN FLIGHT", "HANDLED", "FAILED", "STATE"], rows),
        [t for _, t in named]) if rows else "no tasks")
    return EXIT_OK


def _nodes(args: argparse.Namespace) -> int:
    if args.forget:
        done = client(args).forget_node(args.forget)
        print(dump(done) if args.json else f"node {args.forget} forgotten: the timer lease "
                                           "counts its majority without it")
        return EXIT_OK
    members = client(args).nodes()
    if args.json:
        print(dump(members))
        return EXIT_OK
    rows = [[m.get("name", "?") + (" (this node)" if m.get("self") else ""), m.get("state", "-"),
             m.get("link", "-"), m.get("http", "-") or "-",
             clock(m.get("started_at")), ago(m)] for m in members]
    print(table(["NODE", "STATE", "LINK", "HTTP", "BOOTED", "LAST HEARD"], rows))
    return EXIT_OK


def add_parsers(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `status` and `nodes`."""
    add_command(sub, "status", _status, "per task: workers per node, queued, in flight, "
                "handled, failed, state", "per task: workers, queued, in flight, handled, failed")
    nodes = add_command(sub, "nodes", _nodes, "the cluster's members: state, link and HTTP "
                        "address, boot time, last heard; or forget one that is gone for good",
                        "the cluster's members: state, addresses, boot time, last heard")
    nodes.add_argument("--forget", metavar="NODE", help="take a node that is gone for good "
                       "off the roster the timer lease counts its majority in")
