"""The console's message browser, bulk actions, timer ledger and audit log in a real browser.

One `yptask node` subprocess with an admin and a viewer password, a paused task (its
messages stay queued), a task whose handler fails, and a timer in a zone of its own.
Each test drives headless Chromium as an admin (or a viewer) would and checks what the
node then says over the API: a deep link filtered by a payload field lists only its
matches, a bulk cancel through a filter asks "Cancel 50 messages?" and cancels them, a
message's page shows its failed attempt's error, the timer page shows its ledger in the
timer's zone and "Run now" casts, a viewer's change buttons are disabled and the audit
log is readable, no view logs an error or fails a request or is wider than a phone.
Screenshots go to $YPTASK_SCREENSHOTS (default: a temporary folder).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from console_support import ConsoleNode, browser_page, log_in
from support import TEST_WORKERS, require_browser, wait_for

pytestmark = pytest.mark.timeout(300)

PASSWORD = "console-messages-password"
VIEWER_PASSWORD = "console-messages-viewer"
ZONE = "Asia/Tokyo"
TASKS = f"""
[[task]]
name = "echo"
worker_class = "yptask.tasks.echo:Echo"
messages = ["*.echo"]

[[task]]
name = "held"
worker_class = "yptask.tasks.echo:Echo"
messages = ["held.*"]
paused = true

[[task]]
name = "flaky"
worker_class = "sample:Sample"
messages = ["flaky.*"]
max_attempts = 1
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[ConsoleNode]:
    require_browser()
    started = ConsoleNode(tmp_path_factory.mktemp("messages"), TASKS, "msgs1", PASSWORD,
                          viewer_password=VIEWER_PASSWORD)
    started.start()
    try:
        started.client().put_timer({"name": "tokyo", "cron": "30 9 * * *",
                                    "message": "upai.echo", "timezone": ZONE})
        yield started
    finally:
        started.stop()


def listed(node: ConsoleNode, **params: Any) -> dict[str, Any]:
    answer: dict[str, Any] = node.client().request("messages.list", params)
    return answer


def rows_shown(page: Any, count: int) -> None:
    """Wait until the message table lists `count` rows (polled from here: the page's CSP
    forbids the string evaluation wait_for_function would use)."""
    wait_for(lambda: page.locator("#messages-table tbody tr[data-state]").count() == count,
             timeout_s=30, what=f"{count} rows in the message table")


def test_a_deep_link_filtered_by_a_payload_field_lists_only_its_matches(node, browser, shots):
    # Given queued messages of two users (their task is paused)
    for user in (42, 7, 42, 7, 42):
        node.client().cast("held.deep", {"user_id": user, "photo": "p"})
    # When a link filtered on user_id = 42 is opened
    with browser_page(browser) as page:
        log_in(page, node, "#/messages?name=held.deep&where=" + quote("user_id = 42"))
        page.wait_for_selector("#messages-table tbody tr[data-state=queued]")
        rows = page.locator("#messages-table tbody tr")
        # Then only the three messages of user 42 are listed, and the form shows the filter
        assert rows.count() == 3
        for preview in page.locator("#messages-table td.preview").all_text_contents():
            assert '"user_id": 42' in preview or '"user_id":42' in preview, preview
        assert page.input_value("#m-where") == "user_id = 42"
        assert "3 delivery(ies) match" in (page.text_content("#msg-total") or "")
        page.screenshot(path=str(shots / "messages.png"))
        # and a typed filter becomes the URL: a string value in quotes
        page.fill("#m-where", 'photo = "p", user_id = 7')
        page.click("#msg-apply")
        rows_shown(page, 2)
        assert "where=photo" in page.url
        assert page.console_errors == [] and page.failed == []


def test_a_bulk_cancel_through_the_filter_asks_how_many_and_cancels_them(node, browser):
    # Given 50 queued messages (their task is paused) and one of another name
    for n in range(50):
        node.client().cast("held.bulk", {"n": n})
    node.client().cast("held.other", {"n": -1})
    with browser_page(browser) as page:
        log_in(page, node, "#/messages?name=held.bulk&state=queued")
        page.wait_for_selector("#messages-table tbody tr[data-state=queued]")
        # When the admin cancels the whole filter
        page.select_option("#bulk-action", "cancel")
        page.click("#bulk-filter")
        # Then a dialog asks for the number the filter matches, and on yes they go
        page.wait_for_selector("#confirm-dialog[open]")
        assert page.text_content("#confirm-text") == "Cancel 50 messages?"
        page.click("#confirm-yes")
        page.wait_for_selector("#notice:has-text('50 of 50 done')")
        assert page.console_errors == [] and page.failed == []
    assert listed(node, name="held.bulk", state="cancelled")["total"] == 50
    assert listed(node, name="held.bulk", state="queued")["total"] == 0
    assert listed(node, name="held.other", state="queued")["total"] == 1


