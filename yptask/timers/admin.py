"""Timer administration: the cluster's timers, and the roster of nodes that vote on their leader.

Timers live in the config map (yptask.store.config_map) beside their state (last
fire, last error); the leader (yptask.timers.leader) reads both every round, so
a change here is fired from the leader's next round, on whichever node leads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from yptask.errors import ConfigError, UnknownTimer
from yptask.store.config_map import TIMER_KEY, TIMER_STATE_KEY, ConfigMap
from yptask.timers.leader import TimerRunner, timer_rows
from yptask.timers.schedule import TimerDef

__all__ = ["TimerAdmin"]

log = logging.getLogger(__name__)


class TimerAdmin:
    """The timer operations of one node's service."""

    def __init__(self, node_name: str, config: ConfigMap,
                 check_running: Callable[[], None]) -> None:
        self.node_name = node_name
        self._config = config
        self._check_running = check_running
        self._runner: TimerRunner | None = None
        self._is_up: Callable[[str], bool] = lambda name: False

    def led_by(self, runner: TimerRunner, is_up: Callable[[str], bool]) -> None:
        """The cluster and its timer leader run: timers.list says who leads, in which
        epoch; a node that is up cannot be forgotten."""
        self._runner, self._is_up = runner, is_up

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
