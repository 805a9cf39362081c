"""The console's SAVE stores exactly what its form shows; an unchanged definition restarts
nothing.

First the node alone (in this process): `tasks.put` of the definition it already has
stores nothing, restarts no worker and answers `"changed": false`; a change of a
value's type alone (1 to true) is a change. Then a real `yptask node` and a headless
Chromium: a task with every field set to a value of its own kind, opened and SAVEd
unchanged, reads back field for field with its workers untouched; one edit through
the form changes that field only; a field the console has no input for is kept.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from typing import Any

import pytest
from support import TEST_WORKERS, require_browser, save_task_form, until, wait_for
from test_console_browser import PASSWORD, ConsoleNode, console_page

from yptask.node import Node
from yptask.store.config_map import TASK_KEY
from yptask.tasks.runner import runner_argv

pytestmark = pytest.mark.timeout(300)


def same(a: Any, b: Any) -> bool:
    """Equal as JSON: unlike ==, 1, 1.0 and true are three different values."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


async def _stored(node: Node, task: str) -> Any:
    """The entry of `task` in the node's replicated config: a write gives it a new version."""
    assert node._config_map is not None
    return await node._config_map.get(TASK_KEY + task)


async def _running_pids(node: Node, task: str) -> list[int] | None:
    status = (await node.status())["tasks"][task]
    return status["pids"] if status["state"] == "running" and status["pids"] else None


# ---------------------------------------------------------------- the node alone

async def test_an_unchanged_put_stores_nothing_and_restarts_nothing(node):
    # Given a task whose workers run
    pids = await until(lambda: _running_pids(node, "sample"), what="the sample workers")
    definition = await node.task("sample")
    stored = await _stored(node, "sample")
    # When the very definition it has is put again
    answer = await node.put_task(definition)
    # Then it says nothing changed, nothing was written, and the same workers serve on
    assert answer["changed"] is False
    assert await _stored(node, "sample") == stored
    assert same({k: v for k, v in answer.items() if k != "changed"}, definition)
    assert await node.call("sample.echo", 1) == 1
    assert await _running_pids(node, "sample") == pids
    # while a real edit says it changed
    assert (await node.put_task({**definition, "max_queue": 777}))["changed"] is True


async def test_a_value_that_changes_its_type_alone_is_a_change(node):
    # Given a task whose workers were told a setting 1
    definition = {**(await node.task("sample")), "settings": {"n": 1}}
    await node.put_task(definition)
    await until(lambda: _sees(node, {"n": 1}), what="the workers to see n = 1")
    # When the setting becomes true (equal to 1 in Python, a different JSON value)
    answer = await node.put_task({**definition, "settings": {"n": True}})
    # Then that is a change: stored, and the workers are replaced by ones that see it
    assert same((await node.task("sample"))["settings"], {"n": True})
    await until(lambda: _sees(node, {"n": True}), what="the workers to see n = true")
    assert answer["changed"] is True


async def _sees(node: Node, settings: dict[str, Any]) -> bool:
    return same((await node.call("sample.whoami", {}))["settings"], settings)


# ---------------------------------------------------------------- through the console

def full_definition(tmp: Any) -> dict[str, Any]:
    """A task with every field away from its default, each value of its own kind."""
    runner = shlex.join(runner_argv("sample:Sample", stdio=True))
    return {
        "name": "roundtrip",
        "messages": ["rt.*", "rt.#.deep"],
        "worker_class": "",
        "command": ["sh", "-c", f"exec {runner}"],  # one argument with spaces in it
        "group": "round trip",
        "use_stdio": True,
        "stdout": str(tmp / "rt out.log"),
        "stderr": str(tmp / "rt err.log"),
        "debug": True,
        "max_idle_s": 0.0,  # never reaped: the same workers throughout
        "env": {"PYTHONPATH": str(TEST_WORKERS), "PADDED": "  two  words  ", "EMPTY": ""},
        "settings": {"version": "1.10", "flag": "true", "nothing": "null", "ratio": 1.5,
                     "whole": 2.0, "big": 12345678901234567890, "on": True, "off": None,
                     "list": [1, "a", None, 2.5], "nested": {"a": {"b": [1.0, " x "]}},
                     " spaced key ": " v ", "1": "a key JavaScript sorts first"},
        "nodes": {"*": 0, "console1": 2},
        "max_attempts": 3,
        "retry_backoff_s": 0.25,
        "message_timeout_s": 12.5,
        "shutdown_timeout_s": 4.0,
        "restart_generation": 3,
        "max_queue": 777,
        "max_restarts": 7,
        "restart_period_s": 30.5,
        "paused": True,  # its workers run all the same
        "accepting": False,
        "default_priority": 6,
        "priority_tickets": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        "message_ttl_s": 90.5,
        "rate_limit": "6000/min",
        "rate_limit_key": "user.id",
        "refuse_tokens": ["legacy-app"],
        "cwd": str(tmp),
        "python_path": ["workers lib", str(TEST_WORKERS)],
        "log_max_mb": 2.5,
        "log_keep": 5,
        "log_format": "json",
    }


