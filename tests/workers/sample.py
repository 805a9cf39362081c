"""A task class for the runner tests: one handler per behaviour a worker must survive."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from yptask.tasks.base import BaseTask, handles


class Sample(BaseTask):
    """Echo, fail, sleep, crash and misbehave on demand."""

    def setup(self) -> None:
        if self.settings.get("fail_setup"):
            raise RuntimeError("setup was told to fail")
        self.marker = self.settings.get("teardown_marker")

    def teardown(self) -> None:
        if self.marker:
            with open(self.marker, "w") as f:
                f.write("torn down")

    def handle_echo(self, msg: Any) -> Any:
        return msg

    def handle_fail(self, msg: dict[str, Any]) -> None:
        raise ValueError(msg.get("reason", "told to fail"))

    def handle_sleep(self, msg: dict[str, Any]) -> str:
        time.sleep(float(msg["seconds"]))
        return "slept"

    def handle_crash(self, msg: dict[str, Any]) -> None:
        os._exit(int(msg.get("code", 7)))

    def handle_print(self, msg: Any) -> str:
        print("a stray print that must not reach the protocol pipe")
        sys.stdout.flush()
        return "printed"

    def handle_flood(self, msg: dict[str, Any]) -> str:
        """Write megabytes to stdout (and stderr) as fast as possible."""
        line = "x" * 1023 + "\n"
        for _ in range(int(msg["megabytes"]) * 1024):
            sys.stdout.write(line)
            sys.stderr.write(line)
        sys.stdout.flush()
        return "flooded"

    def handle_unencodable(self, msg: Any) -> Any:
        return {1, 2, 3}

    def handle_whoami(self, msg: Any) -> dict[str, Any]:
        assert self.message is not None
        return {"id": self.message.id, "attempt": self.message.attempt,
                "name": self.message.name, "settings": self.settings,
                "node": os.environ.get("YPTASK_NODE"),
                "modules": sorted(sys.modules)}

    def handle_record(self, msg: Any) -> str:
        """Append this delivery to the file named by the `record_path` setting."""
        assert self.message is not None
        line = {"id": self.message.id, "attempt": self.message.attempt,
                "name": self.message.name, "payload": msg, "pid": os.getpid(),
                "at": time.time(), "meta": self.message.meta}
        with open(self.settings["record_path"], "a") as f:
            f.write(json.dumps(line) + "\n")
        return "recorded"

    def handle_crash_first(self, msg: Any) -> str:
        """Die on the first attempt, record the next one."""
        assert self.message is not None
        if self.message.attempt == 1:
            os._exit(9)
        return self.handle_record(msg)

    def handle_fail_first(self, msg: Any) -> str:
        """Raise on the first attempt, record the next one."""
        assert self.message is not None
        if self.message.attempt == 1:
            raise RuntimeError("the first attempt fails")
        return self.handle_record(msg)

    def handle_fail_unless(self, msg: dict[str, Any]) -> str:
        """Raise until the file `msg["ok_file"]` exists, then record."""
        if not os.path.exists(msg["ok_file"]):
            raise RuntimeError(f"no {msg['ok_file']} yet")
        return self.handle_record(msg)

    def handle_record_slowly(self, msg: dict[str, Any]) -> str:
        """Sleep, then record; first append this worker's pid to `started_path` if given
        (so a test knows the handler is running, not only handed the message)."""
        if "started_path" in msg:
            with open(msg["started_path"], "a") as f:
                f.write(f"{os.getpid()}\n")
        time.sleep(float(msg["seconds"]))
        return self.handle_record(msg)

    def handle_orphan(self, msg: dict[str, Any]) -> None:
        """Start a child that would outlive us, say its pid, then die."""
        child = subprocess.Popen(["sleep", "300"])
        with open(msg["pid_file"], "w") as f:
            f.write(str(child.pid))
        os._exit(3)

    def handle_garbage(self, msg: Any) -> None:
        """Write bytes that are no frame on the protocol pipe, then wait to be killed."""
        os.write(4, b"\x00\x00\x00\x05hello, this is no term")
        signal.pause()  # until the node kills us

    def handle_relay(self, msg: dict[str, Any]) -> Any:
        """Call `msg["to"]` through the node and cast `msg["cast"]`, from inside a handler."""
        published = self.cast(msg["cast"], {"from": "relay"}) if "cast" in msg else None
        return {"answer": self.call(msg["to"], msg.get("payload")), "cast": published}

    @handles("custom.any.name")
    def custom(self, msg: Any) -> str:
        return "custom"
