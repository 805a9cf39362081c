"""yptask's exceptions, and the one table that maps them to wire error codes.

Every error yptask raises derives from `YPTaskError`, in shallow families
(config, protocol, rpc, ...). `WIRE_CODES` says how each family travels: as a
BERT-RPC `{error, {Type, Code, Class, Detail, Backtrace}}` and as a JSON-RPC
error code. Every transport uses `wire_code()` (and `wire_name()` for the class name
it sends) so the mapping lives here only.

BERT-RPC reserves codes 0-99; yptask's own codes start at 100.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

__all__ = [
    "WIRE_CODES",
    "CallTimeout",
    "ChildStartFailed",
    "ConfigError",
    "DecodeError",
    "DuplicateChild",
    "EncodeError",
    "FastCgiError",
    "Forbidden",
    "FrameError",
    "HandlerError",
    "IdPending",
    "InvalidParams",
    "JournalError",
    "LinkError",
    "NoSubscriber",
    "NoSuchChild",
    "NoSuchFunction",
    "NoSuchHandler",
    "NoSuchModule",
    "NodeStopping",
    "NotAccepting",
    "Overloaded",
    "ProtocolError",
    "RPCError",
    "RemoteError",
    "RestartIntensityExceeded",
    "SupervisionError",
    "TaskPaused",
    "Unauthorized",
    "UnknownMessage",
    "UnknownTask",
    "UnknownTimer",
    "WireCode",
    "WorkerExited",
    "WorkerStartFailed",
    "WorkerUnreachable",
    "YPTaskError",
    "describe",
    "error_class_for",
    "exit_text",
    "last_line",
    "wire_code",
    "wire_name",
]


class YPTaskError(Exception):
    """Raised for anything that goes wrong inside yptask; the root of all its errors."""


class ConfigError(YPTaskError):
    """Raised when a configuration or task definition is invalid."""


class InvalidParams(ConfigError):
    """Raised when a request's parameters are not what the operation takes (any transport).

    A family of its own, so that a bad parameter is not mistaken for a bad
    configuration; a subclass of ConfigError because on the wire it has always
    been one (-32602, BERT server 102, class name "ConfigError": `wire_name`).
    """


class ProtocolError(YPTaskError):
    """Raised when bytes on a wire are not a valid frame, term or packet."""


class FrameError(ProtocolError):
    """Raised when a frame's length header is missing, truncated or over the size cap."""


class DecodeError(ProtocolError):
    """Raised when a frame's bytes are not a BERT term yptask accepts."""


class EncodeError(ProtocolError):
    """Raised when a Python value has no BERT term (inf, nan, a set, a naive datetime...)."""


class FastCgiError(ProtocolError):
    """Raised when a FastCGI server (php-fpm) breaks the protocol or closes mid-answer."""


class RPCError(YPTaskError):
    """Raised when a remote procedure call fails; the base of the call errors."""


class NoSuchModule(RPCError):
    """Raised when a call names a module the server does not serve."""


class NoSuchFunction(RPCError):
    """Raised when a call names a function the module does not have."""


class NoSuchHandler(RPCError):
    """Raised when a worker has no handler for a message name."""


class HandlerError(RPCError):
    """Raised when a handler raised an exception; carries its class, detail and traceback."""

    def __init__(self, error_class: str, detail: str, backtrace: list[str] | None = None):
        super().__init__(f"{error_class}: {detail}")
        self.error_class = error_class
        self.detail = detail
        self.backtrace = backtrace or []


class CallTimeout(RPCError):
    """Raised when a call gets no answer within its timeout."""


class WorkerExited(RPCError):
    """Raised when a worker process exits (or closes its pipe) while a call is in flight."""


class WorkerUnreachable(WorkerExited):
    """Raised when a task's endpoint (HTTP, FastCGI) cannot be reached: nothing was sent,
    so the message was not started."""


