"""Worker logs the node writes: rotated by size, as text or JSON lines.

A worker that writes to stderr without end fills at most `log_keep + 1` files
of `log_max_mb`, the newest lines in the current one, while the node serves
other tasks; with `log_format = "json"` each line is one JSON object; and a
worker that cannot start still reports the tail of its stderr, however small
the files are. Real nodes (in this process) and real worker processes; the task
modules are written into the test's folder and found through `python_path`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest
from support import ALONE, ECHO, until

from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.node import Node
from yptask.workers.log_files import RotatingLog
from yptask.workers.output import MAX_LINE_BYTES, _Stream

TASKS = '''
import os
import sys
from yptask.tasks.base import BaseTask


class Flooder(BaseTask):
    def handle_flood(self, msg):
        """Number lines into stderr until at_least bytes are written and stop_file exists."""
        line = written = 0
        while written < msg["at_least"] or not os.path.exists(msg["stop_file"]):
            text = f"line {line:09d} {'x' * 100}\\n"
            sys.stderr.write(text)
            written += len(text)
            line += 1
        sys.stderr.write(f"last line {line:09d}\\n")
        sys.stderr.flush()
        return line

    def handle_say(self, msg):
        sys.stdout.write(msg + "\\n")
        sys.stdout.flush()
        sys.stderr.write(msg)  # no newline: the line ends when the worker's stderr does
        sys.stderr.flush()
        return os.getpid()


for n in range(int(os.environ.get("NOISE_LINES", "0"))):
    print(f"noise {n} " + "n" * 60, file=sys.stderr)
if os.environ.get("FAIL_IMPORT"):
    sys.exit("FLOODER_CAUSE: " + os.environ["FAIL_IMPORT"])
'''
MB = 1024 * 1024


@pytest.fixture
async def start_node(tmp_path):
    nodes: list[Node] = []
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "flooder.py").write_text(TASKS)

    async def start(*tasks: dict) -> Node:
        defs = [TaskDef.from_dict({"messages": [f"{t['name']}.*"], "worker_class":
                                   "flooder:Flooder", "python_path": [str(lib)], **t})
                for t in tasks]
        node = await Node.start(NodeConfig(name="l1", data_dir=tmp_path / "data", **ALONE),
                                tasks=[*defs, TaskDef.from_dict(ECHO)])
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()


def numbers(path: Path) -> list[int]:
    """The numbers of the flood's lines in a log file, in order (the last line's too)."""
    return [int(m[1]) for m in re.finditer(r"^(?:last )?line (\d{9})\b", path.read_text(),
                                           re.MULTILINE)]


async def test_a_flooding_worker_fills_only_its_rotated_files_while_the_node_serves(
        start_node, tmp_path):
    node = await start_node({"name": "flood", "log_max_mb": 1, "log_keep": 2},
                            {"name": "quiet"})
    log = node.log_dir / "flood.stderr.log"
    stop = tmp_path / "stop-flooding"
    # Given a worker writing to stderr until told to stop, at least 5 MB
    flood = asyncio.create_task(node.call(
        "flood.flood", {"at_least": 5 * MB, "stop_file": str(stop)}, timeout_s=120))
    try:
        # When it has filled the current file and both rotated ones
        await until(lambda: Path(f"{log}.2").exists(), timeout_s=60, what="two rotations")
        # Then the node serves other tasks meanwhile
        for n in range(20):
            assert await node.call("upai.echo", n) == n
        # and another worker's output reaches its own log, not held up behind the flood
        await node.call("quiet.say", "said during the flood")
        quiet = node.log_dir / "quiet.stdout.log"
        await until(lambda: "said during the flood\n" in quiet.read_text(), timeout_s=10,
                    what="the quiet worker's line in its log")
        assert not flood.done()
        # And no file is over the limit, and no third rotated file is kept
        await asyncio.sleep(0.2)  # a little more flooding, for the bounds to hold over
        for path in (log, Path(f"{log}.1"), Path(f"{log}.2")):
            assert path.stat().st_size <= 1 * MB, path
        assert not Path(f"{log}.3").exists()
    finally:
        stop.touch()
    lines = await flood
    assert lines * 115 >= 5 * MB
    # And the newest lines are in the current file, the ones before them in .1 and .2
    await until(lambda: log.read_text().endswith(f"last line {lines:09d}\n"),
                what="the last line in the current file")
    kept = numbers(Path(f"{log}.2")) + numbers(Path(f"{log}.1")) + numbers(log)
    assert kept == list(range(kept[0], lines + 1)), "lines lost or out of order"
    assert sum(os.path.getsize(f"{log}{s}") for s in ("", ".1", ".2")) <= 3 * MB


async def test_json_lines_carry_the_node_task_worker_and_stream(start_node):
    node = await start_node({"name": "json", "log_format": "json"})
    pid = await node.call("json.say", "hello \u00e9 world")
    await node.call("json.say", "second")
    out, err = node.log_dir / "json.stdout.log", node.log_dir / "json.stderr.log"

    def records(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines()]

    said = await until(lambda: (lines := [r for r in records(out) if r["line"] in (
        "hello \u00e9 world", "second")]) and len(lines) == 2 and lines,
                       what="both lines in stdout's log")
    assert [r["line"] for r in said] == ["hello \u00e9 world", "second"]
    for record in said:
        assert set(record) == {"ts", "node", "task", "worker", "stream", "line"}
        assert (record["node"], record["task"], record["worker"], record["stream"]) == \
            ("l1", "json", pid, "stdout")
        assert record["ts"].startswith("20") and record["ts"].endswith("+00:00")
    # And stderr's two unended writes begin one line, which the runner's next log line (at
    # the node's stop) ends; every other line there is one too (the runner's own log)
    await node.stop()
    lines = records(err)
    assert lines and all(r["stream"] == "stderr" and r["worker"] == pid for r in lines)
    assert lines[-1]["line"].startswith("hello \u00e9 worldsecond20"), lines[-1]


async def test_a_failed_start_reports_its_stderr_tail_across_rotations(start_node,
                                                                       monkeypatch):
    # Given a worker that writes 200 lines, then fails to import, into 1 KB JSON files
    monkeypatch.setenv("NOISE_LINES", "200")
    monkeypatch.setenv("FAIL_IMPORT", "the database is gone")
    node = await start_node({"name": "broken", "log_max_mb": 0.001, "log_keep": 1,
                             "log_format": "json"})

    async def start_error() -> dict | None:
        error: dict | None = (await node.status())["tasks"]["broken"].get("start_error")
        return error

    error = await until(start_error, what="the start failure")
    # Then its tail is the worker's own last lines, as written, not the log's JSON
    tail = error["stderr_tail"].splitlines()
    assert tail[-1] == "FLOODER_CAUSE: the database is gone", tail
    assert any(line.startswith("noise 199 ") for line in tail), tail
    assert not any(line.startswith("{") for line in tail), tail
    assert error["stderr_log"] == str(node.log_dir / "broken.stderr.log")
    # And the log files stay two of about 1 KB (the starts go on, rotating them meanwhile)
    files = {path.name: size for path in node.log_dir.glob("broken.stderr*")
             if (size := _size(path)) is not None}
    assert set(files) <= {"broken.stderr.log", "broken.stderr.log.1"}, files
    assert all(size <= 1100 for size in files.values()), files


def _size(path: Path) -> int | None:
    """A file's size, or None if it was renamed away since it was listed."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