@pytest.fixture(scope="module")
def console(tmp_path_factory) -> Iterator[ConsoleNode]:
    require_browser()
    started = ConsoleNode(tmp_path_factory.mktemp("console-save"))
    started.start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def page(console):
    with console_page() as page:
        page.goto(console.base + "/login")
        page.fill("#password", PASSWORD)
        page.click("#login")
        page.wait_for_selector("#overview-tasks tr[data-task=echo]")
        yield page


def _pids(console: ConsoleNode, task: str) -> list[int] | None:
    status = console.client().status()["tasks"][task]
    up = status["state"] in ("running", "paused")
    return status["pids"] if up and len(status["pids"]) == 2 else None


def _open(page, task: str) -> None:
    page.click("nav a[data-view=tasks]")
    page.wait_for_selector(f"#task-list a[data-task={task}]")
    page.click(f"#task-list a[data-task={task}]")
    page.wait_for_selector(f"#form-title:has-text('{task}')")


def _save(page, console: ConsoleNode) -> str:
    page.evaluate("notice('')")
    save_task_form(page)
    page.wait_for_selector("#notice:not([hidden])")
    return page.text_content("#notice") or ""


def test_save_unchanged_stores_what_was_put_and_restarts_nothing(page, console):
    # Given a task put through the API with every field set, and its workers running
    full = full_definition(console.tmp)
    console.client().put_task(full)
    pids = wait_for(lambda: _pids(console, "roundtrip"), timeout_s=60, what="two workers")
    # When it is opened in the console and SAVEd without a change
    _open(page, "roundtrip")
    said = _save(page, console)
    # Then the node has exactly what was put, field for field, and the same workers
    stored = console.client().task("roundtrip")
    assert {k for k in full if not same(stored.get(k), full[k])} == set()
    assert same(stored, full)
    assert "unchanged" in said
    assert _pids(console, "roundtrip") == pids
    assert page.console_errors == []


def test_one_edit_through_the_form_changes_that_field_only(page, console):
    # Given the task open in the console
    full = full_definition(console.tmp)
    _open(page, "roundtrip")
    # When one setting's value is edited (a string that looks like a number)
    row = next(r for r in page.locator("#rows-settings .row").all()
               if r.locator("input.key").input_value() == "version")
    row.locator("input.value").fill("1.11")
    said = _save(page, console)
    # Then that value, still a string, is all that changed
    assert "saved" in said
    expected = {**full, "settings": {**full["settings"], "version": "1.11"}}
    assert same(console.client().task("roundtrip"), expected)
    # and the form shows what is stored
    assert row.locator("input.value").input_value() == "1.11"
    assert page.console_errors == []


def test_a_field_the_form_has_no_input_for_is_shown_and_kept(page, console):
    # Given a definition with a field this console does not know (a later version's)
    _open(page, "roundtrip")
    read = page.evaluate("""() => {
        const task = state.tasks.find((t) => t.name === "roundtrip");
        fillForm({...task, later_field: {"a": [1, "x "]}});
        return JSON.stringify(readForm());
    }""")
    # Then the form shows it, and what SAVE would send keeps it as it was
    assert "later_field" in page.input_value("#f-other")
    assert json.loads(read)["later_field"] == {"a": [1, "x "]}
    assert same({k: v for k, v in json.loads(read).items() if k != "later_field"},
                console.client().task("roundtrip"))
    assert page.console_errors == []


def test_a_value_that_is_not_json_is_refused_beside_its_field(page, console):
    # Given the task open, and a setting typed JSON whose value is not JSON
    before = console.client().task("roundtrip")
    _open(page, "roundtrip")
    row = next(r for r in page.locator("#rows-settings .row").all()
               if r.locator("input.key").input_value() == "ratio")
    row.locator("input.value").fill("fast")
    # When it is saved
    save_task_form(page)
    # Then the form says what is wrong beside the settings, and nothing is stored
    page.wait_for_selector('[data-error="settings"]:has-text("choose text for a string")')
    assert same(console.client().task("roundtrip"), before)
    page.screenshot(path=str(console.tmp / "form.png"), full_page=True)
    assert page.console_errors == []
