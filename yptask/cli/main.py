"""The `yptask` command line: a thin shell over the package.

Each subcommand imports what it needs when it runs, so `yptask worker` (the
command every Python worker process starts with) loads nothing heavy. The admin
commands (`cast`, `call`, `restart`, `tasks`, `task`, `status`, `dead`) live in
`yptask.cli.admin`, whose docstring lists their exit codes.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK = 0
EXIT_USAGE = 64  # EX_USAGE: the command line is wrong

EPILOG = """examples:
  yptask node                                   run a node with the example tasks
  yptask node --name web1 --http 127.0.0.1:9000 --data-dir /var/lib/yptask
  yptask demo                                   run the example tasks once
  yptask worker yptask.tasks.echo:Echo          serve a task class on fds 3 and 4
  yptask worker mymodule:Resizer --stdio        serve it on stdin/stdout

  yptask cast upai.photos.upload '{"photo_id": 7}'    publish; print the id and tasks
  yptask call upai.echo '{"hello": "world"}'          ask one worker; print its answer
  yptask tasks                                  the tasks of the node at $YPTASK_URL
  yptask status --url http://web1:8700/rpc      per task: workers, queue, handled, failed
  yptask task show echo > echo.toml             a definition as TOML (--json: as JSON)
  yptask task apply echo.toml                   create or update the tasks of a file
  yptask task delete echo
  yptask restart indexer                        rolling restart, with a progress bar
  yptask dead --limit 20                        messages that ran out of attempts
  yptask dead --replay ID                       requeue one of them
"""

# The admin commands (yptask.cli.admin), with their one-line help.
ADMIN_COMMANDS = {
    "cast": "publish a message to every task subscribed to its name",
    "call": "have one worker handle a message now; print its answer",
    "restart": "rolling restart of a task's workers",
    "tasks": "list the tasks with their workers and state",
    "task": "show, apply (from TOML) or delete task definitions",
    "timers": "list the cron timers with their last and next fire",
    "timer": "show, apply (from TOML) or delete timer definitions",
    "status": "per task: workers, queued, in flight, handled, failed",
    "nodes": "the cluster's members: state, addresses, boot time, last heard",
    "hash-password": "print a console password hash for the node config",
    "dead": "list dead letters, or replay one",
}


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="yptask", description="yptask: a supervised task cluster.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("worker", add_help=False,
                        help="run a worker process for a BaseTask subclass (MODULE:CLASS)")
    commands.add_parser("node", add_help=False, help="run a node in the foreground")
    commands.add_parser("demo", help="start a worker of each example task and send it messages")
    for name, help_text in ADMIN_COMMANDS.items():  # each parses its own arguments
        commands.add_parser(name, add_help=False, help=help_text)
    args, rest = parser.parse_known_args(argv)
    if args.version:
        from yptask import __version__

        print(__version__)
        return EXIT_OK
    if args.command == "worker":
        from yptask.tasks.runner import main as worker_main

        return worker_main(rest)
    if args.command == "node":
        from yptask.cli.node import main as node_main

        return node_main(rest)
    if args.command == "demo":
        from yptask.cli.demo import main as demo_main

        return demo_main()
    if args.command in ADMIN_COMMANDS:
        from yptask.cli.admin import main as admin_main

        return admin_main([args.command, *rest])
    parser.print_help(sys.stderr)
    return EXIT_USAGE
