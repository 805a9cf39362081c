"""What the console's browser tests share: a node with a console password, pages that keep
their errors, the login. (The `browser` and `shots` fixtures are in conftest.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support import NodeProcess

from yptask.access.passwords import hash_password
from yptask.client import Client

__all__ = ["ConsoleNode", "browser_page", "log_in"]


class ConsoleNode(NodeProcess):
    """A node process whose console takes `password` (and `viewer_password`, if given)."""

    def __init__(self, tmp: Path, tasks: str, name: str, password: str, *,
                 viewer_password: str | None = None) -> None:
        self.password = password
        config = f'[node]\nconsole_password_hash = "{hash_password(password)}"\n'
        if viewer_password is not None:
            config += f'viewer_password_hash = "{hash_password(viewer_password)}"\n'
        (tmp / "node.toml").write_text(config)
        super().__init__(tmp, tasks, name,
                         cluster=["--config", str(tmp / "node.toml"), "--no-mdns"])

    @property
    def base(self) -> str:
        return self.url.removesuffix("/rpc")

    def client(self) -> Client:
        return Client(self.url, password=self.password)


@contextmanager
def browser_page(browser: Any, width: int = 1280, height: int = 800) -> Iterator[Any]:
    """A page of its own (own cookies) that keeps its console errors (`page.console_errors`)
    and its failed requests (`page.failed`: an HTTP status of 400 or more, or no answer)."""
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        page.console_errors = []  # type: ignore[attr-defined]
        page.failed = []  # type: ignore[attr-defined]
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        page.on("response", lambda r: r.status >= 400 and page.failed.append(f"{r.status} {r.url}"))
        page.on("requestfailed", lambda r: page.failed.append(f"failed {r.url}"))
        yield page
    finally:
        context.close()


def log_in(page: Any, node: ConsoleNode, where: str = "", password: str | None = None) -> None:
    """Open `where` (a `#/...` link) and log in, with the node's password unless given."""
    page.goto(node.base + "/" + where)
    page.wait_for_selector("#password")
    page.fill("#password", node.password if password is None else password)
    page.click("#login")
