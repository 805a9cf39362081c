"""A task class for the chaos checker (bench/chaos.py): it writes down every handler run.

Each run appends two JSON lines to the file named by the `record_path` setting,
one when the handler starts (`"phase": "start"`) and one when it ends
(`"phase": "end"`, with `"ok"`): message id, task, node, worker pid, attempt,
and, for a timer tick, the scheduled time read from the tick's id. Each line is
written with one `write` on a file opened with O_APPEND, so lines from the
workers of every node interleave whole; a line cut by a kill -9 is skipped by
the reader. The start line is what counts a real handler run (a run killed
mid-handler did start); the end line is what counts a message as handled.

Where the task's settings say `fail_marked = true`, a payload with
`"fail": true` makes the handler raise after its start line, so such a
message is dead-lettered after the task's max attempts.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from yptask.tasks.base import BaseTask

TICK_PREFIX = "timer:"  # yptask.timers.schedule.fire_id: timer:NAME:SCHEDULED


def tick_of(message_id: str) -> float | None:
    """The scheduled time of a timer tick's id, None for any other id."""
    if not message_id.startswith(TICK_PREFIX):
        return None
    try:
        return float(message_id.rpartition(":")[2])
    except ValueError:
        return None


class Recorder(BaseTask):
    """Handles `*.record` and `*.tick`: writes the run down, fails where told to."""

    def setup(self) -> None:
        self.fd = os.open(self.settings["record_path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                          0o644)

    def teardown(self) -> None:
        os.close(self.fd)

    def _write(self, phase: str, **extra: Any) -> None:
        assert self.message is not None
        line = {"phase": phase, "id": self.message.id, "task": os.environ.get("YPTASK_TASK"),
                "node": os.environ.get("YPTASK_NODE"), "pid": os.getpid(),
                "attempt": self.message.attempt, "tick": tick_of(self.message.id),
                "at": time.time(), **extra}
        os.write(self.fd, (json.dumps(line) + "\n").encode())

    def handle_record(self, msg: Any) -> str:
        self._write("start")
        if self.settings.get("fail_marked") and isinstance(msg, dict) and msg.get("fail"):
            self._write("end", ok=False)
            raise ValueError("this payload is told to fail")
        self._write("end", ok=True)
        return "recorded"

    def handle_tick(self, msg: Any) -> str:
        return self.handle_record(msg)
