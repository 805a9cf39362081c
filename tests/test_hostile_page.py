"""A hostile web page, opened in a real headless browser, cannot make a default node run
anything: cross-site requests of every kind a page can send, and DNS rebinding.

A real `yptask node` with its defaults (no password, no tokens) on loopback; a page
served from another port of 127.0.0.1 (another origin), and the same page served
under a domain the browser resolves to 127.0.0.1 (`--host-resolver-rules`), which
is what a DNS-rebinding attacker achieves with a short-TTL record.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import CHROMIUM, NodeProcess, require_browser

pytestmark = pytest.mark.timeout(180)

TASKS = """
[[task]]
name = "echo"
worker_class = "yptask.tasks.echo:Echo"
messages = ["*.echo"]
"""
REBIND_HOST = "rebind.test"

# What the page asks the node to do: make a task whose workers run a command.
PUT = {"jsonrpc": "2.0", "id": 1, "method": "tasks.put", "params": [{
    "name": "pwn", "messages": ["p.x"], "command": ["sh", "-c", "touch PWNED_PATH"],
    "nodes": {"*": 1}}]}

# Every way a page can send a body to another origin without the user's help, then the
# same-origin JSON requests a rebound page can make. Results land in window.results.
ATTACK = """<!doctype html><html><body>
<iframe name="sink"></iframe>
<form id="form" method="post" enctype="text/plain" target="sink" action="NODE/rpc">
<input name='BODY_HEAD' value='BODY_TAIL'></form>
<script>
const node = "NODE", body = JSON.stringify(PUT_JSON);
window.results = {};
async function attempt(name, run) {
  try { const r = await run(); window.results[name] = r ? r.status : "sent"; }
  catch (e) { window.results[name] = "blocked: " + e; }
}
(async () => {
  await attempt("no-cors text/plain", () => fetch(node + "/rpc",
      {method: "POST", mode: "no-cors", body}));
  await attempt("cors json", () => fetch(node + "/rpc", {method: "POST",
      headers: {"Content-Type": "application/json"}, body}));
  await attempt("beacon", () => { navigator.sendBeacon(node + "/rpc",
      new Blob([body], {type: "text/plain"})); });
  await attempt("form", () => { document.getElementById("form").submit(); });
  await attempt("status", () => fetch(node + "/rpc", {method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({jsonrpc: "2.0", id: 2, method: "status"})}));
  await new Promise(done => setTimeout(done, 500));  // let the form and beacon go out
  document.title = "done";
})();
</script></body></html>"""


def attack_page(node_origin: str, marker: Path) -> str:
    put = json.dumps(PUT).replace("PWNED_PATH", str(marker))
    # The form trick: a text/plain form sends NAME=VALUE; split the JSON at a string
    # so that NAME + "=" + VALUE is the whole JSON text.
    head, tail = put[:-2] + ', "x": "', '"}]}'
    return (ATTACK.replace("NODE", node_origin).replace("PUT_JSON", put)
            .replace("BODY_HEAD", head.replace("'", "&#39;"))
            .replace("BODY_TAIL", tail))


@pytest.fixture
def node(tmp_path) -> Iterator[NodeProcess]:
    require_browser()
    started = NodeProcess(tmp_path, TASKS, "target")
    started.start()
    yield started
    started.stop()


@pytest.fixture
def attacker_site(tmp_path) -> Iterator[tuple[str, Path]]:
    """A web server of the attacker's on another port: (its origin, its folder)."""
    folder = tmp_path / "site"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run_page(url: str, route: tuple[str, str] | None = None) -> dict[str, str]:
    """Open `url` in headless Chromium (`route`: serve this URL's page from the test)
    and return what the page's attempts saw."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", f"--host-resolver-rules=MAP {REBIND_HOST} "
            "127.0.0.1",
            # The browser's own guard against public pages reaching local addresses would
            # stop these requests before the node sees them; the node must not rely on it
            # (older browsers, other browsers, a page that is itself local): switch it off.
            "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,"
            "PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults"])
        try:
            page = browser.new_page()
            if route is not None:
                page.route(route[0], lambda r: r.fulfill(status=200, body=route[1],
                                                          content_type="text/html"))
            page.goto(url)
            page.wait_for_function("document.title === 'done'", timeout=30_000)
            results: dict[str, str] = page.evaluate("window.results")
            return results
        finally:
            browser.close()


def test_a_cross_site_page_cannot_put_a_task(node, attacker_site, tmp_path):
    origin, folder = attacker_site
    marker = tmp_path / "pwned-cross-site"
    (folder / "attack.html").write_text(attack_page(node.url.removesuffix("/rpc"), marker))
    # When the user opens the attacker's page
    results = run_page(f"{origin}/attack.html")
    # Then every attempt went out (or was stopped by the browser) ...
    assert set(results) == {"no-cors text/plain", "cors json", "beacon", "form", "status"}
    # ... and the node made no task and ran no command
    assert [t["name"] for t in node.rpc("tasks.list")] == ["echo"]
    assert not marker.exists()
    assert "refused HTTP POST /rpc" in (tmp_path / "node.log").read_text()


def test_a_rebound_page_is_refused_by_the_host_check(node, tmp_path):
    # Given a page served under a domain that resolves to 127.0.0.1, on the node's port:
    # its requests to the node are same-origin for the browser, JSON included
    marker = tmp_path / "pwned-rebound"
    port = node.url.removesuffix("/rpc").rsplit(":", 1)[1]
    rebound = f"http://{REBIND_HOST}:{port}"
    results = run_page(f"{rebound}/attack.html",
                       route=(f"{rebound}/attack.html", attack_page(rebound, marker)))
    # Then the node answers each with 403, the admin status included, and runs nothing
    assert results["cors json"] == 403 and results["status"] == 403, results
    assert [t["name"] for t in node.rpc("tasks.list")] == ["echo"]
    assert not marker.exists()
    assert "is not a name of this node" in (tmp_path / "node.log").read_text()
