"""`yptask cast|call|restart|tasks|task|timers|timer|status|nodes|dead`: admin commands.

Each command sends a few JSON-RPC requests to one node with `yptask.client.Client`
(standard library only) and prints a table, or the raw JSON answer with `--json`.
The node is `--url URL`, else `$YPTASK_URL`, else http://127.0.0.1:8700/rpc; a
bare `HOST:PORT` is completed to `http://HOST:PORT/rpc`. Admin commands need the
node's admin token: for a node on this machine's loopback it is read from the
node's data dir (`--data-dir`, else `$YPTASK_DATA_DIR`, else ./yptask-data, as for
`yptask node`); `$YPTASK_ADMIN_TOKEN` gives it directly, `$YPTASK_PASSWORD` the
console password instead. A node with publisher tokens wants one for cast and
call (or the admin token): `$YPTASK_TOKEN`.

Errors are one line on stderr, `yptask: ...`, never a traceback. Exit codes:

    0    EXIT_OK           done
    1    EXIT_FAILED       the operation failed on the node: a handler error, an unknown
                           task, a name nobody subscribes to, any JSON-RPC error answer
    2    EXIT_USAGE        the command line is wrong (argparse's own code)
    65   EXIT_DATAERR      bad input data: a JSON argument or a task file (EX_DATAERR)
    69   EXIT_UNAVAILABLE  no node answers at the URL, or what answers is not a node
                           (EX_UNAVAILABLE)
    130  EXIT_INTERRUPTED  Ctrl-C
    141  EXIT_BROKEN_PIPE  the reader of stdout went away (`yptask tasks | head -1`),
                           as for a process killed by SIGPIPE
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import math
import os
import re
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

from yptask.client import DEFAULT_URL, Client
from yptask.errors import ConfigError, HandlerError, RPCError, YPTaskError, last_line

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_DATAERR",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "ProgressBar",
    "main",
    "to_toml",
]

T = TypeVar("T")
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DATAERR = 65
EXIT_UNAVAILABLE = 69
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

# A node gives up on its actors after 120 s (ASK_TIMEOUT_S); wait a little longer than that,
# so a slow admin operation ends with the node's own error rather than a client timeout.
REQUEST_TIMEOUT_S = 150.0
POLL_INTERVAL_S = 0.2  # how often `restart` asks for status while the restart runs

_Command = Callable[[argparse.Namespace], int]


class _InputError(Exception):
    """Raised when a command's input (a JSON argument, a task file) is invalid: EXIT_DATAERR."""


# ---------------------------------------------------------------- arguments


def _url(text: str) -> str:
    """Complete `HOST:PORT` or `http://HOST:PORT` to the node's JSON-RPC URL."""
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http URL, e.g. "
                                         f"{DEFAULT_URL}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/rpc")
    return urllib.parse.urlunsplit(parts)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _json_argument(text: str, what: str) -> Any:
    """Parse a JSON command-line argument (`-` reads it from stdin)."""
    if text == "-":
        text = sys.stdin.read()

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse)
    except ValueError as exc:
        raise _InputError(f"argument {what} is not valid JSON: {exc}; quote it for the "
                          """shell, e.g. '{"photo_id": 7}'""") from None


# ---------------------------------------------------------------- output


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=2)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers aligned right."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    numeric = [bool(rows) and all(isinstance(row[i], int) for row in rows)
               for i in range(len(headers))]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.rjust(w) if right else cell.ljust(w)
                  for cell, w, right in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def _per_node(workers: Any) -> str:
    """`{"c1": 2, "c2": 1}` as `c1=2 c2=1`."""
    if not isinstance(workers, Mapping) or not workers:
        return "-"
    return " ".join(f"{node}={count}" for node, count in sorted(workers.items()))


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no TOML form")
        return repr(value)
    if isinstance(value, str):  # a JSON string is a TOML basic string, once DEL is escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise ValueError(f"{value!r} has no TOML form")


def _toml_key(key: Any) -> str:
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) else _toml_value(key)


def to_toml(definition: Mapping[str, Any], table: str = "task") -> str:
    """A definition as a `[[task]]` (or `[[timer]]`) table that `apply` reads back.

    Raises ValueError if a value has no TOML form (a null in the settings).
    """
    return "\n".join([f"[[{table}]]"] + [f"{_toml_key(key)} = {_toml_value(value)}"
                                         for key, value in definition.items()])


