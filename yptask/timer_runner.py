"""The timer leader: the one live node that fires the cluster's cron timers.

Every node runs a `TimerRunner`, and each decides the same way who leads: the
live member with the lowest name (itself included). Only the leader fires.
Timer definitions and each timer's state (last tick fired, last error) live in
the replicated config map, so when the leader dies the next one starts from
the last tick the old one recorded, and catches up what was missed by the
timer's misfire policy.

A tick is cast with a deterministic message id (timer name + scheduled time):
a node that sees the id again drops it, so ticks fired twice during a brief
overlap of two leaders (or by a new leader that had not yet heard of the old
one's last fire) are delivered once. A cast that fails is recorded as the
timer's last error and tried again on the next round, the tick not yet
accounted for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from yptask.errors import ConfigError, YPTaskError
from yptask.replicated import Entry, ReplicatedStore
from yptask.schedule import TimerDef, due_fires, fire_id, next_fire

__all__ = ["TIMER_KEY", "TIMER_STATE_KEY", "TimerRunner", "timer_rows"]

log = logging.getLogger(__name__)

TIMER_KEY = "timer:"  # definitions in the replicated config map
TIMER_STATE_KEY = "timer_state:"  # {"last_fire", "last_error", "last_error_at"} per timer
ROUND_S = 0.2

Cast = Callable[[str, Any, str], Awaitable[Any]]  # (message name, payload, id)


class TimerRunner:
    """Fires due timers while this node leads."""

    def __init__(self, node_name: str, store: ReplicatedStore, *, cast: Cast,
                 peers: Callable[[], list[str]], publish: Callable[[list[Entry]], None],
                 wall: Callable[[], float] = time.time) -> None:
        self.node_name = node_name
        self.store = store
        self._cast = cast
        self._peers = peers
        self._publish = publish
        self._wall = wall
        self._task: asyncio.Task[None] | None = None
        self._leading = False

    def leader(self) -> str:
        return min([self.node_name, *self._peers()])

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run_forever(),
                                                            name="timers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run_forever(self) -> None:
        while True:
            leading = self.leader() == self.node_name
            if leading != self._leading:
                self._leading = leading
                log.info("timers: this node %s the timer leader", "is" if leading else
                         f"is no longer (node {self.leader()} is)")
            if leading:
                try:
                    await self.fire_due()
                except YPTaskError as exc:  # e.g. the store closing under us
                    log.warning("timers: round failed: %s", exc)
            await asyncio.sleep(ROUND_S)

    async def fire_due(self) -> None:
        """Fire every due tick of every enabled timer, and record how far each got."""
        definitions, states = await asyncio.to_thread(self._read)
        now = self._wall()
        changed = []
        for name, value in definitions.items():
            try:
                timer = TimerDef.from_dict(value)
            except ConfigError as exc:
                log.error("timer %s is invalid here, not fired: %s", name, exc)
                continue
            state = dict(states.get(name) or {})
            last = state.get("last_fire")
            if not timer.enabled or not isinstance(last, (int, float)):
                continue  # a timer without a state was never saved through a node: wait
            fires, accounted = due_fires(timer, float(last), now)
            new_state = await self._fire(timer, fires, accounted, state)
            if new_state != state:
                changed.append((TIMER_STATE_KEY + name, new_state))
        if changed:
            entries = await asyncio.to_thread(
                lambda: [self.store.put(key, value) for key, value in changed])
            self._publish(entries)

    async def _fire(self, timer: TimerDef, fires: list[float], accounted: float,
                    state: dict[str, Any]) -> dict[str, Any]:
        state = dict(state)
        for tick in fires:
            try:
                await self._cast(timer.message, timer.payload, fire_id(timer.name, tick))
            except YPTaskError as exc:
                log.warning("timer %s: tick %s could not be cast (retried): %s", timer.name,
                            tick, exc)
                state.update(last_error=str(exc), last_error_at=self._wall())
                return state
            state["last_fire"] = tick
        if fires or accounted > float(state["last_fire"]):
            state["last_fire"] = max(accounted, float(state["last_fire"]))
        return state

    def _read(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.store.values(TIMER_KEY), self.store.values(TIMER_STATE_KEY)


def timer_rows(store: ReplicatedStore, leader: str) -> list[dict[str, Any]]:
    """Every timer with its state: last fire, next fire, last error, who fires it."""
    states = store.values(TIMER_STATE_KEY)
    rows = []
    for name, value in sorted(store.values(TIMER_KEY).items()):
        state = states.get(name) or {}
        last = state.get("last_fire")
        try:
            timer = TimerDef.from_dict(value)
            upcoming = next_fire(timer, float(last)) if isinstance(last, (int, float)) else None
        except ConfigError:
            upcoming = None
        rows.append({**value, "last_fire": last, "next_fire": upcoming if value.get(
            "enabled", True) else None, "last_error": state.get("last_error"),
            "last_error_at": state.get("last_error_at"), "leader": leader})
    return rows
