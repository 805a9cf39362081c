"""`yptask trace ID`: the tree of the messages one request caused, on every node.

ID is a trace id (32 hex digits, as a `traceparent` carries it) or the id of a
message of the trace. Each message is printed under its parent, indented, with
its kind (cast or call), name and id, when it was published, and per task
where it ran, its state (queued, running, handled, dead, expired, cancelled;
a call's: handled, failed, timeout), when it ended and, for a failure, its
error. A message whose parent is not in the trace (the request itself, or one
whose parent is gone from the journals) is a root. Exits EXIT_FAILED when no
node knows the id.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from yptask.cli.connect import Subparsers, add_command, client
from yptask.cli.exits import EXIT_FAILED, EXIT_OK, say
from yptask.cli.formats import clock, dump

__all__ = ["add_parsers", "tree_lines"]


def tree_lines(messages: list[Mapping[str, Any]]) -> list[str]:
    """The messages of a trace as indented lines, children under their parent, oldest first."""
    ids = {m["id"] for m in messages}
    children: dict[str | None, list[Mapping[str, Any]]] = {}
    for message in messages:  # already oldest first
        parent = message.get("parent_id")
        children.setdefault(parent if parent in ids else None, []).append(message)
    lines: list[str] = []
    shown: set[str] = set()

    def walk(parent: str | None, depth: int) -> None:
        for message in children.get(parent, []):
            if message["id"] in shown:  # a cycle of forged parents: each is shown once
                continue
            shown.add(message["id"])
            indent = "  " * depth
            lines.append(f"{indent}{message.get('kind', 'cast')} {message['name']} "
                         f"{message['id']}  published {clock(message.get('published_at'))}")
            for task in message.get("tasks", []):
                lines.append(f"{indent}    {_task_line(task)}")
            walk(message["id"], depth + 1)

    walk(None, 0)
    return lines


def _task_line(task: Mapping[str, Any]) -> str:
    line = f"{task['task']} on {task.get('node') or '?'}: {task['state']}"
    if task.get("ended_at"):
        line += f" at {clock(task['ended_at'])}"
    if task.get("attempt"):
        line += f" (attempt {task['attempt']})"
    if task.get("error_class") or task.get("error"):
        error = f"{task.get('error_class') or ''}: {task.get('error') or ''}".strip(": ")
        line += f" - {error[:200]}"
    return line


def _trace(args: argparse.Namespace) -> int:
    answer: dict[str, Any] = client(args).trace(args.id)
    if args.json:
        print(dump(answer))
    elif answer.get("trace_id"):
        print(f"trace {answer['trace_id']}")
        for line in tree_lines(answer.get("messages", [])):
            print(line)
    unreached = answer.get("unreached", [])
    if unreached:
        say(f"not reached: {', '.join(unreached)}; their part of the trace is missing")
    if not answer.get("messages"):
        say(f"no node knows a message or trace {args.id!r}")
        return EXIT_FAILED
    return EXIT_OK


def add_parsers(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `trace`."""
    trace = add_command(sub, "trace", _trace, "show the tree of the messages one request "
                        "caused, on every node: where and when each ran, how it ended",
                        "the tree of messages of one trace")
    trace.add_argument("id", metavar="ID", help="a trace id, or the id of one of its messages")
