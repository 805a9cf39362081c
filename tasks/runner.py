"""The worker runner: serves one `BaseTask` subclass over BERT-RPC on its pipes.

`yptask worker MODULE:CLASS [--stdio]` (or `python -m yptask.tasks.runner`)
runs this. The node is the client and this process the server: frames come
in on fd 3 and go out on fd 4 (Erlang's `nouse_stdio`), or on stdin/stdout
with `--stdio`, in which case the real stdout is moved to stderr so a stray
`print()` cannot corrupt the protocol. Calls it serves (module `yptask`):

    setup(Info)                  -> #{pid, handles}; runs BaseTask.setup()
    handle(Name, Payload, Meta)  -> the handler's return value
    ping()                       -> pong

One message at a time. End of input, SIGTERM or SIGINT let the current
message finish; then `teardown()` runs and the process exits 0.

Imports only the standard library and yptask's protocol modules, so a worker
starts fast.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import select
import signal
import sys
import traceback
from typing import Any

from yptask.errors import (
    ConfigError,
    EncodeError,
    FrameError,
    HandlerError,
    NoSuchFunction,
    NoSuchHandler,
    NoSuchModule,
    ProtocolError,
)
from yptask.tasks.base import BaseTask, Message
from yptask.wire.bertrpc import (
    Call,
    Cast,
    ErrorReply,
    FrameReader,
    Info,
    NoReply,
    Reply,
    decode_packet,
    error_reply,
    frame,
    write_frame,
)
from yptask.wire.codec import Atom

__all__ = [
    "EXIT_BAD_CLASS", "EXIT_OK", "EXIT_PROTOCOL", "EXIT_SETUP_FAILED", "RUNNER_PATH", "Runner",
    "add_import_path", "main", "runner_argv",
]

EXIT_OK = 0
EXIT_SETUP_FAILED = 1
# 2 is argparse's: the command line is wrong
EXIT_BAD_CLASS = 3  # MODULE:CLASS cannot be loaded
EXIT_PROTOCOL = 4  # the input stream can no longer be framed

PROTOCOL_IN_FD = 3
PROTOCOL_OUT_FD = 4
# Folders (os.pathsep between) put first on sys.path before the task class is imported:
# a task's cwd and python_path (see supervisors.task.import_path).
RUNNER_PATH = "YPTASK_PYTHON_PATH"

log = logging.getLogger(__name__)


class Runner:
    """Serves one task class on a pair of file descriptors until input ends or a stop signal."""

    def __init__(self, task_class: type[BaseTask], in_fd: int, out_fd: int) -> None:
        self.task_class = task_class
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.task: BaseTask | None = None
        self.stopping = False
        self.handled = 0

    # ------------------------------------------------------------------ loop

    def serve(self) -> int:
        """Serve packets until input ends or a stop signal arrives; return the exit code."""
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_stop_signal)
        try:
            return self._loop(wake_r)
        finally:
            self._teardown()
            signal.set_wakeup_fd(-1)
            os.close(wake_r)
            os.close(wake_w)

    def _on_stop_signal(self, signum: int, _frame: object) -> None:
        log.info("worker stopping on %s after the current message", signal.Signals(signum).name)
        self.stopping = True

    def _loop(self, wake_fd: int) -> int:
        frames = FrameReader(self.in_fd)
        while not self.stopping:
            try:
                body = frames.buffered()
                if body is None:  # wait for input (or a stop signal), then read all there is
                    ready, _, _ = select.select([self.in_fd, wake_fd], [], [])
                    if self.in_fd in ready and not self.stopping and not frames.fill():
                        log.info("worker input ended; exiting")
                        return EXIT_OK
                    continue
            except FrameError as exc:
                # The stream cannot be re-synchronised after a bad header: say why and go.
                log.error("worker input is not framed: %s", exc)
                with contextlib.suppress(_NodeGone):
                    self._send(error_reply(exc))
                return EXIT_PROTOCOL
            try:
                if not self._serve_one(body):
                    return EXIT_SETUP_FAILED
            except _NodeGone:
                log.info("the node closed the worker's output; exiting")
                return EXIT_OK
        return EXIT_OK

    def _serve_one(self, body: bytes) -> bool:
        """Answer one frame. Returns False when the worker must exit (setup failed)."""
        try:
            packet = decode_packet(body)
        except ProtocolError as exc:
            log.warning("worker got a malformed packet: %s", exc)
            self._send(error_reply(exc))
            return True
        if isinstance(packet, Info):
            log.debug("ignoring info packet %s", packet.command)  # BERT-RPC: info needs no answer
            return True
        if not isinstance(packet, Call):
            self._send(error_reply(ProtocolError(
                f"a worker serves calls and casts; it got a {type(packet).__name__} packet")))
            return True
        if isinstance(packet, Cast):
            self._send(NoReply())
            try:
                self._dispatch(packet)
            except Exception:
                log.exception("cast %s:%s failed", packet.module, packet.function)
            return True
        answer: Reply | ErrorReply
        try:
            answer = Reply(self._dispatch(packet))
        except _SetupFailed as exc:
            self._send(error_reply(exc.handler_error))
            return False
        except Exception as exc:
            answer = error_reply(exc)
        self._send(answer)
        return True

    def _send(self, packet: Reply | NoReply | ErrorReply) -> None:
        try:
            data = frame(packet)
        except EncodeError as exc:
            data = frame(error_reply(EncodeError(f"handler result is not encodable: {exc}")))
        try:
            write_frame(self.out_fd, data)
        except BrokenPipeError:
            raise _NodeGone from None

    # ------------------------------------------------------------------ calls

    def _dispatch(self, call: Call) -> Any:
        if call.module != "yptask":
            raise NoSuchModule(f"no module '{call.module}'; a worker serves module 'yptask'")
        if call.function == "handle" and len(call.args) == 3:
            return self._handle(*call.args)
        if call.function == "setup" and len(call.args) == 1:
            return self._setup(call.args[0])
        if call.function == "ping" and not call.args:
            return Atom("pong")
        raise NoSuchFunction(f"no function yptask:{call.function}/{len(call.args)}; "
                             "a worker serves handle/3, setup/1 and ping/0")

    def _setup(self, info: Any) -> dict[str, Any]:
        if not isinstance(info, dict):
            raise ConfigError("setup takes one map: #{task, node, settings}")
        settings = info.get("settings") or {}
        if not isinstance(settings, dict):
            raise ConfigError("setup: settings must be a map")
        _NodeLogFilter.node = str(info.get("node", _NodeLogFilter.node))
        self._start_task(settings, str(info.get("task", "")))
        return {"pid": os.getpid(), "handles": self.task_class.handled()}

    def _start_task(self, settings: dict[str, Any], task_name: str) -> BaseTask:
        self._teardown()  # a repeated setup replaces the task cleanly
        self.task = None
        task = self.task_class(settings, task_name=task_name)
        try:
            task.setup()
        except Exception as exc:
            log.exception("setup() of %s failed", self.task_class.__qualname__)
            raise _SetupFailed(_as_handler_error(exc)) from exc
        self.task = task
        log.info("worker ready: %s pid %d", self.task_class.__qualname__, os.getpid())
        return task

    def _handle(self, name: Any, payload: Any, meta: Any) -> Any:
        if not isinstance(name, str) or not isinstance(meta, dict):
            raise ConfigError("handle takes (Name :: binary, Payload, Meta :: map)")
        task = self.task or self._start_task({}, "")
        method = self.task_class.handler_for(name)
        if method is None:
            raise NoSuchHandler(f"{self.task_class.__qualname__} has no handler for {name!r}")
        attempt = meta.get("attempt", 1)
        task.message = Message(name, payload, meta.get("id"),
                               attempt if isinstance(attempt, int) else 1, meta)
        try:
            return getattr(task, method)(payload)
        except Exception as exc:
            raise _as_handler_error(exc) from exc
        finally:
            task.message = None
            self.handled += 1

    def _teardown(self) -> None:
        if self.task is None:
            return
        try:
            self.task.teardown()
        except Exception:
            log.exception("teardown() of %s failed", self.task_class.__qualname__)


class _NodeGone(Exception):
    """The node closed the worker's output pipe: nobody is left to answer."""


