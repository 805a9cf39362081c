"""The one helper that runs a `yptask node` subprocess, and the one polling helper, for
tests and benchmarks alike.

`NodeProcess` starts `yptask node` in a folder of its own (its data dir, its task
and node TOML, its log `node.log`), waits for the ready banner within a deadline,
reads the addresses the banner names (JSON-RPC URL, BERT-RPC, Redis and link), and then
speaks JSON-RPC to it with the admin token the node keeps in its data dir. It
signals, pauses and stops the node by its PID only (graceful first, then kill),
and can start it again with the same name, ports and data.

`wait_for` (blocking) and `until` (on an event loop) poll a predicate until it
holds, and fail with `AssertionError` after a deadline: a test reads a timeout
as a failed expectation, and pytest reports it as one.

It ships in the package so that tests and benchmarks share it, and imports only
the standard library and `yptask.client` (never pytest, never tests/ or bench/).

    with NodeProcess(folder, tasks=TOML) as node:
        node.rpc("cast", "upai.echo", {"n": 1})
        wait_for(lambda: node.rpc("status")["tasks"]["echo"]["handled"], what="handled")
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from yptask.client import error_from_jsonrpc

__all__ = ["LOOPBACK", "POLL_INTERVAL_S", "NodeProcess", "until", "wait_for"]

T = TypeVar("T")
POLL_INTERVAL_S = 0.05
LOOPBACK = "127.0.0.1:0"  # an address on loopback, its port chosen by the kernel
LOG_TAIL = 2000  # characters of the node's log quoted when it fails to start


def wait_for(predicate: Callable[[], T], timeout_s: float = 60.0, what: str = "it", *,
             interval_s: float = POLL_INTERVAL_S) -> T:
    """Poll `predicate` until it returns something truthy, and return that; raise
    AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval_s)
    return value


