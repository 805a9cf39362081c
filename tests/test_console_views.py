"""The console's views in a real headless browser: URLs, the overview, plots, timers, phones.

One `yptask node` subprocess with a console password, four tasks (one running, one
paused, one whose workers cannot start, one not accepting casts) and a timer in a zone
of its own. Each test opens the console as an admin would: a pasted deep link opens its
view after login, the back button returns, the overview shows each task's badge and a
backoff's cause, a plot's hover shows its values, timers show their own zone, no view
logs an error or fails a request, no view is wider than a phone, the live refresh
updates a figure without touching a form being edited and asks nothing while the tab is
hidden, a failure's link opens it, event markers and a viewer's disabled buttons show.
Screenshots (overview, phone, task page, hover) go to $YPTASK_SCREENSHOTS (default: a
temporary folder).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from console_support import ConsoleNode, browser_page, log_in
from support import TEST_WORKERS, require_browser, wait_for

pytestmark = pytest.mark.timeout(300)

PASSWORD = "console-views-password"
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
name = "closed"
worker_class = "yptask.tasks.echo:Echo"
messages = ["closed.*"]
accepting = false

[[task]]
name = "broken"
messages = ["broken.*"]
command = ["sh", "-c", "echo 'cannot open /etc/app.conf' >&2; exit 3"]
max_restarts = 1

[[task]]
name = "flaky"
worker_class = "sample:Sample"
messages = ["flaky.*"]
max_attempts = 1
env = {{ PYTHONPATH = "{TEST_WORKERS}" }}
"""
# Every view the console has, by its URL, and what shows it has rendered.
VIEWS = {
    "#/overview": "#overview-tasks tr[data-task=echo]",
    "#/tasks": "#task-summary tr[data-task=echo]",
    "#/tasks/echo": "#form-title:has-text('Task echo')",
    "#/new-task": "#form-title:has-text('New task')",
    "#/status": "#plots svg[data-plot=echo-rates]",
    "#/nodes": "#nodes-table td:has-text('views1')",
    "#/nodes/views1": "#node-card:has-text('Its workers')",
    "#/timers": "#timers-table tr[data-timer=tokyo]",
    "#/timers/tokyo": "#timer-card:has-text('Asia/Tokyo')",
    "#/errors": "#failures",
    "#/failures/no-such-message": "#failure-note:has-text('No failure of message')",
    "#/scheduled": "#scheduled-table",
    "#/trace": "#trace-title:has-text('trace id')",
    "#/send": "#send-form",
    "#/no-such-view": "#notice:has-text('There is no view')",
}


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[ConsoleNode]:
    require_browser()
    started = ConsoleNode(tmp_path_factory.mktemp("views"), TASKS, "views1", PASSWORD)
    started.start()
    try:
        started.client().put_timer({"name": "tokyo", "cron": "30 9 * * *",
                                    "message": "upai.echo", "timezone": ZONE})
        started.client().call("upai.echo", {"warm": True})  # a point on the plots
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def page(node, browser):
    with browser_page(browser) as page:
        log_in(page, node)
        page.wait_for_selector("#overview-tasks tr[data-task=echo]")
        yield page


def test_a_pasted_deep_link_opens_its_task_after_login(node, browser):
    # Given a link to a task's page, opened by a browser with no session
    with browser_page(browser) as page:
        log_in(page, node, "#/tasks/echo")
        # Then after the login the task's page is open, at that URL
        page.wait_for_selector("#form-title:has-text('Task echo')")
        assert page.url.endswith("/#/tasks/echo")
        assert page.input_value("#f-name") == "echo"
        page.wait_for_selector("#task-summary [data-field=handled]")
        assert page.console_errors == [] and page.failed == []


def test_the_back_button_returns_to_the_previous_view(page):
    page.goto(page.url.split("#")[0] + "#/overview")
    page.wait_for_selector("#overview-tasks tr[data-task=echo]")
    page.click("#overview-tasks tr[data-task=held] a")
    page.wait_for_selector("#form-title:has-text('Task held')")
    assert page.url.endswith("#/tasks/held")
    page.go_back()
    page.wait_for_selector("#view-overview:not([hidden])")
    assert page.url.endswith("#/overview")
    assert page.locator("#view-tasks").is_hidden()
    page.go_forward()
    page.wait_for_selector("#form-title:has-text('Task held')")


def test_the_overview_shows_a_paused_badge_and_a_backoffs_cause(page, node):
    wait_for(lambda: node.client().status()["tasks"]["broken"]["state"] == "backoff",
             timeout_s=60, what="the broken task in backoff")
    page.goto(page.url.split("#")[0] + "#/overview")
    page.wait_for_selector("#overview-tasks tr[data-task=held] [data-state=paused]")
    page.wait_for_selector("#overview-tasks tr[data-task=closed] [data-state='not accepting']")
    # the live refresh brings the backoff and its cause without a reload
    cause = page.wait_for_selector(
        "#overview-tasks tr[data-task=broken]:has([data-state=backoff]) [data-cause]",
        timeout=30_000)
    assert "cannot open /etc/app.conf" in (cause.text_content() or "")
    assert "status 3" in (cause.text_content() or "")
    assert page.locator("#overview-tasks tr[data-task=echo] [data-state]").first \
        .get_attribute("data-state") in ("running", "idle", "starting")
    # the timer's next fire, in its zone, and the cluster
    assert ZONE in (page.text_content("#overview-timers") or "")
    assert "views1" in (page.text_content("#overview-nodes") or "")