class _SetupFailed(Exception):
    """A task's setup() raised; the worker answers the error and exits."""

    def __init__(self, handler_error: HandlerError) -> None:
        super().__init__(str(handler_error))
        self.handler_error = handler_error


def _as_handler_error(exc: BaseException) -> HandlerError:
    lines = traceback.format_exception(exc)
    return HandlerError(type(exc).__name__, str(exc), [line.rstrip("\n") for line in lines])


class _NodeLogFilter(logging.Filter):
    """Adds the node name to every record the worker logs."""

    node = os.environ.get("YPTASK_NODE", "-")

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        return True


def runner_argv(task_class: str, *, stdio: bool = False) -> list[str]:
    """Return the command that runs a worker for `MODULE:CLASS` with this interpreter.

    `-P` keeps the worker's working directory off `sys.path`, so a folder named
    `yptask` there (a source checkout) cannot shadow the installed package; the
    folders of RUNNER_PATH are added once yptask is imported (`add_import_path`).
    """
    return [sys.executable, "-P", "-m", "yptask.tasks.runner", task_class,
            *(["--stdio"] if stdio else [])]


def add_import_path(folders: str) -> None:
    """Put `folders` (os.pathsep between) first on sys.path, in their order. yptask is
    imported already, so a `yptask` folder among them shadows nothing of it."""
    for folder in reversed([f for f in folders.split(os.pathsep) if f]):
        if folder in sys.path:
            sys.path.remove(folder)
        sys.path.insert(0, folder)


