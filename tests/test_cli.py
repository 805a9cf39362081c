"""The admin commands of `yptask` (cast, call, restart, tasks, task, status, dead), run for real.

One `yptask node` subprocess serves the whole module; each test runs `yptask ...` as
a subprocess against it and checks the exit code and what was printed.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from support import TEST_WORKERS, NodeProcess, read_records, wait_for

from yptask.cli.formats import to_toml

T = TypeVar("T")

TASKS = """
[[task]]
name = "echo"
worker_class = "yptask.tasks.echo:Echo"
messages = ["*.echo"]

[[task]]
name = "sample"
worker_class = "sample:Sample"
messages = ["*.fail", "*.record"]
env = {{ PYTHONPATH = "{workers}" }}
settings = {{ record_path = "{record}" }}
max_attempts = 1
"""


class Node(NodeProcess):
    """The module's `yptask node` subprocess, and a way to run `yptask` against it."""

    def __init__(self, tmp: Path) -> None:
        self.record = tmp / "record.jsonl"
        super().__init__(tmp, TASKS.format(workers=TEST_WORKERS, record=self.record), name="c1")

    def run(self, *args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
        """`yptask ARGS` against this node ($YPTASK_URL, its data dir $YPTASK_DATA_DIR, where
        the CLI finds the admin token), or against `url`."""
        return yptask(*args, env={"YPTASK_URL": url or self.url,
                                  "YPTASK_DATA_DIR": str(self.tmp / "data")}, cwd=self.tmp)

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.record)


def yptask(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
           **kwargs: Any) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("YPTASK_")}
    full_env.update(env or {})
    return subprocess.run(["yptask", *args], capture_output=True, text=True, timeout=60,
                          env=full_env, cwd=cwd, check=False, **kwargs)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/rpc"


def one_line(stderr: str) -> str:
    """The single line an error prints; never a traceback."""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    running = Node(tmp_path_factory.mktemp("cli-node"))
    try:
        running.start()
        yield running
    finally:
        running.stop()


# ---------------------------------------------------------------- publishing


def test_cast_prints_the_message_id_and_the_tasks_it_went_to(node: Node) -> None:
    # When a message is cast to a name the sample task subscribes to
    done = node.run("cast", "cli.record", '{"n": 1}')
    # Then its id and the task are printed, and the task handles that very message
    assert done.returncode == 0, done.stderr
    message_id, arrow, tasks = done.stdout.split()
    assert (arrow, tasks) == ("->", "sample")
    wait_for(lambda: message_id in {r["id"] for r in node.records()}, what="the record")

    # And with --json and an id of our own, the answer is the raw JSON; a repeat is a duplicate
    first = node.run("cast", "cli.record", '{"n": 2}', "--id", "cli-1", "--priority", "3",
                     "--json")
    again = node.run("cast", "cli.record", '{"n": 2}', "--id", "cli-1")
    assert json.loads(first.stdout) == {"id": "cli-1", "tasks": ["sample"], "duplicate": False}
    assert again.returncode == 0 and "duplicate" in again.stdout


def test_cast_to_a_name_nobody_subscribes_to_warns(node: Node) -> None:
    done = node.run("cast", "nobody.listens", "{}")
    assert done.returncode == 0
    assert "no task" in done.stdout and "nobody.listens" in one_line(done.stderr)


def test_call_prints_the_answer_as_json(node: Node) -> None:
    payload = {"a": "é", "n": [1, 2.5, None, True]}
    done = node.run("call", "cli.echo", json.dumps(payload), "--timeout", "20")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == payload


def test_a_handler_error_exits_1_with_its_class_and_detail(node: Node) -> None:
    # When a call's handler raises
    done = node.run("call", "cli.fail", '{"reason": "boom"}')
    # Then the error's class and detail are one line, and the exit code is 1
    assert done.returncode == 1
    assert one_line(done.stderr) == "error: ValueError: boom"
    # And --traceback adds the handler's traceback
    verbose = node.run("call", "cli.fail", '{"reason": "boom"}', "--traceback")
    assert verbose.returncode == 1
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "handle_fail" in verbose.stderr
    assert verbose.stderr.splitlines()[-1] == "error: ValueError: boom"


def test_a_call_nobody_subscribes_to_exits_1_saying_so(node: Node) -> None:
    done = node.run("call", "nobody.listens", "{}")
    assert done.returncode == 1
    assert one_line(done.stderr) == "yptask: no task subscribes to 'nobody.listens'"


