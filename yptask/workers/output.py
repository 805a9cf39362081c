"""The node's one reader of its workers' stdout and stderr: `WorkerLogs`.

A worker's stdout and stderr are pipes, read by one thread per node for all of
its workers (a selector; a node may run hundreds of workers) and written, line
by line, into the task's size-rotated log files (`yptask.workers.log_files`).
Each readable pipe gets one read of at most READ_BYTES per round, so a worker
that floods its output takes its turn with the others and never holds them up,
and the node's event loop never touches these pipes. Memory is bounded: per
stream at most one line in wait (a line longer than MAX_LINE_BYTES is cut into
pieces of that size) and, for stderr, the last TAIL_BYTES of it, kept for a
failed start's report (`WorkerOutput.stderr_tail`): that start's stderr only,
whatever the rotation did to the file. The thread never stops reading while a
pipe is open, so a worker never waits on it for long; a line that cannot be
written (the disk is full) is dropped, with a warning at most every few seconds.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import selectors
import threading
import time

from yptask.log_limit import LogLimiter
from yptask.workers.log_files import LogSettings, RotatingLog
from yptask.workers.process import worker_pipe

__all__ = ["MAX_LINE_BYTES", "READ_BYTES", "TAIL_BYTES", "WorkerLogs", "WorkerOutput"]

log = logging.getLogger(__name__)

READ_BYTES = 64 * 1024  # one read of one pipe, per round
MAX_LINE_BYTES = 64 * 1024  # a longer line is written in pieces of this size
TAIL_BYTES = 4096  # of a worker's stderr, kept for the report of a failed start
STOP_DRAIN_S = 2.0  # at the node's stop, how long output still open is read
SMALL_READ_BYTES = 4096  # reads this small on average in a round: wait GATHER_S
GATHER_S = 0.001  # (a 64 KiB pipe holds 64 MB/s of writes for this long)


class _Stream:
    """One pipe of one worker: the line it is in the middle of, and its tail."""

    def __init__(self, fd: int, name: str, pid: int, sink: _Sink) -> None:
        self.fd = fd
        self.name = name  # "stdout" or "stderr"
        self.pid = pid
        self.sink = sink
        self.partial = bytearray()  # the line begun, not ended yet
        self.tail = bytearray()  # stderr: the last TAIL_BYTES read
        self.tail_cut = False  # bytes were dropped before `tail`
        self.ended = threading.Event()

    def feed(self, data: bytes) -> bytes:
        """Take what was read; return the whole lines it completes."""
        if self.name == "stderr":
            self.tail += data
            if len(self.tail) > TAIL_BYTES:
                del self.tail[:-TAIL_BYTES]
                self.tail_cut = True
        self.partial += data
        end = self.partial.rfind(b"\n") + 1
        lines = bytes(self.partial[:end])
        del self.partial[:end]
        while len(self.partial) >= MAX_LINE_BYTES:  # a line too long to wait for its end
            lines += bytes(self.partial[:MAX_LINE_BYTES]) + b"\n"
            del self.partial[:MAX_LINE_BYTES]
        return lines

    def rest(self) -> bytes:
        """At the end of the pipe: the last line, if it had no newline."""
        rest, self.partial = bytes(self.partial), bytearray()
        return rest + b"\n" if rest else b""


class _Sink:
    """A log file, shared by every stream of the workers that write to it."""

    def __init__(self, path: str, settings: LogSettings) -> None:
        self.file = RotatingLog(path, settings.max_bytes, settings.keep)
        self.settings = settings
        self.streams = 0

    def write(self, lines: bytes, stream: _Stream) -> None:
        if self.settings.json:
            lines = self._as_json(lines, stream)
        self.file.write(lines)

    def _as_json(self, lines: bytes, stream: _Stream) -> bytes:
        s = self.settings
        ts = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        return b"".join(json.dumps(
            {"ts": ts, "node": s.node, "task": s.task, "worker": stream.pid,
             "stream": stream.name, "line": line.decode("utf-8", "replace").rstrip("\r")},
            ensure_ascii=False).encode() + b"\n" for line in lines[:-1].split(b"\n"))


class WorkerOutput:
    """The output pipes of one worker being started: the ends its process gets
    (`child_fds`), then, once started, what it wrote to stderr (`stderr_tail`)."""

    def __init__(self, logs: WorkerLogs, paths: dict[int, str], settings: LogSettings) -> None:
        self._logs = logs
        self._read_fds: dict[int, int] = {}
        self.child_fds: dict[int, int] = {}  # the worker's fd -> the pipe end it gets
        self._sinks: dict[int, _Sink] = {}
        self._streams: list[_Stream] = []
        try:
            for fd, path in paths.items():  # a file that cannot be opened stops the start
                self._sinks[fd] = logs.sink(path, settings)
                read_fd, write_fd = worker_pipe()
                self._read_fds[fd], self.child_fds[fd] = read_fd, write_fd
        except OSError:
            self.abandon()
            raise

    def started(self, pid: int) -> None:
        """The worker runs: close our copies of its ends, have the node read the rest."""
        self._close(self.child_fds)
        for fd, read_fd in self._read_fds.items():
            os.set_blocking(read_fd, False)
            self._streams.append(_Stream(read_fd, "stdout" if fd == 1 else "stderr", pid,
                                         self._sinks[fd]))
        self._read_fds = {}
        self._logs.add(self._streams)

    def abandon(self) -> None:
        """The worker did not start: close both ends of every pipe."""
        self._close(self.child_fds)
        self._close(self._read_fds)
        for sink in self._sinks.values():
            self._logs.release(sink)
        self._sinks.clear()

    def stderr_tail(self, wait_s: float) -> str:
        """The last TAIL_BYTES of what the worker wrote to stderr (whole lines), once its
        stderr ended (waiting at most `wait_s` for that: a child may hold it open)."""
        for stream in self._streams:
            if stream.name == "stderr":
                stream.ended.wait(wait_s)
                tail = bytes(stream.tail).decode("utf-8", "replace")
                return tail.split("\n", 1)[1] if stream.tail_cut and "\n" in tail else tail
        return ""

    @staticmethod
    def _close(fds: dict[int, int]) -> None:
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        fds.clear()


class WorkerLogs:
    """The node's reader of all its workers' output, one thread (started on first use)."""

    def __init__(self, name: str = "worker output") -> None:
        self._name = name
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()  # guards what the thread is handed
        self._added: list[_Stream] = []
        self._sinks: dict[str, _Sink] = {}
        self._thread: threading.Thread | None = None
        self._closing = False
        self._drain_until = 0.0
        self._failed_write = LogLimiter(log)

    def open(self, paths: dict[int, str], settings: LogSettings) -> WorkerOutput:
        """Pipes for a worker about to start: fd 1 and/or 2 -> the log file of each."""
        return WorkerOutput(self, paths, settings)

    def sink(self, path: str, settings: LogSettings) -> _Sink:
        """The shared writer of the file at `path` (settings: those of its latest user),
        its file open; raise OSError if it cannot be opened."""
        with self._lock:
            sink = self._sinks.get(path)
            if sink is None:
                sink = _Sink(path, settings)
                sink.file.open()
                self._sinks[path] = sink
            sink.settings = settings  # an edited task's new settings apply to its file
            sink.file.max_bytes, sink.file.keep = max(1, settings.max_bytes), settings.keep
            sink.streams += 1
            return sink

    def add(self, streams: list[_Stream]) -> None:
        """Have the thread read `streams` (never blocks)."""
        with self._lock:
            closed = self._closing
            if not closed:
                self._added.extend(streams)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self._name,
                                                    daemon=True)
                    self._thread.start()
                self._wake()  # under the lock: `close` closes the wake pipe after it
        if closed:  # the node stops: nobody reads them
            self._drop(streams)

    def _drop(self, streams: list[_Stream]) -> None:
        """Close streams never read (the node stops)."""
        for stream in streams:
            os.close(stream.fd)
            stream.ended.set()
            self.release(stream.sink)

    def release(self, sink: _Sink) -> None:
        """One user less of `sink`; the last closes its file."""
        with self._lock:
            sink.streams -= 1
            if sink.streams == 0:
                if self._sinks.get(sink.file.path) is sink:
                    del self._sinks[sink.file.path]
                sink.file.close()

    def close(self, drain_s: float = STOP_DRAIN_S) -> None:
        """Read what the workers still write for up to `drain_s`, then close every pipe and
        file. For the node's stop, after its workers stopped."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._drain_until = time.monotonic() + drain_s
            thread = self._thread
        self._wake()
        if thread is not None:
            thread.join()
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up is waiting already
            os.write(self._wake_w, b"\0")

    def _run(self) -> None:
        while True:
            with self._lock:
                closing, until, waiting = self._closing, self._drain_until, bool(self._added)
            if closing and ((len(self._selector.get_map()) == 1 and not waiting)
                            or time.monotonic() >= until):
                break
            try:
                events = self._selector.select(0.2 if closing else None)
                read = 0
                for key, _ in events:
                    if key.data is None:
                        self._take_added()
                    else:
                        read += self._read(key.data)
                if 0 < read < SMALL_READ_BYTES * len(events):
                    # Small writes, one wake-up each: a moment lets them gather in the
                    # pipes, to be taken in one read (a flood of short lines costs the
                    # node a read per pipe-full, not per line).
                    time.sleep(GATHER_S)
            except Exception:  # never leave a worker's pipe unread: log, and read on
                log.exception("reading the workers' output failed; reading on")
                time.sleep(0.01)
        for key in list(self._selector.get_map().values()):
            if key.data is not None:
                self._end(key.data)
        with self._lock:
            added, self._added = self._added, []
        self._drop(added)

    def _take_added(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        with self._lock:
            added, self._added = self._added, []
        for stream in added:
            self._selector.register(stream.fd, selectors.EVENT_READ, stream)

    def _read(self, stream: _Stream) -> int:
        """Read once from a readable pipe; return how much was read."""
        try:
            data = os.read(stream.fd, READ_BYTES)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        if data:
            self._write(stream, stream.feed(data))
        else:
            self._end(stream)
        return len(data)

    def _end(self, stream: _Stream) -> None:
        self._write(stream, stream.rest())
        self._selector.unregister(stream.fd)
        os.close(stream.fd)
        stream.ended.set()
        self.release(stream.sink)

    def _write(self, stream: _Stream, lines: bytes) -> None:
        if not lines:
            return
        try:
            stream.sink.write(lines, stream)
        except OSError as exc:  # dropped: the worker is never held up by its log
            self._failed_write.warning("worker %d's %s dropped: %s cannot be written: %s",
                                       stream.pid, stream.name, stream.sink.file.path, exc)

