"""A short fault-injection run (bench/chaos.py, smaller): nothing accepted is ever lost.

Three real nodes on loopback; workers and a node are killed with `kill -9` while
casts stream in; every node is back at the end and the queues drain.
"""

from __future__ import annotations

import sys

import pytest
from support import REPO

sys.path.insert(0, str(REPO / "bench"))
from chaos import run_chaos

pytestmark = pytest.mark.timeout(300)


def test_kill_9_of_workers_and_nodes_loses_no_accepted_message(tmp_path):
    report = run_chaos(900, worker_every_s=0.3, node_every_s=2.0, rate=200,
                       max_seconds=120, folder=tmp_path)
    print("\n".join(report.lines()))
    assert report.accepted == 900
    assert report.worker_kills >= 5 and report.node_kills >= 1, report.lines()
    assert report.lost == 0, f"lost: {report.lost_ids[:20]}"
