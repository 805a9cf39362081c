"""Timer administration: the cluster's timers, and the roster of nodes that vote on their leader.

Timers live in the config map (yptask.store.config_map) beside their state (last
fire, last error); the leader (yptask.timers.leader) reads both every round, so
a change here is fired from the leader's next round, on whichever node leads.
Pause and resume are such changes (`paused` in the definition). `run_now` casts
a timer's message at once from the node asked, and `ledger` reads the timer
ledger of every live node (yptask.timers.ledger).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from yptask.errors import ConfigError, UnknownTimer
from yptask.store.config_map import TIMER_KEY, TIMER_STATE_KEY, ConfigMap
from yptask.timers.leader import TimerRunner, timer_rows
from yptask.timers.ledger import TimerLedger
from yptask.timers.schedule import TimerDef, run_now_id

__all__ = ["TimerAdmin"]

log = logging.getLogger(__name__)


class TimerAdmin:
    """The timer operations of one node's service."""

    def __init__(self, node_name: str, config: ConfigMap, check_running: Callable[[], None],
                 ledger: TimerLedger, cast: Callable[[str, Any, str], Awaitable[Any]]) -> None:
        """`cast(name, payload, id)`: how `run_now` casts (an id in the form of a tick's)."""
        self.node_name = node_name
        self._config = config
        self._check_running = check_running
        self.tick_ledger = ledger
        self._cast = cast
        self._runner: TimerRunner | None = None
        self._is_up: Callable[[str], bool] = lambda name: False

    def led_by(self, runner: TimerRunner, is_up: Callable[[str], bool],
               peers: Callable[[], list[str]], ask: Any) -> None:
        """The cluster and its timer leader run: timers.list says who leads, in which
        epoch; a node that is up cannot be forgotten; the ledger asks the live peers."""
        self._runner, self._is_up = runner, is_up
        self.tick_ledger.join(peers, ask)

    async def timers(self) -> list[dict[str, Any]]:
        """Every timer with its last fire, next fire, last error and the leader firing it."""
        runner = self._runner
        lease = ({"leader": runner.leader(), "epoch": runner.epoch()}
                 if runner is not None else {"leader": "", "epoch": 0})
        definitions, states = await self._config.snapshot(TIMER_KEY, TIMER_STATE_KEY)
        return timer_rows(definitions, states, lease)

    async def timer(self, name: str) -> dict[str, Any]:
        for row in await self.timers():
            if row["name"] == name:
                return row
        raise UnknownTimer(f"no timer named {name!r}; `yptask timers` lists them")

    async def put_timer(self, definition: dict[str, Any]) -> dict[str, Any]:
        """Create or replace a timer, on every node; the leader fires it from the next tick."""
        self._check_running()
        timer = TimerDef.from_dict(definition)
        items: list[tuple[str, dict[str, Any] | None]] = [(TIMER_KEY + timer.name,
                                                           timer.to_dict())]
        state = await self._config.get(TIMER_STATE_KEY + timer.name)
        if state is None or state.value is None:  # new: its ticks count from now
            items.append((TIMER_STATE_KEY + timer.name, {"last_fire": time.time()}))
        await self._config.put(items)
        log.info("timer %s saved", timer.name)
        return await self.timer(timer.name)

    async def delete_timer(self, name: str) -> None:
        """Delete a timer, on every node."""
        self._check_running()
        await self.timer(name)
        await self._config.put([(TIMER_KEY + name, None), (TIMER_STATE_KEY + name, None)])
        log.info("timer %s deleted", name)

    async def pause(self, name: str, paused: bool = True) -> dict[str, Any]:
        """Pause (or resume) a timer, on every node: while paused its ticks are noted in
        the ledger as skipped, none is cast; resumed, it fires from its next tick."""
        self._check_running()
        timer = TimerDef.from_dict(await self._definition(name))
        await self._config.put([(TIMER_KEY + name, replace(timer, paused=paused).to_dict())])
        log.info("timer %s %s", name, "paused" if paused else "resumed")
        return await self.timer(name)

    async def run_now(self, name: str) -> dict[str, Any]:
        """Cast the timer's message once, now, with an id of its own (noted as run_now);
        paused or not, whoever leads."""
        self._check_running()
        timer = TimerDef.from_dict(await self._definition(name))
        now = time.time()
        message_id = run_now_id(name, now, os.urandom(4).hex())
        answer = await self._cast(timer.message, timer.payload, message_id)
        epoch = self._runner.epoch() if self._runner is not None else 0
        self.tick_ledger.record(name, now, "run_now", epoch, message_id=message_id)
        log.info("timer %s run now: message %s", name, message_id)
        return {"name": name, "id": message_id, "tick": now,
                "tasks": answer.get("tasks", []) if isinstance(answer, dict) else []}

    async def ledger(self, name: str, limit: int = 100, before: float | None = None
                     ) -> dict[str, Any]:
        """What became of the timer's ticks, newest first, from every live node."""
        timer = TimerDef.from_dict(await self._definition(name))
        return await self.tick_ledger.ledger(name, limit, before, timer.timezone)

    async def _definition(self, name: str) -> dict[str, Any]:
        entry = await self._config.get(TIMER_KEY + name)
        if entry is None or entry.value is None:
            raise UnknownTimer(f"no timer named {name!r}; `yptask timers` lists them")
        return dict(entry.value)

    async def forget_node(self, name: str) -> dict[str, Any]:
        """Take a node that is gone for good off the timer lease's roster, on every node, so
        that the majority the lease needs is counted without it."""
        self._check_running()
        assert self._runner is not None
        if name == self.node_name or self._is_up(name):
            raise ConfigError(f"node {name} is alive: only a node that is gone can be "
                              "forgotten (a node stopped cleanly leaves by itself)")
        if not await self._runner.forget(name):
            raise ConfigError(f"node {name} is not on the roster; `yptask nodes` lists the "
                              "members")
        log.info("node %s forgotten: the timer lease no longer counts it", name)
        return {"forgotten": name}
