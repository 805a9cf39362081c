"""`yptask demo`: start a worker of each example task and send it sample messages.

A quick look at the worker side working end to end on this machine: each
example task's worker is spawned with the runner, set up, handed messages
over its pipes, and stopped gracefully; the replies are printed.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from yptask.errors import YPTaskError
from yptask.tasks.runner import runner_argv
from yptask.workers.process import WorkerSpec
from yptask.workers.standalone import WorkerProcess

# (task name, worker class, settings, [(message name, payload), ...])
EXAMPLES: list[tuple[str, str, dict[str, Any], list[tuple[str, Any]]]] = [
    ("indexer", "yptask.tasks.indexer:PhotoIndexer", {"index_path": "photo-index.json"}, [
        ("upai.photos.upload", {"photo_id": 1, "title": "Sunset over the lake", "tags": ["sky"]}),
        ("upai.photos.delete", {"photo_id": 1}),
    ]),
    ("antispam", "yptask.tasks.antispam:AntiSpam", {"words": ["casino", "lottery"]}, [
        ("upai.photos.upload", {"photo_id": 2, "title": "Win the lottery at our casino"}),
        ("upai.something.else", {"note": "hello"}),
    ]),
    ("echo", "yptask.tasks.echo:Echo", {}, [
        ("upai.echo", {"text": "héllo ☃", "n": [1, 2.5, None, True]}),
    ]),
]


async def run_demo() -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="yptask-demo-") as tmp:
        for task, worker_class, settings, messages in EXAMPLES:
            argv = runner_argv(worker_class)
            # Workers run in the temporary folder; their logs go to a file there.
            worker = await WorkerProcess.spawn(WorkerSpec(
                argv, cwd=tmp, stderr_path=str(Path(tmp, "workers.log"))))
            try:
                ready = await worker.setup({"task": task, "node": "demo", "settings": settings},
                                           timeout=30)
                print(f"{task}: worker pid {ready['pid']} handles {', '.join(ready['handles'])}")
                for name, payload in messages:
                    try:
                        reply = await worker.handle(name, payload, {"attempt": 1}, timeout=30)
                        print(f"  {name} {json.dumps(payload, ensure_ascii=False)}\n"
                              f"    -> {json.dumps(reply, ensure_ascii=False)}")
                    except YPTaskError as exc:
                        failures += 1
                        print(f"  {name} -> error: {exc}")
            finally:
                code = await worker.stop(timeout=10)
                print(f"  worker stopped, exit status {code}")
    return 1 if failures else 0


def main() -> int:
    """Run the demo; return the exit code."""
    return asyncio.run(run_demo())
