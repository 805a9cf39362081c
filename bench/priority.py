"""Fair priorities: how soon a p9 overtakes a backlog, and each level's share under saturation.

(a) 1 000 priority-0 casts wait for a task (cast while it is paused, then resumed);
    once its workers are busy on them, one priority-9 cast: how many deliveries were
    handled after it was cast and before it (the bound: what the workers' pipes held),
    and at which position overall.
(b) Every level 0-9 has casts waiting, more than it can be given in the window
    measured, so all ten are saturated: the share of the first N handled each level
    got, against its share of the lottery tickets (yptask.delivery.lottery).

The node runs as its own process (bench/_harness.py) with a recording task, whose
handler appends each delivery's id and priority to a file: the order handled.

    python bench/priority.py [--workers 2] [--rounds 3] [--window 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import BenchNode, summary

from yptask.delivery.lottery import DEFAULT_TICKETS
from yptask.testing import wait_for

TASK_MODULE = '''
import json, time
from yptask.tasks.base import BaseTask

class Recorder(BaseTask):
    def handle_work(self, msg):
        time.sleep(msg.get("s", 0))
        with open(self.settings["path"], "a") as f:
            f.write(json.dumps([self.message.id, self.message.meta["priority"]]) + "\\n")
'''

TASKS = """
[[task]]
name = "prio"
worker_class = "prio_recorder:Recorder"
messages = ["bench.work"]
env = {{ PYTHONPATH = "{folder}" }}
settings = {{ path = "{path}" }}
nodes = {{ "*" = {workers} }}
"""
BATCH = 250


class Recording:
    """The order the task handled its deliveries in, read from its file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self) -> list[tuple[str, int]]:
        if not self.path.exists():
            return []
        return [tuple(json.loads(line)) for line in self.path.read_text().splitlines()
                if line.endswith("]")]

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def cast(node: BenchNode, payloads: list[dict[str, Any]], priority: int) -> list[str]:
    ids = []
    for start in range(0, len(payloads), BATCH):
        answers = node.batch([("cast", {"name": "bench.work", "msg": p, "priority": priority})
                              for p in payloads[start:start + BATCH]])
        ids += [a["result"]["id"] for a in sorted(answers, key=lambda a: a["id"])]
    return ids


def drained(node: BenchNode) -> bool:
    state = node.rpc("status")["tasks"]["prio"]
    return state["queued"] == 0 and state["in_flight"] == 0


def overtaking(node: BenchNode, recording: Recording, queued: int) -> tuple[int, int]:
    """(a): (handled after the p9 was cast and before it, its position overall)."""
    recording.clear()
    node.rpc("tasks.pause", "prio")
    cast(node, [{"s": 0.002, "n": n} for n in range(queued)], 0)
    node.rpc("tasks.resume", "prio")
    wait_for(lambda: len(recording.rows()) >= 20, timeout_s=300, what="the p0 casts started")
    before = len(recording.rows())
    [urgent] = cast(node, [{"urgent": True}], 9)
    ids = wait_for(lambda: urgent in (ids := [r[0] for r in recording.rows()]) and ids,
                   timeout_s=300, what="the p9 cast handled")
    wait_for(lambda: drained(node), timeout_s=600, what="the p0 casts handled")
    position = ids.index(urgent)
    return position - before, position + 1


def shares(node: BenchNode, recording: Recording, window: int) -> list[float]:
    """(b): the share of the first `window` handled each level got, all ten saturated."""
    recording.clear()
    total = sum(DEFAULT_TICKETS)
    node.rpc("tasks.pause", "prio")
    for level, tickets in enumerate(DEFAULT_TICKETS):  # twice what its share takes, at least
        cast(node, [{"n": n} for n in range(math.ceil(2 * window * tickets / total) + 20)],
             level)
    node.rpc("tasks.resume", "prio")
    rows = wait_for(lambda: len(rows := recording.rows()) >= window and rows,
                    timeout_s=600, what="the window handled")
    wait_for(lambda: drained(node), timeout_s=600, what="the rest handled")
    levels = [priority for _, priority in rows[:window]]
    return [levels.count(level) / window for level in range(10)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--window", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="yptask-prio-") as folder:
        Path(folder, "prio_recorder.py").write_text(TASK_MODULE)
        recording = Recording(Path(folder, "handled.jsonl"))
        tasks = TASKS.format(folder=folder, path=recording.path, workers=args.workers)
        with BenchNode(tasks=tasks) as node:
            wait_for(lambda: node.rpc("status")["tasks"]["prio"]["pids"], timeout_s=120,
                     what="the task's workers")
            print(f"yptask priorities: {args.workers} workers, node on loopback; "
                  "figures min / median / max over rounds")
            started = time.perf_counter()
            waits = [overtaking(node, recording, args.queued) for _ in range(args.rounds)]
            print(f"  (a) a p9 cast behind {args.queued} queued p0: handled after "
                  f"{summary([w[0] for w in waits])} others cast before it "
                  f"(position {summary([w[1] for w in waits])} of {args.queued + 1})")
            rounds = [shares(node, recording, args.window) for _ in range(args.rounds)]
            total = sum(DEFAULT_TICKETS)
            print(f"  (b) all ten levels saturated, first {args.window} handled:"
                  " level  tickets share  handled share (median)")
            for level, tickets in enumerate(DEFAULT_TICKETS):
                got = statistics.median(r[level] for r in rounds)
                print(f"        p{level}  {tickets / total:8.2%}  {got:8.2%}")
            print(f"  ({time.perf_counter() - started:.0f} s)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