def test_a_bulk_on_selected_rows_changes_only_those(node, browser):
    ids = [node.client().cast("held.pick", {"n": n})["id"] for n in range(3)]
    with browser_page(browser) as page:
        log_in(page, node, "#/messages?name=held.pick")
        page.wait_for_selector("#messages-table tbody tr[data-state=queued]")
        page.check(f"#messages-table input.pick[value='{ids[0]}']")
        page.select_option("#bulk-action", "priority")
        page.fill("#bulk-priority", "7")
        page.click("#bulk-selected")
        page.wait_for_selector("#confirm-dialog[open]")
        assert page.text_content("#confirm-text") == "Change priority of 1 message to 7?"
        page.click("#confirm-yes")
        page.wait_for_selector("#notice:has-text('1 of 1 done')")
    assert [m["id"] for m in listed(node, name="held.pick", priority=7)["messages"]] == [ids[0]]


def test_a_message_page_shows_its_failed_attempts_error(node, browser, shots):
    # Given a message whose handler fails
    cast = node.client().cast("flaky.fail", {"reason": "bad pixel"})
    wait_for(lambda: any(a["outcome"] == "failed" for a in
                         node.client().request("messages.get", {"id": cast["id"]})["attempts"]),
             timeout_s=60, what="the failed attempt in the history")
    with browser_page(browser) as page:
        log_in(page, node, f"#/messages/{cast['id']}")
        row = page.wait_for_selector("#attempts-table tr[data-outcome=failed]")
        assert row is not None
        # Then the attempt shows its error, and its traceback in a <details>
        assert "ValueError: bad pixel" in (row.text_content() or "")
        page.click("#attempts-table tr[data-outcome=failed] summary")
        traceback = page.text_content("#attempts-table tr[data-outcome=failed] details pre") or ""
        assert "Traceback" in traceback and "bad pixel" in traceback
        assert '"reason": "bad pixel"' in (page.text_content("#message-card pre.payload") or "")
        assert page.get_attribute("#message-card a[href^='#/trace/']", "href") == \
            f"#/trace/{quote(cast['id'], safe='')}"
        page.screenshot(path=str(shots / "message.png"))
        assert page.console_errors == [] and page.failed == []


def test_the_timer_page_shows_its_ledger_in_its_zone_and_runs_now(node, browser, shots):
    with browser_page(browser) as page:
        log_in(page, node, "#/timers/tokyo")
        page.wait_for_selector("#timer-ledger #timer-run-now")
        # When the admin clicks Run now
        page.click("#timer-run-now")
        # Then the ledger shows a run_now row, its tick labelled with the timer's zone
        row = page.wait_for_selector("#ledger-table tr[data-outcome=run_now]")
        assert row is not None
        assert ZONE in (row.text_content() or "")
        assert "run now" in (row.text_content() or "")
        assert f"Tick ({ZONE})" in (page.text_content("#ledger-table thead") or "")
        ledger = node.client().timer_ledger("tokyo")
        assert any(e["outcome"] == "run_now" for e in ledger["entries"])
        page.screenshot(path=str(shots / "timer-ledger.png"))
        # and Pause pauses it on the node, Resume resumes it
        page.click("#timer-pause")
        page.wait_for_selector("#timer-resume")
        assert node.client().request("timers.get", {"name": "tokyo"})["paused"] is True
        page.click("#timer-resume")
        page.wait_for_selector("#timer-pause")
        assert not node.client().request("timers.get", {"name": "tokyo"}).get("paused")
        assert page.console_errors == [] and page.failed == []


def test_a_viewer_sees_the_change_buttons_disabled_and_reads_the_audit_log(node, browser):
    node.client().pause_timer("tokyo")
    node.client().resume_timer("tokyo")
    with browser_page(browser) as page:
        log_in(page, node, "#/messages?name=held.*", password=VIEWER_PASSWORD)
        page.wait_for_selector("#messages-table tbody tr[data-state]")
        for button in ("#bulk-filter", "#bulk-selected", "#messages-table input.pick"):
            assert page.locator(button).first.is_disabled(), button
        page.goto(node.base + "/#/timers/tokyo")
        page.wait_for_selector("#timer-ledger #timer-run-now")
        for button in ("#timer-run-now", "#timer-pause"):
            assert page.is_disabled(button), button
            assert "viewer" in (page.get_attribute(button, "title") or "")
        page.goto(node.base + "/#/audit")
        row = page.wait_for_selector("#audit-table tr[data-method='timers.resume']")
        assert row is not None
        assert "tokyo" in (row.text_content() or "") and "ok" in (row.text_content() or "")
        assert page.console_errors == [] and page.failed == []


