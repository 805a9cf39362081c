"""Remote workers: the `RemoteBackend` a remote worker actor delivers through, and which one.

A task whose workers are an endpoint rather than processes (`url`: HTTP,
`fastcgi`: a FastCGI server) has actors that each hold one backend and hand it
one message at a time, in the actor's thread (it may block). `backend_for`
makes the backend a task's definition names; the FastCGI one is imported only
when a FastCGI task starts.
"""

from __future__ import annotations

from typing import Any, Protocol

from yptask.config.tasks import TaskDef
from yptask.errors import ConfigError

__all__ = ["RemoteBackend", "backend_for"]


class RemoteBackend(Protocol):
    """One connection to a task's endpoint, used by one actor's thread at a time."""

    def handle(self, name: str, payload: Any, meta: dict[str, Any], timeout_s: float) -> Any:
        """Deliver one message; return the result (None if the answer has no body).
        Raise HandlerError (the endpoint answered a failure: non-2xx status, with the
        status and the first bytes of the body in the message), CallTimeout (no answer in
        time), or WorkerUnreachable (could not connect / nothing was sent: the message was
        not started)."""

    def close(self) -> None: ...


def backend_for(task: TaskDef) -> RemoteBackend:
    """A new backend for one worker of the remote `task` (`url` or `fastcgi`)."""
    if task.url:
        from yptask.workers.http_backend import HttpBackend

        return HttpBackend(task.url, headers=task.headers)
    if task.fastcgi:
        from yptask.workers.fastcgi_backend import FastCgiBackend

        return FastCgiBackend(address=task.fastcgi, script=task.script)
    raise ConfigError(f"task {task.name} has no endpoint: its workers are processes")
