"""The console in a real headless browser (Debian's chromium, driven by Playwright).

One `yptask node` subprocess with a console password serves the module; one
browser page logs in and works through the console as an admin would: create
a task with every kind of row, edit and restart it, see a validation error
beside its field, send a message, see a failure with its traceback and replay
its dead letter, delete the task. No page may log a console error. Screenshots
of the main pages go to $YPTASK_SCREENSHOTS (default: a temporary folder).
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import CHROMIUM, TEST_WORKERS, NodeProcess, require_browser, save_task_form, wait_for

from yptask.access.passwords import hash_password
from yptask.client import Client

pytestmark = pytest.mark.timeout(300)

METHOD_NOT_FOUND = -32601
PASSWORD = "console-test-password"
TASKS = """
[[task]]
name = "echo"
worker_class = "yptask.tasks.echo:Echo"
messages = ["*.echo"]
"""


class ConsoleNode(NodeProcess):
    def __init__(self, tmp: Path) -> None:
        (tmp / "node.toml").write_text(
            f'[node]\nconsole_password_hash = "{hash_password(PASSWORD)}"\n')
        super().__init__(tmp, TASKS, "console1",
                         cluster=["--config", str(tmp / "node.toml"), "--no-mdns"])

    @property
    def base(self) -> str:
        return self.url.removesuffix("/rpc")

    def client(self) -> Client:
        return Client(self.url, password=PASSWORD)


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[ConsoleNode]:
    require_browser()
    started = ConsoleNode(tmp_path_factory.mktemp("console"))
    started.start()
    yield started
    started.stop()


@contextmanager
def console_page() -> Iterator[Any]:
    """A headless Chromium page that keeps the errors it logs in `page.console_errors`."""
    from playwright.sync_api import sync_playwright

    require_browser()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.console_errors = []  # type: ignore[attr-defined]
        page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
        page.on("pageerror", lambda e: page.console_errors.append(str(e)))
        page.on("dialog", lambda dialog: dialog.accept())  # the DELETE confirmation
        try:
            yield page
        finally:
            context.close()
            browser.close()


@pytest.fixture(scope="module")
def page(node):
    with console_page() as page:
        yield page


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("YPTASK_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fill_row(page, kind: str, values: list[str]) -> None:
    page.click(f'button.add-row[data-rows="{kind}"]')
    row = page.locator(f"#rows-{kind} .row").last
    for i, value in enumerate(values):
        row.locator("input").nth(i).fill(value)


def test_log_in(page, node, shots):
    page.goto(node.base + "/")
    assert page.url.endswith("/login")
    page.fill("#password", "wrong")
    page.click("#login")
    page.wait_for_selector("#failed:not([hidden])")
    page.screenshot(path=str(shots / "login.png"))
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_selector("#overview-tasks tr[data-task=echo]")  # the landing view
    assert page.text_content("#node-name") == "node console1"


def test_create_a_task_with_every_kind_of_row(page, node, shots):
    page.click("nav a[data-view=tasks]")
    page.click("#add-task")
    page.fill("#f-name", "resizer")
    page.fill("#f-group", "<img src=x onerror=alert(1)> photos")
    page.fill("#f-worker_class", "sample:Sample")
    page.fill("#f-max_idle_s", "120")
    page.check("#f-debug")
    fill_row(page, "messages", ["upai.photos.resize"])
    fill_row(page, "messages", ["upai.fail"])
    fill_row(page, "env", ["PYTHONPATH", str(TEST_WORKERS)])
    fill_row(page, "settings", ["quality", "85"])
    page.locator("#rows-settings .row select").last.select_option("json")  # a number
    fill_row(page, "settings", ["version", "1.10"])  # text: a string, however it looks
    page.locator("#rows-nodes .row .remove-row").first.click()  # the default "*" row
    fill_row(page, "nodes", ["*", "1"])
    fill_row(page, "nodes", ["console1", "2"])
    save_task_form(page)
    page.wait_for_selector("#task-list a[data-task=resizer]")
    # the group is text, never markup
    assert page.locator("#task-list h3", has_text="<img src=x").count() == 1
    page.screenshot(path=str(shots / "tasks.png"), full_page=True)
    saved = node.client().task("resizer")
    assert saved["messages"] == ["upai.photos.resize", "upai.fail"]
    assert saved["env"] == {"PYTHONPATH": str(TEST_WORKERS)}
    assert saved["settings"] == {"quality": 85, "version": "1.10"} and saved["debug"] is True
    assert saved["nodes"] == {"*": 1, "console1": 2} and saved["max_idle_s"] == 120


def test_edit_restart_and_see_a_validation_error_beside_its_field(page, node):
    page.click("#task-list a[data-task=resizer]")
    page.fill("#f-group", "photos")
    save_task_form(page)
    wait_for(lambda: node.client().task("resizer")["group"] == "photos", timeout_s=10,
             what="the edit")
    generation = node.client().task("resizer")["restart_generation"]
    page.click("#restart")
    page.wait_for_selector("#notice:has-text('generation')")
    assert node.client().task("resizer")["restart_generation"] == generation + 1
    # a bad value is refused, named beside its field, and nothing is saved
    page.fill("#f-max_idle_s", "-5")
    save_task_form(page)
    page.wait_for_selector('[data-error="max_idle_s"]:has-text("at least 0")')
    assert node.client().task("resizer")["max_idle_s"] == 120


def test_send_a_test_message_and_see_the_reply(page, node, shots):
    page.click("nav a[data-view=send]")
    page.fill("#s-name", "upai.echo")
    page.fill("#s-payload", '{"hello": "console"}')
    page.select_option("#s-mode", "call")
    page.click("#send")
    page.wait_for_selector('#send-reply:has-text("console")')
    # and a cast, journaled and then handled
    handled = node.client().status()["tasks"]["echo"]["handled"]
    page.select_option("#s-mode", "cast")
    page.click("#send")
    page.wait_for_selector('#send-reply:has-text("duplicate")')
    wait_for(lambda: node.client().status()["tasks"]["echo"]["handled"] > handled,
             timeout_s=10, what="the cast to be handled")
    page.screenshot(path=str(shots / "send.png"))


def test_see_a_failure_with_its_traceback_and_replay_its_dead_letter(page, node, shots):
    node.client().put_task({**node.client().task("resizer"), "max_attempts": 1})
    node.client().cast("upai.fail", {"reason": "corrupt jpeg"})
    wait_for(lambda: node.client().dead_letters(), timeout_s=20, what="a dead letter")
    page.click("nav a[data-view=errors]")
    failure = page.locator("#failures details").first
    failure.wait_for()
    assert "ValueError: corrupt jpeg" in failure.text_content()
    failure.locator("summary").click()
    assert "Traceback" in failure.locator("pre").text_content()
    page.screenshot(path=str(shots / "errors.png"), full_page=True)
    page.locator("#dead-letters button.replay").first.click()
    page.wait_for_selector("#notice:has-text('Replayed 1')")


def test_live_pages_show_status_nodes_and_timers(page, node, shots):
    node.client().put_timer({"name": "hourly", "cron": "0 * * * *", "message": "upai.echo"})
    page.click("nav a[data-view=status]")
    page.wait_for_selector("#status-table tbody tr td:has-text('resizer')")
    page.wait_for_selector("#plots svg[data-plot='resizer-rates']")
    page.screenshot(path=str(shots / "status.png"), full_page=True)
    page.click("nav a[data-view=nodes]")
    page.wait_for_selector("#nodes-table tbody td:has-text('console1 (this node)')")
    page.click("nav a[data-view=timers]")
    page.wait_for_selector("#timers-table tbody td:has-text('hourly')")
    page.screenshot(path=str(shots / "timers.png"))


def test_the_priority_expiry_and_rate_limit_fields_round_trip(page, node):
    page.click("nav a[data-view=tasks]")
    page.click("#task-list a[data-task=resizer]")
    page.fill("#f-default_priority", "3")
    page.fill("#f-priority_tickets", "1 1 1 2 2 4 4 8 8 16")
    page.fill("#f-message_ttl_s", "90")
    page.fill("#f-rate_limit", "100/s")
    page.fill("#f-rate_limit_key", "user.id")
    save_task_form(page)
    wait_for(lambda: node.client().task("resizer")["rate_limit"] == "100/s", timeout_s=10,
             what="the saved limits")
    saved = node.client().task("resizer")
    assert (saved["default_priority"], saved["message_ttl_s"]) == (3, 90)
    assert saved["priority_tickets"] == [1, 1, 1, 2, 2, 4, 4, 8, 8, 16]
    assert saved["rate_limit_key"] == "user.id"
    # read back into the form as saved
    page.click("#task-list a[data-task=echo]")
    page.click("#task-list a[data-task=resizer]")
    assert page.input_value("#f-priority_tickets") == "1 1 1 2 2 4 4 8 8 16"
    assert page.input_value("#f-default_priority") == "3"
    assert page.input_value("#f-rate_limit_key") == "user.id"
    # emptied tickets are the default shares again
    page.fill("#f-priority_tickets", "")
    save_task_form(page)
    wait_for(lambda: node.client().task("resizer")["priority_tickets"] == [], timeout_s=10,
             what="the tickets emptied")
    # the node's refusal is shown beside the field it names; nothing is saved
    page.fill("#f-default_priority", "12")
    save_task_form(page)
    page.wait_for_selector('[data-error="default_priority"]:not(:empty)')
    page.fill("#f-default_priority", "3")
    page.fill("#f-priority_tickets", "1 2 3")
    save_task_form(page)
    page.wait_for_selector('[data-error="priority_tickets"]:not(:empty)')
    page.fill("#f-priority_tickets", "")
    page.fill("#f-rate_limit", "fast")
    save_task_form(page)
    page.wait_for_selector('[data-error="rate_limit"]:not(:empty)')
    assert node.client().task("resizer")["rate_limit"] == "100/s"
    assert node.client().task("resizer")["default_priority"] == 3


def send_reply(page) -> str:
    """Send, and the reply to this send (not the one before)."""
    page.eval_on_selector("#send-reply", "reply => { reply.dataset.sent = 'waiting'; }")
    page.click("#send")
    page.wait_for_selector("#send-reply[data-sent='1']")  # (the page's CSP forbids eval)
    return page.text_content("#send-reply") or ""


def test_send_a_cast_with_its_options(page, node):
    page.click("nav a[data-view=send]")
    page.fill("#s-name", "upai.echo")
    page.fill("#s-payload", '{"later": true}')
    page.select_option("#s-mode", "cast")
    page.fill("#s-priority", "7")
    page.fill("#s-ttl_s", "7200")
    page.fill("#s-delay_s", "3600")
    page.fill("#s-traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    reply = send_reply(page)
    assert '"not_before"' in reply and '"duplicate": false' in reply
    # each option reaches the node, which names the one it refuses
    page.fill("#s-priority", "12")
    assert "'priority'" in send_reply(page)
    page.fill("#s-priority", "")
    page.fill("#s-traceparent", "not-a-traceparent")
    assert "'traceparent'" in send_reply(page)
    page.fill("#s-traceparent", "")
    page.fill("#s-delay_s", "")
    page.fill("#s-ttl_s", "-1")
    assert "'ttl_s'" in send_reply(page)
    page.fill("#s-ttl_s", "")


def node_lacks(node: ConsoleNode, method: str, params: dict[str, Any]) -> bool:
    """Whether the node answers "method not found" (-32601) for `method` (read raw: the
    error's JSON-RPC code, whatever exception the client would make of it)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    secret = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(node.url, body.encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Basic {secret}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        answer = json.load(error)
    return (answer.get("error") or {}).get("code") == METHOD_NOT_FOUND


def skip_until(node: ConsoleNode, method: str, params: dict[str, Any]) -> None:
    # Only while the node has no such method at all: any other answer (an error included)
    # runs the test, so the view is tested as soon as the method exists.
    if node_lacks(node, method, params):
        pytest.skip(f"the node has no {method} method yet (-32601)")


def test_scheduled_view_lists_a_delayed_cast_and_cancels_it(page, node):
    if node_lacks(node, "scheduled.list", {"limit": 10}):
        # the view says so in one line, and the page still works
        page.click("nav a[data-view=scheduled]")
        page.wait_for_selector("#scheduled-missing:not([hidden])")
    skip_until(node, "scheduled.list", {"limit": 10})
    skip_until(node, "cancel", {"id": "no-such-message"})
    cast = node.client().cast("upai.echo", {"n": "later"}, delay_s=3600)
    page.click("nav a[data-view=scheduled]")
    row = page.locator(f"#scheduled-table tbody tr:has(button[data-id='{cast['id']}'])")
    row.wait_for()
    assert "echo" in row.text_content() and "delayed" in row.text_content()
    row.locator("button.cancel").click()
    page.wait_for_selector(f"#notice:has-text('{cast['id']}')")
    assert "console1: echo" in page.text_content("#notice")
    assert node.client().request("message.cancelled", {"id": cast["id"]}) is True
    wait_for(lambda: page.locator(f"#scheduled-table button[data-id='{cast['id']}']").count() == 0,
             timeout_s=10, what="the cancelled row to go")


def test_trace_view_shows_the_tree_of_a_message(page, node):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    root = node.client().cast("upai.echo", {"n": 1},
                              traceparent=f"00-{trace_id}-00f067aa0ba902b7-01")
    child = node.client().cast("upai.echo", {"n": 2}, parent=root["id"],
                               traceparent=f"00-{trace_id}-00f067aa0ba902b8-01")
    if node_lacks(node, "trace", {"id": root["id"]}):
        page.click("nav a[data-view=trace]")
        page.fill("#t-id", root["id"])
        page.click("#trace-show")
        page.wait_for_selector("#trace-title:has-text('method not found')")
    skip_until(node, "trace", {"id": root["id"]})
    page.click("nav a[data-view=trace]")
    page.fill("#t-id", trace_id)
    page.click("#trace-show")
    page.wait_for_selector(f".trace-message[data-id='{child['id']}']")
    assert page.get_attribute(f".trace-message[data-id='{root['id']}']", "data-depth") == "0"
    assert page.get_attribute(f".trace-message[data-id='{child['id']}']", "data-depth") == "1"
    assert "echo on console1" in page.text_content(f".trace-message[data-id='{root['id']}']")


def test_expired_dead_letters_are_told_apart(page, node):
    # A delivery expires when it would be handed out: cast it while its task is paused,
    # let its deadline pass, then resume.
    node.client().put_task({**node.client().task("resizer"), "paused": True})
    try:
        cast_at = time.time()
        node.client().cast("upai.photos.resize", {"n": "too late"}, ttl_s=0.5)
        wait_for(lambda: time.time() > cast_at + 1.0, what="the deadline passed")
    finally:
        node.client().put_task({**node.client().task("resizer"), "paused": False})
    page.click("nav a[data-view=errors]")
    wait_for(lambda: any(d["error_class"] == "Expired" for d in node.client().dead_letters()),
             timeout_s=30, what="an expired dead letter")
    page.select_option("#dead-filter", "expired")
    page.wait_for_selector("#dead-letters .dead-letter.expired")
    assert page.locator("#dead-letters .dead-letter:not(.expired)").count() == 0
    assert "expired" in page.text_content("#dead-letters .dead-letter.expired summary")
    page.select_option("#dead-filter", "failed")
    wait_for(lambda: page.locator("#dead-letters .dead-letter.expired").count() == 0,
             timeout_s=10, what="the expired ones filtered out")
    page.select_option("#dead-filter", "all")


def test_delete_the_task_and_no_page_logged_an_error(page, node):
    page.click("nav a[data-view=tasks]")
    page.click("#task-list a[data-task=resizer]")
    page.click("#delete")
    page.wait_for_selector("#notice:has-text('deleted')")
    assert "resizer" not in {t["name"] for t in node.client().tasks()}
    # the list follows (its refresh may come just after the notice)
    wait_for(lambda: page.locator("#task-list a[data-task=resizer]").count() == 0,
             timeout_s=10, what="the deleted task gone from the list")
    assert page.console_errors == []
