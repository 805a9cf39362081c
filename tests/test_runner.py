"""The worker runner, driven as the node drives it: real processes, real pipes.

The tests marked with the `worker_argv` fixture run against both the Python
runner and the Erlang worker in workers/erlang/, which implements the same
protocol from the doc alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    ERLANG_WORKER,
    python_worker_argv,
    require_erlang,
    worker_env,
)

from yptask.errors import (
    CallTimeout,
    EncodeError,
    HandlerError,
    NoSuchFunction,
    NoSuchHandler,
    NoSuchModule,
    WorkerExited,
)
from yptask.tasks.runner import EXIT_PROTOCOL, EXIT_SETUP_FAILED
from yptask.wire import codec
from yptask.wire.bertrpc import Call, Info, NoReply, Reply, decode_packet, frame

SETUP = {"task": "sample", "node": "test-node", "settings": {}}


@pytest.fixture(params=["python", "python-stdio", "erlang", "erlang-stdio"])
def worker_kind(request):
    if request.param.startswith("erlang"):
        require_erlang()
    return request.param


def argv_for(kind: str) -> list[str]:
    if kind.startswith("erlang"):
        return ["escript", str(ERLANG_WORKER)]
    return python_worker_argv(stdio=kind.endswith("stdio"))


async def start(spawn, kind: str, settings: dict | None = None):
    worker = await spawn(argv_for(kind), stdio=kind.endswith("stdio"))
    reply = await worker.setup({**SETUP, "settings": settings or {}}, timeout=30)
    assert reply["pid"] == worker.pid
    return worker


async def until_worker_has_read_its_input(worker, deadline_s: float = 30) -> None:
    """Poll until the worker has taken every byte we wrote from its input pipe."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        await asyncio.sleep(0.01)
        if worker.unread_input() == 0:
            return
        assert loop.time() < end, "the worker never read its input"


# --------------------------------------------------------------- both languages


@pytest.mark.smoke
async def test_echo_round_trips_json_values_unchanged(spawn, worker_kind):
    worker = await start(spawn, worker_kind)
    payload = {"photo_id": 123, "title": "héllo ☃", "tags": ["a", "b"], "geo": None,
               "public": True, "ratio": 1.5, "big": 2**70, "nested": {"x": [[], {}]}}
    assert await worker.handle("upai.echo", payload) == payload
    assert await worker.ping()


async def test_handler_error_comes_back_with_class_detail_and_traceback(spawn, worker_kind):
    worker = await start(spawn, worker_kind)
    with pytest.raises(HandlerError) as caught:
        await worker.handle("upai.fail", {"reason": "disk full"})
    assert "disk full" in caught.value.detail
    assert caught.value.backtrace
    if worker_kind.startswith("python"):
        assert caught.value.error_class == "ValueError"
        assert any("handle_fail" in line for line in caught.value.backtrace)
    assert await worker.handle("upai.echo", 1) == 1  # the worker lives on


async def test_unknown_message_module_and_function_get_documented_errors(spawn, worker_kind):
    worker = await start(spawn, worker_kind)
    with pytest.raises(NoSuchHandler):
        await worker.handle("upai.no.such.thing", {})
    with pytest.raises(NoSuchModule):
        await worker.call("nosuchmodule", "handle", [])
    with pytest.raises(NoSuchFunction):
        await worker.call("yptask", "nosuchfunction", [1])
    assert await worker.handle("upai.echo", "still here") == "still here"


async def test_end_of_input_lets_the_worker_exit_zero(spawn, worker_kind):
    worker = await start(spawn, worker_kind)
    worker.close_input()
    assert await asyncio.wait_for(worker.wait(), 30) == 0


async def test_sigterm_lets_the_current_message_finish_then_exit_zero(spawn, worker_kind):
    worker = await start(spawn, worker_kind)
    # Given a handler in flight
    reply = asyncio.ensure_future(worker.handle("upai.sleep", {"seconds": 1.0}, timeout=30))
    await until_worker_has_read_its_input(worker)
    # When the worker is told to stop
    os.kill(worker.pid, signal.SIGTERM)
    # Then the message is answered and the worker exits 0
    assert await reply == "slept"
    assert await asyncio.wait_for(worker.wait(), 30) == 0


async def test_garbage_frame_gets_a_protocol_error_and_the_worker_serves_on(spawn, worker_kind):
    worker = await start(spawn, worker_kind)
    worker.write(struct.pack(">I", 5) + b"\x83\x00\x01\x02\x03")
    answer = decode_packet(await worker.read_frame())
    assert answer.type == "protocol"
    assert await worker.handle("upai.echo", "after garbage") == "after garbage"


async def test_cast_is_accepted_at_once_and_info_packets_are_tolerated(spawn, worker_kind):
    worker = await start(spawn, worker_kind)
    await worker.cast("yptask", "handle", ["upai.echo", {"a": 1}, {}])
    worker.write(frame(Info("cache", [])))
    assert await worker.handle("upai.echo", "after info") == "after info"


# --------------------------------------------------------------- python runner


async def test_message_metadata_and_settings_reach_the_handler(spawn):
    worker = await start(spawn, "python", settings={"size": "large"})
    info = await worker.handle("upai.whoami", None, {"id": "m-1", "attempt": 3})
    assert (info["id"], info["attempt"], info["name"]) == ("m-1", 3, "upai.whoami")
    assert info["settings"] == {"size": "large"}


