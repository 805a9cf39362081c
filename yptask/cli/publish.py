"""`yptask cast` and `yptask call`: publish a message, or have one worker answer it now.

The message is a JSON argument (`-` reads it from stdin); every other check of a
cast or call (name, id, priority, timeout, payload) is the node's, whose error
answer the command prints as one line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from yptask.cli.connect import Subparsers, add_command, client
from yptask.cli.exits import EXIT_FAILED, EXIT_OK
from yptask.cli.formats import dump, json_argument, positive_float
from yptask.errors import HandlerError
from yptask.ingress.cast import CAST_OPTIONS

__all__ = ["add_parsers"]


def _cast(args: argparse.Namespace) -> int:
    msg = json_argument(args.msg, "JSON (the message)")
    options = {name: value for name in CAST_OPTIONS
               if (value := getattr(args, name, None)) is not None}
    result = client(args).cast(args.name, msg, **options)
    if args.json:
        print(dump(result))
    else:
        tasks = ", ".join(result.get("tasks") or []) or "no task"
        note = "  (duplicate: already accepted, not sent again)" if result.get("duplicate") \
            else ""
        due = result.get("not_before")
        when = f"  (due {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(due))})" \
            if isinstance(due, (int, float)) else ""
        print(f"{result.get('id')}  -> {tasks}{note}{when}")
    if not result.get("tasks"):
        print(f"yptask: warning: no task subscribes to {args.name!r}; the message went "
              "nowhere (`yptask tasks` lists the subscriptions)", file=sys.stderr)
    return EXIT_OK


def _call(args: argparse.Namespace) -> int:
    msg = json_argument(args.msg, "JSON (the message)")
    try:
        result = client(args).call(args.name, msg, timeout=args.timeout)
    except HandlerError as exc:
        if args.traceback:
            for line in exc.backtrace:
                print(line, file=sys.stderr)
        print(f"error: {exc.error_class}: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result, ensure_ascii=False, indent=2 if args.json else None))
    return EXIT_OK


def add_parsers(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `cast` and `call`."""
    cast = add_command(sub, "cast", _cast, "publish a message to every task subscribed to "
                       "NAME; print its id and the tasks it went to",
                       "publish a message to every task subscribed to its name")
    cast.add_argument("name", metavar="NAME", help="message name, e.g. upai.photos.upload")
    cast.add_argument("msg", metavar="JSON", help="the message, as JSON ('-': read stdin)")
    cast.add_argument("--id", help="message id (a repeated id is not sent again)")
    cast.add_argument("--priority", type=int, metavar="N",
                      help="0 (lowest) to 9; default: each task's default_priority")
    cast.add_argument("--ttl", dest="ttl_s", type=float, metavar="S",
                      help="expire unless handed to a worker within S seconds")
    cast.add_argument("--deadline", type=float, metavar="EPOCH",
                      help="expire unless handed to a worker by this time (epoch seconds)")
    cast.add_argument("--delay", dest="delay_s", type=float, metavar="S",
                      help="deliver no sooner than S seconds from now")
    cast.add_argument("--at", type=float, metavar="EPOCH",
                      help="deliver no sooner than this time (epoch seconds)")
    cast.add_argument("--traceparent", metavar="TP",
                      help="the W3C trace context to join (default: a new trace)")

    call = add_command(sub, "call", _call, "have one worker handle a message now; print its "
                       "answer as JSON", "have one worker handle a message now; print its answer")
    call.add_argument("name", metavar="NAME", help="message name, e.g. upai.echo")
    call.add_argument("msg", metavar="JSON", help="the message, as JSON ('-': read stdin)")
    call.add_argument("--timeout", type=positive_float, default=30.0, metavar="S",
                      help="seconds to wait for the answer (default %(default)s)")
    call.add_argument("--traceback", action="store_true",
                      help="on a handler error, print the handler's traceback too")
