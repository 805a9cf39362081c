"""`yptask tasks`, `yptask task show|apply|delete` and `yptask restart`.

`task apply` reads a file of `[[task]]` tables with the config model's own loader
and stores each definition; `task show` prints one as a table `apply` reads back.
`restart` asks the node for a rolling restart and, while it runs, draws a progress
bar from the node's `status`; `restart --all` restarts every task, one at a time
(what `systemctl reload` runs, conf/yptask.service).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from yptask.cli.connect import REQUEST_TIMEOUT_S, Subparsers, add_command, client
from yptask.cli.exits import EXIT_FAILED, EXIT_OK
from yptask.cli.formats import (
    ProgressBar,
    dump,
    per_node,
    read_definitions,
    show_definition,
    table,
    with_start_errors,
)
from yptask.client import Client
from yptask.errors import UnknownTask, YPTaskError

__all__ = ["add_parsers"]

POLL_INTERVAL_S = 0.2  # how often `restart` asks for status while the restart runs


def _tasks(args: argparse.Namespace) -> int:
    node = client(args)
    definitions = node.tasks()
    status = node.status().get("tasks", {})
    rows = []
    for task in definitions:
        entry = status.get(task.get("name")) or {}
        rows.append({"name": task.get("name"), "group": task.get("group"),
                     "messages": list(task.get("messages") or []),
                     "workers": entry.get("workers") or {}, "state": entry.get("state", "-"),
                     **({"start_error": entry["start_error"]} if "start_error" in entry
                        else {})})
    if args.json:
        print(dump(rows))
    elif not rows:
        print("no tasks; `yptask task apply FILE` adds some")
    else:
        print(with_start_errors(
            table(["NAME", "GROUP", "MESSAGES", "WORKERS", "STATE"],
                  [[r["name"], r["group"], ",".join(r["messages"]), per_node(r["workers"]),
                    r["state"]] for r in rows]), rows))
    return EXIT_OK


def _task_show(args: argparse.Namespace) -> int:
    return show_definition(args, client(args).task(args.name), "task")


def _task_apply(args: argparse.Namespace) -> int:
    from yptask.config.tasks import load_tasks

    tasks = read_definitions(str(args.file), load_tasks, "task")
    node = client(args)
    existing = {task.get("name") for task in node.tasks()}
    stored = []
    for task in tasks:
        stored.append(node.put_task(task.to_dict()))
        if not args.json:
            done = ("unchanged" if stored[-1].get("changed") is False else
                    "updated" if task.name in existing else "created")
            print(f"task {task.name} {done}")
    if args.json:
        print(dump(stored))
    return EXIT_OK


def _task_delete(args: argparse.Namespace) -> int:
    client(args).delete_task(args.name)
    print(dump({"deleted": args.name}) if args.json else f"task {args.name} deleted")
    return EXIT_OK


def _pause(args: argparse.Namespace) -> int:
    paused = args.command == "pause"
    stored = client(args).pause(args.task) if paused else client(args).resume(args.task)
    done = "paused: its casts are journaled and wait" if paused else "resumed"
    print(dump(stored) if args.json else f"task {args.task} {done}")
    return EXIT_OK


class _RestartWatch(threading.Thread):
    """Polls `status` while a rolling restart runs and moves the bar.

    A restart replaces each worker new-before-old, so a node's worker count rising
    above what it was before marks one more replacement under way. The node answers
    `status` only between steps, so this is an estimate; the bar reaches 100 % only
    when the restart call returns.
    """

    def __init__(self, url: str, task: str, before: Mapping[str, int],
                 bar: ProgressBar) -> None:
        super().__init__(name=f"restart-watch-{task}", daemon=True)
        # Its own client: the main thread's is busy with the restart call.
        self.client = Client(url, timeout_s=REQUEST_TIMEOUT_S)
        self.task = task
        self.before = dict(before)
        self.bar = bar
        self.done = threading.Event()

    def run(self) -> None:
        total = max(sum(self.before.values()), 1)
        steps = 0
        above = dict.fromkeys(self.before, False)
        started = time.monotonic()
        self.bar.update(0.0, per_node(self.before))
        while not self.done.wait(POLL_INTERVAL_S):
            try:
                entry = self.client.status()["tasks"].get(self.task)
                workers = entry["workers"]
                counts = {str(n): int(c) for n, c in workers.items()}
            except (YPTaskError, KeyError, TypeError, ValueError, AttributeError):
                continue  # a missed poll only delays the bar
            for node, count in counts.items():
                rising = count > self.before.get(node, 0)
                if rising and not above.get(node, False):
                    steps += 1
                above[node] = rising
            elapsed = time.monotonic() - started
            self.bar.update(min(steps / total, 0.99), f"{per_node(counts)}  {elapsed:.1f} s")


def _restart(args: argparse.Namespace) -> int:
    if args.all == (args.task is not None):
        args.parser.error("name one TASK, or give --all")
    node = client(args)
    if args.all:
        return _restart_all(args, node)
    entry = node.status().get("tasks", {}).get(args.task)
    if not isinstance(entry, Mapping):  # let the node say the task is unknown
        result = node.restart(args.task)
        print(dump(result) if args.json else f"restarted {args.task}: generation "
              f"{result.get('generation')}, {result.get('replaced')} worker(s) replaced")
        return EXIT_OK
    result, after = _restart_with_bar(args, node, args.task, entry)
    if args.json:
        print(dump(result))
    else:
        print(_restarted(args.task, result, after))
    return EXIT_OK if _running(args.task, after) else EXIT_FAILED


def _restart_all(args: argparse.Namespace, node: Client) -> int:
    """Restart every task, one after another, so only one task at a time is short of a
    worker; a task that fails to come back is said, and the others still restart."""
    results: list[dict[str, Any]] = []
    failed = []
    for name in [str(task.get("name")) for task in node.tasks()]:
        entry = node.status().get("tasks", {}).get(name)
        try:
            result, after = _restart_with_bar(args, node, name, entry if isinstance(
                entry, Mapping) else {})
        except UnknownTask:  # deleted since the list was read: nothing to restart
            if not args.json:
                print(f"skipped {name}: deleted meanwhile")
            continue
        results.append(result)
        if not args.json:
            print(_restarted(name, result, after))
        if not _running(name, after):
            failed.append(name)
    if args.json:
        print(dump(results))
    elif not results:
        print("no tasks to restart")
    return EXIT_FAILED if failed else EXIT_OK


def _restarted(task: str, result: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    return (f"restarted {task}: generation {result.get('generation')}, "
            f"{result.get('replaced')} worker(s) replaced, now {after.get('state', '-')} "
            f"with {per_node(after.get('workers'))}")


def _running(task: str, after: Mapping[str, Any]) -> bool:
    """Whether the task's new workers run; if not, say so on stderr."""
    state = after.get("state", "-")
    if state in ("backoff", "stopped"):
        print(f"yptask: the new workers of {task} are not running (state {state}); "
              "the node's log and the task's worker logs say why", file=sys.stderr)
        return False
    return True


