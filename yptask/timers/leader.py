"""The timer leader: the one node that fires the cluster's cron timers, while its lease holds.

Every node runs a `TimerRunner`. It votes in the timer lease (`yptask.timers.lease`)
and, when no one holds it, stands as a candidate (the lowest-named live node
first, the others a moment later); only the holder fires, and only while its
lease is valid, checked again before each tick. Timer definitions and each
timer's state (last tick fired, last error) live in the replicated config map;
the last fires also travel with every grant and renewal, so a new leader starts
from the latest tick its majority knows, and catches up what was missed
meanwhile by the timer's misfire policy.

The leader renews (telling its voters) right after each tick is journaled, so
at most one tick per timer can be unknown to a successor: the predecessor's
last, if it was cut off or killed in between. A new leader asks every node
whether it journaled that tick before firing it (`_resolve_doubt`).

A tick is cast with a message id of its own, `timer:NAME:TICK`, which publishers
may not use (ingress refuses it). A cast that fails is recorded as the timer's
last error and tried again on the next round, the tick not yet accounted for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from yptask.errors import ConfigError, ProtocolError, YPTaskError
from yptask.log_limit import LogLimiter
from yptask.store.config_map import TIMER_KEY, TIMER_STATE_KEY, VOTER_KEY, ConfigMap
from yptask.timers.lease import Lease, Voter, merge_fires, quorum
from yptask.timers.ledger import TimerLedger
from yptask.timers.schedule import TimerDef, due_ticks, fire_id, next_fire, unfired_ticks

__all__ = ["TimerRunner", "timer_rows"]

log = logging.getLogger(__name__)

ROUND_S = 0.2
STAGGER_S = 0.3  # a free lease: the n-th live node by name stands n times this late
DOUBT_LEASES = 3  # a new leader waits this many leases to learn if a tick was cast before

Cast = Callable[[str, Any, str], Awaitable[Any]]  # (message name, payload, id)
Ask = Callable[[str, str, list[Any], float], Awaitable[Any]]  # (peer, kind, args, timeout)


class TimerRunner:
    """Votes in the timer lease, stands for it when it is free, and fires while it holds it."""

    def __init__(self, node_name: str, config: ConfigMap, *, cast: Cast,
                 peers: Callable[[], list[str]], ask: Ask, ballot: Path,
                 lease_s: float, known_here: Callable[[list[str]], Awaitable[set[str]]],
                 settle_s: float = 0.0, wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic,
                 ledger: TimerLedger | None = None) -> None:
        """`settle_s`: how long after its start this node stands for nothing, so that it
        hears of its peers (and whoever leads them) first; 0 for a node that has none.
        `ledger`: where each tick's outcome is noted."""
        self.node_name = node_name
        self.config = config
        self.lease_s = lease_s
        self._cast = cast
        self._peers = peers
        self._ask_peer = ask
        self._wall = wall
        self._clock = clock
        self.voter = Voter(ballot, lease_s, clock())
        self.lease = Lease()
        self._fires: dict[str, float] = {}  # the latest fire of each timer known here
        self._roster: set[str] = set()
        self._highest_epoch = self.voter.ballot.epoch
        self._free_since: float | None = None  # when this node saw the lease free
        self._next_stand = clock() + settle_s
        self._task: asyncio.Task[None] | None = None
        self._leading = False
        self._still_failing = LogLimiter(log)
        self._known_here = known_here
        # timer -> (its tick in doubt, since when): see _resolve_doubt
        self._doubt: dict[str, tuple[float, float]] = {}
        self._won_at: float | None = None  # wall time of the last new epoch won, till used
        # timer -> ticks this node cast, and ticks its misfire policy left unfired (metrics)
        self.fires: dict[str, int] = {}
        self.misses: dict[str, int] = {}
        self._ledger = ledger

    # ------------------------------------------------------------------ for the node

    def leader(self) -> str:
        """Who fires now, as this node knows ("" while no one holds the lease)."""
        now = self._clock()
        if self.lease.holding(now):
            return self.node_name
        return str(self.voter.promise(now)["holder"])

    def epoch(self) -> int:
        return max(self.lease.epoch, self.voter.ballot.epoch)

    async def on_ask(self, peer: str, args: list[Any]) -> dict[str, Any]:
        """A peer stands for the lease (or renews it): [epoch, fires]."""
        if len(args) != 2 or not isinstance(args[0], int) or isinstance(args[0], bool):
            raise ProtocolError("lease takes [epoch, fires]")
        answer = await self._vote(peer, args[0], args[1])
        if answer["granted"] and self.lease.holding(self._clock()):
            self.lease.lost()  # cannot happen while we hold it; never fire beside another
        return answer

    async def _vote(self, candidate: str, epoch: int, fires: Any) -> dict[str, Any]:
        """This node's vote, on disk before it is told (the write is off the loop)."""
        answer = self.voter.ask(candidate, epoch, fires, self._clock())
        if self.voter.unsaved:
            await asyncio.to_thread(self.voter.save)
        return answer

    async def on_tick_known(self, peer: str, args: list[Any]) -> list[str]:
        """A new leader asks which of these tick ids this node journaled (_resolve_doubt)."""
        if not (len(args) == 1 and isinstance(args[0], list)
                and all(isinstance(i, str) for i in args[0]) and len(args[0]) <= 100):
            raise ProtocolError(f"node {peer} sent a malformed tick_known request")
        return sorted(await self._known_here(list(args[0])))

    async def on_release(self, peer: str, args: list[Any]) -> None:
        if len(args) != 2 or not isinstance(args[0], int):
            raise ProtocolError("lease_release takes [epoch, fires]")
        self.voter.release(peer, args[0], args[1], self._clock())

    async def start(self) -> None:
        """Join the roster (this node votes from now on) and start the rounds."""
        if self.node_name not in await self.config.values(VOTER_KEY):
            await self.config.put([(VOTER_KEY + self.node_name, {"since": self._wall()})],
                                  wait=True)
        self._task = asyncio.get_running_loop().create_task(self._run_forever(),
                                                            name="timers")

    async def stop(self) -> None:
        """Stop firing, give the lease up, and leave the roster (a clean stop)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.lease.holding(self._clock()):
            self.lease.lost()
            args = [self.lease.epoch, self._fires]
            await asyncio.gather(*(self._quietly(peer, "lease_release", args)
                                   for peer in self._peers()))
            self.voter.release(self.node_name, self.lease.epoch, self._fires, self._clock())
        await self.config.put([(VOTER_KEY + self.node_name, None)], wait=True)

    async def forget(self, name: str) -> bool:
        """Take `name` off the roster, on every node; False if it was not on it."""
        if name not in await self.config.values(VOTER_KEY):
            return False
        await self.config.put([(VOTER_KEY + name, None)], wait=True)
        return True

    # ------------------------------------------------------------------ rounds

    async def _run_forever(self) -> None:
        failing = False
        while True:
            try:
                await self._round()
                failing = False
            except Exception as exc:  # a store or a peer failed: log it, go on next round
                if not failing:
                    log.exception("timers: a round failed; trying again every %.1f s", ROUND_S)
                else:
                    self._still_failing.warning("timers: rounds still fail: %s", exc)
                failing = True
            await asyncio.sleep(ROUND_S)

    async def _round(self) -> None:
        definitions, states, roster = await self.config.snapshot(TIMER_KEY, TIMER_STATE_KEY,
                                                                 VOTER_KEY)
        self._roster = set(roster)
        now = self._clock()
        if self.lease.holding(now):
            if self.lease.valid_until - now < self.lease_s * 2 / 3:
                await self._stand(self.lease.epoch)
        elif self._may_stand(now):
            await self._stand(max(self._highest_epoch, self.epoch()) + 1)
        self._say_who_leads()
        if self.lease.holding(self._clock()):
            changed = await self.fire_due(definitions, states)
            if changed:  # the voters know already; the store and the peers' copies follow
                await self.config.put(changed)

    def _may_stand(self, now: float) -> bool:
        holder = self.voter.promise(now)["holder"]
        if holder not in ("", self.node_name):
            self._free_since = None
            return False
        if self._free_since is None:
            self._free_since = now
        rank = sorted({self.node_name, *self._peers()}).index(self.node_name)
        return now >= self._next_stand and now - self._free_since >= rank * STAGGER_S

    async def _stand(self, epoch: int) -> bool:
        """Ask every voter for the lease in `epoch` (a renewal if it is ours already)."""
        asked_at = self._clock()
        peers = self._peers()
        need = quorum(len({self.node_name, *peers, *self._roster}))
        replies = await asyncio.gather(*(self._ask_peer(peer, "lease", [epoch, self._fires],
                                                        self._ask_timeout())
                                         for peer in peers), return_exceptions=True)
        granted_by = [peer for peer, reply in zip(peers, replies, strict=True)
                      if isinstance(reply, dict) and reply.get("granted") is True]
        for reply in replies:
            if isinstance(reply, dict):
                self._learn(reply)
        # This node's own vote comes last, and only when it decides: a candidate that
        # voted for itself first would keep its vote from a rival standing at once.
        if len(granted_by) + 1 >= need:
            own = await self._vote(self.node_name, epoch, self._fires)
            self._learn(own)
            if own["granted"]:
                if not self.lease.holding(asked_at) or epoch != self.lease.epoch:
                    self._won_at = self._wall()  # a new term: its predecessor's last tick?
                self.lease.granted(epoch, asked_at, self.lease_s)
                self._free_since = None
                return True
        if self.lease.epoch == epoch:
            self.lease.lost()
        # Free the voters it did win, so that a rival needs not wait out their grants.
        await asyncio.gather(*(self._quietly(peer, "lease_release", [epoch, self._fires])
                               for peer in granted_by))
        self._next_stand = self._clock() + random.uniform(STAGGER_S, 4 * STAGGER_S)
        return False

    def _learn(self, answer: dict[str, Any]) -> None:
        """Take the fires and the epoch a voter told of."""
        merge_fires(self._fires, answer.get("fires"))
        if isinstance(answer.get("epoch"), int):
            self._highest_epoch = max(self._highest_epoch, answer["epoch"])

    def _say_who_leads(self) -> None:
        leading = self.lease.holding(self._clock())
        if leading != self._leading:
            self._leading = leading
            if leading:
                log.info("timers: this node is the timer leader (epoch %d)", self.lease.epoch)
            else:
                holder = self.leader()
                log.info("timers: this node is no longer the timer leader (%s)",
                         f"node {holder} is" if holder not in ("", self.node_name) else
                         "no other node holds the lease yet")

    def _ask_timeout(self) -> float:
        return max(0.2, self.lease_s / 3)

    async def _quietly(self, peer: str, kind: str, args: list[Any]) -> None:
        with contextlib.suppress(YPTaskError, asyncio.TimeoutError):
            await self._ask_peer(peer, kind, args, self._ask_timeout())

    # ------------------------------------------------------------------ firing

    async def fire_due(self, definitions: dict[str, Any], states: dict[str, Any]
                       ) -> list[tuple[str, dict[str, Any]]]:
        """Fire every due tick of every enabled timer; the new states of those that moved."""
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
            state["last_fire"] = max(float(last), self._fires.get(name, float("-inf")))
            if self._won_at is not None:
                following = next_fire(timer, state["last_fire"])
                if following <= self._won_at:
                    self._doubt[name] = (following, self._clock())
            if name in self._doubt:
                fired_before = await self._resolve_doubt(timer)
                if fired_before is None:
                    continue  # not known yet: this timer waits, the others go on
                if fired_before:
                    tick = self._doubt[name][0]
                    state["last_fire"] = max(state["last_fire"], tick)
                    self._note(name, tick, "duplicate_suppressed", reason="cast before",
                               message_id=fire_id(name, tick))
                del self._doubt[name]
            fires, accounted, missed = due_ticks(timer, state["last_fire"], now)
            held = len(fires) if timer.paused else 0  # its ticks go by, none is cast
            fires = [] if timer.paused else fires
            new_state = await self._fire(timer, fires, accounted, state)
            if (missed or held) and new_state["last_fire"] >= accounted:  # not again
                self.misses[name] = self.misses.get(name, 0) + missed
                self._note_unfired(timer, state["last_fire"], accounted, fires,
                                   min(100, missed + held))
            self._fires[name] = new_state["last_fire"]
            if new_state != states.get(name):
                changed.append((TIMER_STATE_KEY + name, new_state))
        self._won_at = None
        return changed

    async def _resolve_doubt(self, timer: TimerDef) -> bool | None:
        """Was the tick after the last one the voters know of cast by a predecessor?

        A leader casts a tick and then tells its voters; one cut off or killed in
        between leaves that one tick (never more: it casts the next only once they
        know) journaled on its own node, unknown to the new leader. So the new leader
        asks every node of the roster whether it journaled that tick's id: True if one
        did, False once all said no, None while one cannot answer (then the timer
        waits, up to DOUBT_LEASES leases; past that it fires, and says so).
        """
        tick, since = self._doubt[timer.name]
        tick_id = fire_id(timer.name, tick)
        if await self._known_here([tick_id]):
            return True
        peers = set(self._peers())
        answers = await asyncio.gather(*(self._ask_peer(peer, "tick_known", [[tick_id]],
                                                        self._ask_timeout())
                                         for peer in sorted(peers)), return_exceptions=True)
        if any(isinstance(a, list) and tick_id in a for a in answers):
            return True
        unanswered = (self._roster - peers - {self.node_name}) or any(
            not isinstance(a, list) for a in answers)
        if not unanswered:
            return False
        if self._clock() - since < DOUBT_LEASES * self.lease_s:
            return None
        log.warning("timer %s: tick %s fired without word from every node on whether the "
                    "last leader had (it may be handled twice)", timer.name, tick)
        return False

    async def _fire(self, timer: TimerDef, fires: list[float], accounted: float,
                    state: dict[str, Any]) -> dict[str, Any]:
        state = dict(state)
        for tick in fires:
            # A cast can take a while (a client-id claim): start one only with time to spare,
            # so that it is journaled well before any voter may grant the next lease.
            if self.lease.valid_until - self._clock() < self.lease_s / 3:
                return state  # renew first (next round), or let the next leader go on
            message_id = fire_id(timer.name, tick)
            try:
                answer = await self._cast(timer.message, timer.payload, message_id)
            except YPTaskError as exc:
                log.warning("timer %s: tick %s could not be cast (retried): %s", timer.name,
                            tick, exc)
                state.update(last_error=str(exc), last_error_at=self._wall())
                return state
            state["last_fire"] = self._fires[timer.name] = tick
            self.fires[timer.name] = self.fires.get(timer.name, 0) + 1
            # The journal (or the id's home) knew the id: a previous leader cast this tick.
            known = isinstance(answer, dict) and answer.get("duplicate") is True
            self._note(timer.name, tick, "duplicate_suppressed" if known else "fired",
                       reason="journaled before" if known else None, message_id=message_id)
            # The voters learn of each tick as soon as it is journaled: a leader that dies
            # now has its successor start after it, not fire it again.
            await self._stand(self.lease.epoch)
        if accounted > float(state["last_fire"]):
            state["last_fire"] = accounted
        return state


    def _note(self, timer: str, tick: float, outcome: str, *, reason: str | None = None,
              message_id: str | None = None) -> None:
        if self._ledger is not None:
            self._ledger.record(timer, tick, outcome, self.lease.epoch, reason=reason,
                                message_id=message_id)

    def _note_unfired(self, timer: TimerDef, last: float, accounted: float,
                      fired: list[float], count: int) -> None:
        """Note the ticks a round accounted for without casting them: skipped (paused, or
        late under the `skip` policy) or missed (a later tick fired instead)."""
        if self._ledger is None:
            return
        if timer.paused or timer.misfire == "skip":
            outcome, reason = "skipped", "paused" if timer.paused else "misfire skip"
        else:
            outcome, reason = "missed", f"misfire {timer.misfire}"
        for tick in unfired_ticks(timer, last, accounted, fired, count):
            self._ledger.record(timer.name, tick, outcome, self.lease.epoch, reason=reason)


def timer_rows(definitions: dict[str, Any], states: dict[str, Any], lease: dict[str, Any]
               ) -> list[dict[str, Any]]:
    """Every timer with its state: last fire, next fire, last error, who fires it (the
    lease's `leader`, "" while none holds it) and in which `epoch`."""
    rows = []
    for name, value in sorted(definitions.items()):
        state = states.get(name) or {}
        last = state.get("last_fire")
        try:
            timer = TimerDef.from_dict(value)
            upcoming = next_fire(timer, float(last)) if isinstance(last, (int, float)) else None
        except ConfigError:
            upcoming = None
        rows.append({**value, "last_fire": last, "next_fire": upcoming if value.get(
            "enabled", True) else None, "last_error": state.get("last_error"),
            "last_error_at": state.get("last_error_at"), **lease})
    return rows
