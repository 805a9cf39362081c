"""The JSON-RPC publisher API over real HTTP, against a real node with real workers.

Every test starts its own node (echo and sample tasks, real worker processes) in
its own data folder, speaks raw HTTP to `POST /rpc`, and stops the node.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from support import ALONE, ECHO

from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.errors import (
    ConfigError,
    DecodeError,
    HandlerError,
    NoSubscriber,
    NoSuchFunction,
    ProtocolError,
    UnknownTask,
    wire_code,
)
from yptask.node import Node

PARSE_ERROR = wire_code(DecodeError).jsonrpc_code
INVALID_REQUEST = wire_code(ProtocolError).jsonrpc_code
METHOD_NOT_FOUND = wire_code(NoSuchFunction).jsonrpc_code
INVALID_PARAMS = wire_code(ConfigError).jsonrpc_code
INTERNAL_ERROR = wire_code(RuntimeError).jsonrpc_code

@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def post(http: aiohttp.ClientSession, node: Node, payload: Any) -> tuple[int, Any]:
    """POST a payload (bytes as they are, anything else as JSON); return (status, JSON or None)."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with http.post(node.http_url + "/rpc", data=data, headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {node.admin_token}"}) as response:
        body = await response.read()
        if body:
            assert response.content_type == "application/json", body[:200]
        return response.status, json.loads(body) if body else None


