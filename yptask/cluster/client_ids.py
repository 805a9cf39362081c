"""Client ids, unique across the cluster: each id has a home node that says if it is taken.

A publisher may give a cast its own id (timers do: `timer:NAME:TICK`) and,
having lost an answer, send it again to another node. A node's journal dedupes
only what it holds, so an id is also checked at its *home*: of the live
members (this node included), the one with the highest rendezvous hash of
(member, id). Before it answers, the node that takes a cast claims its ids at
their homes: one link request per home per batch, none for ids homed here.
The home answers, per id:

- `new`: the id is now pending for the claimer, which stores the message and
  then settles: *taken* (the home keeps the id in its journal for the dedupe
  window) or *released* (the journal refused it, a full disk say: nothing of
  it is kept, and a retry is taken as new, never as a duplicate);
- `known`: taken before, here or elsewhere: the cast is answered as a duplicate;
- `pending`: another node's claim, not yet settled: the cast is refused with
  `IdPending` (retryable). A home first waits up to half the claimer's wait for
  such a claim to settle, so a retry right after a first answer is a duplicate.

A claim nobody settles (its node died between claim and commit) is dropped
after `client_id_pending_s`; pending claims live in the home's memory, the
taken ids in its journal (so they survive its restart). A home that is not
linked, or does not answer within `client_id_wait_s`, costs that wait and no
more: the ids fall back to the local journal's dedupe (a warning, rate-limited,
and `fallbacks` in status), and the node still tells the home what it took.

What is promised: a client id is taken once in the whole cluster, for the
dedupe window after it was taken, while the nodes agree on who is alive. Not
promised (each node then dedupes in its own journal only, as a node alone does):
while the id's home is unreachable or too slow; across a membership change
(a member that joins, leaves or goes down moves the ids homed at it, and only
those; nodes that do not yet agree on the members may ask different homes);
and an id whose settle never reached its home (the node that took it died
after storing it, or the home was away then), once the claim has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from yptask.errors import ProtocolError, YPTaskError
from yptask.log_limit import LogLimiter
from yptask.store.group_commit import JournalThread
from yptask.store.id_reader import IdReader
from yptask.store.journal import Journal

__all__ = [
    "IDS_REQUEST",
    "KNOWN",
    "LOCAL",
    "NEW",
    "PENDING",
    "Claims",
    "ClientIds",
    "Ledger",
    "home_of",
]

log = logging.getLogger(__name__)

IDS_REQUEST = "ids"  # the link request kind: ["claim", ids, hold_s] or ["settle", taken, released]
NEW, KNOWN, PENDING = "new", "known", "pending"  # a home's answers
LOCAL = "local"  # no home answered: the local journal alone dedupes the id
ANSWERS = frozenset({NEW, KNOWN, PENDING})

Request = Callable[[str, str, list[Any], float], Awaitable[Any]]  # peer, kind, args, timeout


def home_of(message_id: str, members: Iterable[str]) -> str:
    """The member an id belongs to (rendezvous hashing: the same for any order of the
    members; when one leaves, only its ids move)."""
    return max(members, key=lambda member: (_score(member, message_id), member))


def _score(member: str, message_id: str) -> bytes:
    return hashlib.blake2b(f"{member}\x00{message_id}".encode(), digest_size=8).digest()


@dataclass(frozen=True)
class _Claim:
    claimer: str
    expires_at: float  # on the monotonic clock
    taken: bool = False  # settled as taken: known, while the journal read may lag behind


class Ledger:
    """The claims of the ids homed at this node, in memory, on the event loop.

    A claim is pending until its claimer settles it. A taken id stays marked
    for `pending_s` after its settle, so a journal read that began before the
    id was journaled still finds it known.
    """

    def __init__(self, pending_s: float) -> None:
        self.pending_s = pending_s
        self._claims: dict[str, _Claim] = {}
        self._sweep_at = 0.0

    def claim(self, claimer: str, ids: list[str], known: set[str], now: float) -> list[str]:
        """Per id: NEW (now pending for `claimer`, again if it was), KNOWN or PENDING.
        `known`: those of `ids` the journal holds; `now`: monotonic."""
        self._sweep(now)
        verdicts = []
        for message_id in ids:
            held = self._claims.get(message_id)
            if held is not None and held.expires_at <= now:
                held = None
            if message_id in known or (held is not None and held.taken):
                verdicts.append(KNOWN)
            elif held is not None and held.claimer != claimer:
                verdicts.append(PENDING)
            else:
                self._claims[message_id] = _Claim(claimer, now + self.pending_s)
                verdicts.append(NEW)
        return verdicts

    def settle(self, claimer: str, taken: list[str], released: list[str], now: float) -> None:
        """End `claimer`'s claims: `taken` ids are known from now on, `released` ones free."""
        for message_id in taken:
            self._claims[message_id] = _Claim(claimer, now + self.pending_s, taken=True)
        for message_id in released:
            held = self._claims.get(message_id)
            if held is not None and held.claimer == claimer and not held.taken:
                del self._claims[message_id]

    def _sweep(self, now: float) -> None:
        """Drop expired claims, at most once every `pending_s`."""
        if now < self._sweep_at:
            return
        self._sweep_at = now + self.pending_s
        for message_id in [i for i, c in self._claims.items() if c.expires_at <= now]:
            del self._claims[message_id]


