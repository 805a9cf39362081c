"""The one owner of a worker's pipes: every frame to and from a worker goes through here.

A `WorkerConnection` spawns one worker process (`yptask.workers.process`) and
holds both ends of its protocol pipes, and the one way to stop or kill it. Its
Worker actor's thread writes calls, waits for each answer with a deadline
(`select`), and so handles one message at a time, as the worker does. While the
worker is idle, the node's event loop may run one call on it itself
(`claim` then `handle_claimed`), which spares two thread wake-ups per call; the
actor holds the connection (`held`) whenever it speaks on the pipes, so only one
side does at a time. A call that times out, or a worker that breaks the
protocol, gets the worker's process group killed: its state is unknown.
Whatever is left of the group once the worker has exited (children that ignored
the SIGTERM of a stop) is killed too: the group dies with its worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import select
import signal
import struct
import termios
import threading
import time
from collections import deque
from typing import Any

from yptask.errors import CallTimeout, EncodeError, ProtocolError, WorkerExited, YPTaskError
from yptask.wire.bertrpc import (
    Call,
    ErrorReply,
    FrameReader,
    NoReply,
    Reply,
    answer_result,
    decode_packet,
    frame,
    write_frame,
)
from yptask.workers.job import PIPE_ROOM, Outcome
from yptask.workers.output import WorkerLogs
from yptask.workers.process import WorkerSpec, handle_call, spawn_process

__all__ = ["WorkerConnection"]

log = logging.getLogger(__name__)


class WorkerConnection:
    """One worker OS process and both ends of its protocol pipes. Whoever speaks on them
    holds the connection first (`held` in a thread, `claim` on the loop)."""

    def __init__(self, spec: WorkerSpec, logs: WorkerLogs | None = None) -> None:
        self.spec = spec
        # The worker's stdout and stderr, read and written by the node (`spec.logs`), or
        # appended by the worker to the spec's paths itself.
        self.output = (logs.open(spec.log_paths(), spec.logs)
                       if logs is not None and spec.logs is not None else None)
        try:
            self.pid, self._to_worker, self._from_worker = spawn_process(
                spec, None if self.output is None else self.output.child_fds)
        except BaseException:
            if self.output is not None:
                self.output.abandon()
            raise
        if self.output is not None:
            self.output.started(self.pid)
        # The worker leads its own process group. The group outlives the worker while any
        # member does, and can be signalled by this id until the last one is gone.
        self.pgid = self.pid
        self._group_killed = False
        self.returncode: int | None = None
        self._unanswered: deque[int] = deque()  # the frame size of each call not yet answered
        self._awaited = 0  # the frame size of the call whose answer is being read
        # Set once the worker is found gone (or killed): whether it had read none of the
        # call awaited, which it so never started (see `_note_loss`).
        self.lost_unread = False
        self._outgoing: list[bytes] = []  # calls sent and not yet written: one write for all
        self._incoming = FrameReader(self._from_worker, spec.max_frame)
        # Held while speaking on the pipes: by the actor's thread while it runs jobs, by the
        # event loop from `claim` to the end of `handle_claimed`, and around stopping.
        self._lock = threading.Lock()
        log.info("worker started: pid %d %s", self.pid, " ".join(spec.argv))

    @property
    def stopped(self) -> bool:
        """True once the worker's input is closed: it takes no more calls."""
        return self._to_worker < 0

    def call(self, module: str, function: str, args: list[Any],
             timeout_s: float | None = None) -> Any:
        """Call Module:Function(Args) and return the result; raise the answer's error.

        Raises `CallTimeout` (worker killed), `WorkerExited`, `ProtocolError`
        (worker killed), or the rebuilt error of an `{error, ...}` answer.
        """
        sent = self.send(Call(module, function, args))
        assert sent, "call() is for a connection with no call waiting for its answer"
        return self.receive(timeout_s)

    def send(self, packet: Call) -> bool:
        """Queue a call without waiting for its answer; False if it must wait for answers.

        Sending the next message before the answer to the current one keeps the worker
        busy instead of asleep between messages; answers come back in order. A call is
        queued behind unanswered ones only while they all fit in PIPE_ROOM; otherwise
        it is not and False is returned: read the answers first, then send it. Queued
        calls are written together, in one write, by `receive` (or `flush`).
        """
        if self.stopped:
            raise WorkerExited(f"worker {self.pid} is stopped")
        data = frame(packet)  # an EncodeError leaves nothing queued
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
            self._awaited = self._unanswered.popleft()
        try:
            body = self._next_frame(deadline)
        except (TimeoutError, ProtocolError) as exc:
            raise self._killed(exc, timeout_s) from None
        return self._answer(body)

    def held(self) -> contextlib.AbstractContextManager[bool]:
        """`with conn.held():` speak on the pipes from this thread, once a call the loop
        runs on them has ended. (The lock itself: no wrapper per job.)"""
        return self._lock

    def claim(self) -> bool:
        """Take the pipes of an idle worker for one call from the loop (`handle_claimed`);
        False if its actor is on them."""
        return self._lock.acquire(blocking=False)

    async def handle_claimed(self, name: str, payload: Any, meta: dict[str, Any],
                             timeout_s: float) -> Outcome:
        """Have the worker handle one message, from the loop, on pipes taken with `claim`
        (released here); the outcome, never an error."""
        try:
            return await self._handle_on_loop(name, payload, meta, timeout_s)
        finally:
            self._lock.release()

    async def _handle_on_loop(self, name: str, payload: Any, meta: dict[str, Any],
                              timeout_s: float) -> Outcome:
        if self.stopped:
            return Outcome.unstarted(WorkerExited("the worker stopped before taking the call"))
        start = time.monotonic()
        try:
            result = await self.call_on_loop(handle_call(name, payload, meta), timeout_s)
        except EncodeError as exc:  # nothing was written: the worker is still free
            return Outcome.failed(exc)
        except (WorkerExited, CallTimeout, ProtocolError) as exc:
            # The worker is gone or killed: its actor learns it from the process's exit.
            return Outcome.unstarted(exc) if self.lost_unread else Outcome.lost(exc)
        except YPTaskError as exc:  # the handler raised, or has no handler for the name
            return Outcome.failed(exc, time.monotonic() - start)
        except Exception as exc:  # a bug on our side: the worker's protocol state is unknown
            log.exception("a call on worker %d failed unexpectedly; killing it", self.pid)
            self.kill()
            return Outcome.lost(WorkerExited(f"the call failed on the node ({exc!r}); its "
                                             "worker was killed"))
        return Outcome.handled(result, time.monotonic() - start)

    async def call_on_loop(self, packet: Call, timeout_s: float | None,
                           expected: type[Reply | NoReply] = Reply) -> Any:
        """`call`, run by the event loop, for an idle worker whose pipes are empty (taken
        with `claim`, or with no actor at all). Raises as `call` does; `expected=NoReply`
        for a cast."""
        sent = self.send(packet)
        assert sent and len(self._unanswered) == 1, "call_on_loop() is for an idle worker"
        self._awaited = self._unanswered.popleft()
        if self._awaited <= PIPE_ROOM:
            self.flush()  # into an empty pipe, with room for it: this write does not block
        else:  # the worker reads it as it is written; the loop does not wait for that
            await asyncio.to_thread(self.flush)
        return self._answer(await self.frame_on_loop(timeout_s), expected)

    async def frame_on_loop(self, timeout_s: float | None) -> bytes:
        """The next frame from the worker, awaited on the loop; a worker that sends none
        within `timeout_s`, or a bad one, is killed."""
        loop = asyncio.get_running_loop()
        arrived: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            try:
                body = self._incoming.buffered()
                if body is None:
                    if not self._incoming.fill():  # readable: this read does not block
                        raise self._exited_error()
                    body = self._incoming.buffered()
            except BaseException as exc:
                if not arrived.done():
                    arrived.set_exception(exc)
                return
            if body is not None and not arrived.done():
                arrived.set_result(body)

        if (body := self._incoming.buffered()) is not None:
            return body
        loop.add_reader(self._from_worker, readable)
        try:
            async with asyncio.timeout(timeout_s):
                return await arrived
        except (TimeoutError, ProtocolError) as exc:
            raise self._killed(exc, timeout_s) from None
        finally:
            loop.remove_reader(self._from_worker)

    def unread_input(self) -> int:
        """Bytes written into the worker's input that it has not read yet (0 once closed)."""
        if self.stopped:
            return 0
        unread = fcntl.ioctl(self._to_worker, termios.FIONREAD, b"\0" * 4)
        return int(struct.unpack("i", unread)[0])

    def write_raw(self, data: bytes) -> None:
        """Write bytes into the worker's input as they are: frames the node itself never
        sends, that expect no answer (tests, benchmarks)."""
        if self.stopped:
            raise WorkerExited(f"worker {self.pid} is stopped")
        write_frame(self._to_worker, data)

    def _exited_error(self) -> WorkerExited:
        self._note_loss()
        return WorkerExited(f"worker {self.pid} exited (its output closed)")

    def _note_loss(self) -> None:
        """Note whether the worker, found gone or about to be killed, had read none of the
        call awaited: all of its bytes still in the pipe. Such a call was never started,
        so it spends no attempt (a kill -9 can land between our write and the worker's
        read). One the worker had begun to read may have run, and so spends one."""
        if self._awaited and not self.stopped:
            waiting = self.unread_input() + sum(map(len, self._outgoing))
            self.lost_unread = waiting >= self._awaited + sum(self._unanswered)

    def _killed(self, exc: Exception, timeout_s: float | None) -> CallTimeout | ProtocolError:
        """Kill a worker that gave no proper answer; return the error saying why."""
        self._note_loss()
        self.kill()
        if isinstance(exc, TimeoutError):
            return CallTimeout(f"worker {self.pid} gave no answer within {timeout_s} s; killed")
        return ProtocolError(f"worker {self.pid} broke the protocol ({exc}); killed")

    def _answer(self, body: bytes, expected: type[Reply | NoReply] = Reply) -> Any:
        """The result an answer frame carries; raise its error, or kill a worker that
        broke the protocol and raise `ProtocolError`."""
        try:
            answer = decode_packet(body)
        except ProtocolError as exc:
            raise self._killed(exc, None) from None
        if isinstance(answer, (expected, ErrorReply)):
            return answer_result(answer, expected)
        self.kill()
        raise ProtocolError(f"worker {self.pid} answered a {type(answer).__name__}; killed")

    def _next_frame(self, deadline: float | None) -> bytes:
        """The next frame from the worker: buffered already, or read when it arrives."""
        while (body := self._incoming.buffered()) is None:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self._from_worker], [], [], remaining)[0]:
                    raise TimeoutError
            if not self._incoming.fill():
                raise self._exited_error()
        return body

    def stop(self, timeout_s: float) -> int:
        """SIGTERM the worker's group and close its input; SIGKILL after `timeout_s`. Return
        its status. What is left of the group once the worker has exited is killed."""
        # The signal goes first: after EOF a Python worker may already be finalizing,
        # when a SIGTERM would kill it with the default action instead of being handled.
        self._signal_group(signal.SIGTERM)
        self.close_input()
        deadline = time.monotonic() + timeout_s
        while self.poll() is None:
            if time.monotonic() >= deadline:
                log.warning("worker %d did not stop within %s s; killing it", self.pid, timeout_s)
                self.kill()
                return self.wait()
            time.sleep(0.01)
        return self.wait()

    def kill(self) -> None:
        """SIGKILL the worker's process group, the worker itself exited or not. Never raises."""
        self._signal_group(signal.SIGKILL)
        self.close_input()

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
        # Children the worker left in its group (that ignored a SIGTERM, or never got one)
        # die with it. Once all are killed the id may be reused: never signal it again.
        self._signal_group(signal.SIGKILL)
        self._group_killed = True
        return self.returncode

    def _signal_group(self, signum: int) -> None:
        if not self._group_killed:
            with contextlib.suppress(OSError):  # no member left
                os.killpg(self.pgid, signum)

    def _exited(self, status: int) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)
        log.info("worker exited: pid %d status %d", self.pid, self.returncode)

    def close_input(self) -> None:
        """Close the worker's input: at its end a worker finishes and exits."""
        if self._to_worker >= 0:
            with contextlib.suppress(OSError):
                os.close(self._to_worker)
            self._to_worker = -1
