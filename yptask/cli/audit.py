"""`yptask audit`: the changes operators made on every node of the cluster, newest first.

Each line is one entry of `audit.list`: when, on which node, who (their role and
how they showed it), the method, its target and its outcome. `--before ID`
pages on from the last entry shown; `--target NAME` keeps those about one task,
timer or message.
"""

from __future__ import annotations

import argparse

from yptask.cli.connect import Subparsers, add_command, client
from yptask.cli.exits import EXIT_OK
from yptask.cli.formats import clock, dump, positive_int, table

__all__ = ["add_parsers"]


def _audit(args: argparse.Namespace) -> int:
    rows = client(args).audit(args.limit, args.before, args.target)
    if args.json:
        print(dump(rows))
    elif not rows:
        print("no changes in the audit log")
    else:
        print(table(["ID", "WHEN", "NODE", "ROLE", "WHO", "ADDRESS", "METHOD", "TARGET",
                     "OUTCOME"],
                    [[r.get("id"), clock(r.get("at")), r.get("node"), r.get("role"),
                      r.get("who"), r.get("address") or "-", r.get("method"),
                      _target(r), r.get("outcome")] for r in rows]))
    return EXIT_OK


def _target(row: dict[str, object]) -> str:
    target = str(row.get("target") or "-")
    return f"{target} ({row['count']})" if "count" in row else target


def add_parsers(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `audit`."""
    audit = add_command(sub, "audit", _audit, "list the changes made on every node (who, "
                        "what, its target, its outcome), newest first", "list who changed what")
    audit.add_argument("--limit", type=positive_int, default=50, metavar="N",
                       help="show the newest N (default %(default)s, at most 10000)")
    audit.add_argument("--before", metavar="ID", help="only entries older than this one")
    audit.add_argument("--target", metavar="NAME",
                       help="only entries about this task, timer or message id")
