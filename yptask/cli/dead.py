"""`yptask dead`: the dead letters (messages that ran out of attempts), or replay one.

`--replay ID` requeues a dead letter (`--task` narrows it to one task's delivery)
and prints how many deliveries went back in the queue; none is EXIT_FAILED.
"""

from __future__ import annotations

import argparse
import sys

from yptask.cli.connect import Subparsers, add_command, client
from yptask.cli.exits import EXIT_FAILED, EXIT_OK
from yptask.cli.formats import dump, positive_int, table

__all__ = ["add_parsers"]


def _dead(args: argparse.Namespace) -> int:
    if args.task is not None and args.replay is None:
        args.parser.error("--task goes with --replay ID")  # exits EXIT_USAGE
    node = client(args)
    if args.replay is not None:
        count = node.replay(args.replay, args.task)
        if args.json:
            print(dump({"id": args.replay, "replayed": count}))
        elif count:
            print(count)
        if not count:
            where = f" for task {args.task!r}" if args.task else ""
            print(f"yptask: no dead letter {args.replay!r}{where}; `yptask dead` lists them",
                  file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    letters = node.dead_letters(args.limit)
    if args.json:
        print(dump(letters))
    elif not letters:
        print("no dead letters")
    else:
        print(table(["ID", "TASK", "ATTEMPT", "ERROR"],
                    [[d.get("id"), d.get("task"), d.get("attempt"),
                      f"{d.get('error_class')}: {str(d.get('error', '')).partition(chr(10))[0]}"]
                     for d in letters]))
    return EXIT_OK


def add_parsers(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `dead`."""
    dead = add_command(sub, "dead", _dead, "list dead letters (messages out of attempts), or "
                       "replay one", "list dead letters, or replay one")
    dead.add_argument("--limit", type=positive_int, default=100, metavar="N",
                      help="show the newest N (default %(default)s)")
    dead.add_argument("--replay", metavar="ID", help="requeue this dead letter; print how many "
                                                     "deliveries were requeued")
    dead.add_argument("--task", metavar="TASK", help="with --replay: only for this task")
