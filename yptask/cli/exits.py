"""The exit codes of every `yptask` command, and the one place errors become them.

    0    EXIT_OK           done
    1    EXIT_FAILED       the operation failed on the node: a handler error, an unknown
                           task, a name nobody subscribes to, any JSON-RPC error answer
    2    EXIT_USAGE        the command line is wrong (argparse's own code)
    65   EXIT_DATAERR      bad input data: a JSON argument or a task file (EX_DATAERR)
    69   EXIT_UNAVAILABLE  no node answers at the URL, or what answers is not a node;
                           for `yptask node`: it cannot start, e.g. a port is taken
                           (EX_UNAVAILABLE)
    78   EXIT_CONFIG       `yptask node`: the node's configuration is wrong (EX_CONFIG)
    130  EXIT_INTERRUPTED  Ctrl-C
    141  EXIT_BROKEN_PIPE  the reader of stdout went away (`yptask tasks | head -1`),
                           as for a process killed by SIGPIPE

`yptask worker` is the worker runner's own process and keeps the runner's exit
codes (docs/protocol.md, section 4.4). The commands that talk to a node run
through `guarded`: their errors are one line on stderr, `yptask: ...`, never a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from collections.abc import Callable

from yptask.errors import HandlerError, RPCError, YPTaskError

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_CONFIG",
    "EXIT_DATAERR",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "Command",
    "InputError",
    "guarded",
    "say",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_DATAERR = 65
EXIT_UNAVAILABLE = 69
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

Command = Callable[[argparse.Namespace], int]


class InputError(Exception):
    """Raised when a command's input (a JSON argument, a task file) is invalid: EXIT_DATAERR.

    Not a YPTaskError: it never crosses the wire, it only picks the exit code.
    """


def say(message: str) -> None:
    """One `yptask: ...` line on stderr (nothing if stderr is gone)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"yptask: {message}", file=sys.stderr)


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def guarded(run: Command) -> Command:
    """`run`, with what it raises turned into one line on stderr and its exit code."""

    @functools.wraps(run)
    def guarded_run(args: argparse.Namespace) -> int:
        try:
            code = run(args)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            quiet_stdout()
            return EXIT_BROKEN_PIPE
        except KeyboardInterrupt:
            say("interrupted")
            return EXIT_INTERRUPTED
        except InputError as exc:
            say(str(exc))
            return EXIT_DATAERR
        except HandlerError as exc:
            say(f"error: {exc.error_class}: {exc.detail}")
            return EXIT_FAILED
        except YPTaskError as exc:
            # The client raises a bare RPCError itself when no node answers at the URL, or
            # something that is not a node does; a node's errors come back as subclasses.
            if type(exc) is RPCError:
                say(f"{exc}; or point at another node with --url URL (or $YPTASK_URL)")
                return EXIT_UNAVAILABLE
            say(str(exc))
            return EXIT_FAILED

    return guarded_run
