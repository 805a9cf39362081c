"""Echo: the request/reply example. `call("upai.echo", msg)` answers msg."""

from __future__ import annotations

from typing import Any

from yptask.tasks.base import BaseTask


class Echo(BaseTask):
    """Answers every `*.echo` message with its payload, unchanged."""

    def handle_echo(self, msg: Any) -> Any:
        return msg
