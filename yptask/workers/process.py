"""The node's side of one worker OS process: spawn it, call it over its pipes, stop it.

A worker is started with `os.posix_spawn` (no fork of a threaded node, no
`preexec_fn`): its protocol pipes land on fds 3 and 4, or on 0 and 1 when
the task uses stdio; it runs in its own process group so a stop or a kill
reaches any children it started, and what is left of the group when the
worker exits is killed. Its exit is seen through a pidfd on the
event loop. Calls go one at a time, as a worker handles one message at a time.

It owns the shape of the packet that delivers a message (`handle_call`), and so
how deep a payload may nest: `payload_size` checks a payload at ingress exactly
where that packet puts it.

Everything here runs on the asyncio loop; nothing blocks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
from dataclasses import dataclass
from typing import Any

from yptask.errors import CallTimeout, EncodeError, FrameError, ProtocolError, WorkerExited
from yptask.wire import codec
from yptask.wire.bertrpc import (
    DEFAULT_MAX_FRAME,
    Call,
    Cast,
    NoReply,
    answer_result,
    check_length,
    decode_packet,
    frame,
)
from yptask.wire.codec import Atom

__all__ = ["MAX_PAYLOAD_DEPTH", "WorkerProcess", "WorkerSpec", "handle_call", "payload_size",
           "spawn_process"]

log = logging.getLogger(__name__)

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


class WorkerProcess:
    """One running worker process and the asyncio ends of its protocol pipes."""

    def __init__(self, spec: WorkerSpec, pid: int, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, exited: asyncio.Future[int]) -> None:
        self.spec = spec
        self.pid = pid
        self._reader = reader
        self._writer = writer
        self._exited = exited
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ start

    @classmethod
    async def spawn(cls, spec: WorkerSpec) -> WorkerProcess:
        """Start a worker process; return once its pipes are connected."""
        loop = asyncio.get_running_loop()
        pid, to_worker_w, from_worker_r = spawn_process(spec)
        exited = _watch_exit(loop, pid)
        reader = asyncio.StreamReader(limit=2**16)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(from_worker_r, "rb", buffering=0))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(to_worker_w, "wb", buffering=0))
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        log.info("worker started: pid %d %s", pid, " ".join(spec.argv))
        return cls(spec, pid, reader, writer, exited)

    # ------------------------------------------------------------------ calls

    async def call(self, module: str, function: str, args: list[Any],
                   timeout: float | None = None) -> Any:
        """Call Module:Function(Args) in the worker and return its result.

        Raises the rebuilt error of an `{error, ...}` answer (`HandlerError` for a
        handler's exception), `CallTimeout` after `timeout` seconds (the worker is
        then killed: its protocol state is unknown) or `WorkerExited`.
        """
        return answer_result(await self._roundtrip(Call(module, function, args), timeout))

    async def cast(self, module: str, function: str, args: list[Any],
                   timeout: float | None = None) -> None:
        """Cast Module:Function(Args): return once the worker has accepted it."""
        answer_result(await self._roundtrip(Cast(module, function, args), timeout), NoReply)

    async def setup(self, info: dict[str, Any], timeout: float | None = None) -> Any:
        """Hand the worker its task name, node name and settings; runs its setup()."""
        return await self.call("yptask", "setup", [info], timeout)

    async def handle(self, name: str, payload: Any, meta: dict[str, Any] | None = None,
                     timeout: float | None = None) -> Any:
        """Have the worker handle one message; return the handler's result."""
        return answer_result(await self._roundtrip(handle_call(name, payload, meta or {}),
                                                   timeout))

    async def ping(self, timeout: float | None = None) -> bool:
        """Return True if the worker answers `pong`."""
        return bool(await self.call("yptask", "ping", [], timeout) == Atom("pong"))

    async def _roundtrip(self, packet: Call, timeout: float | None) -> Any:
        data = frame(packet)
        async with self._lock:
            if self._exited.done():
                raise WorkerExited(f"worker {self.pid} has exited ({self._exited.result()})")
            try:
                return await asyncio.wait_for(self._send_and_read(data), timeout)
            except TimeoutError:
                self.kill()
                raise CallTimeout(f"worker {self.pid} gave no answer within {timeout} s; "
                                  "killed") from None
            except FrameError as exc:
                self.kill()
                raise ProtocolError(f"worker {self.pid} sent a bad frame: {exc}; killed") from None

    async def _send_and_read(self, data: bytes) -> Any:
        try:
            self._writer.write(data)
            await self._writer.drain()
            header = await self._reader.readexactly(4)
            body = await self._reader.readexactly(check_length(header, self.spec.max_frame))
        except (asyncio.IncompleteReadError, ConnectionError):
            raise WorkerExited(f"worker {self.pid} closed its pipe mid-call") from None
        return decode_packet(body)


    # ------------------------------------------------------------------ stop

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), None while running."""
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        """Wait for the process to exit; return its exit status."""
        return await asyncio.shield(self._exited)

    async def stop(self, timeout: float = 10.0) -> int:
        """Close the worker's input so it finishes its message and exits; kill after `timeout`."""
        with contextlib.suppress(OSError):  # the signal first: see WorkerConnection.stop
            os.killpg(self.pid, signal.SIGTERM)
        self._writer.close()
        try:
            return await asyncio.wait_for(self.wait(), timeout)
        except TimeoutError:
            log.warning("worker %d did not stop within %s s; killing it", self.pid, timeout)
            self.kill()
            return await self.wait()

    def kill(self) -> None:
        """SIGKILL the worker's whole process group. Never raises."""
        if not self._exited.done():
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
        self._writer.close()


def spawn_process(spec: WorkerSpec) -> tuple[int, int, int]:
    """Start a worker process; return (pid, fd to write its input, fd to read its output).

    Thread-safe and fork-free (posix_spawn), so a threaded node can call it from any
    thread. The fds are blocking and close-on-exec; the caller owns them.
    """
    to_worker_r, to_worker_w = _pipe()
    from_worker_r, from_worker_w = _pipe()
    in_fd, out_fd = _STDIO_FDS if spec.use_stdio else _NOUSE_STDIO_FDS
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_DUP2, to_worker_r, in_fd),
        (os.POSIX_SPAWN_DUP2, from_worker_w, out_fd),
    ]
    if not spec.use_stdio:
        actions.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
    for fd, path in ((1, spec.stdout_path), (2, spec.stderr_path)):
        if path is not None and not (spec.use_stdio and fd == 1):
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


def _pipe() -> tuple[int, int]:
    """Return a close-on-exec pipe whose fds are above the ones a worker is given."""
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


def _watch_exit(loop: asyncio.AbstractEventLoop, pid: int) -> asyncio.Future[int]:
    """Return a future resolved with the exit status when `pid` exits (seen through a pidfd)."""
    exited: asyncio.Future[int] = loop.create_future()
    pidfd = os.pidfd_open(pid)

    def reap() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        # What the worker left in its group dies with it (see WorkerConnection.wait).
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        code = os.waitstatus_to_exitcode(status)
        log.info("worker exited: pid %d status %d", pid, code)
        if not exited.done():
            exited.set_result(code)

    loop.add_reader(pidfd, reap)
    return exited
