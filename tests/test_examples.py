"""The example tasks of tasks/, run in real worker processes, and the `yptask demo` command."""

from __future__ import annotations

import json
import subprocess

import pytest
from support import REPO

from yptask.tasks.runner import runner_argv


async def test_indexer_collects_uploads_and_deletes_idempotently(spawn, tmp_path):
    index = tmp_path / "index.json"
    worker = await spawn(runner_argv("yptask.tasks.indexer:PhotoIndexer"))
    await worker.setup({"task": "indexer", "settings": {"index_path": str(index)}}, timeout=30)
    upload = {"photo_id": 7, "title": "Red Bridge", "tags": ["travel"]}
    assert await worker.handle("upai.photos.upload", upload) == {"indexed": "7", "words": 3}
    assert await worker.handle("upai.photos.upload", upload) == {"indexed": "7", "words": 3}
    assert json.loads(index.read_text()) == {"7": ["bridge", "red", "travel"]}
    assert (await worker.handle("upai.photos.delete", {"photo_id": 7}))["was_indexed"]
    assert not (await worker.handle("upai.photos.delete", {"photo_id": 7}))["was_indexed"]
    assert json.loads(index.read_text()) == {}


async def test_index_survives_a_worker_restart(spawn, tmp_path):
    settings = {"index_path": str(tmp_path / "index.json")}
    first = await spawn(runner_argv("yptask.tasks.indexer:PhotoIndexer"))
    await first.setup({"task": "indexer", "settings": settings}, timeout=30)
    await first.handle("upai.photos.upload", {"photo_id": 1, "title": "kept"})
    assert await first.stop(timeout=30) == 0
    second = await spawn(runner_argv("yptask.tasks.indexer:PhotoIndexer"))
    await second.setup({"task": "indexer", "settings": settings}, timeout=30)
    assert (await second.handle("upai.photos.delete", {"photo_id": 1}))["was_indexed"]


async def test_antispam_flags_spam_and_reports_on_something_else(spawn):
    worker = await spawn(runner_argv("yptask.tasks.antispam:AntiSpam"))
    await worker.setup({"task": "antispam", "settings": {"words": ["casino"]}}, timeout=30)
    spam = await worker.handle("upai.photos.upload", {"photo_id": 3, "title": "Casino night!"})
    ham = await worker.handle("upai.photos.upload", {"photo_id": 4, "title": "Night sky"})
    assert (spam["spam"], spam["hits"], ham["spam"]) == (True, ["casino"], False)
    assert await worker.handle("upai.something.else", {}) == {"flagged": ["3"]}


async def test_echo_answers_its_payload(spawn):
    worker = await spawn(runner_argv("yptask.tasks.echo:Echo"))
    assert await worker.handle("upai.echo", {"a": [1, "é"]}, timeout=30) == {"a": [1, "é"]}


@pytest.mark.smoke
def test_demo_command_runs_every_example_and_exits_zero(tmp_path):
    done = subprocess.run(["yptask", "demo"], capture_output=True, text=True, timeout=120,
                          check=False,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for line in ("indexer: worker pid", "antispam: worker pid", "echo: worker pid",
                 '"spam": true', "exit status 0"):
        assert line in done.stdout
    assert not list(tmp_path.iterdir()), "the demo left files behind"


def test_package_layout_maps_the_top_level_folders_under_yptask():
    import yptask.conf
    import yptask.supervisors
    import yptask.tasks
    import yptask.web

    for module, folder in ((yptask.tasks, "tasks"), (yptask.conf, "conf"),
                           (yptask.web, "web"), (yptask.supervisors, "supervisors")):
        assert module.__file__ is not None
        assert module.__file__.endswith(f"{folder}/__init__.py")
    assert (REPO / "tasks" / "base.py").exists()