async def test_a_log_file_that_cannot_be_opened_is_a_start_failure_naming_it(start_node,
                                                                             tmp_path):
    missing = tmp_path / "no-such-folder" / "x.log"
    node = await start_node({"name": "nowhere", "stderr": str(missing)})
    error = await until(lambda: _start_error(node, "nowhere"), what="the start failure")
    assert error["exit"] == "not started" and str(missing) in error["error"], error
    assert await node.call("upai.echo", "served") == "served"


async def _start_error(node: Node, task: str) -> dict | None:
    error: dict | None = (await node.status())["tasks"][task].get("start_error")
    return error


# ---------------------------------------------------------------- the file and the lines

def test_a_rotating_log_rotates_between_lines_and_keeps_its_number_of_files(tmp_path):
    path = tmp_path / "t.log"
    log = RotatingLog(str(path), max_bytes=100, keep=2)
    for n in range(30):  # 30 lines of 10 bytes: 300 bytes, three files' worth
        log.write(f"line {n:04d}\n".encode())
    log.close()
    texts = [Path(f"{path}{suffix}").read_text() for suffix in (".2", ".1", "")]
    assert [len(text) for text in texts] == [100, 100, 100]
    assert "".join(texts) == "".join(f"line {n:04d}\n" for n in range(30))
    assert not Path(f"{path}.3").exists()


def test_a_line_longer_than_a_file_gets_one_of_its_own_and_keep_0_starts_afresh(tmp_path):
    path = tmp_path / "t.log"
    log = RotatingLog(str(path), max_bytes=10, keep=0)
    log.write(b"short\n" + b"y" * 25 + b"\nend\n")
    log.close()
    # "short" was in the file the long line started afresh, which "end" started afresh
    assert path.read_text() == "end\n"
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(("reads", "lines", "rest"), [
    ([b"a\nb", b"c\n"], [b"a\n", b"bc\n"], b""),
    ([b"no newline"], [b""], b"no newline\n"),
    ([b"x" * (MAX_LINE_BYTES + 5)], [b"x" * MAX_LINE_BYTES + b"\n"], b"xxxxx\n"),
])
def test_a_stream_writes_whole_lines_and_cuts_one_too_long(reads, lines, rest):
    stream = _Stream(-1, "stderr", 1, None)  # type: ignore[arg-type]  # no pipe, no sink
    assert [stream.feed(data) for data in reads] == lines
    assert stream.rest() == rest