def load_task_class(spec: str) -> type[BaseTask]:
    """Import `MODULE:CLASS` and check that it is a BaseTask subclass."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"worker class must be MODULE:CLASS, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseTask)):
        raise ConfigError(f"{spec} is not a yptask.BaseTask subclass")
    return cls


def _protocol_fds(use_stdio: bool) -> tuple[int, int]:
    if not use_stdio:
        return PROTOCOL_IN_FD, PROTOCOL_OUT_FD
    # Keep the protocol on private copies; point fd 0 at /dev/null and fd 1 at stderr.
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return in_fd, out_fd


def main(argv: list[str] | None = None) -> int:
    """Run a worker: `MODULE:CLASS [--stdio]`. Returns the exit code."""
    parser = argparse.ArgumentParser(prog="yptask worker",
                                     description="Serve a BaseTask subclass over BERT-RPC.")
    parser.add_argument("task_class", metavar="MODULE:CLASS")
    parser.add_argument("--stdio", action="store_true",
                        default=os.environ.get("YPTASK_USE_STDIO") == "1",
                        help="frames on stdin/stdout instead of fds 3 and 4")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_NodeLogFilter())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s [%(node)s] worker %(process)d %(name)s: %(message)s"))
    logging.basicConfig(level=os.environ.get("YPTASK_LOG_LEVEL", "INFO"), handlers=[handler])
    add_import_path(os.environ.get(RUNNER_PATH, ""))
    try:
        task_class = load_task_class(args.task_class)
    except ConfigError as exc:
        print(f"yptask worker: {exc}", file=sys.stderr)
        return EXIT_BAD_CLASS
    in_fd, out_fd = _protocol_fds(args.stdio)
    return Runner(task_class, in_fd, out_fd).serve()


if __name__ == "__main__":
    sys.exit(main())
