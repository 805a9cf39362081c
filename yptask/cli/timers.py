"""`yptask timers` and `yptask timer show|apply|delete`: the cron timers.

`timers` lists each timer with its last and next fire and which node fires them
(the holder of the timer lease); `timer apply` reads `[[timer]]` tables with the
schedule's own loader, so an impossible schedule is refused before any node is asked.
"""

from __future__ import annotations

import argparse

from yptask.cli.connect import Subparsers, add_command, client
from yptask.cli.exits import EXIT_OK
from yptask.cli.formats import clock, dump, read_definitions, show_definition, table

__all__ = ["add_parsers"]

# What `timers` reports of a timer's run, not part of its definition: `timer show` leaves it out.
_TIMER_STATE = ("last_fire", "next_fire", "last_error", "last_error_at", "leader", "epoch")


def _timers(args: argparse.Namespace) -> int:
    rows = client(args).timers()
    if args.json:
        print(dump(rows))
        return EXIT_OK
    if not rows:
        print("no timers; `yptask timer apply FILE` adds some")
        return EXIT_OK
    leader, epoch = rows[0].get("leader"), rows[0].get("epoch")
    print(f"fired by node {leader} (lease epoch {epoch})" if leader else
          "fired by no node now: the timer lease is free (a new leader is being elected, or "
          "no majority of the nodes is reachable)")
    print(table(["NAME", "CRON", "ZONE", "MESSAGE", "LAST FIRE", "NEXT FIRE", "LAST ERROR"],
                [[r.get("name"), r.get("cron"), r.get("timezone"), r.get("message"),
                  clock(r.get("last_fire")),
                  clock(r.get("next_fire")) if r.get("enabled", True) else "disabled",
                  r.get("last_error") or "-"] for r in rows]))
    return EXIT_OK


def _timer_show(args: argparse.Namespace) -> int:
    row = client(args).timer(args.name)
    if args.json:
        return show_definition(args, row, "timer")
    return show_definition(args, {k: v for k, v in row.items() if k not in _TIMER_STATE},
                           "timer")


def _timer_apply(args: argparse.Namespace) -> int:
    from yptask.timers.schedule import load_timers

    timers = read_definitions(str(args.file), load_timers, "timer")
    node = client(args)
    stored = [node.put_timer(timer.to_dict()) for timer in timers]
    if args.json:
        print(dump(stored))
    else:
        for row in stored:
            print(f"timer {row.get('name')} saved; next fire {clock(row.get('next_fire'))}")
    return EXIT_OK


def _timer_delete(args: argparse.Namespace) -> int:
    client(args).delete_timer(args.name)
    print(dump({"deleted": args.name}) if args.json else f"timer {args.name} deleted")
    return EXIT_OK


def add_parsers(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `timers` and `timer show|apply|delete`."""
    add_command(sub, "timers", _timers, "list the timers: schedule, last fire, next fire, "
                "last error", "list the cron timers with their last and next fire")
    timer = sub.add_parser("timer", help="show, apply (from TOML) or delete timer definitions",
                           description="show, apply or delete timer definitions")
    actions = timer.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_command(actions, "show", _timer_show, "print a timer's definition as a [[timer]] TOML "
                "table").add_argument("name", metavar="NAME")
    add_command(actions, "apply", _timer_apply, "create or update the [[timer]] tables of a "
                "TOML file").add_argument("file", metavar="FILE")
    add_command(actions, "delete", _timer_delete, "delete a timer, on every node"
                ).add_argument("name", metavar="NAME")
