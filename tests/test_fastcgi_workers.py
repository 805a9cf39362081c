"""Tasks whose workers are a php-fpm pool: a node delivering through FastCGI, end to end.

A real node in this process and a real php-fpm (tests/php_fpm.py) running the
handler script of tests/test_fastcgi.py; what the client alone does under
protocol faults is in tests/test_fastcgi.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from php_fpm import PhpFpm, require_php_fpm
from support import until
from test_fastcgi import HANDLER

from yptask.node import Node

StartNode = Callable[..., Awaitable[Node]]


@pytest.fixture
def script(tmp_path: Path) -> str:
    path = tmp_path / "tasks" / "index.php"
    path.parent.mkdir()
    path.write_text(HANDLER)
    return str(path)


@pytest.fixture
def fpm(tmp_path: Path) -> Iterator[PhpFpm]:
    folder = tmp_path / "fpm"
    folder.mkdir()
    server = PhpFpm(require_php_fpm(), folder)
    server.start()
    yield server
    server.stop()


def php_task(fpm: PhpFpm, script: str, **fields: Any) -> dict[str, Any]:
    return {"name": "php", "messages": ["php.*"], "fastcgi": fpm.address, "script": script,
            "retry_backoff_s": 0.05, "nodes": {"*": 2}, **fields}


async def test_a_call_and_a_cast_run_the_php_script_with_the_message_and_its_meta(
        fpm: PhpFpm, script: str, start_node: StartNode) -> None:
    # Given a task served by a php-fpm pool
    node = await start_node(php_task(fpm, script))
    # When it is called, the script's JSON answer is the result
    assert await node.call("php.sum", [1, 2, 3], timeout_s=10) == {"sum": 6}
    seen = await node.call("php.echo", {"photo": 7}, timeout_s=10)
    assert seen["body"]["payload"] == {"photo": 7}
    assert seen["server"]["YPTASK_NAME"] == "php.echo"
    assert seen["server"]["SCRIPT_FILENAME"] == script
    # And a cast is handled by it and acked
    await node.cast("php.nothing", {"n": 1})
    await until(lambda: _counts(node, handled=3), what="the cast handled")
    assert await node.dead_letters() == []


async def test_a_failing_script_spends_attempts_then_dead_letters_with_its_answer(
        fpm: PhpFpm, script: str, start_node: StartNode) -> None:
    node = await start_node(php_task(fpm, script, max_attempts=2))
    cast = await node.cast("php.fail", "resize photo 7")
    (letter,) = await until(node.dead_letters, what="the dead letter")
    assert letter["id"] == cast["id"] and letter["attempt"] == 2
    assert "500" in letter["error"] and "could not resize photo 7" in letter["error"]
    # And the pool serves the next message
    assert await node.call("php.text", "on", timeout_s=10) == "plain on"


async def test_php_fpm_down_spends_no_attempt_and_the_message_runs_once_it_is_up(
        fpm: PhpFpm, script: str, start_node: StartNode) -> None:
    # Given a task whose php-fpm is down
    node = await start_node(php_task(fpm, script, max_attempts=1))
    assert await node.call("php.text", "up", timeout_s=10) == "plain up"
    fpm.stop()
    # When a message is cast meanwhile, it waits: not dead-lettered, though one attempt
    # is all it has
    await node.cast("php.echo", {"while": "down"})
    await until(lambda: _state(node, "backoff"), what="the task in backoff", timeout_s=20)
    assert await node.dead_letters() == []
    # Then once php-fpm is back, it runs (its one attempt unspent till then)
    fpm.start()
    await until(lambda: _counts(node, handled=2), what="the message delivered", timeout_s=60)
    assert await node.dead_letters() == []


async def _counts(node: Node, *, handled: int) -> dict[str, Any] | None:
    status: dict[str, Any] = (await node.status())["tasks"]["php"]
    return status if status["handled"] >= handled else None


async def _state(node: Node, state: str) -> bool:
    return bool((await node.status())["tasks"]["php"]["state"] == state)