# ---------------------------------------------------------------- tasks


def test_an_unknown_task_exits_1_with_one_clear_line(node: Node) -> None:
    for command in (["task", "show", "nope"], ["task", "delete", "nope"], ["restart", "nope"]):
        done = node.run(*command)
        assert done.returncode == 1, command
        assert "no task named 'nope'" in one_line(done.stderr), command


def test_a_task_applied_from_a_file_is_listed_shown_and_deleted(node: Node) -> None:
    # Given a task file with a new task
    path = node.tmp / "extra.toml"
    path.write_text('[[task]]\nname = "extra"\ngroup = "extras"\n'
                    'worker_class = "yptask.tasks.echo:Echo"\nmessages = ["*.shout", "*.yell"]\n')
    # When it is applied
    applied = node.run("task", "apply", str(path))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "task extra created"
    # Then `tasks` lists it, with its group, messages, workers and state
    listed = node.run("tasks")
    assert listed.stdout.splitlines()[0].split() == ["NAME", "GROUP", "MESSAGES", "WORKERS",
                                                     "STATE"]
    row = next(line.split() for line in listed.stdout.splitlines() if line.startswith("extra"))
    assert row[:3] == ["extra", "extras", "*.shout,*.yell"]
    rows = {r["name"]: r for r in json.loads(node.run("tasks", "--json").stdout)}
    assert rows["extra"]["messages"] == ["*.shout", "*.yell"] and "echo" in rows

    # And `task show` prints it as TOML that `task apply` reads back
    shown = node.run("task", "show", "extra")
    assert shown.returncode == 0, shown.stderr
    (definition,) = tomllib.loads(shown.stdout)["task"]
    assert definition["group"] == "extras" and definition["messages"] == ["*.shout", "*.yell"]
    path.write_text(shown.stdout.replace('"extras"', '"others"'))
    reapplied = node.run("task", "apply", str(path))
    assert reapplied.stdout.strip() == "task extra updated", reapplied.stderr
    assert json.loads(node.run("task", "show", "extra", "--json").stdout)["group"] == "others"
    again = node.run("task", "apply", str(path))
    assert again.stdout.strip() == "task extra unchanged", again.stderr

    # When it is deleted, it is gone
    deleted = node.run("task", "delete", "extra")
    assert deleted.returncode == 0 and deleted.stdout.strip() == "task extra deleted"
    assert "extra" not in {r["name"] for r in json.loads(node.run("tasks", "--json").stdout)}
    assert node.run("task", "show", "extra").returncode == 1


def test_timers_are_applied_listed_shown_and_deleted(node: Node) -> None:
    # An impossible schedule is refused at apply, naming the field
    path = node.tmp / "timers.toml"
    path.write_text('[[timer]]\nname = "nightly"\ncron = "0 0 31 2 *"\nmessage = "x.record"\n')
    refused = node.run("timer", "apply", str(path))
    assert refused.returncode == 65 and "'cron'" in refused.stderr
    # A good one is saved; `timers` shows its next fire and who fires it
    path.write_text('[[timer]]\nname = "nightly"\ncron = "30 2 * * *"\n'
                    'timezone = "Europe/Berlin"\nmessage = "x.record"\n')
    applied = node.run("timer", "apply", str(path))
    assert applied.returncode == 0 and "timer nightly saved; next fire" in applied.stdout
    listed = node.run("timers")
    assert "fired by node c1" in listed.stdout
    assert "nightly" in listed.stdout and "Europe/Berlin" in listed.stdout
    (row,) = json.loads(node.run("timers", "--json").stdout)
    assert row["next_fire"] > row["last_fire"] and row["last_error"] is None
    # `timer show` prints TOML that `timer apply` reads back
    shown = node.run("timer", "show", "nightly")
    (definition,) = tomllib.loads(shown.stdout)["timer"]
    assert definition["cron"] == "30 2 * * *" and "next_fire" not in definition
    assert node.run("timer", "delete", "nightly").stdout.strip() == "timer nightly deleted"
    assert json.loads(node.run("timers", "--json").stdout) == []


