"""A real php-fpm for the FastCGI tests: its own config, pid file, error log and socket
in a temp dir, run in the foreground, stopped by its PID.

`find_php_fpm` looks for Debian's `php-fpmX.Y` (or a plain `php-fpm`) on the PATH and
in the sbin folders; `require_php_fpm` skips without one, except in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from support import wait_for

__all__ = ["PhpFpm", "find_php_fpm", "free_tcp_port", "require_php_fpm"]

_FPM_NAME = re.compile(r"php-fpm[0-9.]*")
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")

# One pool of two children, workers as the current user (root needs -R and says so),
# errors to the FastCGI stderr (php-fpm sends PHP's log lines there), not the page.
_CONFIG = """\
[global]
pid = {folder}/fpm.pid
error_log = {folder}/fpm.log
daemonize = no

[tasks]
{user}listen = {listen}
{allowed}pm = static
pm.max_children = 2
pm.max_requests = {max_requests}
request_terminate_timeout = 60s
php_admin_flag[display_errors] = off
php_admin_flag[log_errors] = on
"""


def find_php_fpm() -> str | None:
    """The php-fpm binary, newest version first; None if there is none."""
    folders = [*os.environ.get("PATH", "").split(os.pathsep), *_SBIN]
    for folder in dict.fromkeys(filter(None, folders)):
        try:
            names = sorted(os.listdir(folder), reverse=True)
        except OSError:
            continue
        for name in names:
            if _FPM_NAME.fullmatch(name) and (found := shutil.which(name, path=folder)):
                return found
    return None


def require_php_fpm() -> str:
    """The php-fpm binary; skip without one, except in CI, where its absence is a failure."""
    found = find_php_fpm()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("php-fpm is not installed; CI must run the FastCGI tests")
        pytest.skip("php-fpm is not installed (apt-get install php-fpm)")
    return found


def free_tcp_port() -> int:
    """A loopback port free a moment ago (php-fpm takes its port from its config)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PhpFpm:
    """php-fpm listening on `folder/fpm.sock` or, given `tcp_port`, on 127.0.0.1:port."""

    def __init__(self, binary: str, folder: Path, *, tcp_port: int | None = None,
                 max_requests: int = 0) -> None:
        self.binary = binary
        self.folder = folder
        self.socket_path = folder / "fpm.sock"
        self.tcp_port = tcp_port
        self.max_requests = max_requests
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The address a FastCGI client connects to."""
        return f"127.0.0.1:{self.tcp_port}" if self.tcp_port else f"unix:{self.socket_path}"

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        listen = f"127.0.0.1:{self.tcp_port}" if self.tcp_port else str(self.socket_path)
        root = os.geteuid() == 0
        user = "user = root\ngroup = root\n" if root else ""
        allowed = "listen.allowed_clients = 127.0.0.1\n" if self.tcp_port else ""
        config = self.folder / "fpm.conf"
        config.write_text(_CONFIG.format(folder=self.folder, user=user, listen=listen,
                                         allowed=allowed, max_requests=self.max_requests))
        argv = [self.binary, "-F", "-n", "-y", str(config), *(["-R"] if root else [])]
        with open(self.folder / "fpm.out", "ab") as out:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._accepting, 30, "php-fpm to accept connections")

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL of its own process group) and wait. Idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()  # the master ends its children, waits for them, exits
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                # Its own process group (start_new_session), its master not yet reaped.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def children(self) -> set[int]:
        """The PIDs of its worker processes now."""
        assert self.process is not None
        pid = self.process.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return set()
        return {int(child) for child in text.split()}

    def log(self) -> str:
        return "".join(path.read_text(errors="replace") for path in
                       (self.folder / "fpm.out", self.folder / "fpm.log") if path.exists())

    def _accepting(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"php-fpm exited ({self.process.returncode}):\n{self.log()}")
        family = socket.AF_INET if self.tcp_port else socket.AF_UNIX
        target = ("127.0.0.1", self.tcp_port) if self.tcp_port else str(self.socket_path)
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(target)
            except OSError:
                return False
        return True