def test_the_task_list_shows_state_badges(page):
    page.goto(page.url.split("#")[0] + "#/tasks")
    page.wait_for_selector("#task-list a[data-task=held] [data-state=paused]")
    page.wait_for_selector("#task-list a[data-task=closed] [data-state='not accepting']")


def test_a_plots_hover_shows_the_values_at_the_nearest_point(page, node, shots):
    for n in range(5):
        node.client().call("upai.echo", {"n": n})
    page.goto(page.url.split("#")[0] + "#/status")
    chart = page.wait_for_selector("#plots svg[data-plot=echo-rates]")
    assert chart is not None
    # the time axis has clock times, the y axis its unit
    ticks = page.locator("#plots svg[data-plot=echo-rates] text.tick").all_text_contents()
    assert any(re.fullmatch(r"\d\d:\d\d", t) for t in ticks), ticks
    assert page.text_content("#plots svg[data-plot=echo-rates] text.unit") == "msg/s"
    overlay = page.locator("#plots svg[data-plot=echo-rates] rect.overlay")
    box = overlay.bounding_box()
    assert box is not None
    overlay.hover(position={"x": box["width"] * 0.99, "y": box["height"] / 2})
    tip = page.wait_for_selector("#plots .plot[data-key=echo-rates] .plot-tip:not([hidden])")
    text = tip.text_content() or ""
    page.screenshot(path=str(shots / "status-hover.png"))
    assert re.search(r"handled: [0-9.]+ msg/s", text), text
    assert re.search(r"failed: [0-9.]+ msg/s", text), text
    # the 24 h span draws from the node's stored series
    page.click("#status-spans button[data-span='86400']")
    page.wait_for_selector("#status-spans button.active[data-span='86400']")
    page.wait_for_selector("#plots svg[data-plot=echo-rates]")
    page.wait_for_selector("#plots-title:has-text('24 h')")
    page.click("#status-spans button[data-span='600']")
    page.wait_for_selector("#status-spans button.active[data-span='600']")


def test_timers_show_times_in_their_own_zone(page, node):
    timer = next(t for t in node.client().timers() if t["name"] == "tokyo")
    expected = datetime.fromtimestamp(timer["next_fire"], ZoneInfo(ZONE))
    page.goto(page.url.split("#")[0] + "#/timers")
    cell = page.wait_for_selector("#timers-table tr[data-timer=tokyo] td:nth-child(6) time")
    assert cell is not None
    assert cell.text_content() == expected.strftime("%Y-%m-%d %H:%M:%S ") + ZONE
    assert expected.strftime("%H:%M") == "09:30"  # the cron's own hour, whatever the browser's
    page.goto(page.url.split("#")[0] + "#/timers/tokyo")
    page.wait_for_selector("#timer-card:has-text('09:30:00 Asia/Tokyo')")


@pytest.mark.parametrize("width,height", [(1280, 800), (390, 844)])
def test_every_view_renders_with_no_error_no_failed_request_no_overflow(node, browser, shots,
                                                                       width, height):
    with browser_page(browser, width, height) as page:
        log_in(page, node)
        page.wait_for_selector(VIEWS["#/overview"])
        for where, shown in VIEWS.items():
            page.goto(node.base + "/" + where)
            page.wait_for_selector(shown)
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= width, f"{where} is {wide} px wide at {width}x{height}"
        if width < 500:
            page.goto(node.base + "/#/overview")
            page.wait_for_selector(VIEWS["#/overview"])
            page.screenshot(path=str(shots / "overview-phone.png"))
        assert page.console_errors == []
        assert page.failed == []


def test_the_live_refresh_updates_a_count_and_leaves_an_edited_form(page, node, shots):
    # Given the task page open, its form untouched
    page.goto(page.url.split("#")[0] + "#/tasks/echo")
    page.wait_for_selector("#form-title:has-text('Task echo')")
    page.wait_for_selector("#task-plots svg[data-plot=echo-rates]")
    page.screenshot(path=str(shots / "task.png"))
    echo = node.client().task("echo")
    # an untouched form follows a change made elsewhere
    node.client().put_task({**echo, "max_queue": 77})
    wait_for(lambda: page.input_value("#f-max_queue") == "77", timeout_s=20,
             what="the untouched form refilled")
    # When a field is being edited (typed, not saved) and the definition changes again
    before = int(page.text_content("#task-summary [data-field=handled]") or "0")
    page.fill("#f-group", "edited, not saved")
    page.click("#task-summary h2")  # the focus leaves the form; the form keeps its change
    node.client().put_task({**echo, "max_queue": 78})
    for n in range(3):
        node.client().call("upai.echo", {"n": n})
    # Then the count rises by itself (read with the definition that has max_queue 78),
    # and the edit is still there, untouched
    wait_for(lambda: int(page.text_content("#task-summary [data-field=handled]") or "0")
             >= before + 3, timeout_s=20, what="the handled count refreshed")
    assert page.input_value("#f-group") == "edited, not saved"
    assert page.input_value("#f-max_queue") == "77"
    assert node.client().task("echo")["group"] == "default"
    node.client().put_task(echo)


