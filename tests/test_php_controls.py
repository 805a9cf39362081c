"""The PHP client's message controls (clients/php/yptask.php) against a real node: the
cast options reach the journal as given, the node's refusals come back as a
YPTaskException naming the field, and cancel needs the admin token. These are the
functions of the earlier client (`yptask_cast`, ...), kept on top of `YPTask\\Client`
(whose own tests are tests/test_php_client.py).

Each test runs the client in a real `php -r` process (`run_php` of test_clients).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from test_clients import run_php

from yptask.errors import InvalidParams, wire_code
from yptask.store.journal_file import JOURNAL_FILE

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
METHOD_NOT_FOUND = -32601


def invalid_params() -> int:
    return wire_code(InvalidParams).jsonrpc_code


def journaled(node: Any, message_id: str) -> dict[str, Any]:
    """The message's row and its echo delivery's, as the node's journal holds them."""
    with sqlite3.connect(f"file:{node.data_dir / JOURNAL_FILE}?mode=ro", uri=True) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT m.priority, m.deadline, m.published_at, m.trace_id,"
                         " m.parent_id, d.priority AS delivery_priority, d.not_before"
                         " FROM messages m JOIN deliveries d ON d.message_id = m.id"
                         " WHERE m.id = ? AND d.task = 'echo'", (message_id,)).fetchone()
    assert row is not None, f"message {message_id} is not in the journal"
    return dict(row)


async def test_php_cast_options_reach_the_journal(node):
    url = node.http_url + "/rpc"
    answer = await run_php(
        "return yptask_cast_result('upai.echo', ['n' => 1], ['priority' => 7, 'ttl_s' => 7200,"
        f" 'delay_s' => 3600, 'traceparent' => '{TRACEPARENT}', 'parent' => 'php-root']);", url)
    result = answer["ok"]
    assert (result["tasks"], result["duplicate"]) == (["echo"], False)
    stored = journaled(node, result["id"])
    assert result["not_before"] == stored["not_before"]
    assert stored["not_before"] - stored["published_at"] > 3500  # delayed by about an hour
    assert stored["deadline"] - stored["published_at"] > 7100
    assert (stored["priority"], stored["delivery_priority"]) == (7, 7)
    assert (stored["trace_id"], stored["parent_id"]) == (TRACE_ID, "php-root")
    # yptask_cast still returns the id alone; numeric strings count as numbers; 'at'
    at = await run_php("return yptask_cast('upai.echo', [], ['id' => 'php-at', 'priority' => '3',"
                       " 'at' => time() + 600]);", url)
    assert at == {"ok": "php-at"}
    stored = journaled(node, "php-at")
    assert stored["priority"] == 3 and stored["not_before"] > stored["published_at"] + 500


async def test_php_bad_options_throw_the_nodes_error_naming_the_field(node):
    url = node.http_url + "/rpc"
    invalid = wire_code(InvalidParams).jsonrpc_code
    for option, value, field in [("priority", "12", "priority"), ("ttl_s", "-1", "ttl_s"),
                                 ("delay_s", "'soon'", "delay_s"),
                                 ("traceparent", "'not-one'", "traceparent")]:
        bad = await run_php(f"return yptask_cast('upai.echo', [], ['{option}' => {value}]);", url)
        assert bad.get("code") == invalid, (option, bad)
        assert f"'{field}'" in bad["message"], (option, bad)
    both = await run_php("return yptask_cast('upai.echo', [], ['delay_s' => 5, 'at' => 1e10]);",
                         url)
    assert both["code"] == invalid and "'delay_s'" in both["message"]


async def test_php_call_sends_trace_options_only_when_given(node):
    url = node.http_url + "/rpc"
    plain = await run_php("return yptask_call('upai.echo', ['a' => 1], 10, []);", url)
    assert plain == {"ok": {"a": 1}}
    traced = await run_php("return yptask_call('upai.echo', ['a' => 2], 10,"
                           f" ['traceparent' => '{TRACEPARENT}', 'parent' => 'p1']);", url)
    # a node whose call does not take them yet refuses them by name; one that does answers
    if "ok" in traced:
        assert traced == {"ok": {"a": 2}}
    else:
        assert "traceparent" in traced["message"] or "parent" in traced["message"], traced


async def test_php_cancel_needs_the_admin_token(node):
    url = node.http_url + "/rpc"
    later = await run_php("return yptask_cast('upai.echo', [], ['delay_s' => 3600]);", url)
    message_id = later["ok"]
    bad_token = await run_php(f"return yptask_cancel('{message_id}', ['token' => \"a\\r\\nb\"]);",
                              url)
    # refused before anything is sent, as InvalidParams naming the setting
    assert bad_token["code"] == invalid_params() and "'token'" in bad_token["message"]
    answer = await run_php(f"return yptask_cancel('{message_id}');", url,
                           YPTASK_TOKEN=node.admin_token)
    if answer.get("code") == METHOD_NOT_FOUND:
        # Narrow: only while the node has no cancel method at all (any other answer, an
        # error included, runs the rest), so this runs as soon as cancel exists.
        pytest.skip("the node has no cancel method yet (-32601)")
    # (PHP decodes an empty JSON object as an empty array: `running` comes back as [])
    assert answer["ok"]["cancelled"] == {node.name: ["echo"]}, answer
    assert not answer["ok"]["running"] and not answer["ok"]["unreached"], answer
    refused = await run_php(f"return yptask_cancel('{message_id}');", url)
    assert "ok" not in refused and "admin token" in refused["message"], refused
    token = node.admin_token
    again = await run_php(f"return yptask_cancel('{message_id}', ['token' => '{token}']);", url)
    cancelled = again["ok"]["cancelled"]  # [] when empty, as above
    assert not (cancelled and any(cancelled.values())), again
