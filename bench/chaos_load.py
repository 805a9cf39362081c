"""The chaos run's load (bench/chaos.py): a stream of casts, each with its own id.

The publisher casts `BATCH` messages at a time at `rate` per second, round robin
over the nodes, as an anonymous publisher; every 20th message is marked for
`flaky` to fail. The stream mixes the message controls: priorities 0 to 9 in turn,
every DELAY_EVERY-th cast delayed (`delay_s`), every TTL_EVERY-th with a deadline
(`ttl_s`: it may expire, which the checker counts apart from lost). Every
accepted cast goes into the history with the tasks the node named, the node and
the time; a batch a node did not answer (it died, hangs, or is cut off) goes
again, same ids, to the next node, and so does what a node refused
(overloaded, stopping).
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
DELAY_EVERY, DELAYS_S = 7, (0.3, 1.0, 2.5)
TTL_EVERY, TTL_S = 11, 3.0


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
            pending = {f"chaos-{n}": _cast_params(n) for n in range(sent, sent + BATCH)}
            first_sent = time.time()
            while pending and not self.stop.is_set():
                node = self.nodes[self.turn % len(self.nodes)]
                self.turn += 1
                if not node.live:
                    if not any(n.live for n in self.nodes):
                        self.stop.wait(RETRY_S)
                    continue
                if not self._cast(node, pending, first_sent):
                    continue  # it died or hangs: the same ids go to the next node
                if pending:
                    self.stop.wait(RETRY_S)  # refused (overloaded, stopping): again, elsewhere
            sent += BATCH

    def _cast(self, node: ChaosNode, pending: dict[str, dict[str, Any]], first_sent: float
              ) -> bool:
        """Cast the pending messages on `node`; take the accepted ones off `pending`.
        Whether the node answered.

        A delayed cast is recorded as due `delay_s` after it was first sent: a node that
        took it but died before answering made it due from then, and a resend's answer
        (a duplicate) says a later time than the one stored."""
        ids = list(pending)
        try:
            answers = node.batch([("cast", {"name": "chaos.record", "id": mid, **pending[mid]})
                                  for mid in ids], admin=False)
        except (OSError, ValueError):
            return False
        now = time.time()
        for answer in answers:
            if "result" in answer:
                mid = ids[answer["id"]]
                params, result = pending.pop(mid), answer["result"]
                ttl, delay = params.get("ttl_s"), params.get("delay_s")
                self.history.casts.append(Cast(
                    mid, tuple(result["tasks"]), node.name, now, params["priority"],
                    0.0 if delay is None else first_sent + delay,
                    None if ttl is None else now + ttl))
        return True


def _cast_params(n: int) -> dict[str, Any]:
    """The cast of the n-th message: its payload and the controls it carries."""
    params: dict[str, Any] = {"msg": {"n": n, "fail": n % FAIL_EVERY == 0}, "priority": n % 10}
    if n % DELAY_EVERY == 0:
        params["delay_s"] = DELAYS_S[n // DELAY_EVERY % len(DELAYS_S)]
    if n % TTL_EVERY == 0:
        params["ttl_s"] = TTL_S
    return params
