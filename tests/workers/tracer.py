"""A task class for the trace tests: it writes down the meta each handler is given, and
casts and calls onwards from a handler, as a request that causes more messages does.

Each run appends one JSON line to the file named by the `record_path` setting:
{"name", "id", "node", "meta"}.
"""

from __future__ import annotations

import json
import os
from typing import Any

from yptask.tasks.base import BaseTask


class Tracer(BaseTask):
    """`*.start` casts `tr.child` (and calls `tr.ask` if told to); `*.child` and `*.ask`
    answer; `*.fail` raises."""

    def _write(self, name: str) -> dict[str, Any]:
        assert self.message is not None
        line = {"name": name, "id": self.message.id, "node": os.environ.get("YPTASK_NODE"),
                "meta": dict(self.message.meta)}
        with open(self.settings["record_path"], "a") as f:
            f.write(json.dumps(line) + "\n")
        return line

    def handle_start(self, msg: Any) -> str:
        self._write("start")
        child = self.cast("tr.child", {"from": "start"})["id"]
        if isinstance(msg, dict) and msg.get("call"):
            self.call("tr.ask", {"from": "start"}, timeout=30)
        return child

    def handle_child(self, msg: Any) -> None:
        self._write("child")

    def handle_ask(self, msg: Any) -> dict[str, Any]:
        return self._write("ask")["meta"]

    def handle_fail(self, msg: Any) -> None:
        self._write("fail")
        raise ValueError("told to fail")
