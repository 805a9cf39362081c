"""The `yptask` command line: a thin shell over the package.

`build_parser` has each command module add its own subcommands (`add_parsers`);
each leaf sets `run`, the function that carries it out. Command modules import only
the standard library and the client when the parser is built; what a command needs
beyond that (the node, the config loaders, the worker runner) is imported when it
runs. Exit codes: `yptask.cli.exits`, one table for every command.

    yptask.cli.node      node            run a node in the foreground
    yptask.cli.publish   cast, call      publish a message, or have one worker answer it
    yptask.cli.tasks     restart, pause, resume, tasks, task show|apply|delete
    yptask.cli.timers    timers, timer show|apply|delete
    yptask.cli.status    status, nodes
    yptask.cli.password  hash-password
    yptask.cli.dead      dead            list or replay dead letters
    yptask.cli.cancel    cancel          cancel a message on every node
    yptask.cli.scheduled scheduled       delayed casts and retries waiting for their time
    yptask.cli.trace     trace           the tree of messages one request caused
    yptask.cli.audit     audit           the changes operators made, newest first
    yptask.cli.connect   the node's URL, the admin token, the client, the common options
    yptask.cli.formats   tables, TOML, JSON arguments, clocks, the progress bar
    yptask.cli.demo      demo            the example tasks, once, without a node

`yptask worker` hands its arguments to the worker runner (`yptask.tasks.runner`),
which parses them itself.
"""

from __future__ import annotations

import argparse
import sys

from yptask.cli import (
    audit,
    cancel,
    dead,
    node,
    password,
    publish,
    scheduled,
    status,
    tasks,
    timers,
    trace,
)
from yptask.cli.exits import EXIT_OK, EXIT_USAGE

__all__ = ["build_parser", "main"]

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
  yptask restart --all --quiet                  every task, one after another
  yptask dead --limit 20                        messages that ran out of attempts
  yptask dead --replay ID                       requeue one of them
  yptask cancel ID                              cancel a message on every node
  yptask scheduled                              delayed casts and retries, soonest first
  yptask trace ID                               the messages one request caused, as a tree
  yptask audit --limit 20                       who changed what, newest first
"""


def _worker(args: argparse.Namespace) -> int:
    from yptask.tasks.runner import main as worker_main

    return worker_main(args.rest)


def _demo(args: argparse.Namespace) -> int:
    from yptask.cli.demo import main as demo_main

    return demo_main()


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; `yptask worker` alone takes arguments it does not know."""
    parser = argparse.ArgumentParser(
        prog="yptask", description="yptask: a supervised task cluster.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # No options of its own (not even --help): the runner parses all it is given.
    commands.add_parser("worker", add_help=False, help="run a worker process for a BaseTask "
                        "subclass (MODULE:CLASS)").set_defaults(run=_worker, passthrough=True)
    node.add_parsers(commands)
    commands.add_parser("demo", help="start a worker of each example task and send it "
                        "messages").set_defaults(run=_demo)
    for module in (publish, tasks, timers, status, password, dead, cancel, scheduled, trace,
                   audit):
        module.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code.

    A usage error a command finds itself (`args.parser.error`) exits through
    SystemExit(EXIT_USAGE) as argparse's own do; nothing else a command runs is caught
    here, so a worker's own exit (`yptask worker`) stays its own.
    """
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
        if rest and args.command is not None and not getattr(args, "passthrough", False):
            # Said by the command's own parser, so its usage line is the one shown.
            getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(rest)}")
    except SystemExit as exc:  # argparse: --help (0) or a usage error (EXIT_USAGE)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.version:
        from yptask import __version__

        print(__version__)
        return EXIT_OK
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.rest = rest
    code: int = args.run(args)
    return code
