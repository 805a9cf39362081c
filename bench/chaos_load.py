"""The chaos run's load (bench/chaos.py): a stream of casts, each with its own id.

The publisher casts `BATCH` messages at a time at `rate` per second, round robin
over the nodes, as an anonymous publisher; every 20th message is marked for
`flaky` to fail. Every accepted cast goes into the history with the tasks the
node named, the node and the time; a batch a node did not answer (it died,
hangs, or is cut off) goes again, same ids, to the next node, and so does what
a node refused (overloaded, stopping).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from chaos_check import Cast, History
from chaos_nodes import ChaosNode

BATCH = 25
FAIL_EVERY = 20  # every 20th cast is one that `flaky` fails
RETRY_S = 0.05


class Publisher:
    """Casts into `history.casts` until `stop` is set."""

    def __init__(self, nodes: list[ChaosNode], history: History, stop: threading.Event,
                 rate: float) -> None:
        self.nodes, self.history, self.stop, self.rate = nodes, history, stop, rate
        self.turn = 0  # the next node in the round

    def publish(self) -> None:
        """Cast at `rate` per second in batches, round robin; resend what was not taken."""
        sent, start = 0, time.monotonic()
        while not self.stop.is_set():
            ahead = sent / self.rate - (time.monotonic() - start)
            if ahead > 0 and self.stop.wait(ahead):
                break
            pending = {f"chaos-{sent + i}": {"n": sent + i, "fail": (sent + i) % FAIL_EVERY == 0}
                       for i in range(BATCH)}
            while pending and not self.stop.is_set():
                node = self.nodes[self.turn % len(self.nodes)]
                self.turn += 1
                if not node.live:
                    if not any(n.live for n in self.nodes):
                        self.stop.wait(RETRY_S)
                    continue
                if not self._cast(node, pending):
                    continue  # it died or hangs: the same ids go to the next node
                if pending:
                    self.stop.wait(RETRY_S)  # refused (overloaded, stopping): again, elsewhere
            sent += BATCH

    def _cast(self, node: ChaosNode, pending: dict[str, dict[str, Any]]) -> bool:
        """Cast the pending messages on `node`; take the accepted ones off `pending`.
        Whether the node answered."""
        ids = list(pending)
        try:
            answers = node.batch([("cast", {"name": "chaos.record", "msg": pending[mid],
                                            "id": mid}) for mid in ids], admin=False)
        except (OSError, ValueError):
            return False
        now = time.time()
        for answer in answers:
            if "result" in answer:
                mid = ids[answer["id"]]
                self.history.casts.append(Cast(mid, tuple(answer["result"]["tasks"]),
                                               node.name, now))
                del pending[mid]
        return True
