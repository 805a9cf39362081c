"""Task definitions: validation naming the field, topic matching, the shipped examples."""

from __future__ import annotations

from importlib import resources

import pytest

from yptask.config.tasks import TaskDef, load_tasks, topic_matches, validate_message_name
from yptask.errors import ConfigError

MINIMAL = {"name": "resize", "messages": ["upai.photos.upload"],
           "worker_class": "myapp.tasks:Resizer"}


@pytest.mark.parametrize(("pattern", "name", "matches"), [
    ("upai.photos.upload", "upai.photos.upload", True),
    ("upai.photos.upload", "upai.photos.delete", False),
    ("*.photos.upload", "upai.photos.upload", True),
    ("*.photos.upload", "photos.upload", False),
    ("upai.*", "upai.photos", True),
    ("upai.*", "upai.photos.upload", False),
    ("upai.#", "upai.photos.upload", True),
    ("upai.#", "upai", True),
    ("#", "anything.at.all", True),
    ("#.upload", "upai.photos.upload", True),
    ("upai.#.upload", "upai.upload", True),
    ("upai.#.upload", "upai.photos.upload.x", False),
    ("*.*", "a.b", True),
])
def test_topic_patterns(pattern, name, matches):
    assert topic_matches(pattern, name) is matches


def test_defaults_fill_every_console_field():
    task = TaskDef.from_dict(MINIMAL)
    assert task.group == "default" and task.use_stdio is False and task.debug is False
    assert task.nodes == {"*": 1} and task.max_attempts == 5 and task.env == {}
    assert task.workers_on("any-node") == 1


def test_round_trip_through_plain_data():
    full = {**MINIMAL, "group": "media", "use_stdio": True, "stdout": "out.log",
            "stderr": "err.log", "debug": True, "max_idle_s": 30, "env": {"LANG": "C"},
            "settings": {"sizes": [64, 128]}, "nodes": {"web1": 2, "*": 0},
            "max_attempts": 3, "retry_backoff_s": 0.5, "message_timeout_s": 5,
            "shutdown_timeout_s": 2, "restart_generation": 4}
    task = TaskDef.from_dict(full)
    assert TaskDef.from_dict(task.to_dict()) == task
    assert task.workers_on("web1") == 2 and task.workers_on("web2") == 0
    assert task.subscribes_to("upai.photos.upload")


@pytest.mark.parametrize(("change", "field"), [
    ({"name": "9lives"}, "'name'"),
    ({"name": 3}, "'name'"),
    ({"messages": []}, "'messages'"),
    ({"messages": ["a..b"]}, "'messages'"),
    ({"messages": "upai.echo"}, "'messages'"),
    ({"worker_class": "no_colon"}, "'worker_class'"),
    ({"max_idle_s": -1}, "'max_idle_s'"),
    ({"max_idle_s": float("inf")}, "'max_idle_s'"),
    ({"max_attempts": 0}, "'max_attempts'"),
    ({"max_attempts": 2.5}, "'max_attempts'"),
    ({"debug": "yes"}, "'debug'"),
    ({"env": {"1BAD": "x"}}, "'env'"),
    ({"env": {"OK": 1}}, "'env'"),
    ({"nodes": {"web1": -1}}, "'nodes'"),
    ({"nodes": {"web1": True}}, "'nodes'"),
    ({"settings": {1: 2}}, "'settings'"),
    ({"command": ["ruby", ""]}, "'command'"),
])
def test_invalid_fields_are_refused_naming_the_field(change, field):
    with pytest.raises(ConfigError, match=field):
        TaskDef.from_dict({**MINIMAL, **change})


def test_unknown_and_missing_fields_and_command_choice_are_refused():
    with pytest.raises(ConfigError, match=r"unknown task field.*colour"):
        TaskDef.from_dict({**MINIMAL, "colour": "red"})
    with pytest.raises(ConfigError, match="'messages' is required"):
        TaskDef.from_dict({"name": "x", "worker_class": "a:B"})
    with pytest.raises(ConfigError, match="exactly one of"):
        TaskDef.from_dict({**MINIMAL, "command": ["ruby", "w.rb"]})
    with pytest.raises(ConfigError, match="exactly one of"):
        TaskDef.from_dict({"name": "x", "messages": ["a"]})


def test_message_names_are_validated():
    assert validate_message_name("upai.photos.upload") == "upai.photos.upload"
    for bad in ("", "a..b", ".a", "a.*", "a b", 5, "x" * 256):
        with pytest.raises(ConfigError, match="invalid message name"):
            validate_message_name(bad)


def test_shipped_example_tasks_load_and_subscribe_as_documented():
    path = resources.files("yptask.conf") / "tasks.toml"
    tasks = {t.name: t for t in load_tasks(str(path))}
    assert set(tasks) == {"indexer", "antispam", "echo"}
    upload = [n for n, t in tasks.items() if t.subscribes_to("upai.photos.upload")]
    assert sorted(upload) == ["antispam", "indexer"]
    assert tasks["echo"].subscribes_to("upai.echo")


def test_task_file_errors_say_which_file(tmp_path):
    bad = tmp_path / "tasks.toml"
    bad.write_text("[[task]\nname =")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_tasks(bad)
    bad.write_text('[[task]]\nname="a"\nmessages=["x"]\nworker_class="m:C"\n' * 2)
    with pytest.raises(ConfigError, match="defined twice: a"):
        load_tasks(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_tasks(tmp_path / "missing.toml")


def test_every_kind_of_task_definition_reads_back_as_it_was_written():
    for definition in ({"name": "py", "messages": ["a.b"], "worker_class": "m:C"},
                       {"name": "argv", "messages": ["a.b"], "command": ["escript", "w"],
                        "use_stdio": True}):
        task = TaskDef.from_dict(definition)
        assert TaskDef.from_dict(task.to_dict()) == task
    with pytest.raises(ConfigError, match="exactly one"):
        TaskDef.from_dict({"name": "none", "messages": ["a.b"], "worker_class": "",
                           "command": []})