@dataclass(frozen=True)
class Claims:
    """What the homes said of a batch's ids."""

    verdicts: dict[str, str]  # id -> NEW, KNOWN, PENDING or LOCAL
    homes: dict[str, str] = field(default_factory=dict)  # id -> the home asked of it


class ClientIds:
    """Claims the client ids of this node's casts at their homes; is the home of some."""

    def __init__(self, me: str, journal: JournalThread, peers: Callable[[], list[str]],
                 request: Request, *, wait_s: float, pending_s: float) -> None:
        """`journal`: where the ids other nodes took are written; they are read beside it."""
        self.me = me
        self.wait_s = wait_s
        self.ledger = Ledger(pending_s)
        self.fallbacks = 0  # ids checked in the local journal only: their home did not answer
        self.refused = 0  # casts refused because their id was pending elsewhere
        self._last_fallback = ""
        self._journal = journal
        self._reader = IdReader(journal.journal.path)
        self._reads = ThreadPoolExecutor(1, thread_name_prefix=f"client ids {me}")
        self._peers = peers
        self._request = request
        self._warn = LogLimiter(log)
        self._settled = asyncio.Event()  # set (and replaced) whenever claims here settle
        self._to_settle: dict[str, tuple[list[str], list[str]]] = {}  # home -> what to tell
        self._settling: set[str] = set()  # homes a settle is on its way to
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ taking a cast

    async def claim(self, ids: list[str]) -> Claims:
        """Ask each id's home; wait at most `wait_s` for any."""
        peers = self._peers()
        if not peers:  # alone: nobody else takes casts
            return Claims(dict.fromkeys(ids, LOCAL))
        members = [self.me, *peers]
        by_home: dict[str, list[str]] = {}
        for message_id in dict.fromkeys(ids):
            by_home.setdefault(home_of(message_id, members), []).append(message_id)
        if len(by_home) == 1:
            ((home, batch),) = by_home.items()
            answers = [await self._ask(home, batch)]
        else:
            answers = await asyncio.gather(*(self._ask(h, b) for h, b in by_home.items()))
        verdicts: dict[str, str] = {}
        homes: dict[str, str] = {}
        for (home, batch), answer in zip(by_home.items(), answers, strict=True):
            verdicts.update(zip(batch, answer, strict=True))
            homes.update(dict.fromkeys(batch, home))
        self.refused += sum(1 for message_id in ids if verdicts[message_id] == PENDING)
        return Claims(verdicts, homes)

    def settle(self, claims: Claims, taken: list[str], released: list[str]) -> None:
        """Tell the homes which claimed ids the journal now holds and which it refused
        (in the background: the cast is answered meanwhile)."""
        by_home: dict[str, tuple[list[str], list[str]]] = {}
        for ids, place in ((taken, 0), (released, 1)):
            for message_id in ids:
                home = claims.homes.get(message_id)
                if home is not None:
                    by_home.setdefault(home, ([], []))[place].append(message_id)
        for home, (home_taken, home_released) in by_home.items():
            if home == self.me:  # this journal holds the taken ones already
                self._settle_here(self.me, home_taken, home_released)
                continue
            waiting_taken, waiting_released = self._to_settle.setdefault(home, ([], []))
            waiting_taken += home_taken
            waiting_released += home_released
            if home not in self._settling:
                self._settling.add(home)
                self._spawn(self._settle_at(home))

    async def _ask(self, home: str, ids: list[str]) -> list[str]:
        hold_s = self.wait_s / 2  # the home's wait for another claim, within ours
        if home == self.me:
            return await self._claim_here(self.me, ids, hold_s)
        try:
            async with asyncio.timeout(self.wait_s):  # sending too: a full socket may block
                answer = await self._request(home, IDS_REQUEST, ["claim", ids, hold_s],
                                             self.wait_s)
        except (YPTaskError, TimeoutError) as exc:
            return self._fall_back(home, ids, str(exc) or f"no answer within {self.wait_s} s")
        if not (isinstance(answer, list) and len(answer) == len(ids)
                and all(isinstance(a, str) and a in ANSWERS for a in answer)):
            return self._fall_back(home, ids, f"a malformed answer {answer!r:.80}")
        return answer

    def _fall_back(self, home: str, ids: list[str], why: str) -> list[str]:
        self.fallbacks += len(ids)
        self._last_fallback = f"node {home}: {why}"
        self._warn.warning("ids homed at node %s checked against this node's journal only "
                           "(a cast sent to another node too may be taken twice): %s",
                           home, why)
        return [LOCAL] * len(ids)

    async def _settle_at(self, home: str) -> None:
        """Tell a home what was settled for it, and what is settled meanwhile, in one
        request at a time."""
        try:
            while (waiting := self._to_settle.pop(home, None)) is not None:
                try:
                    async with asyncio.timeout(self.wait_s):
                        await self._request(home, IDS_REQUEST, ["settle", *waiting],
                                            self.wait_s)
                except (YPTaskError, TimeoutError) as exc:  # its claims expire there
                    self._warn.warning("could not tell node %s which of its ids were taken "
                                       "here: %s", home, exc)
        finally:
            self._settling.discard(home)

    # ------------------------------------------------------------------ as the home

    async def answer(self, peer: str, args: list[Any]) -> Any:
        """Answer a peer's `ids` link request."""
        if len(args) == 3 and args[0] == "claim" and _ids(args[1]) \
                and isinstance(args[2], (int, float)):
            return await self._claim_here(peer, args[1], min(float(args[2]), self.wait_s))
        if len(args) == 3 and args[0] == "settle" and _ids(args[1]) and _ids(args[2]):
            self._settle_here(peer, args[1], args[2])
            if args[1]:
                await self._journal.run(partial(Journal.remember_client_ids, ids=args[1]))
            return None
        raise ProtocolError(f"node {peer} sent a malformed {IDS_REQUEST} request")

    async def _claim_here(self, claimer: str, ids: list[str], hold_s: float) -> list[str]:
        """Claim ids homed here; wait up to `hold_s` for other claims of them to settle."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + hold_s
        verdicts: dict[str, str] = {}
        ask = ids
        while True:
            settled = self._settled  # taken before the read: no settle slips between
            known = await loop.run_in_executor(self._reads, self._reader.known, ask)
            verdicts.update(zip(ask, self.ledger.claim(claimer, ask, known, time.monotonic()),
                                strict=True))
            ask = [message_id for message_id, v in verdicts.items() if v == PENDING]
            left = deadline - loop.time()
            if not ask or left <= 0:
                return [verdicts[message_id] for message_id in ids]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await settled.wait()

    def _settle_here(self, claimer: str, taken: list[str], released: list[str]) -> None:
        self.ledger.settle(claimer, taken, released, time.monotonic())
        self._settled.set()
        self._settled = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    def status(self) -> dict[str, Any]:
        return {"fallbacks": self.fallbacks, "refused_pending": self.refused,
                "last_fallback": self._last_fallback}

    async def close(self) -> None:
        """Let the settles under way finish (each is bounded by `wait_s`), then close."""
        await asyncio.gather(*self._background, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._reads, self._reader.close)
        self._reads.shutdown()

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
