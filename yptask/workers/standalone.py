"""A worker driven from an event loop with no node around it: the demo, tests, benchmarks.

`WorkerProcess` is a face of the one `WorkerConnection` a worker has: every
frame goes through the connection (`call_on_loop`, and for frames a node never
sends, `write_raw` and `frame_on_loop`), stopping is the connection's `stop`
(run in a thread: it polls), and the exit is seen by an `ExitWatch`. It has no
pipe, frame or stop code of its own. Calls go one at a time, as a worker
handles one message at a time; nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from yptask.errors import WorkerExited
from yptask.wire.bertrpc import Call, Cast, NoReply, Reply
from yptask.wire.codec import Atom
from yptask.workers.connection import WorkerConnection
from yptask.workers.exits import ExitWatch
from yptask.workers.process import WorkerSpec, handle_call

__all__ = ["WorkerProcess"]


class WorkerProcess:
    """One running worker process, called from the event loop."""

    def __init__(self, conn: WorkerConnection, exited: asyncio.Future[None]) -> None:
        self.conn = conn
        self.spec = conn.spec
        self.pid = conn.pid
        self._exited = exited  # resolved once the process has exited (not yet reaped)
        self._lock = asyncio.Lock()

    @classmethod
    async def spawn(cls, spec: WorkerSpec) -> WorkerProcess:
        """Start a worker process; its pipes are connected when this returns."""
        loop = asyncio.get_running_loop()
        conn = WorkerConnection(spec)
        exited: asyncio.Future[None] = loop.create_future()
        ExitWatch(loop).watch(spec.argv[0], conn.pid, lambda: _resolve(exited))
        return cls(conn, exited)

    # ------------------------------------------------------------------ calls

    async def call(self, module: str, function: str, args: list[Any],
                   timeout: float | None = None) -> Any:
        """Call Module:Function(Args) in the worker and return its result.

        Raises the rebuilt error of an `{error, ...}` answer (`HandlerError` for a
        handler's exception), `CallTimeout` after `timeout` seconds (the worker is
        then killed: its protocol state is unknown), `ProtocolError` or `WorkerExited`.
        """
        return await self._roundtrip(Call(module, function, args), timeout)

    async def cast(self, module: str, function: str, args: list[Any],
                   timeout: float | None = None) -> None:
        """Cast Module:Function(Args): return once the worker has accepted it."""
        await self._roundtrip(Cast(module, function, args), timeout, NoReply)

    async def setup(self, info: dict[str, Any], timeout: float | None = None) -> Any:
        """Hand the worker its task name, node name and settings; runs its setup()."""
        return await self.call("yptask", "setup", [info], timeout)

    async def handle(self, name: str, payload: Any, meta: dict[str, Any] | None = None,
                     timeout: float | None = None) -> Any:
        """Have the worker handle one message; return the handler's result."""
        return await self._roundtrip(handle_call(name, payload, meta or {}), timeout)

    async def ping(self, timeout: float | None = None) -> bool:
        """Return True if the worker answers `pong`."""
        return bool(await self.call("yptask", "ping", [], timeout) == Atom("pong"))

    async def _roundtrip(self, packet: Call, timeout: float | None,
                         expected: type[Reply | NoReply] = Reply) -> Any:
        async with self._lock:
            if self._exited.done():
                raise WorkerExited(f"worker {self.pid} has exited ({self.conn.poll()})")
            return await self.conn.call_on_loop(packet, timeout, expected)

    # ------------------------------------------------------------------ raw frames

    def write(self, data: bytes) -> None:
        """Write bytes into the worker's input as they are (frames a node never sends)."""
        self.conn.write_raw(data)

    async def read_frame(self, timeout: float | None = None) -> bytes:
        """The body of the next frame the worker writes, as it is."""
        return await self.conn.frame_on_loop(timeout)

    def unread_input(self) -> int:
        """Bytes written into the worker's input that it has not read yet."""
        return self.conn.unread_input()

    # ------------------------------------------------------------------ stop

    @property
    def returncode(self) -> int | None:
        """The exit status (negative: killed by that signal), None while running."""
        return self.conn.poll()

    async def wait(self) -> int:
        """Wait for the process to exit; return its exit status."""
        await asyncio.shield(self._exited)
        return self.conn.wait()

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM the worker and close its input so it finishes its message and exits;
        kill it after `timeout` (`WorkerConnection.stop`)."""
        return await asyncio.to_thread(self.conn.stop, timeout)

    def close_input(self) -> None:
        """Close the worker's input: at its end a worker finishes and exits."""
        self.conn.close_input()

    def kill(self) -> None:
        """SIGKILL the worker's whole process group. Never raises."""
        self.conn.kill()


def _resolve(exited: asyncio.Future[None]) -> None:
    if not exited.done():
        exited.set_result(None)