def test_restart_replaces_the_workers_with_a_new_generation(node: Node) -> None:
    # Given the echo task's current generation
    before = json.loads(node.run("task", "show", "echo", "--json").stdout)["restart_generation"]
    # When it is restarted
    done = node.run("restart", "echo")
    # Then the command succeeds, its progress bar ends full, and the generation went up
    assert done.returncode == 0, done.stderr
    assert "restart echo [" in done.stderr and "100%" in done.stderr
    assert "Traceback" not in done.stderr
    assert f"generation {before + 1}" in done.stdout
    after = json.loads(node.run("task", "show", "echo", "--json").stdout)
    assert after["restart_generation"] == before + 1
    # And --json gives the raw answer; the workers run again
    raw = json.loads(node.run("restart", "echo", "--json", "--quiet").stdout)
    assert raw == {"task": "echo", "generation": before + 2, "replaced": 1, "workers": 1}
    assert node.run("call", "cli.echo", "[1]").stdout.strip() == "[1]"


def test_status_shows_each_task(node: Node) -> None:
    done = node.run("status")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("node c1, up ")
    assert re.split(r"\s{2,}", lines[1]) == ["TASK", "WORKERS", "QUEUED", "IN FLIGHT",
                                              "HANDLED", "FAILED", "STATE"]
    echo = next(line.split() for line in lines if line.startswith("echo "))
    assert echo[1] == "c1=1" and echo[-1] == "running"
    status = json.loads(node.run("status", "--json").stdout)
    assert status["node"] == "c1"
    assert status["tasks"]["sample"]["workers"] == {"c1": 1}


# ---------------------------------------------------------------- dead letters


def test_a_message_out_of_attempts_is_listed_and_replayed(node: Node) -> None:
    # Given a message whose handler fails, in a task allowed one attempt
    cast = node.run("cast", "cli.fail", '{"reason": "dead on arrival"}', "--json")
    message_id = json.loads(cast.stdout)["id"]

    def dead_ids() -> set[str]:
        return {d["id"] for d in json.loads(node.run("dead", "--json").stdout)}

    # When it has run out of attempts, `dead` lists it with its error
    wait_for(lambda: message_id in dead_ids(), what="the dead letter")
    listed = node.run("dead", "--limit", "10")
    assert listed.stdout.splitlines()[0].split() == ["ID", "TASK", "ATTEMPT", "ERROR"]
    row = next(line for line in listed.stdout.splitlines() if line.startswith(message_id))
    assert row.split()[1:3] == ["sample", "1"]
    assert row.endswith("ValueError: dead on arrival")
    assert len(json.loads(node.run("dead", "--limit", "1", "--json").stdout)) == 1

    # Then `dead --replay` requeues it and prints how many deliveries it requeued
    replayed = node.run("dead", "--replay", message_id, "--task", "sample")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "1"
    # And a replay that matches nothing exits 1 saying so
    missing = node.run("dead", "--replay", "no-such-id")
    assert missing.returncode == 1
    assert "no dead letter 'no-such-id'" in one_line(missing.stderr)


# ---------------------------------------------------------------- errors and exit codes


def test_an_unreachable_node_exits_69_naming_the_url(tmp_path: Path) -> None:
    url = closed_port_url()
    done = yptask("tasks", "--url", url, cwd=tmp_path)
    assert done.returncode == 69
    line = one_line(done.stderr)
    assert line.startswith(f"yptask: cannot reach the yptask node at {url}")
    assert "`yptask node`" in line and "--url" in line
    # $YPTASK_URL is the default; HOST:PORT is completed to the /rpc URL
    bare = url.removeprefix("http://").removesuffix("/rpc")
    done = yptask("status", env={"YPTASK_URL": bare}, cwd=tmp_path)
    assert done.returncode == 69 and url in one_line(done.stderr)


def test_a_url_that_is_not_a_node_exits_69(node: Node) -> None:
    done = node.run("status", url=node.url.removesuffix("/rpc") + "/nope")
    assert done.returncode == 69 and "HTTP 404" in one_line(done.stderr)


def test_an_invalid_json_argument_exits_65_naming_it(tmp_path: Path) -> None:
    # No node is reached: the argument is checked first (65, not 69)
    url = closed_port_url()
    for command in (["cast", "cli.echo", "{bad"], ["call", "cli.echo", "NaN"]):
        done = yptask(*command, "--url", url, cwd=tmp_path)
        assert done.returncode == 65, command
        assert one_line(done.stderr).startswith("yptask: argument JSON (the message) is not "
                                                "valid JSON")


