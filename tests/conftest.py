"""Shared fixtures: start real worker processes and nodes and always clean them up; one
headless Chromium per module and the screenshot folder, for the console's tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ALONE, CHROMIUM, ECHO, SAMPLE, require_browser, worker_env

from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.node import Node
from yptask.workers.process import WorkerSpec
from yptask.workers.standalone import WorkerProcess

Spawn = Callable[..., Awaitable[WorkerProcess]]
StartNode = Callable[..., Awaitable[Node]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start workers (`await spawn(argv, stdio=False)`); kill any still running at the end."""
    started: list[WorkerProcess] = []

    async def start(argv: list[str], *, stdio: bool = False, **spec: object) -> WorkerProcess:
        worker = await WorkerProcess.spawn(WorkerSpec(argv, use_stdio=stdio, env=worker_env(),
                                                      **spec))  # type: ignore[arg-type]
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.kill()
        await worker.wait()


@pytest.fixture
async def node(tmp_path) -> AsyncIterator[Node]:
    """A node "t1" with an echo task (`*.echo`) and the sample task (`sample.*`)."""
    started = await Node.start(
        NodeConfig(name="t1", data_dir=tmp_path / "data", **ALONE),
        tasks=[TaskDef.from_dict(ECHO), TaskDef.from_dict(SAMPLE)])
    try:
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def start_node(tmp_path) -> AsyncIterator[StartNode]:
    """Start a node "n1" alone in this process (`await start_node(*task_dicts)`); every
    node started is stopped at the end. A test module may define its own `start_node`."""
    nodes: list[Node] = []

    async def start(*tasks: dict) -> Node:
        node = await Node.start(NodeConfig(name="n1", data_dir=tmp_path / "data", **ALONE),
                                tasks=[TaskDef.from_dict(task) for task in tasks])
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: YPTASK_SCREENSHOTS (docs/screenshots to regenerate them)."""
    folder = Path(os.environ.get("YPTASK_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module (Playwright's sync API runs one at a time)."""
    from playwright.sync_api import sync_playwright

    require_browser()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()
