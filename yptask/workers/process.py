"""How a worker OS process is started (`WorkerSpec`, `spawn_process`), and the packet
that has it handle a message.

A worker is started with `os.posix_spawn` (no fork of a threaded node, no
`preexec_fn`): its protocol pipes land on fds 3 and 4, or on 0 and 1 when
the task uses stdio; it runs in its own process group so a stop or a kill
reaches any children it started. Its stdout and stderr go to its task's log files:
through pipes the node reads (`yptask.workers.output`), or, when the spec has no
`logs`, opened for it at the spawn and appended to by the worker itself. Its
protocol pipes are then owned by one `yptask.workers.connection.WorkerConnection`,
which also stops it.

It owns the shape of the packet that delivers a message (`handle_call`), and so
how deep a payload may nest: `payload_size` checks a payload at ingress exactly
where that packet puts it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yptask.errors import EncodeError
from yptask.wire import codec
from yptask.wire.bertrpc import DEFAULT_MAX_FRAME, Call
from yptask.workers.log_files import LogSettings

__all__ = ["MAX_PAYLOAD_DEPTH", "WorkerSpec", "handle_call", "payload_size", "spawn_process",
           "worker_pipe"]

_STDIO_FDS = (0, 1)
_NOUSE_STDIO_FDS = (3, 4)
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def handle_call(name: str, payload: Any, meta: dict[str, Any]) -> Call:
    """The packet that has a worker handle one message."""
    return Call("yptask", "handle", [name, payload, meta])


def _levels_above(term: Any, target: object) -> int | None:
    """How many containers deep `target` sits in `term` (None: not in it)."""
    if term is target:
        return 0
    if isinstance(term, (list, tuple)):
        for item in term:
            if (level := _levels_above(item, target)) is not None:
                return level + 1
    return None


def _payload_levels() -> int:
    """The containers of the handle packet around a payload, found in the packet itself."""
    payload = object()
    levels = _levels_above(handle_call("", payload, {}).to_term(), payload)
    assert levels is not None, "the handle packet carries the payload"
    return levels


PAYLOAD_LEVELS = _payload_levels()
# The containers a payload may nest, so that the packet stays within the codec's cap.
MAX_PAYLOAD_DEPTH = codec.DEFAULT_MAX_DEPTH - PAYLOAD_LEVELS


def _at_payload_level(payload: Any) -> Any:
    """`payload` inside one-item lists, one per container the packet puts around it."""
    for _ in range(PAYLOAD_LEVELS):
        payload = [payload]
    return payload


# What those lists add to the encoded size of a payload.
_LEVELS_BYTES = len(codec.encode(_at_payload_level(None))) - len(codec.encode(None))


def payload_size(payload: Any) -> int:
    """The encoded size of a payload; raise `EncodeError` if it cannot be sent to a worker.

    The payload is encoded as deep as the handle packet puts it, so a payload that
    passes can always be delivered: it is neither too deep nor of a type with no term.
    """
    try:
        return len(codec.encode(_at_payload_level(payload))) - _LEVELS_BYTES
    except EncodeError:
        if _deeper_than(payload, MAX_PAYLOAD_DEPTH):
            raise EncodeError(
                f"it nests lists and maps deeper than the {MAX_PAYLOAD_DEPTH} levels a worker "
                f"takes (the packet around a payload adds {PAYLOAD_LEVELS} to the codec's cap "
                f"of {codec.DEFAULT_MAX_DEPTH}); flatten it") from None
        raise


def _deeper_than(value: Any, levels: int) -> bool:
    """True if `value` nests more than `levels` containers (looks no deeper than that)."""
    if isinstance(value, dict):
        items: Any = (*value.keys(), *value.values())
    elif isinstance(value, (list, tuple)):
        items = value
    else:
        return False
    if not items:  # as deep as a number
        return False
    return levels == 0 or any(_deeper_than(item, levels - 1) for item in items)


@dataclass(frozen=True)
class WorkerSpec:
    """How to start one worker process."""

    argv: list[str]
    use_stdio: bool = False
    env: dict[str, str] | None = None  # None: the node's own environment
    cwd: str | None = None
    stdout_path: str | None = None  # None: inherit the node's
    stderr_path: str | None = None
    max_frame: int = DEFAULT_MAX_FRAME
    # Set: the node writes stdout and stderr into those paths itself, rotated
    # (yptask.workers.output); None: the worker appends to them directly.
    logs: LogSettings | None = None

    def log_paths(self) -> dict[int, str]:
        """The worker's fds 1 and 2 that go to a log file, and its path."""
        return {fd: path for fd, path in ((1, self.stdout_path), (2, self.stderr_path))
                if path is not None and not (self.use_stdio and fd == 1)}


def spawn_process(spec: WorkerSpec, output: Mapping[int, int] | None = None
                  ) -> tuple[int, int, int]:
    """Start a worker process; return (pid, fd to write its input, fd to read its output).

    `output`: the pipe ends its fds 1 and 2 get (from `worker_pipe`), instead of opening
    the spec's log paths.

    Thread-safe and fork-free (posix_spawn), so a threaded node can call it from any
    thread. The fds are blocking and close-on-exec; the caller owns them.
    """
    to_worker_r, to_worker_w = worker_pipe()
    from_worker_r, from_worker_w = worker_pipe()
    in_fd, out_fd = _STDIO_FDS if spec.use_stdio else _NOUSE_STDIO_FDS
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_DUP2, to_worker_r, in_fd),
        (os.POSIX_SPAWN_DUP2, from_worker_w, out_fd),
    ]
    if not spec.use_stdio:
        actions.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
    for fd, path in spec.log_paths().items():
        if output is not None:
            actions.append((os.POSIX_SPAWN_DUP2, output[fd], fd))
        else:
            actions.append((os.POSIX_SPAWN_OPEN, fd, path, _LOG_FLAGS, 0o644))
    env = dict(os.environ if spec.env is None else spec.env)
    env["YPTASK_USE_STDIO"] = "1" if spec.use_stdio else "0"
    try:
        pid = _spawn(spec, env, actions)
    except BaseException:
        os.close(to_worker_w)
        os.close(from_worker_r)
        raise
    finally:
        os.close(to_worker_r)
        os.close(from_worker_w)
    return pid, to_worker_w, from_worker_r


def worker_pipe() -> tuple[int, int]:
    """Return a close-on-exec pipe (read end, write end) whose fds are above the ones a
    worker is given."""
    fds = []
    for fd in os.pipe():
        high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(fd)
        fds.append(high)
    return fds[0], fds[1]


def _spawn(spec: WorkerSpec, env: dict[str, str], actions: list[tuple[Any, ...]]) -> int:
    argv = spec.argv
    if spec.cwd is None:
        return os.posix_spawnp(argv[0], argv, env, file_actions=actions, setpgroup=0)
    # posix_spawn has no portable chdir action: run through the shell's `cd` without a shell.
    # Its $0 is the command, which so names the shell's complaints in the worker's stderr.
    return os.posix_spawnp("/bin/sh", ["/bin/sh", "-c", 'cd "$1" && shift && exec "$@"',
                                       argv[0], spec.cwd, *argv],
                           env, file_actions=actions, setpgroup=0)