def test_an_invalid_task_file_exits_65_naming_the_field(tmp_path: Path) -> None:
    url = closed_port_url()
    bad = tmp_path / "bad.toml"
    bad.write_text('[[task]]\nname = "t"\nmessages = ["a.b"]\nworker_class = "m:C"\n'
                   "max_attempts = 0\n")
    done = yptask("task", "apply", str(bad), "--url", url, cwd=tmp_path)
    assert done.returncode == 65
    line = one_line(done.stderr)
    assert str(bad) in line and "'max_attempts'" in line and "at least 1" in line
    not_toml = tmp_path / "not.toml"
    not_toml.write_text("[[task]\n")
    done = yptask("task", "apply", str(not_toml), "--url", url, cwd=tmp_path)
    assert done.returncode == 65 and "not valid TOML" in one_line(done.stderr)


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for command in (["cast", "cli.echo"], ["call", "cli.echo", "{}", "--timeout", "-1"],
                    ["dead", "--task", "sample"], ["task"]):
        done = yptask(*command, cwd=tmp_path)
        assert done.returncode == 2, command
        assert "usage: yptask" in done.stderr and "Traceback" not in done.stderr


def test_no_command_prints_the_help_and_exits_2_like_any_usage_error(tmp_path: Path) -> None:
    done = yptask(cwd=tmp_path)
    assert done.returncode == 2
    assert "usage: yptask" in done.stderr and "examples:" in done.stderr
    # An argument a command does not take is shown with that command's usage
    done = yptask("tasks", "extra", cwd=tmp_path)
    assert done.returncode == 2
    assert "usage: yptask tasks" in done.stderr and "unrecognized arguments: extra" in done.stderr


def test_a_reader_that_goes_away_is_not_a_traceback(node: Node) -> None:
    # Given stdout is a pipe nobody reads any more
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(["yptask", "tasks", "--url", node.url, "--data-dir",
                               str(node.tmp / "data")], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    finally:
        os.close(write_end)
    # Then the command ends quietly, as a process killed by SIGPIPE would
    assert (done.returncode, done.stderr) == (141, "")
    # And in a shell pipeline the first line comes through, with nothing on stderr
    piped = subprocess.run(f"yptask tasks --url {node.url} --data-dir {node.tmp / 'data'}"
                           " | head -1", shell=True,
                           capture_output=True, text=True, timeout=60, check=False)
    assert piped.stdout.split() == ["NAME", "GROUP", "MESSAGES", "WORKERS", "STATE"]
    assert piped.stderr == ""


def test_help_lists_the_admin_commands_with_examples(tmp_path: Path) -> None:
    done = yptask("--help", cwd=tmp_path)
    assert done.returncode == 0
    for command in ("cast", "call", "restart", "tasks", "task", "status", "dead"):
        assert re.search(rf"^\s+{command}\s", done.stdout, re.MULTILINE), command
        assert f"yptask {command} " in done.stdout.split("examples:")[1], command


def test_task_show_toml_reads_back_as_the_same_definition() -> None:
    definition = {"name": "t", "messages": ["a.*"], "env": {"A_B": 'q"uote\\'},
                  "settings": {"odd key": "tab\tdel\x7f", "n": [1, 2.5, True], "deep": {}},
                  "nodes": {"*": 2, "web-1": 0}, "max_idle_s": 1e-05}
    assert tomllib.loads(to_toml(definition))["task"] == [definition]
    with pytest.raises(ValueError, match="no TOML form"):
        to_toml({"settings": {"x": None}})


def test_admin_commands_find_the_admin_token_in_the_data_dir(node: Node, tmp_path: Path
                                                             ) -> None:
    # Given no token at hand (another user, another folder): the admin command is refused
    done = yptask("status", "--url", node.url, cwd=tmp_path)
    assert done.returncode == 1
    assert "admin token" in one_line(done.stderr)
    # When the data dir is named: the CLI reads the token there itself
    done = yptask("status", "--url", node.url, "--data-dir", str(node.tmp / "data"),
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # as it does in ./yptask-data, where the README's `yptask node` keeps it
    (tmp_path / "yptask-data").mkdir()
    (tmp_path / "yptask-data" / "admin-token").write_text(node.admin_token)
    assert yptask("tasks", "--url", node.url, cwd=tmp_path).returncode == 0
    # or from $YPTASK_ADMIN_TOKEN; but never sends a data dir's token off loopback
    assert yptask("tasks", "--url", node.url, env={"YPTASK_ADMIN_TOKEN": node.admin_token}
                  ).returncode == 0