def request(method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        message["params"] = params
    return message


def notification(method: str, params: Any = None) -> dict[str, Any]:
    message = request(method, params)
    del message["id"]
    return message


async def rpc(http: aiohttp.ClientSession, node: Node, method: str, params: Any = None) -> Any:
    """Call one method; return the whole response object."""
    status, answer = await post(http, node, request(method, params))
    assert status == 200
    return answer


# ------------------------------------------------------------------ publishing


async def test_cast_returns_the_id_and_the_subscribed_tasks(node, http):
    answer = await rpc(http, node, "cast", ["upai.echo", {"n": 1}])
    assert answer["id"] == 1
    result = answer["result"]
    assert isinstance(result["id"], str) and result["id"]
    assert (result["tasks"], result["duplicate"]) == (["echo"], False)

    # Given a publisher-supplied id, the second cast with it is a duplicate
    first = await rpc(http, node, "cast", {"name": "upai.echo", "msg": {}, "id": "order-7",
                                           "priority": 3})
    again = await rpc(http, node, "cast", {"name": "upai.echo", "msg": {}, "id": "order-7"})
    assert first["result"] == {"id": "order-7", "tasks": ["echo"], "duplicate": False}
    assert again["result"] == {"id": "order-7", "tasks": ["echo"], "duplicate": True}


async def test_call_returns_what_the_handler_returned(node, http):
    by_position = await rpc(http, node, "call", ["upai.echo", {"a": [1, "é", None]}])
    by_name = await rpc(http, node, "call", {"name": "upai.echo", "msg": "hi", "timeout": 20})
    assert by_position == {"jsonrpc": "2.0", "result": {"a": [1, "é", None]}, "id": 1}
    assert by_name["result"] == "hi"


async def test_call_to_a_name_nobody_subscribes_to_is_no_subscriber(node, http):
    answer = await rpc(http, node, "call", ["nobody.listens", {}])
    error = answer["error"]
    assert error["code"] == wire_code(NoSubscriber).jsonrpc_code
    assert "nobody.listens" in error["message"]
    assert error["data"] == {"error_class": "NoSubscriber"}
    assert answer["id"] == 1


async def test_a_handler_exception_comes_back_with_class_detail_and_backtrace(node, http):
    answer = await rpc(http, node, "call", ["sample.fail", {"reason": "disk full"}])
    error = answer["error"]
    assert error["code"] == wire_code(HandlerError).jsonrpc_code
    assert error["message"] == "ValueError: disk full"
    data = error["data"]
    assert (data["error_class"], data["detail"]) == ("ValueError", "disk full")
    assert any("handle_fail" in line for line in data["backtrace"])


async def test_a_result_json_cannot_carry_is_internal_error_not_http_500(node, http, tmp_path,
                                                                        caplog):
    # Given a task whose handler returns a value JSON has no form for (a datetime)
    (tmp_path / "clockworker.py").write_text(
        "import datetime\n"
        "from yptask.tasks.base import BaseTask\n"
        "class Clock(BaseTask):\n"
        "    def handle_now(self, msg):\n"
        "        return datetime.datetime.now(datetime.timezone.utc)\n")
    definition = {"name": "clock", "messages": ["clock.now"], "worker_class": "clockworker:Clock",
                  "env": {"PYTHONPATH": str(tmp_path)}}
    stored = await rpc(http, node, "tasks.put", [definition])
    assert stored["result"]["name"] == "clock"

    # When it is called, the answer is a JSON-RPC error, not an HTTP 500
    answer = await rpc(http, node, "call", ["clock.now", {}])
    assert answer["error"]["code"] == INTERNAL_ERROR
    assert "cannot be sent as JSON" in answer["error"]["message"]
    assert answer["id"] == 1
    assert "call returned a result that is not JSON" in caplog.text

    # And the node keeps serving
    assert (await rpc(http, node, "call", ["upai.echo", 1]))["result"] == 1


class FaultyNode(Node):
    """A real node with one bug planted: `status` fails with an exception yptask never raises.

    The real node has no such bug to trigger on purpose, hence the plant.
    """

    async def status(self) -> dict[str, Any]:
        raise RuntimeError("db password is hunter2")


async def test_an_unexpected_exception_is_internal_error_without_internals(tmp_path, http,
                                                                           caplog):
    node = await FaultyNode.start(
        NodeConfig(name="t1", data_dir=tmp_path / "data", **ALONE),
        tasks=[TaskDef.from_dict(ECHO)])
    try:
        answer = await rpc(http, node, "status")
        error = answer["error"]
        assert error["code"] == INTERNAL_ERROR
        assert "hunter2" not in json.dumps(answer) and "RuntimeError" not in json.dumps(answer)
        reference = error["data"]["reference"]
        assert reference in error["message"]
        # The node's log has the details, under the reference the client got
        assert "hunter2" in caplog.text and reference in caplog.text
        assert (await rpc(http, node, "call", ["upai.echo", 2]))["result"] == 2
    finally:
        await node.stop()


# ------------------------------------------------------------------ batches and notifications


async def test_a_batch_is_answered_per_element_in_request_order(node, http):
    batch = [
        request("call", ["upai.echo", "first"], id=1),
        {"method": "status", "id": 2},  # no "jsonrpc"
        notification("cast", {"name": "upai.echo", "msg": {}, "id": "from-a-notification"}),
        request("no.such.method", id=3),
        42,
        request("cast", {"name": "upai.echo"}, id=4),  # msg missing
        request("tasks.get", ["echo"], id="last"),
    ]
    status, answer = await post(http, node, batch)
    assert status == 200
    assert isinstance(answer, list)
    assert [a["id"] for a in answer] == [1, 2, 3, None, 4, "last"]
    assert answer[0]["result"] == "first"
    assert [a.get("error", {}).get("code") for a in answer[1:5]] == [
        INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_REQUEST, INVALID_PARAMS]
    assert answer[5]["result"]["name"] == "echo"
    # The notification ran: its id is taken
    again = await rpc(http, node, "cast", {"name": "upai.echo", "msg": {},
                                           "id": "from-a-notification"})
    assert again["result"]["duplicate"] is True


async def test_the_casts_of_a_batch_are_answered_each_in_its_place(node, http):
    batch = [
        request("cast", ["upai.echo", {"n": 1}, "batch-1"], id=1),
        request("cast", ["not a valid name!", {}], id=2),  # the node refuses this one only
        request("cast", {"name": "upai.echo", "msg": {"n": 2}, "id": "batch-1"}, id=3),
        request("tasks.get", ["echo"], id=4),
        request("cast", ["upai.echo", {"n": 3}, None, "high"], id=5),  # bad priority
        request("cast", ["upai.echo", {"n": 4}], id=6),
    ]
    status, answer = await post(http, node, batch)
    assert status == 200
    assert [a["id"] for a in answer] == [1, 2, 3, 4, 5, 6]
    assert answer[0]["result"] == {"id": "batch-1", "tasks": ["echo"], "duplicate": False}
    assert answer[1]["error"]["code"] == INVALID_PARAMS
    assert answer[2]["result"] == {"id": "batch-1", "tasks": ["echo"], "duplicate": True}
    assert answer[3]["result"]["name"] == "echo"
    assert answer[4]["error"]["code"] == INVALID_PARAMS
    assert "'priority'" in answer[4]["error"]["message"]
    assert answer[5]["result"]["duplicate"] is False
    assert answer[5]["result"]["id"] != "batch-1"


async def test_an_empty_batch_is_one_invalid_request(node, http):
    status, answer = await post(http, node, [])
    assert status == 200
    assert answer["error"]["code"] == INVALID_REQUEST
    assert "empty batch" in answer["error"]["message"]
    assert answer["id"] is None


async def test_a_notification_gets_204_and_no_body_but_runs(node, http):
    status, answer = await post(http, node, notification("cast", ["upai.echo", {}, "note-1"]))
    assert (status, answer) == (204, None)
    again = await rpc(http, node, "cast", ["upai.echo", {}, "note-1"])
    assert again["result"]["duplicate"] is True


async def test_a_batch_of_only_notifications_gets_204(node, http):
    batch = [notification("cast", ["upai.echo", {}]), notification("no.such.method"),
             notification("call", ["nobody.listens", {}])]
    assert await post(http, node, batch) == (204, None)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("body", [b"{", b"", b'{"jsonrpc": "2.0", "method": "status", "id": NaN}',
                                  b"[" * 100_000])
async def test_malformed_json_is_a_parse_error(node, http, body):
    status, answer = await post(http, node, body)
    assert status == 200
    assert answer["error"]["code"] == PARSE_ERROR
    assert answer["error"]["message"].startswith("Parse error")
    assert answer["id"] is None


async def test_a_body_that_is_not_utf8_is_a_parse_error(node, http):
    status, answer = await post(http, node, b'{"jsonrpc": "2.0", "method": "\xff\xfe", "id": 1}')
    assert status == 200
    assert answer["error"]["code"] == PARSE_ERROR
    assert "UTF-8" in answer["error"]["message"]


async def test_an_oversize_body_is_refused_with_a_json_rpc_error(node, http):
    limit = node.config.max_body_bytes
    big = request("cast", ["upai.echo", "x" * limit])
    status, answer = await post(http, node, big)
    assert status == 413
    assert answer["error"]["code"] == INVALID_REQUEST
    assert str(limit) in answer["error"]["message"]

    # Given a body sent in chunks, with no Content-Length, the limit holds the same way
    async def chunks():
        for _ in range(limit // 4096 + 2):
            yield b" " * 4096

    async with http.post(node.http_url + "/rpc", data=chunks(),
                         headers={"Content-Type": "application/json"}) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == INVALID_REQUEST

    # And the node keeps serving
    assert (await rpc(http, node, "call", ["upai.echo", "still here"]))["result"] == "still here"


@pytest.mark.parametrize("bad", [
    {"jsonrpc": "1.0", "method": "status", "id": 1},
    {"jsonrpc": "2.0", "method": 7, "id": 1},
    {"jsonrpc": "2.0", "method": "status", "params": "x", "id": 1},
    {"jsonrpc": "2.0", "method": "status", "id": {"an": "object"}},
    {"jsonrpc": "2.0", "method": "status", "id": 1, "extra": True},
    "status",
])
async def test_requests_that_break_the_spec_are_invalid_requests(node, http, bad):
    status, answer = await post(http, node, bad)
    assert status == 200
    assert answer["error"]["code"] == INVALID_REQUEST
    assert answer["error"]["message"].startswith("Invalid request: ")


async def test_an_unknown_method_is_method_not_found(node, http):
    answer = await rpc(http, node, "publish", ["upai.echo", {}])
    assert answer["error"]["code"] == METHOD_NOT_FOUND
    assert "'publish'" in answer["error"]["message"]
    assert "cast" in answer["error"]["message"]  # says what exists


@pytest.mark.parametrize(("method", "params", "named"), [
    ("cast", ["upai.echo"], "'msg'"),
    ("cast", {"name": "upai.echo", "msg": {}, "color": "red"}, "'color'"),
    ("cast", ["upai.echo", {}, None, 1, *[None] * 6, "surplus"], "too many"),
    ("cast", {"name": "upai.echo", "msg": {}, "priority": "5"}, "'priority'"),
    ("cast", {"name": 5, "msg": {}}, "'name'"),
    ("call", {"name": "upai.echo", "msg": {}, "timeout": 0}, "'timeout'"),
    ("call", {"name": "upai.echo", "msg": {}, "timeout": True}, "'timeout'"),
    ("dead.list", [0], "'limit'"),
    ("dead.list", [2.5], "'limit'"),
    ("dead.list", [10**30], "'limit'"),
    ("tasks.put", ["not a definition"], "'definition'"),
    ("tasks.put", [{"name": "x"}], "messages"),
    ("status", [1], "too many"),
])
async def test_wrong_params_are_invalid_params_naming_the_problem(node, http, method, params,
                                                                  named):
    answer = await rpc(http, node, method, params)
    assert answer["error"]["code"] == INVALID_PARAMS, answer
    assert named in answer["error"]["message"]


# ------------------------------------------------------------------ admin methods


async def test_admin_methods_list_get_put_restart_delete(node, http):
    listed = (await rpc(http, node, "tasks.list"))["result"]
    assert [t["name"] for t in listed] == ["echo", "sample"]
    echo = (await rpc(http, node, "tasks.get", {"name": "echo"}))["result"]
    assert echo["messages"] == ["*.echo"]

    restarted = (await rpc(http, node, "tasks.restart", ["echo"]))["result"]
    assert restarted["generation"] == 1
    status = (await rpc(http, node, "status"))["result"]
    assert status["node"] == "t1" and set(status["tasks"]) == {"echo", "sample"}

    assert (await rpc(http, node, "tasks.delete", ["sample"]))["result"] is None
    missing = await rpc(http, node, "tasks.get", ["sample"])
    assert missing["error"]["code"] == wire_code(UnknownTask).jsonrpc_code
    assert missing["error"]["data"] == {"error_class": "UnknownTask"}


async def test_dead_letters_list_and_replay(node, http):
    assert (await rpc(http, node, "dead.list"))["result"] == []
    assert (await rpc(http, node, "dead.list", {"limit": 5}))["result"] == []
    assert (await rpc(http, node, "dead.replay", ["no-such-message"]))["result"] == 0


async def test_healthz_names_the_node(node, http):
    async with http.get(node.http_url + "/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"node": "t1", "ok": True}