def _restart_with_bar(args: argparse.Namespace, node: Client, task: str,
                      entry: Mapping[str, Any]) -> tuple[dict[str, Any], Mapping[str, Any]]:
    """Restart the task (with a progress bar unless --quiet); return the node's answer
    and the task's status entry after it."""
    bar = None if args.quiet else ProgressBar(f"restart {task}", sys.stderr)
    watch = None
    if bar is not None:
        watch = _RestartWatch(args.url, task, entry.get("workers") or {}, bar)
        watch.start()
    try:
        result = node.restart(task)
        after = node.status().get("tasks", {}).get(task) or {}
    except BaseException:
        if bar is not None:
            bar.abandon()
        raise
    finally:
        if watch is not None:
            watch.done.set()
    if bar is not None:
        bar.finish(f"{per_node(after.get('workers'))}  generation {result.get('generation')}")
    return result, after


def add_parsers(sub: Subparsers[argparse.ArgumentParser]) -> None:
    """Add `restart`, `pause`, `resume`, `tasks` and `task show|apply|delete`."""
    restart = add_command(sub, "restart", _restart, "rolling restart: replace a task's "
                          "workers one at a time with workers running the code now on disk; "
                          "with --all, every task's, one task after another",
                          "rolling restart of a task's workers (or of every task's)")
    restart.add_argument("task", metavar="TASK", nargs="?")
    restart.add_argument("--all", action="store_true", help="restart every task")
    restart.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    for verb, what in (("pause", "hold a task's messages on every node: casts are journaled, "
                                 "nothing is delivered until it is resumed"),
                       ("resume", "deliver a paused task's messages again")):
        add_command(sub, verb, _pause, what, what).add_argument("task", metavar="TASK")

    add_command(sub, "tasks", _tasks, "list the tasks: name, group, messages, workers per "
                "node, state", "list the tasks with their workers and state")

    task = sub.add_parser("task", help="show, apply (from TOML) or delete task definitions",
                          description="show, apply or delete task definitions")
    actions = task.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_command(actions, "show", _task_show, "print a task's definition as a [[task]] TOML "
                "table").add_argument("name", metavar="NAME")
    add_command(actions, "apply", _task_apply, "create or update the [[task]] tables of a "
                "TOML file").add_argument("file", metavar="FILE")
    add_command(actions, "delete", _task_delete, "delete a task; its workers finish their "
                "current message and stop").add_argument("name", metavar="NAME")
