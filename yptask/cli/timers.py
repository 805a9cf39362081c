"""`yptask timers [pause|resume|run|ledger NAME]` and `yptask timer show|apply|delete`.

`timers` lists each timer with its last and next fire and which node fires them
(the holder of the timer lease); `timers pause|resume NAME` holds a timer's
ticks or lets them fire again, `timers run NAME` casts its message once now,
`timers ledger NAME` shows what became of its latest ticks; `timer apply` reads
`[[timer]]` tables with the schedule's own loader, so an impossible schedule
is refused before any node is asked.
"""

from __future__ import annotations

import argparse
from typing import Any

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
                  clock(r.get("last_fire")), _next(r), r.get("last_error") or "-"]
                 for r in rows]))
    return EXIT_OK


def _next(row: dict[str, Any]) -> str:
    if not row.get("enabled", True):
        return "disabled"
    return "paused" if row.get("paused") else clock(row.get("next_fire"))


def _timers_pause(args: argparse.Namespace) -> int:
    row = client(args).pause_timer(args.name)
    print(dump(row) if args.json else f"timer {args.name} paused: its ticks are skipped")
    return EXIT_OK


def _timers_resume(args: argparse.Namespace) -> int:
    row = client(args).resume_timer(args.name)
    print(dump(row) if args.json else
          f"timer {args.name} resumed; next fire {clock(row.get('next_fire'))}")
    return EXIT_OK


def _timers_run(args: argparse.Namespace) -> int:
    answer = client(args).run_timer(args.name)
    print(dump(answer) if args.json else
          f"timer {args.name} run now: message {answer.get('id')} for task(s) "
          f"{', '.join(answer.get('tasks') or []) or '(none subscribed)'}")
    return EXIT_OK


def _timers_ledger(args: argparse.Namespace) -> int:
    answer = client(args).timer_ledger(args.name, args.limit)
    if args.json:
        print(dump(answer))
        return EXIT_OK
    print(f"timer {args.name}, ticks in {answer.get('timezone')}, newest first")
    print(table(["TICK", "OUTCOME", "REASON", "NODE", "EPOCH", "AT"],
                [[e.get("tick_local"), e.get("outcome"), e.get("reason") or "-",
                  e.get("node"), e.get("epoch"), clock(e.get("at"))]
                 for e in answer.get("entries", [])]))
    if answer.get("unreached"):
        print(f"not heard from: {', '.join(answer['unreached'])}")
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
    """Add `timers [pause|resume|run|ledger NAME]` and `timer show|apply|delete`."""
    timers = add_command(sub, "timers", _timers, "list the timers: schedule, last fire, next "
                         "fire, last error; or pause, resume, run or show the ledger of one",
                         "list the cron timers; pause, resume or run one")
    actions = timers.add_subparsers(dest="timers_action", metavar="ACTION")
    for action, run, what in (
            ("pause", _timers_pause, "pause a timer: its ticks are skipped, none is cast"),
            ("resume", _timers_resume, "resume a paused timer, from its next tick"),
            ("run", _timers_run, "cast a timer's message once, now")):
        add_command(actions, action, run, what).add_argument("name", metavar="NAME")
    ledger = add_command(actions, "ledger", _timers_ledger, "what became of a timer's latest "
                         "ticks (fired, missed, skipped, ...), from every live node")
    ledger.add_argument("name", metavar="NAME")
    ledger.add_argument("--limit", type=int, default=20, help="this many ticks (default 20)")
    timer = sub.add_parser("timer", help="show, apply (from TOML) or delete timer definitions",
                           description="show, apply or delete timer definitions")
    actions = timer.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_command(actions, "show", _timer_show, "print a timer's definition as a [[timer]] TOML "
                "table").add_argument("name", metavar="NAME")
    add_command(actions, "apply", _timer_apply, "create or update the [[timer]] tables of a "
                "TOML file").add_argument("file", metavar="FILE")
    add_command(actions, "delete", _timer_delete, "delete a timer, on every node"
                ).add_argument("name", metavar="NAME")