class RemoteError(RPCError):
    """Raised when a peer answered a BERT-RPC error that maps to no local error class."""

    def __init__(self, error_type: str, code: int, error_class: str, detail: str,
                 backtrace: list[str] | None = None):
        super().__init__(f"{error_type} error {code}: {error_class}: {detail}")
        self.error_type = error_type
        self.code = code
        self.error_class = error_class
        self.detail = detail
        self.backtrace = backtrace or []


class NoSubscriber(RPCError):
    """Raised when a call names a message no task subscribes to."""


class UnknownMessage(InvalidParams):
    """Raised when an operation names a message id this node's journal does not hold."""


class UnknownTask(ConfigError):
    """Raised when an operation names a task that is not defined."""


class UnknownTimer(ConfigError):
    """Raised when an operation names a timer that is not defined."""


class JournalError(YPTaskError):
    """Raised when the journal refuses one message that passed every ingress check."""

    def __init__(self, message: str, reference: str) -> None:
        super().__init__(message)
        self.reference = reference  # where the node's log has the details


class Overloaded(YPTaskError):
    """Raised when a cast is refused because a queue or the journal is over its limit."""


class IdPending(Overloaded):
    """Raised when a cast's id is being taken by another cast, not yet stored; retry shortly."""


class NodeStopping(YPTaskError):
    """Raised when a request reaches a node that is shutting down."""


class TaskPaused(YPTaskError):
    """Raised when a call is for a task that is paused (its casts wait for the resume)."""


class NotAccepting(Overloaded):
    """Raised when a cast or call is for a task an admin switched off (`accepting = false`)."""


class Unauthorized(YPTaskError):
    """Raised when a request needs the console password (or a session) and has neither."""


class Forbidden(Unauthorized):
    """Raised when a read-only caller (a viewer token or the viewer password) asks for a change."""


class LinkError(YPTaskError):
    """Raised when a link to another node cannot be opened, fails its checks, or breaks."""


class SupervisionError(YPTaskError):
    """Raised when a supervisor cannot do what it was asked; the base of the supervision errors."""


class NoSuchChild(SupervisionError):
    """Raised when a supervisor is asked about a child id it does not have."""


class DuplicateChild(SupervisionError):
    """Raised when a child is started under an id that is already in use."""


class RestartIntensityExceeded(SupervisionError):
    """Raised when a supervisor set to escalate sees more restarts than its intensity allows."""


class ChildStartFailed(SupervisionError):
    """Raised by a child's start for an expected failure it has logged: no traceback follows."""


class WorkerStartFailed(ChildStartFailed):
    """Raised when a task's worker cannot start (it exited, or its setup failed), with why."""

    def __init__(self, message: str, *, task: str = "", exit: str = "", stderr_tail: str = "",
                 stderr_log: str | None = None, at: float | None = None) -> None:
        super().__init__(message)
        self.task = task
        self.exit = exit  # "status 3", "signal 9 (SIGKILL)", "not started"
        self.stderr_tail = stderr_tail  # the last lines it wrote to stderr, bounded
        self.stderr_log = stderr_log
        self.at = time.time() if at is None else at

    @classmethod
    def of(cls, task: str, exit: str, stderr_tail: str = "", *, stderr_log: str | None = None,
           reason: str | None = None) -> WorkerStartFailed:
        """The error for a worker of `task` that ended with `exit`; `reason`: what went
        wrong besides the exit (a setup error), if anything."""
        last = last_line(stderr_tail)
        return cls(f"the workers of task {task} cannot start: "
                   f"{exit if reason is None else f'{reason} ({exit})'}"
                   + (f"; last stderr line: {last}" if last else "; it wrote nothing to stderr")
                   + (f"; its stderr log is {stderr_log}" if stderr_log else "")
                   + "; fix the task's command, class or environment and put it again",
                   task=task, exit=exit, stderr_tail=stderr_tail, stderr_log=stderr_log)


