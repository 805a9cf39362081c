"""`yptask cancel ID`: cancel a message's waiting deliveries on every node of the cluster.

Prints, per node, the tasks whose delivery was cancelled and those already
running there (not stopped: their handlers can see it with `self.cancelled()`),
and names a node that could not be asked. With nothing cancelled nor running
anywhere (an id no node holds, or one already handled) it exits EXIT_FAILED.
"""

from __future__ import annotations

import argparse
from typing import Any

from yptask.cli.connect import Subparsers, add_command, client
from yptask.cli.exits import EXIT_FAILED, EXIT_OK, say
from yptask.cli.formats import dump

__all__ = ["add_parsers"]


def _cancel(args: argparse.Namespace) -> int:
    answer: dict[str, Any] = client(args).cancel(args.id)
    cancelled, running = answer.get("cancelled", {}), answer.get("running", {})
    unreached = answer.get("unreached", [])
    if args.json:
        print(dump(answer))
    else:
        for node, tasks in sorted(cancelled.items()):
            print(f"cancelled on {node}: {', '.join(tasks)}")
        for node, tasks in sorted(running.items()):
            print(f"running on {node} (not stopped): {', '.join(tasks)}")
    if unreached:
        say(f"not reached: {', '.join(unreached)}; cancel again once they are back")
    if not cancelled and not running:
        say(f"no node has a waiting or running delivery of {args.id!r}")
        return EXIT_FAILED
    return EXIT_OK


def add_parsers(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `cancel`."""
    cancel = add_command(sub, "cancel", _cancel, "cancel a message's waiting deliveries "
                         "(queued, delayed or waiting for a retry) on every node",
                         "cancel a message on every node")
    cancel.add_argument("id", metavar="ID", help="the message id (cast printed it)")