def test_the_new_views_fit_a_phone_without_errors(node, browser, shots):
    some = listed(node, name="held.deep", limit=1)["messages"][0]["id"]
    views = {"#/messages?name=held.*": "#messages-table tbody tr[data-state]",
             f"#/messages/{quote(some, safe='')}": "#deliveries-table tr[data-task=held]",
             "#/timers/tokyo": "#ledger-table",
             "#/audit": "#audit-table tbody tr[data-method]"}
    with browser_page(browser, 390, 844) as page:
        log_in(page, node, "#/overview")
        page.wait_for_selector("#overview-tasks")
        for where, shown in views.items():
            page.goto(node.base + "/" + where)
            page.wait_for_selector(shown)
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= 390, f"{where} is {wide} px wide at 390x844"
        page.goto(node.base + "/#/audit")
        page.wait_for_selector(views["#/audit"])
        page.screenshot(path=str(shots / "audit-phone.png"))
        assert page.console_errors == [] and page.failed == []


def test_the_list_pages_with_next_and_a_task_page_links_to_its_messages(node, browser):
    for n in range(55):
        node.client().cast("held.page", {"n": n})
    with browser_page(browser) as page:
        log_in(page, node, "#/tasks/held")
        page.wait_for_selector("#form-title:has-text('Task held')")
        assert page.get_attribute("#task-messages", "href") == "#/messages?task=held"
        page.goto(node.base + "/#/messages?name=held.page")
        rows = "#messages-table tbody tr[data-state]"
        rows_shown(page, 50)
        first = page.locator(rows).first.get_attribute("data-id")
        page.click("#msg-next")
        rows_shown(page, 5)
        assert first not in page.locator(rows).evaluate_all("rs => rs.map(r => r.dataset.id)")
        assert page.is_disabled("#msg-next")
        page.click("#msg-prev")
        rows_shown(page, 50)
        assert page.locator(rows).first.get_attribute("data-id") == first
        assert page.console_errors == [] and page.failed == []


def test_a_payload_filter_that_cannot_be_read_is_said_and_asks_nothing(node, browser):
    with browser_page(browser) as page:
        log_in(page, node, "#/messages?where=" + quote("user_id"))
        page.wait_for_selector("#msg-error:has-text('write field = value')")
        # a filter the node refuses is said beside the form too
        page.goto(node.base + "/#/messages?priority=12")
        page.wait_for_selector("#msg-error:has-text('priority')")
        assert page.console_errors == [] and page.failed == []


def test_the_audit_log_pages_back_with_before(node, browser):
    for _ in range(26):  # 52 changes: more than a page of 50
        node.client().pause_timer("tokyo")
        node.client().resume_timer("tokyo")
    newest = node.client().audit(limit=51)
    with browser_page(browser) as page:
        log_in(page, node, "#/audit")
        rows = "#audit-table tbody tr[data-method]"
        wait_for(lambda: page.locator(rows).count() == 50, timeout_s=30, what="a page of 50")
        assert page.locator(rows).first.get_attribute("data-key") == newest[0]["id"]
        page.click("#audit-older")
        wait_for(lambda: page.locator(rows).first.get_attribute("data-key") == newest[50]["id"],
                 timeout_s=30, what="the next page, after the 50th entry")
        page.click("#audit-newer")
        wait_for(lambda: page.locator(rows).first.get_attribute("data-key") == newest[0]["id"],
                 timeout_s=30, what="the first page again")
        assert page.console_errors == [] and page.failed == []


def test_a_time_range_in_the_url_filters_and_shows_in_the_form(node, browser):
    future = 4_000_000_000
    with browser_page(browser) as page:
        log_in(page, node, f"#/messages?name=held.deep&since={future}")
        page.wait_for_selector("#messages-table td:has-text('No message matches')")
        assert page.input_value("#m-since").startswith("2096-")
        page.goto(node.base + f"/#/messages?name=held.deep&until={future}")
        rows_shown(page, 5)
        assert page.console_errors == [] and page.failed == []