def describe(error: YPTaskError) -> tuple[str, str, str]:
    """A failed attempt's error as (class, message, traceback): the handler's own, or ours."""
    if isinstance(error, HandlerError):
        return error.error_class, error.detail, "\n".join(error.backtrace)
    return type(error).__name__, str(error), ""


def exit_text(code: int) -> str:
    """An exit status as `os.waitstatus_to_exitcode` gives it, for people (a
    `WorkerStartFailed.exit`): negative is a signal."""
    if code >= 0:
        return f"status {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


def last_line(text: str) -> str:
    """The last line of `text` that is not blank, stripped ("" if none)."""
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


@dataclass(frozen=True)
class WireCode:
    """How one error family travels: BERT-RPC type and code, and JSON-RPC code."""

    bert_type: str  # protocol | server | user | proxy
    bert_code: int
    jsonrpc_code: int


# The table. Looked up along the exception's MRO, so the most specific entry wins.
WIRE_CODES: dict[type[BaseException], WireCode] = {
    FrameError: WireCode("protocol", 1, -32700),  # BERT-RPC: unable to read header
    DecodeError: WireCode("protocol", 2, -32700),  # BERT-RPC: unable to read data
    ProtocolError: WireCode("protocol", 0, -32600),
    NoSuchModule: WireCode("server", 1, -32601),
    NoSuchFunction: WireCode("server", 2, -32601),
    NoSuchHandler: WireCode("server", 100, -32001),
    EncodeError: WireCode("server", 101, -32002),
    UnknownTask: WireCode("server", 105, -32005),
    UnknownTimer: WireCode("server", 109, -32009),
    ConfigError: WireCode("server", 102, -32602),
    NoSubscriber: WireCode("server", 106, -32006),
    Overloaded: WireCode("server", 107, -32007),
    NodeStopping: WireCode("server", 108, -32008),
    CallTimeout: WireCode("server", 103, -32003),
    WorkerUnreachable: WireCode("server", 119, -32019),
    WorkerExited: WireCode("server", 104, -32004),
    NoSuchChild: WireCode("server", 111, -32011),
    DuplicateChild: WireCode("server", 112, -32012),
    RestartIntensityExceeded: WireCode("server", 113, -32013),
    WorkerStartFailed: WireCode("server", 116, -32016),
    SupervisionError: WireCode("server", 110, -32010),
    LinkError: WireCode("server", 114, -32014),
    Forbidden: WireCode("server", 124, -32024),
    Unauthorized: WireCode("server", 115, -32015),
    TaskPaused: WireCode("server", 117, -32017),
    NotAccepting: WireCode("server", 118, -32018),
    HandlerError: WireCode("user", 100, -32000),
    YPTaskError: WireCode("server", 0, -32603),
    BaseException: WireCode("server", 0, -32603),
}


def wire_code(exc: BaseException | type[BaseException]) -> WireCode:
    """Return the wire code of an exception (instance or class), most specific first."""
    cls = exc if isinstance(exc, type) else type(exc)
    for klass in cls.__mro__:
        code = WIRE_CODES.get(klass)
        if code is not None:
            return code
    return WIRE_CODES[BaseException]  # pragma: no cover - BaseException is in every MRO


# The class names some errors travel under, when it is not their own: what clients
# have always been sent for them. Exact classes only.
_WIRE_NAMES: dict[type[BaseException], str] = {InvalidParams: "ConfigError"}


def wire_name(exc: BaseException) -> str:
    """The class name an error is sent under (BERT-RPC `Class`, JSON-RPC `error_class`)."""
    cls = type(exc)
    return _WIRE_NAMES.get(cls) or cls.__name__


def error_class_for(bert_type: str, code: int) -> type[YPTaskError] | None:
    """The yptask error class a BERT-RPC error type and code stand for, if any one does."""
    for cls, wire in WIRE_CODES.items():
        if (wire.bert_type, wire.bert_code) == (bert_type, code) and code > 0 \
                and issubclass(cls, YPTaskError) and cls is not HandlerError:
            return cls
    return None