async def until(predicate: Callable[[], Any], timeout_s: float = 30.0,
                what: str = "condition", *, interval_s: float = POLL_INTERVAL_S) -> Any:
    """Poll a predicate (plain, or returning a coroutine) on the event loop until it is
    truthy; return its value, or raise AssertionError after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval_s)


class NodeProcess:
    """A `yptask node` subprocess in `folder`, stopped by its PID, never by name.

    `tasks` is the TOML of its task definitions (`folder/tasks.toml`), `config` that
    of its node settings (`folder/node.toml`, passed with --config); its data dir is
    `folder/data`. `cluster`: the arguments of a node that joins others (default:
    alone, `--no-mdns`). `http`, `bert`, `link`: its listening addresses (default:
    loopback, ports chosen by the kernel; the banner says which). `prefix` runs the
    command through another (`ip netns exec NS`, which execs the node, so the PID is
    the node's). Its log (stderr) is appended to `folder/node.log`, or left on ours
    with `capture_log=False`.
    """

    command: Sequence[str] = (sys.executable, "-P", "-m", "yptask")

    def __init__(self, folder: Path, tasks: str | None = None, name: str = "p1", *,
                 cluster: Sequence[str] | None = None, config: str | None = None,
                 http: str = LOOPBACK, bert: str = LOOPBACK, link: str = LOOPBACK,
                 prefix: Sequence[str] = (), log_level: str | None = None,
                 env: Mapping[str, str] | None = None, capture_log: bool = True,
                 ready_timeout_s: float = 60.0, stop_timeout_s: float = 20.0,
                 rpc_timeout_s: float = 60.0) -> None:
        self.folder = folder
        self.name = name
        self.env = None if env is None else dict(env)
        self.capture_log = capture_log
        self.ready_timeout_s = ready_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.rpc_timeout_s = rpc_timeout_s
        folder.mkdir(parents=True, exist_ok=True)
        options = ["--name", name, "--data-dir", str(self.data_dir)]
        if tasks is not None:
            (folder / "tasks.toml").write_text(tasks)
            options += ["--tasks", str(folder / "tasks.toml")]
        if config is not None:
            (folder / "node.toml").write_text(config)
            options += ["--config", str(folder / "node.toml")]
        options += ["--http", http, "--bert", bert, "--link", link]
        if log_level is not None:
            options += ["--log-level", log_level]
        # a subclass may add arguments to `argv` before `start`
        self.argv = [*prefix, *self.command, "node", *options,
                     *(["--no-mdns"] if cluster is None else cluster)]
        self.url = ""  # what the banner names once the node is ready
        self.bert_address = ""
        self.redis_address = ""  # the Redis-protocol ingress, if its config sets one
        self.link = ""
        self.paused = False
        self.proc: subprocess.Popen[str] | None = None

    # ---------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Start the node (again, after a stop or kill) and wait for its ready banner;
        raise RuntimeError if it exits, or is not ready within `ready_timeout_s`."""
        self.paused = False
        # cwd outside the checkout, so the installed package is what runs
        if self.capture_log:
            with open(self.log_path, "a") as log:
                self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=log,
                                             text=True, cwd=self.folder, env=self._env())
        else:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True,
                                         cwd=self.folder, env=self._env())
        late = threading.Event()
        watchdog = threading.Timer(self.ready_timeout_s, self._too_late, (self.proc, late))
        watchdog.start()
        try:
            if self._read_banner():
                return
        finally:
            watchdog.cancel()
        status = self.proc.wait()
        why = (f"was not ready within {self.ready_timeout_s:g} s" if late.is_set() else
               f"exited with status {status} before it was ready")
        raise RuntimeError(f"node {self.name} {why}; {self._log_tail()}")

    @staticmethod
    def _too_late(proc: subprocess.Popen[str], late: threading.Event) -> None:
        # the banner never came: kill the node, which ends the read of its stdout
        late.set()
        proc.kill()

    def _read_banner(self) -> bool:
        """Read the banner's addresses off stdout; whether it came to the link line."""
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            label, _, value = line.strip().partition(" ")
            if label == "JSON-RPC":
                self.url = value.strip()
            elif label == "BERT-RPC":
                self.bert_address = value.strip()
            elif label == "Redis":
                self.redis_address = "" if value.strip() == "-" else value.strip()
            elif label == "link":  # the last address the banner names
                self.link = value.strip()
                return True
        return False

    def _env(self) -> dict[str, str] | None:
        """Ours with `env` over it, or None: the node inherits ours as it is."""
        return None if self.env is None else {**os.environ, **self.env}

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the node was never started"
        return self.proc.pid

    @property
    def running(self) -> bool:
        """Whether the process exists and has not exited (it may be paused)."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def live(self) -> bool:
        """Running and not paused: a node that can answer."""
        return self.running and not self.paused

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None, "the node was never started"
        self.proc.send_signal(signum)

    def signal(self, signum: int, timeout_s: float = 60.0) -> int:
        """Send a signal; return the exit status once the node has exited."""
        self.send_signal(signum)
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def pause(self, paused: bool = True) -> None:
        """SIGSTOP the node (`paused`), or SIGCONT it."""
        self.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)
        self.paused = paused

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop gracefully (SIGTERM, a paused node resumed first) if running; kill it
        after `timeout_s` (default `stop_timeout_s`)."""
        if not self.running:
            return
        assert self.proc is not None
        if self.paused:
            self.pause(False)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=self.stop_timeout_s if timeout_s is None else timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the node if it runs, and reap it; never raises."""
        if self.running:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
        self.paused = False

    # ---------------------------------------------------------------- its files

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        return self.folder / "node.log"

    def log(self) -> str:
        """What the node has logged so far ("" if it logs to our stderr)."""
        return self.log_path.read_text() if self.log_path.exists() else ""

    def _log_tail(self) -> str:
        if not self.capture_log:
            return "its log went to stderr"
        return f"its log: {self.log()[-LOG_TAIL:]}"

    @property
    def admin_token(self) -> str:
        """The node's admin token, which it keeps in its data dir."""
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def headers(self) -> dict[str, str]:
        """What a JSON-RPC request to this node sends: its type, and the admin token."""
        return {"Content-Type": "application/json",
                "Authorization": f"Bearer {self.admin_token}"}

    # ---------------------------------------------------------------- JSON-RPC

    def rpc(self, method: str, *params: object, timeout_s: float | None = None,
            **named: object) -> Any:
        """One request, with positional or named params; its result, or its error
        raised as the yptask exception it stands for."""
        answer = self.answer(method, *params, timeout_s=timeout_s, **named)
        if "error" in answer:
            raise error_from_jsonrpc(answer["error"])
        return answer["result"]

    def answer(self, method: str, *params: object, timeout_s: float | None = None,
               **named: object) -> dict[str, Any]:
        """The whole JSON-RPC answer to one request: its result, or its error."""
        if params and named:
            raise TypeError("JSON-RPC params are positional or named, not both")
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": named or params}
        return dict(self.post(json.dumps(body), timeout_s=timeout_s))

    def cast(self, name: str, msg: object, **options: object) -> dict[str, Any]:
        """Publish `msg` under `name` with the cast `options` given (id, priority, ttl_s ...);
        return {"id", "tasks", "duplicate"} once it is stored."""
        given: dict[str, Any] = {key: value for key, value in options.items()
                                 if value is not None}
        return dict(self.rpc("cast", name=name, msg=msg, **given))

    def call(self, name: str, msg: object, timeout: float = 30.0) -> Any:
        """Have one subscribed worker handle `msg`; return its result."""
        return self.rpc("call", name=name, msg=msg, timeout=timeout,
                        timeout_s=timeout + self.rpc_timeout_s)

    def batch(self, requests: Sequence[tuple[str, Sequence[object] | Mapping[str, object]]],
              *, admin: bool = True, timeout_s: float | None = None) -> list[dict[str, Any]]:
        """Send (method, params) requests as one JSON-RPC batch, with the admin token or
        (`admin=False`) as an anonymous publisher; return the answers as the node sent
        them, each with the index of its request as its id."""
        return list(self.post(json.dumps([
            {"jsonrpc": "2.0", "id": i, "method": method,
             "params": dict(params) if isinstance(params, Mapping) else list(params)}
            for i, (method, params) in enumerate(requests)]), admin=admin, timeout_s=timeout_s))

    def cast_batch(self, name: str, payloads: list[dict[str, Any]]) -> list[str]:
        """Cast many messages in one JSON-RPC batch; return their ids."""
        answers = self.batch([("cast", [name, p]) for p in payloads])
        return [a["result"]["id"] for a in sorted(answers, key=lambda a: a["id"])]

    def post(self, body: str, *, admin: bool = True, timeout_s: float | None = None) -> Any:
        """POST a JSON-RPC body on a connection of its own; the decoded answer. Raises
        OSError (urllib.error.URLError among them) or ValueError as urllib and json do."""
        headers = self.headers if admin else {"Content-Type": "application/json"}
        request = urllib.request.Request(self.url, body.encode(), headers)
        timeout = self.rpc_timeout_s if timeout_s is None else timeout_s
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
