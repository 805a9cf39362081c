"""A task class for the worker fault tests: a slow setup, and children that outlive a stop."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from yptask.tasks.base import BaseTask

POLL_S = 0.05


class Faults(BaseTask):
    """Settings: `setup_gate` (setup waits until this file exists, at most `setup_wait_s`)
    and `ready_marker` (written with the pid once setup is done)."""

    def setup(self) -> None:
        gate = self.settings.get("setup_gate")
        if gate:
            deadline = time.monotonic() + float(self.settings.get("setup_wait_s", 20))
            while not Path(gate).exists() and time.monotonic() < deadline:
                time.sleep(POLL_S)
        marker = self.settings.get("ready_marker")
        if marker:
            Path(marker).write_text(str(os.getpid()))

    def handle_echo(self, msg: Any) -> Any:
        return msg

    def handle_stubborn_child(self, msg: Any) -> int:
        """Start a child in our process group that ignores SIGTERM; return its pid."""
        # this worker runs no threads, so preexec_fn is safe here
        child = subprocess.Popen(
            ["sleep", "300"],
            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))  # noqa: PLW1509
        return child.pid
