"""A blocking connection to one worker process, for the actor thread that owns it.

The node's Worker actors each own one of these: the actor's thread writes a
call, waits for the answer with a deadline (`select`), and so handles one
message at a time, as the worker does. Spawning is shared with the asyncio
variant (`yptask.worker_process.spawn_process`). A call that times out, or a
worker that breaks the protocol, gets the worker's process group killed: its
state is unknown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections import deque
from typing import Any

from yptask.bertrpc import (
    Call,
    ErrorReply,
    Reply,
    answer_result,
    check_length,
    decode_packet,
    frame,
    write_frame,
)
from yptask.errors import CallTimeout, FrameError, ProtocolError, WorkerExited
from yptask.worker_process import WorkerSpec, spawn_process

__all__ = ["WorkerConnection"]

log = logging.getLogger(__name__)

# Bytes of unanswered calls that may wait in a worker's input pipe. Well under the
# 64 KiB of a Linux pipe, so writing them never blocks: a write that blocked while the
# worker blocks writing a long answer (which nobody reads meanwhile) would deadlock.
PIPE_ROOM = 32 * 1024
READ_SIZE = 64 * 1024  # the most read from a worker's output at once


class WorkerConnection:
    """One worker OS process and the blocking ends of its protocol pipes. Not thread-safe."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.pid, self._to_worker, self._from_worker = spawn_process(spec)
        self.returncode: int | None = None
        self._unanswered: deque[int] = deque()  # the frame size of each call not yet answered
        self._outgoing: list[bytes] = []  # calls sent and not yet written: one write for all
        self._incoming = bytearray()  # read from the worker, not yet taken as answers
        log.info("worker started: pid %d %s", self.pid, " ".join(spec.argv))

    def call(self, module: str, function: str, args: list[Any],
             timeout_s: float | None = None) -> Any:
        """Call Module:Function(Args) and return the result; raise the answer's error.

        Raises `CallTimeout` (worker killed), `WorkerExited`, `ProtocolError`
        (worker killed), or the rebuilt error of an `{error, ...}` answer.
        """
        sent = self.send(module, function, args)
        assert sent, "call() is for a connection with no call waiting for its answer"
        return self.receive(timeout_s)

    def send(self, module: str, function: str, args: list[Any]) -> bool:
        """Queue a call without waiting for its answer; False if it must wait for answers.

        Sending the next message before the answer to the current one keeps the worker
        busy instead of asleep between messages; answers come back in order. A call is
        queued behind unanswered ones only while they all fit in PIPE_ROOM; otherwise
        it is not and False is returned: read the answers first, then send it. Queued
        calls are written together, in one write, by `receive` (or `flush`).
        """
        if self._to_worker < 0:
            raise WorkerExited(f"worker {self.pid} is stopped")
        data = frame(Call(module, function, args))
        if self._unanswered and sum(self._unanswered) + len(data) > PIPE_ROOM:
            return False
        self._outgoing.append(data)
        self._unanswered.append(len(data))
        return True

    def flush(self) -> None:
        """Write the queued calls into the worker's pipe."""
        if not self._outgoing:
            return
        data = self._outgoing[0] if len(self._outgoing) == 1 else b"".join(self._outgoing)
        self._outgoing.clear()
        try:
            write_frame(self._to_worker, data)
        except BrokenPipeError:
            raise WorkerExited(f"worker {self.pid} closed its input") from None

    def receive(self, timeout_s: float | None = None) -> Any:
        """Read the answer to the oldest call sent; raise as `call` does."""
        self.flush()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if self._unanswered:
            self._unanswered.popleft()
        try:
            header = self._take(4, deadline)
            body = self._take(check_length(header, self.spec.max_frame), deadline)
            answer = decode_packet(body)
        except TimeoutError:
            self.kill()
            raise CallTimeout(f"worker {self.pid} gave no answer within {timeout_s} s; "
                              "killed") from None
        except ProtocolError as exc:
            self.kill()
            raise ProtocolError(f"worker {self.pid} broke the protocol ({exc}); killed") from None
        if isinstance(answer, (Reply, ErrorReply)):
            return answer_result(answer)
        self.kill()
        raise ProtocolError(f"worker {self.pid} answered a {type(answer).__name__}; killed")

    def _take(self, n: int, deadline: float | None) -> bytes:
        """The next `n` bytes from the worker: what is buffered, then reads of what has
        arrived (several answers at once when they wait in the pipe)."""
        while len(self._incoming) < n:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self._from_worker], [], [], remaining)[0]:
                    raise TimeoutError
            chunk = os.read(self._from_worker, max(READ_SIZE, n - len(self._incoming)))
            if not chunk:
                if self._incoming:
                    raise FrameError("worker output ended inside a frame")
                raise WorkerExited(f"worker {self.pid} exited (its output closed)")
            self._incoming += chunk
        taken = bytes(self._incoming[:n])
        del self._incoming[:n]
        return taken

    def stop(self, timeout_s: float) -> int:
        """SIGTERM the worker and close its input; SIGKILL after `timeout_s`. Return its status."""
        # The signal goes first: after EOF a Python worker may already be finalizing,
        # when a SIGTERM would kill it with the default action instead of being handled.
        with contextlib.suppress(OSError):
            os.killpg(self.pid, signal.SIGTERM)
        self._close_input()
        deadline = time.monotonic() + timeout_s
        while self.poll() is None:
            if time.monotonic() >= deadline:
                log.warning("worker %d did not stop within %s s; killing it", self.pid, timeout_s)
                self.kill()
                return self.wait()
            time.sleep(0.01)
        return self.wait()

    def kill(self) -> None:
        """SIGKILL the worker's process group. Never raises."""
        if self.returncode is None:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
        self._close_input()

    def poll(self) -> int | None:
        """Return the exit status if the process has exited (reaping it), else None."""
        if self.returncode is None:
            with contextlib.suppress(ChildProcessError):
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self._exited(status)
        return self.returncode

    def wait(self) -> int:
        """Wait for the process to exit; return its status."""
        if self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:  # reaped elsewhere: its status is unknown
                self.returncode = -1
            else:
                self._exited(status)
        assert self.returncode is not None
        with contextlib.suppress(OSError):
            os.close(self._from_worker)
        return self.returncode

    def _exited(self, status: int) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)
        log.info("worker exited: pid %d status %d", self.pid, self.returncode)

    def _close_input(self) -> None:
        if self._to_worker >= 0:
            with contextlib.suppress(OSError):
                os.close(self._to_worker)
            self._to_worker = -1
