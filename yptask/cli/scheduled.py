"""`yptask scheduled`: what waits on the node for a later time, soonest first.

Delayed casts (`delay_s` / `at`) not yet due, and failed attempts waiting for their
retry, as `scheduled.list` gives them: the message id and name, the task, when it
is due and in how long, its priority, and which of the two it is.
"""

from __future__ import annotations

import argparse
import time

from yptask.cli.connect import Subparsers, add_command, client
from yptask.cli.exits import EXIT_OK
from yptask.cli.formats import clock, dump, positive_int, table

__all__ = ["add_parsers"]


def _scheduled(args: argparse.Namespace) -> int:
    rows = client(args).scheduled(args.limit)
    if args.json:
        print(dump(rows))
    elif not rows:
        print("nothing scheduled")
    else:
        now = time.time()
        print(table(["ID", "NAME", "TASK", "KIND", "DUE", "IN", "ATTEMPT", "PRIORITY"],
                    [[r.get("id"), r.get("name"), r.get("task"), r.get("kind"),
                      clock(r.get("not_before")), _in(r.get("not_before"), now),
                      r.get("attempt"), r.get("priority")] for r in rows]))
    return EXIT_OK


def _in(when: object, now: float) -> str:
    if not isinstance(when, (int, float)):
        return "-"
    return f"{max(0.0, when - now):.1f}s"


def add_parsers(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `scheduled`."""
    scheduled = add_command(sub, "scheduled", _scheduled, "list delayed casts and retries "
                            "waiting for their time, soonest first", "list what waits for later")
    scheduled.add_argument("--limit", type=positive_int, default=100, metavar="N",
                           help="show the soonest N (default %(default)s)")