async def test_worker_imports_no_node_side_packages(spawn):
    worker = await start(spawn, "python")
    modules = set((await worker.handle("upai.whoami", None))["modules"])
    heavy = {"aiohttp", "pykka", "zeroconf", "jsonrpcserver", "croniter", "asyncio"}
    assert not heavy & {m.split(".")[0] for m in modules}


async def test_explicit_handler_name(spawn):
    worker = await start(spawn, "python")
    assert await worker.handle("custom.any.name", {}) == "custom"


@pytest.mark.parametrize("kind", ["python", "python-stdio"])
async def test_stray_print_does_not_corrupt_the_protocol(spawn, kind):
    worker = await start(spawn, kind)
    assert await worker.handle("upai.print", None) == "printed"
    assert await worker.handle("upai.echo", 2) == 2


async def test_unencodable_result_is_an_error_not_a_dead_worker(spawn):
    worker = await start(spawn, "python")
    with pytest.raises(EncodeError, match="not encodable"):
        await worker.handle("upai.unencodable", None)
    assert await worker.handle("upai.echo", 3) == 3


async def test_teardown_runs_at_exit(spawn, tmp_path):
    marker = tmp_path / "marker"
    worker = await start(spawn, "python", settings={"teardown_marker": str(marker)})
    assert await worker.stop(timeout=30) == 0
    assert marker.read_text() == "torn down"


async def test_failed_setup_is_reported_and_the_worker_exits(spawn):
    worker = await spawn(python_worker_argv())
    with pytest.raises(HandlerError, match="setup was told to fail"):
        await worker.setup({**SETUP, "settings": {"fail_setup": True}}, timeout=30)
    assert await asyncio.wait_for(worker.wait(), 30) == EXIT_SETUP_FAILED


async def test_handle_without_setup_starts_the_task_with_empty_settings(spawn):
    worker = await spawn(python_worker_argv())
    assert await worker.handle("upai.echo", "lazy", timeout=30) == "lazy"


async def test_crash_mid_message_is_worker_exited(spawn):
    worker = await start(spawn, "python")
    with pytest.raises(WorkerExited):
        await worker.handle("upai.crash", {"code": 7})
    assert await worker.wait() == 7
    with pytest.raises(WorkerExited):
        await worker.handle("upai.echo", 1)


async def test_hung_handler_times_out_and_the_worker_is_killed(spawn):
    worker = await start(spawn, "python")
    with pytest.raises(CallTimeout):
        await worker.handle("upai.sleep", {"seconds": 60}, timeout=0.5)
    assert await asyncio.wait_for(worker.wait(), 30) == -signal.SIGKILL


async def test_bad_class_spec_exits_with_a_clear_message():
    proc = await asyncio.create_subprocess_exec(
        *python_worker_argv("sample:NoSuchClass"), env=worker_env(),
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 3
    assert b"not a yptask.BaseTask subclass" in err


# --------------------------------------------------------------- raw frames

class RawWorker:
    """A runner on stdin/stdout driven with raw bytes, for frames the node would never send."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(python_worker_argv(stdio=True), env=worker_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def answer(self):
        assert self.proc.stdout is not None
        header = self.proc.stdout.read(4)
        if len(header) < 4:
            return None
        return decode_packet(self.proc.stdout.read(struct.unpack(">I", header)[0]))

    def close(self) -> int:
        self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def raw_worker():
    worker = RawWorker()
    yield worker
    worker.close()


def test_oversize_frame_header_is_answered_then_the_worker_exits(raw_worker):
    raw_worker.send(b"\xff\xff\xff\xff")
    answer = raw_worker.answer()
    assert (answer.type, answer.code) == ("protocol", 1)
    assert raw_worker.proc.wait(timeout=30) == EXIT_PROTOCOL


def test_input_ending_inside_a_frame_exits_cleanly(raw_worker):
    raw_worker.send(struct.pack(">I", 100) + b"\x83")
    raw_worker.proc.stdin.close()
    answer = raw_worker.answer()
    assert answer.type == "protocol"
    assert raw_worker.proc.wait(timeout=30) == EXIT_PROTOCOL


def test_reply_packets_sent_to_a_worker_are_refused(raw_worker):
    raw_worker.send(frame(Reply(1)) + frame(NoReply()))
    assert raw_worker.answer().type == "protocol"
    assert raw_worker.answer().type == "protocol"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.binary(min_size=1, max_size=200),
    st.binary(max_size=200).map(lambda b: b"\x83" + b),
    st.builds(codec.encode, st.recursive(
        st.integers() | st.text(max_size=10) | st.none(),
        lambda c: st.lists(c, max_size=4) | st.tuples(c, c), max_leaves=8)),
))
def test_fuzzed_frames_get_an_answer_and_never_kill_the_worker(raw_worker, body):
    raw_worker.send(struct.pack(">I", len(body)) + body)
    answer = raw_worker.answer()
    assert answer is not None, "the worker died on a fuzzed frame"
    raw_worker.send(frame(Call("yptask", "ping", [])))
    assert raw_worker.answer() == Reply(codec.Atom("pong"))


def test_runner_module_runs_as_the_yptask_worker_command():
    out = subprocess.run([sys.executable, "-P", "-m", "yptask", "worker", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "MODULE:CLASS" in out
