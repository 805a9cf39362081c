"""The timer ledger: what became of each tick, on whichever node decided it.

Only the leader decides ticks, and the leader changes, so each node keeps the
decisions it made in its history file (`yptask.store.history`): the timer, the
scheduled tick, the outcome, the node and the lease epoch, and when. Outcomes:

- `fired`: cast, and new to the journal;
- `duplicate_suppressed`: the tick was journaled before (a previous leader cast
  it: the journal or the id's home knew its id, or a node said so when the new
  leader asked about the tick in doubt), so it was not delivered again;
- `missed`: its time passed while no leader fired it, and its misfire policy
  fires a later tick instead (`fire_once`, or `fire_all` past `max_catchup`);
- `skipped`: left unfired on purpose: by the `skip` misfire policy (it was
  late) or because the timer is paused (`reason` says which);
- `run_now`: cast at once by `timers.run_now`, with an id of its own.

`ledger(name, limit, before)` asks every live peer over the link (request
`timer_ledger`) and merges their rows with this node's, newest tick first;
the nodes that did not answer are named in `unreached`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

from yptask.errors import ProtocolError, YPTaskError
from yptask.store.history import History, LedgerRow

__all__ = ["LEDGER_REQUEST", "MAX_LIMIT", "OUTCOMES", "TimerLedger", "local_time"]

log = logging.getLogger(__name__)

LEDGER_REQUEST = "timer_ledger"  # the link request kind
OUTCOMES = ("fired", "missed", "skipped", "duplicate_suppressed", "run_now")
MAX_LIMIT = 10_000
PEER_TIMEOUT_S = 5.0
_ROW_KEYS = {"tick", "outcome", "reason", "id", "node", "epoch", "at"}

Request = Callable[[str, str, list[Any], float], Awaitable[Any]]


def local_time(t: float, zone: str) -> str:
    """`t` in ISO 8601 in the time zone `zone`, with its offset then."""
    moment = dt.datetime.fromtimestamp(t, ZoneInfo(zone))
    return moment.isoformat(timespec="seconds" if t == int(t) else "milliseconds")


class TimerLedger:
    """Records this node's tick decisions, and answers the cluster's ledger of a timer."""

    def __init__(self, node_name: str, history: History,
                 clock: Callable[[], float] = time.time) -> None:
        self.node_name = node_name
        self._history = history
        self._clock = clock
        self._peers: Callable[[], list[str]] = list
        self._request: Request | None = None

    def join(self, peers: Callable[[], list[str]], request: Request) -> None:
        """The cluster runs: the names of its live peers, and how to ask one."""
        self._peers, self._request = peers, request

    def record(self, timer: str, tick: float, outcome: str, epoch: int, *,
               reason: str | None = None, message_id: str | None = None) -> None:
        """Note one decision on one tick (written on the history thread, not waited for)."""
        assert outcome in OUTCOMES, outcome
        self.record_many([(timer, tick, outcome, reason, message_id, self.node_name, epoch,
                           self._clock())])

    def record_many(self, rows: list[LedgerRow]) -> None:
        if rows:
            self._history.submit(self._history.add_ledger, rows)

    async def here(self, timer: str, limit: int, before: float | None) -> list[dict[str, Any]]:
        return await self._history.run(self._history.ledger, timer, limit, before)

    async def ledger(self, timer: str, limit: int, before: float | None, zone: str
                     ) -> dict[str, Any]:
        """The newest `limit` decisions on `timer`'s ticks, from every live node."""
        peers = self._peers()
        answers = await asyncio.gather(self.here(timer, limit, before),
                                       *(self._ask(peer, timer, limit, before)
                                         for peer in peers))
        rows = [row for answer in answers if answer is not None for row in answer]
        rows.sort(key=lambda r: (r["tick"], r["at"]), reverse=True)
        return {"name": timer, "timezone": zone,
                "entries": [{**row, "tick_local": local_time(row["tick"], zone)}
                            for row in rows[:limit]],
                "unreached": sorted(p for p, a in zip(peers, answers[1:], strict=True)
                                    if a is None)}

    async def answer(self, peer: str, args: list[Any]) -> list[dict[str, Any]]:
        """A peer's `timer_ledger` request: [timer, limit, before or null]."""
        if not (len(args) == 3 and isinstance(args[0], str) and _count(args[1])
                and (args[2] is None or _number(args[2]))):
            raise ProtocolError(f"node {peer} sent a malformed {LEDGER_REQUEST} request")
        return await self.here(args[0], args[1], None if args[2] is None else float(args[2]))

    async def _ask(self, peer: str, timer: str, limit: int, before: float | None
                   ) -> list[dict[str, Any]] | None:
        assert self._request is not None
        try:
            answer = await self._request(peer, LEDGER_REQUEST, [timer, limit, before],
                                         PEER_TIMEOUT_S)
        except (YPTaskError, OSError, TimeoutError) as exc:
            log.warning("node %s: node %s did not answer for the ledger of timer %s: %s",
                        self.node_name, peer, timer, exc)
            return None
        if not isinstance(answer, list):
            return None
        return [row for row in answer if isinstance(row, dict) and set(row) == _ROW_KEYS
                and _number(row["tick"]) and _number(row["at"])][:limit]


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_LIMIT


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
