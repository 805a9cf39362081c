"""GET /metrics: a real node's figures in the Prometheus text format, read by a real parser.

Each test scrapes a node started in this process over HTTP (aiohttp), parses the
answer with prometheus_client's own parser, and watches the values move as the
node works: casts handled, a failing handler retried then dead-lettered, a
blocked handler in flight, a paused task's queue, a timer's ticks. Access
follows the admin methods: the admin token (or the password), and never a page
of another site.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import ALONE, CHROMIUM, ECHO, SAMPLE, require_browser, until

from yptask import __version__
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.endpoints.prometheus import node_registry, render
from yptask.node import Node
from yptask.store.config_map import TIMER_STATE_KEY
from yptask.timers.schedule import MAX_MISSES_COUNTED, TimerDef, due_ticks

pytestmark = pytest.mark.timeout(120)

PUBLISHER_TOKEN = "shop-token-0123456789"
# The sample task, failing fast: three attempts, no pause between them.
FAILING_FAST = {**SAMPLE, "max_attempts": 3, "retry_backoff_s": 0}

Families = dict[str, Any]


@pytest.fixture
async def node(tmp_path):
    started = await Node.start(
        NodeConfig(name="m1", data_dir=tmp_path / "data", api_tokens={"shop": PUBLISHER_TOKEN},
                   **ALONE),
        tasks=[TaskDef.from_dict(ECHO), TaskDef.from_dict(FAILING_FAST)])
    try:
        yield started
    finally:
        await started.stop()


def admin(node: Node) -> dict[str, str]:
    return {"Authorization": f"Bearer {node.admin_token}"}


async def get(node: Node, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session, session.get(
            node.http_url + "/metrics", headers=headers or {}) as answer:
        return answer.status, dict(answer.headers), await answer.text()


async def scrape(node: Node) -> Families:
    status, _, text = await get(node, admin(node))
    assert status == 200, text
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: Families, sample_name: str, **labels: str) -> float | None:
    """The value of the sample `sample_name` with exactly `labels`, or None."""
    family_name = sample_name.removesuffix("_total").removesuffix("_bucket") \
        .removesuffix("_count").removesuffix("_sum")
    for sample in families[family_name].samples:
        if sample.name == sample_name and sample.labels == labels:
            return float(sample.value)
    return None


def reaches(node: Node, sample_name: str, wanted: float, **labels: str) -> Any:
    async def check() -> bool:
        return value(await scrape(node), sample_name, **labels) == wanted
    return check


async def test_a_scrape_is_the_prometheus_text_format_with_every_family(node):
    status, headers, text = await get(node, admin(node))
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"yptask_messages_handled", "yptask_messages_failed", "yptask_messages_retried",
            "yptask_messages_dead_lettered", "yptask_messages_expired",
            "yptask_messages_queued", "yptask_messages_in_flight", "yptask_workers",
            "yptask_handler_duration_seconds", "yptask_journal_bytes",
            "yptask_journal_commit_seconds", "yptask_cluster_members", "yptask_timer_fires",
            "yptask_timer_misses", "yptask_node_info"} <= set(families)
    assert families["yptask_messages_handled"].type == "counter"
    assert families["yptask_messages_queued"].type == "gauge"
    assert families["yptask_handler_duration_seconds"].type == "histogram"
    assert value(families, "yptask_node_info", node="m1", version=__version__) == 1
    assert value(families, "yptask_messages_handled_total", task="echo") == 0
    assert value(families, "yptask_cluster_members", state="up") == 1
    assert value(families, "yptask_cluster_members", state="down") == 0
    assert value(families, "yptask_journal_bytes") > 0
    assert headers["Cache-Control"] == "no-store"


async def test_casts_handled_show_in_the_counter_and_the_histogram(node):
    # Given N casts to the echo task
    for n in range(20):
        await node.cast("m.echo", {"n": n})
    # Then handled reaches N, and the handler-time histogram counted each of them
    await until(reaches(node, "yptask_messages_handled_total", 20, task="echo"),
                what="20 handled")
    families = await scrape(node)
    assert value(families, "yptask_handler_duration_seconds_count", task="echo") == 20
    assert value(families, "yptask_handler_duration_seconds_bucket", task="echo",
                 le="+Inf") == 20
    assert value(families, "yptask_handler_duration_seconds_sum", task="echo") > 0
    buckets = [s.value for s in families["yptask_handler_duration_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["task"] == "echo"]
    assert buckets == sorted(buckets)  # cumulative
    assert value(families, "yptask_messages_failed_total", task="echo") == 0
    assert value(families, "yptask_journal_commit_seconds_count") > 0
    assert value(families, "yptask_workers", task="echo") >= 1


async def test_a_failing_handler_is_counted_failed_retried_then_dead_lettered(node):
    # Given the sample task with three attempts, when a message fails each of them
    await node.cast("sample.fail", {"reason": "always"})
    # Then it fails three times, is put back twice, and dead-lettered once
    await until(reaches(node, "yptask_messages_dead_lettered_total", 1, task="sample"),
                what="the dead letter counted")
    families = await scrape(node)
    assert value(families, "yptask_messages_failed_total", task="sample") == 3
    assert value(families, "yptask_messages_retried_total", task="sample") == 2
    assert value(families, "yptask_messages_handled_total", task="sample") == 0
    assert len(await node.dead_letters()) == 1


async def test_a_blocked_handler_is_in_flight_until_it_ends(node):
    # Given a handler that takes a while
    await node.cast("sample.sleep", {"seconds": 3})
    # Then the delivery is in flight while it runs, and no longer once it ends
    await until(reaches(node, "yptask_messages_in_flight", 1, task="sample"),
                what="one in flight")
    await until(reaches(node, "yptask_messages_handled_total", 1, task="sample"),
                what="handled")
    assert value(await scrape(node), "yptask_messages_in_flight", task="sample") == 0


async def test_a_paused_task_shows_its_queue_and_drains_when_resumed(node):
    await until(reaches(node, "yptask_workers", 1, task="echo"), what="echo's worker")
    await node.pause("echo")
    for n in range(3):
        await node.cast("m.echo", {"n": n})
    await until(reaches(node, "yptask_messages_queued", 3, task="echo"), what="3 queued")
    assert value(await scrape(node), "yptask_messages_handled_total", task="echo") == 0
    await node.resume("echo")
    await until(reaches(node, "yptask_messages_handled_total", 3, task="echo"),
                what="the queue handled")
    await until(reaches(node, "yptask_messages_queued", 0, task="echo"), what="none queued")


async def test_a_timer_firing_counts_its_ticks(node):
    await node.put_timer({"name": "beat", "cron": "* * * * * *", "message": "tick.echo",
                          "payload": {}, "misfire": "fire_all"})

    async def two_ticks() -> bool:
        fired = value(await scrape(node), "yptask_timer_fires_total", timer="beat")
        return fired is not None and fired >= 2
    await until(two_ticks, what="two ticks counted")
    assert value(await scrape(node), "yptask_timer_misses_total", timer="beat") in (None, 0)


async def test_a_timer_that_was_down_counts_the_ticks_it_skipped(node):
    # Given an hourly timer whose last tick fired five hours ago (its state as a node
    # that was down meanwhile left it; a saved timer keeps the state it has)
    hour = 3600.0
    last = (time.time() // hour - 5) * hour
    await node._config_map.put([(TIMER_STATE_KEY + "hourly", {"last_fire": last})], wait=True)
    await node.put_timer({"name": "hourly", "cron": "0 * * * *", "message": "tick.echo",
                          "payload": {}, "misfire": "skip"})

    async def accounted() -> tuple[float, float] | None:
        families = await scrape(node)
        missed = value(families, "yptask_timer_misses_total", timer="hourly") or 0
        fired = value(families, "yptask_timer_fires_total", timer="hourly") or 0
        return (missed, fired) if missed + fired == 5 else None
    # Then the five ticks due are accounted for: skipped, but for the latest if on time
    missed, fired = await until(accounted, what="the five ticks accounted for")
    assert missed >= 4 and fired <= 1


def test_the_ticks_a_misfire_policy_leaves_unfired_are_counted_as_missed():
    every_second = {"name": "beat", "cron": "* * * * * *", "message": "tick.echo",
                    "max_catchup": 10}
    last, now = 1_700_000_000.0, 1_700_000_005.0  # five ticks due, the latest on time
    skip = TimerDef.from_dict({**every_second, "misfire": "skip"})
    assert due_ticks(skip, last, now) == ([now], now, 4)  # the latest is on time: fired
    assert due_ticks(skip, last, now + 10.5) == ([now + 10], now + 10, 14)
    every_minute = TimerDef.from_dict({**every_second, "cron": "* * * * *", "misfire": "skip"})
    minute = 1_699_999_980.0  # a whole minute
    assert due_ticks(every_minute, minute, minute + 210) == ([], minute + 180, 3)  # all late
    once = TimerDef.from_dict({**every_second, "misfire": "fire_once"})
    assert due_ticks(once, last, now + 10.5) == ([now + 10], now + 10, 14)
    every = TimerDef.from_dict({**every_second, "misfire": "fire_all"})
    fires, accounted, missed = due_ticks(every, last, now)
    assert (len(fires), accounted, missed) == (5, now, 0)
    two = TimerDef.from_dict({**every_second, "misfire": "fire_all", "max_catchup": 2})
    assert due_ticks(two, last, now) == ([now - 1, now], now, 3)
    # After a day away, a per-second timer's misses are counted up to the bound, at once
    day = 86_400
    fires, accounted, missed = due_ticks(skip, last, last + day + 0.5)
    assert (fires, accounted) == ([last + day], last + day)
    assert MAX_MISSES_COUNTED <= missed <= MAX_MISSES_COUNTED + 2
    # A timer on time misses nothing
    assert due_ticks(skip, now - 1, now) == ([now], now, 0)


async def test_metrics_want_the_admin_credentials(node):
    # Without a credential, with a wrong one, or with a publisher token: 401
    for headers in ({}, {"Authorization": "Bearer not-the-admin-token"},
                    {"Authorization": f"Bearer {PUBLISHER_TOKEN}"}):
        status, answer, text = await get(node, headers)
        assert status == 401, headers
        assert answer["WWW-Authenticate"].startswith("Bearer")
        assert "yptask_" not in text
    # The admin token as a Bearer token, or as HTTP Basic's password: served
    assert (await get(node, admin(node)))[0] == 200
    basic = base64.b64encode(f"prometheus:{node.admin_token}".encode()).decode()
    assert (await get(node, {"Authorization": f"Basic {basic}"}))[0] == 200


async def test_a_page_of_another_site_cannot_read_metrics_even_with_the_token(node):
    # A browser names the page's origin (a CORS or POST request), or says cross-site in
    # Sec-Fetch-Site (a no-cors GET, which carries no Origin); a rebound name in Host
    for foreign in ({"Origin": "http://attacker.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Host": "attacker.example"}):
        status, _, text = await get(node, {**admin(node), **foreign})
        assert status == 403, foreign
        assert "yptask_" not in text
    # The node's own console page may (its own origin, same-origin fetch)
    own = node.http_url.removesuffix("/")
    status, _, _ = await get(node, {**admin(node), "Origin": own,
                                    "Sec-Fetch-Site": "same-origin"})
    assert status == 200


# A page of another site tries to read the node's metrics: a no-cors fetch (no Origin
# header), a CORS fetch, and one that even knows the admin token (a CORS preflight).
READER_PAGE = """<!doctype html><html><body><script>
const url = "NODE/metrics";
window.results = {};
async function attempt(name, run) {
  try { const r = await run(); window.results[name] = r.type + " " + r.status + " " +
        (await r.text()).slice(0, 40); }
  catch (e) { window.results[name] = "blocked"; }
}
(async () => {
  await attempt("no-cors", () => fetch(url, {mode: "no-cors"}));
  await attempt("cors", () => fetch(url));
  await attempt("cors with the token", () => fetch(url,
      {headers: {Authorization: "Bearer TOKEN"}}));
  document.title = "done";
})();
</script></body></html>"""


@pytest.fixture
def reader_site(tmp_path) -> Iterator[tuple[str, Any]]:
    """A web server of another site, on another port of 127.0.0.1: (origin, folder)."""
    folder = tmp_path / "site"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args: Any) -> None:
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


def open_in_browser(url: str) -> dict[str, str]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-background-networking", "--no-first-run",
            # the browser's own guard for local addresses is not what protects the node
            "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests,"
            "PrivateNetworkAccessSendPreflights,PrivateNetworkAccessRespectPreflightResults"])
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("document.title === 'done'", timeout=30_000)
            results: dict[str, str] = page.evaluate("window.results")
            return results
        finally:
            browser.close()


async def test_a_page_of_another_site_in_a_real_browser_reads_no_metrics(node, reader_site,
                                                                         caplog):
    require_browser()
    origin, folder = reader_site
    page = READER_PAGE.replace("NODE", node.http_url.removesuffix("/")).replace(
        "TOKEN", node.admin_token)
    (folder / "read.html").write_text(page)
    # When the user opens the page (the browser runs in a thread: the node is on this loop)
    with caplog.at_level(logging.WARNING, logger="yptask.web.app"):
        results = await asyncio.to_thread(open_in_browser, f"{origin}/read.html")
    # Then the page got nothing it can read: an opaque answer, or none at all
    assert results == {"no-cors": "opaque 0 ", "cors": "blocked",
                       "cors with the token": "blocked"}, results
    # and the node refused the request the browser marked as another site's
    assert "refused HTTP GET /metrics" in caplog.text


async def test_two_nodes_in_one_process_each_serve_their_own_figures(node, tmp_path):
    other = await Node.start(NodeConfig(name="m2", data_dir=tmp_path / "other", **ALONE),
                             tasks=[TaskDef.from_dict(ECHO)])
    try:
        for n in range(2):
            await other.cast("m.echo", n)
        await until(reaches(other, "yptask_messages_handled_total", 2, task="echo"),
                    what="m2's casts handled")
        mine = await scrape(node)
        assert value(mine, "yptask_messages_handled_total", task="echo") == 0
        assert value(mine, "yptask_node_info", node="m1", version=__version__) == 1
        assert value(await scrape(other), "yptask_node_info", node="m2",
                     version=__version__) == 1
    finally:
        await other.stop()


async def test_a_scrape_queries_nothing_of_the_journal(node):
    # Given a node with its tasks up (and nothing else going on)
    await until(reaches(node, "yptask_workers", 1, task="sample"), what="sample's worker")
    journal = node._journal
    assert journal is not None
    spy = _CountingQueue(journal._queue)
    # Every journal operation (a query, a write) is put on the journal thread's queue; the
    # scrape is synchronous, so nothing else of this loop runs meanwhile.
    journal._queue = spy  # type: ignore[assignment]
    try:
        text = render(node_registry(node, journal)).decode()
    finally:
        journal._queue = spy.real
    assert "yptask_messages_handled_total" in text
    assert spy.puts == []


class _CountingQueue:
    """The journal thread's queue, passed through, with what is put on it kept."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.puts: list[Any] = []

    def put(self, op: Any) -> None:
        self.puts.append(op)
        self.real.put(op)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self.real.get(*args, **kwargs)

    def get_nowait(self) -> Any:
        return self.real.get_nowait()