class ProgressBar:
    """One line on a stream: redrawn in place on a terminal; elsewhere drawn once, when done."""

    WIDTH = 30

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.live = stream.isatty()
        self._lock = threading.Lock()
        self._closed = False

    def _line(self, fraction: float, note: str) -> str:
        filled = int(fraction * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return f"{self.label} [{bar}] {fraction:4.0%}  {note}".rstrip()

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed: progress is not worth failing for
            pass

    def update(self, fraction: float, note: str) -> None:
        with self._lock:
            if self.live and not self._closed:
                self._write("\r" + self._line(min(max(fraction, 0.0), 1.0), note) + "\x1b[K")

    def finish(self, note: str) -> None:
        """Draw the bar full and end its line; later updates are ignored."""
        with self._lock:
            if not self._closed:
                self._closed = True
                end = "\x1b[K\n" if self.live else "\n"
                self._write(("\r" if self.live else "") + self._line(1.0, note) + end)

    def abandon(self) -> None:
        """End the line where it stands (the operation failed); later updates are ignored."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if self.live:
                    self._write("\n")


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
        self.bar.update(0.0, _per_node(self.before))
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
            self.bar.update(min(steps / total, 0.99), f"{_per_node(counts)}  {elapsed:.1f} s")


# ---------------------------------------------------------------- the commands


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, timeout_s=REQUEST_TIMEOUT_S,
                  password=os.environ.get("YPTASK_PASSWORD"), admin_token=_admin_token(args),
                  token=os.environ.get("YPTASK_TOKEN"))


def _admin_token(args: argparse.Namespace) -> str | None:
    """$YPTASK_ADMIN_TOKEN, else the token in the data dir, but only for a node on
    loopback: the token of a node here is never sent to another machine."""
    from yptask.access.addresses import is_loopback
    from yptask.access.secrets import read_admin_token

    if os.environ.get("YPTASK_ADMIN_TOKEN"):
        return os.environ["YPTASK_ADMIN_TOKEN"]
    if not is_loopback(urllib.parse.urlsplit(args.url).hostname or ""):
        return None
    return read_admin_token(args.data_dir)


def _hash_password(args: argparse.Namespace) -> int:
    """Print a hash for `console_password_hash`, of a password typed (or piped) in."""
    from yptask.access.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("console password: ")
        if getpass.getpass("again: ") != password:
            raise _InputError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    try:
        print(hash_password(password))
    except ConfigError as exc:
        raise _InputError(str(exc)) from None
    return EXIT_OK


def _cast(args: argparse.Namespace) -> int:
    msg = _json_argument(args.msg, "JSON (the message)")
    result = _client(args).cast(args.name, msg, id=args.id, priority=args.priority)
    if args.json:
        print(_dump(result))
    else:
        tasks = ", ".join(result.get("tasks") or []) or "no task"
        note = "  (duplicate: already accepted, not sent again)" if result.get("duplicate") \
            else ""
        print(f"{result.get('id')}  -> {tasks}{note}")
    if not result.get("tasks"):
        print(f"yptask: warning: no task subscribes to {args.name!r}; the message went "
              "nowhere (`yptask tasks` lists the subscriptions)", file=sys.stderr)
    return EXIT_OK


def _call(args: argparse.Namespace) -> int:
    msg = _json_argument(args.msg, "JSON (the message)")
    try:
        result = _client(args).call(args.name, msg, timeout=args.timeout)
    except HandlerError as exc:
        if args.traceback:
            for line in exc.backtrace:
                print(line, file=sys.stderr)
        print(f"error: {exc.error_class}: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result, ensure_ascii=False, indent=2 if args.json else None))
    return EXIT_OK


def _restart(args: argparse.Namespace) -> int:
    client = _client(args)
    entry = client.status().get("tasks", {}).get(args.task)
    if not isinstance(entry, Mapping):  # let the node say the task is unknown
        result = client.restart(args.task)
        print(_dump(result) if args.json else f"restarted {args.task}: generation "
              f"{result.get('generation')}, {result.get('replaced')} worker(s) replaced")
        return EXIT_OK
    bar = None if args.quiet else ProgressBar(f"restart {args.task}", sys.stderr)
    watch = None
    if bar is not None:
        watch = _RestartWatch(args.url, args.task, entry.get("workers") or {}, bar)
        watch.start()
    try:
        result = client.restart(args.task)
        after = client.status().get("tasks", {}).get(args.task) or {}
    except BaseException:
        if bar is not None:
            bar.abandon()
        raise
    finally:
        if watch is not None:
            watch.done.set()
    state = after.get("state", "-")
    if bar is not None:
        bar.finish(f"{_per_node(after.get('workers'))}  generation {result.get('generation')}")
    if args.json:
        print(_dump(result))
    else:
        print(f"restarted {args.task}: generation {result.get('generation')}, "
              f"{result.get('replaced')} worker(s) replaced, now {state} with "
              f"{_per_node(after.get('workers'))}")
    if state in ("backoff", "stopped"):
        print(f"yptask: the new workers of {args.task} are not running (state {state}); "
              "the node's log and the task's worker logs say why", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _tasks(args: argparse.Namespace) -> int:
    client = _client(args)
    definitions = client.tasks()
    status = client.status().get("tasks", {})
    rows = []
    for task in definitions:
        entry = status.get(task.get("name")) or {}
        rows.append({"name": task.get("name"), "group": task.get("group"),
                     "messages": list(task.get("messages") or []),
                     "workers": entry.get("workers") or {}, "state": entry.get("state", "-"),
                     **({"start_error": entry["start_error"]} if "start_error" in entry
                        else {})})
    if args.json:
        print(_dump(rows))
    elif not rows:
        print("no tasks; `yptask task apply FILE` adds some")
    else:
        print(_with_start_errors(
            _table(["NAME", "GROUP", "MESSAGES", "WORKERS", "STATE"],
                   [[r["name"], r["group"], ",".join(r["messages"]), _per_node(r["workers"]),
                     r["state"]] for r in rows]), rows))
    return EXIT_OK


def _with_start_errors(table: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """A table of tasks (a header, then one line per row) with, under each task whose
    workers cannot start, one short line: the exit and the last line they wrote to stderr."""
    lines = table.split("\n")
    out = lines[:1]
    for line, row in zip(lines[1:], rows, strict=True):
        out.append(line)
        error = row.get("start_error")
        if isinstance(error, Mapping):
            cause = last_line(str(error.get("stderr_tail") or "")) or str(error.get("error"))
            out.append(f"  cannot start: {error.get('exit') or '-'}: {cause}"[:200])
    return "\n".join(out)


def _task_show(args: argparse.Namespace) -> int:
    return _show(args, _client(args).task(args.name), "task")


def _show(args: argparse.Namespace, definition: Mapping[str, Any], table: str) -> int:
    """Print a definition as a TOML table (as JSON with --json, or if TOML cannot hold it)."""
    if args.json:
        print(_dump(definition))
        return EXIT_OK
    try:
        print(to_toml(definition, table))
    except ValueError as exc:
        print(f"yptask: showing {args.name} as JSON: {exc}", file=sys.stderr)
        print(_dump(definition))
    return EXIT_OK


def _read_file(path: str, load: Callable[[str], list[T]], table: str) -> list[T]:
    """The definitions of a TOML file; an _InputError naming the file if it has none."""
    try:
        items = load(path)
    except ConfigError as exc:
        message = str(exc)
        raise _InputError(message if path in message else f"{path}: {message}") from None
    if not items:
        raise _InputError(f"{path}: no [[{table}]] tables, nothing to apply")
    return items


def _task_apply(args: argparse.Namespace) -> int:
    from yptask.config.tasks import load_tasks

    tasks = _read_file(str(args.file), load_tasks, "task")
    client = _client(args)
    existing = {task.get("name") for task in client.tasks()}
    stored = []
    for task in tasks:
        stored.append(client.put_task(task.to_dict()))
        if not args.json:
            done = ("unchanged" if stored[-1].get("changed") is False else
                    "updated" if task.name in existing else "created")
            print(f"task {task.name} {done}")
    if args.json:
        print(_dump(stored))
    return EXIT_OK


def _task_delete(args: argparse.Namespace) -> int:
    _client(args).delete_task(args.name)
    print(_dump({"deleted": args.name}) if args.json else f"task {args.name} deleted")
    return EXIT_OK


def _timers(args: argparse.Namespace) -> int:
    rows = _client(args).timers()
    if args.json:
        print(_dump(rows))
        return EXIT_OK
    if not rows:
        print("no timers; `yptask timer apply FILE` adds some")
        return EXIT_OK
    leader, epoch = rows[0].get("leader"), rows[0].get("epoch")
    print(f"fired by node {leader} (lease epoch {epoch})" if leader else
          "fired by no node now: the timer lease is free (a new leader is being elected, or "
          "no majority of the nodes is reachable)")
    print(_table(["NAME", "CRON", "ZONE", "MESSAGE", "LAST FIRE", "NEXT FIRE", "LAST ERROR"],
                 [[r.get("name"), r.get("cron"), r.get("timezone"), r.get("message"),
                   _clock(r.get("last_fire")),
                   _clock(r.get("next_fire")) if r.get("enabled", True) else "disabled",
                   r.get("last_error") or "-"] for r in rows]))
    return EXIT_OK


_TIMER_STATE = ("last_fire", "next_fire", "last_error", "last_error_at", "leader", "epoch")


def _timer_show(args: argparse.Namespace) -> int:
    row = _client(args).timer(args.name)
    if args.json:
        return _show(args, row, "timer")
    return _show(args, {k: v for k, v in row.items() if k not in _TIMER_STATE}, "timer")


def _timer_apply(args: argparse.Namespace) -> int:
    from yptask.timers.schedule import load_timers

    timers = _read_file(str(args.file), load_timers, "timer")
    client = _client(args)
    stored = [client.put_timer(timer.to_dict()) for timer in timers]
    if args.json:
        print(_dump(stored))
    else:
        for row in stored:
            print(f"timer {row.get('name')} saved; next fire {_clock(row.get('next_fire'))}")
    return EXIT_OK


def _timer_delete(args: argparse.Namespace) -> int:
    _client(args).delete_timer(args.name)
    print(_dump({"deleted": args.name}) if args.json else f"timer {args.name} deleted")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    status = _client(args).status()
    if args.json:
        print(_dump(status))
        return EXIT_OK
    tasks = status.get("tasks") or {}
    print(f"node {status.get('node')}, up {status.get('uptime_s')} s")
    named = sorted(tasks.items())
    rows = [[name, _per_node(t.get("workers")), t.get("queued", 0), t.get("in_flight", 0),
             t.get("handled", 0), t.get("failed", 0), t.get("state", "-")] for name, t in named]
    print(_with_start_errors(
        _table(["TASK", "WORKERS", "QUEUED", "IN FLIGHT", "HANDLED", "FAILED", "STATE"], rows),
        [t for _, t in named]) if rows else "no tasks")
    return EXIT_OK


def _nodes(args: argparse.Namespace) -> int:
    if args.forget:
        done = _client(args).forget_node(args.forget)
        print(_dump(done) if args.json else f"node {args.forget} forgotten: the timer lease "
                                            "counts its majority without it")
        return EXIT_OK
    members = _client(args).nodes()
    if args.json:
        print(_dump(members))
        return EXIT_OK
    rows = [[m.get("name", "?") + (" (this node)" if m.get("self") else ""), m.get("state", "-"),
             m.get("link", "-"), m.get("http", "-") or "-",
             _clock(m.get("started_at")), _ago(m)] for m in members]
    print(_table(["NODE", "STATE", "LINK", "HTTP", "BOOTED", "LAST HEARD"], rows))
    return EXIT_OK


def _clock(when: Any) -> str:
    if not isinstance(when, (int, float)) or when <= 0:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def _ago(member: dict[str, Any]) -> str:
    if member.get("self"):
        return "-"
    heard = member.get("last_heard_s")
    return f"{heard:.1f} s ago" if isinstance(heard, (int, float)) else "-"


def _dead(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.replay is not None:
        count = client.replay(args.replay, args.task)
        if args.json:
            print(_dump({"id": args.replay, "replayed": count}))
        elif count:
            print(count)
        if not count:
            where = f" for task {args.task!r}" if args.task else ""
            print(f"yptask: no dead letter {args.replay!r}{where}; `yptask dead` lists them",
                  file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    letters = client.dead_letters(args.limit)
    if args.json:
        print(_dump(letters))
    elif not letters:
        print("no dead letters")
    else:
        print(_table(["ID", "TASK", "ATTEMPT", "ERROR"],
                     [[d.get("id"), d.get("task"), d.get("attempt"),
                       f"{d.get('error_class')}: {str(d.get('error', '')).partition(chr(10))[0]}"]
                      for d in letters]))
    return EXIT_OK


# ---------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    """The parser of the admin commands; each leaf sets `run` to its command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", type=_url, default=os.environ.get("YPTASK_URL") or DEFAULT_URL,
                        help=f"the node's JSON-RPC URL (default: $YPTASK_URL, else {DEFAULT_URL})")
    common.add_argument("--json", action="store_true", help="print the raw JSON answer")
    common.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("YPTASK_DATA_DIR") or "yptask-data"),
                        help="the node's data dir, where its admin token is (default: "
                             "$YPTASK_DATA_DIR, else ./yptask-data)")
    parser = argparse.ArgumentParser(prog="yptask", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, run: _Command, help: str, sub: Any = commands) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help,
                                                          description=help)
        command.set_defaults(run=run, parser=command)
        return command

    cast = add("cast", _cast, "publish a message to every task subscribed to NAME; print "
                              "its id and the tasks it went to")
    cast.add_argument("name", metavar="NAME", help="message name, e.g. upai.photos.upload")
    cast.add_argument("msg", metavar="JSON", help="the message, as JSON ('-': read stdin)")
    cast.add_argument("--id", help="message id (a repeated id is not sent again)")
    cast.add_argument("--priority", type=int, default=0, metavar="N",
                      help="higher goes first (default 0)")

    call = add("call", _call, "have one worker handle a message now; print its answer as JSON")
    call.add_argument("name", metavar="NAME", help="message name, e.g. upai.echo")
    call.add_argument("msg", metavar="JSON", help="the message, as JSON ('-': read stdin)")
    call.add_argument("--timeout", type=_positive_float, default=30.0, metavar="S",
                      help="seconds to wait for the answer (default %(default)s)")
    call.add_argument("--traceback", action="store_true",
                      help="on a handler error, print the handler's traceback too")

    restart = add("restart", _restart, "rolling restart: replace a task's workers one at a "
                                       "time with workers running the code now on disk")
    restart.add_argument("task", metavar="TASK")
    restart.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    add("tasks", _tasks, "list the tasks: name, group, messages, workers per node, state")

    task = commands.add_parser("task", help="show, apply or delete task definitions",
                               description="show, apply or delete task definitions")
    actions = task.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = add("show", _task_show, "print a task's definition as a [[task]] TOML table",
               actions)
    show.add_argument("name", metavar="NAME")
    apply = add("apply", _task_apply, "create or update the [[task]] tables of a TOML file",
                actions)
    apply.add_argument("file", metavar="FILE")
    delete = add("delete", _task_delete, "delete a task; its workers finish their current "
                                         "message and stop", actions)
    delete.add_argument("name", metavar="NAME")

    add("status", _status, "per task: workers per node, queued, in flight, handled, failed, "
                           "state")

    add("timers", _timers, "list the timers: schedule, last fire, next fire, last error")
    timer = commands.add_parser("timer", help="show, apply or delete timer definitions",
                                description="show, apply or delete timer definitions")
    timer_actions = timer.add_subparsers(dest="action", metavar="ACTION", required=True)
    add("show", _timer_show, "print a timer's definition as a [[timer]] TOML table",
        timer_actions).add_argument("name", metavar="NAME")
    add("apply", _timer_apply, "create or update the [[timer]] tables of a TOML file",
        timer_actions).add_argument("file", metavar="FILE")
    add("delete", _timer_delete, "delete a timer, on every node",
        timer_actions).add_argument("name", metavar="NAME")

    add("hash-password", _hash_password, "print a console_password_hash for the node config "
                                         "(reads the password from the terminal or stdin)")

    nodes = add("nodes", _nodes, "the cluster's members: state, link and HTTP address, boot "
                                 "time, last heard; or forget one that is gone for good")
    nodes.add_argument("--forget", metavar="NODE", help="take a node that is gone for good "
                       "off the roster the timer lease counts its majority in")

    dead = add("dead", _dead, "list dead letters (messages out of attempts), or replay one")
    dead.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                      help="show the newest N (default %(default)s)")
    dead.add_argument("--replay", metavar="ID", help="requeue this dead letter; print how many "
                                                     "deliveries were requeued")
    dead.add_argument("--task", metavar="TASK", help="with --replay: only for this task")
    return parser


# ---------------------------------------------------------------- main


def _say(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"yptask: {message}", file=sys.stderr)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run one admin command (`argv` starts with its name); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
        if args.command == "dead" and args.task is not None and args.replay is None:
            args.parser.error("--task goes with --replay ID")
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code: int = args.run(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except _InputError as exc:
        _say(str(exc))
        return EXIT_DATAERR
    except HandlerError as exc:
        _say(f"error: {exc.error_class}: {exc.detail}")
        return EXIT_FAILED
    except YPTaskError as exc:
        # The client raises a bare RPCError itself when no node answers at the URL, or
        # something that is not a node does; a node's errors come back as subclasses.
        if type(exc) is RPCError:
            _say(f"{exc}; or point at another node with --url URL (or $YPTASK_URL)")
            return EXIT_UNAVAILABLE
        _say(str(exc))
        return EXIT_FAILED