# One live refresh, run now in the page, and how many requests it made (None while a
# refresh is still under way): fetch is counted as the console calls it.
ONE_TICK = """() => {
  if (rendering) return null;
  let made = 0;
  const fetchOfThePage = window.fetch;
  window.fetch = (...args) => { made += 1; return fetchOfThePage(...args); };
  try { tick(); } finally { window.fetch = fetchOfThePage; }
  return made;
}"""


def one_tick(page: Any) -> int:
    answers: list[int] = []

    def ran() -> bool:
        made = page.evaluate(ONE_TICK)
        if made is not None:
            answers.append(made)
        return bool(answers)

    wait_for(ran, timeout_s=20, what="a refresh between the others")
    return answers[0]


def test_a_hidden_tab_asks_nothing_and_refreshes_when_shown_again(node, browser):
    with browser_page(browser) as page:
        log_in(page, node, "#/overview")
        page.wait_for_selector(VIEWS["#/overview"])
        # Given the tab hidden (the browser says so with document.hidden)
        page.evaluate("""() => {
          Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
          document.dispatchEvent(new Event("visibilitychange"));
        }""")
        # Then the refresh asks the node nothing
        assert one_tick(page) == 0
        # When it is shown again, the view is refreshed at once, and by each tick after
        page.evaluate("""() => {
          delete document.hidden;
          document.dispatchEvent(new Event("visibilitychange"));
        }""")
        assert one_tick(page) > 0
        assert page.console_errors == []


def test_a_failure_has_a_url_linked_from_the_overview(page, node, shots):
    # Given a failed attempt
    node.client().cast("flaky.fail", {"reason": "bad pixel"})
    failure = wait_for(lambda: node.client().request("failures.list", {"limit": 5}),
                       timeout_s=20, what="a failure")[0]
    # When its link on the overview is followed
    page.goto(page.url.split("#")[0] + "#/overview")
    page.wait_for_selector(f"#overview-failures a[href='#/failures/{failure['id']}']")
    page.screenshot(path=str(shots / "overview.png"), full_page=True)
    page.click(f"#overview-failures a[href='#/failures/{failure['id']}']")
    # Then its view is open at its URL, with its traceback unfolded
    opened = page.wait_for_selector(f"#failures details.chosen[data-id='{failure['id']}'][open]")
    assert opened is not None
    assert "ValueError: bad pixel" in (opened.text_content() or "")
    assert page.url.endswith(f"#/failures/{failure['id']}")
    assert page.locator(f"#failures details.chosen[data-id='{failure['id']}'] pre").is_visible()


def test_the_plots_mark_the_events_the_metrics_answer_carries(node, browser):
    # The page's route adds an event of a kind no node action makes to the metrics answer,
    # to see the console draw any marker it is given ({t, kind, task}).
    with browser_page(browser) as page:
        def with_event(route: Any) -> None:
            body = json.loads(route.request.post_data or "{}")
            if body.get("method") != "metrics":
                route.continue_()
                return
            answer = route.fetch().json()
            if "result" in answer:
                answer["result"]["events"] = [{"t": time.time() - 120, "kind": "deploy",
                                               "task": "echo"}]
            route.fulfill(status=200, content_type="application/json", body=json.dumps(answer))

        page.route("**/rpc", with_event)
        log_in(page, node, "#/status")
        marker = page.wait_for_selector(
            "#plots svg[data-plot=echo-rates] line.event[data-kind=deploy]", state="attached")
        assert marker is not None
        assert "deploy (echo)" in (page.text_content(
            "#plots svg[data-plot=echo-rates] line.event title") or "")
        assert page.console_errors == []


def test_a_viewer_sees_every_change_button_disabled(node, browser):
    # auth.whoami is answered here by the page's route (the node may not have it yet):
    # the console must disable its change buttons for a viewer, and say why.
    with browser_page(browser) as page:
        def whoami(route: Any) -> None:
            body = json.loads(route.request.post_data or "{}")
            if body.get("method") == "auth.whoami":
                route.fulfill(status=200, content_type="application/json", body=json.dumps(
                    {"jsonrpc": "2.0", "id": body.get("id"), "result": {"role": "viewer"}}))
            else:
                route.continue_()

        page.route("**/rpc", whoami)
        log_in(page, node, "#/tasks/echo")
        page.wait_for_selector("#form-title:has-text('Task echo')")
        for button in ("#save", "#restart", "#delete", "#add-task", "#pause-toggle"):
            assert page.is_disabled(button), button
            assert "viewer" in (page.get_attribute(button, "title") or "")
        page.goto(node.base + "/#/send")
        page.wait_for_selector("#send-form")
        assert page.is_disabled("#send")
