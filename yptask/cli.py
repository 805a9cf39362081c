"""The `yptask` command line: a thin shell over the package.

Each subcommand imports what it needs when it runs, so `yptask worker` (the
command every Python worker process starts with) loads nothing heavy.
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
"""


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
    args, rest = parser.parse_known_args(argv)
    if args.version:
        from yptask import __version__

        print(__version__)
        return EXIT_OK
    if args.command == "worker":
        from yptask.tasks.runner import main as worker_main

        return worker_main(rest)
    if args.command == "node":
        from yptask.node_main import main as node_main

        return node_main(rest)
    if args.command == "demo":
        from yptask.demo import main as demo_main

        return demo_main()
    parser.print_help(sys.stderr)
    return EXIT_USAGE
