"""The timer lease: which one node may fire the cluster's timers, and in which epoch.

A node fires timers only while it holds the lease, and it holds the lease only
with the grants of a majority of the cluster's voters, for one epoch (a term
number that only grows). Every node is a voter and may become a candidate:

- A voter (`Voter`) grants the lease to one holder at a time, for `lease_s`
  from when it granted, by its own monotonic clock. It grants its holder again
  at once (a renewal); anyone else only once that grant has run out, and only
  for a newer epoch. Its ballot (holder and epoch) is kept on disk: a voter
  that restarts honours the grant it gave before it died for a full `lease_s`.
- A holder (`Lease`) counts its lease from before it asked, less a margin for
  clock drift, so it stops firing before any voter can grant the next one. Two
  leaders never fire at once: not after a SIGSTOP (the holder's clock ran on),
  not across a partition (a minority cannot win a majority), not when an old
  leader comes back (its voters are promised to the new one).
- The voters are the roster (each node writes itself into the replicated map
  as it starts and takes itself out when it stops cleanly) and every member
  heard from now. A crashed or cut-off node still counts, so a half that lost
  contact with the other cannot elect a leader of its own.
- Grants and renewals carry each timer's last fire: the holder renews right
  after it casts ticks, the voters keep the latest, and a new holder starts
  from the latest its majority knows. So a standby knows the last fire before
  it fires; a tick is fired twice only if a leader dies in the milliseconds
  between casting it and renewing.

Pure bookkeeping apart from the ballot file: callers pass the time in, and the
runner (`yptask.timers.leader`) does the asking over the links.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Ballot", "Lease", "Voter", "merge_fires", "quorum"]

log = logging.getLogger(__name__)

DRIFT = 0.1  # a holder gives up this share of its lease early: clocks run at other rates


@dataclass(frozen=True)
class Ballot:
    """A voter's promise: the lease is `holder`'s, in `epoch`, until `until` (monotonic)."""

    epoch: int = 0
    holder: str = ""
    until: float = 0.0


def quorum(voters: int) -> int:
    """How many grants a lease needs among `voters`: a strict majority."""
    return voters // 2 + 1


def merge_fires(into: dict[str, float], news: Any) -> None:
    """Keep the latest fire of each timer (malformed news from a peer is ignored)."""
    if not isinstance(news, dict):
        return
    for name, fired in news.items():
        if isinstance(name, str) and isinstance(fired, (int, float)) \
                and not isinstance(fired, bool) and fired > into.get(name, float("-inf")):
            into[name] = float(fired)


class Voter:
    """One node's vote: whom it granted the lease, in which epoch, and until when."""

    def __init__(self, path: Path, lease_s: float, now: float) -> None:
        self.path = path
        self.lease_s = lease_s
        self.fires: dict[str, float] = {}  # the latest fire of each timer this voter heard
        self.ballot = Ballot()
        self.unsaved = False  # a grant of a new epoch not yet on disk: see save
        saved = self._read()
        if saved is not None:  # a grant given before a restart stands for a full lease
            self.ballot = Ballot(saved.epoch, saved.holder, now + lease_s)

    def ask(self, candidate: str, epoch: int, fires: Any, now: float) -> dict[str, Any]:
        """A candidate (or the holder, renewing) asks for the lease; the answer says
        whether it is granted, whom this voter is promised to, and the fires it knows."""
        merge_fires(self.fires, fires)
        current = self.ballot
        renewal = candidate == current.holder and epoch == current.epoch
        fresh = epoch > current.epoch and (now >= current.until or candidate == current.holder)
        granted = renewal or fresh
        if granted:
            self.ballot = Ballot(epoch, candidate, now + self.lease_s)
            self.unsaved = self.unsaved or not renewal
        return {"granted": granted, **self.promise(now), "fires": dict(self.fires)}

    def release(self, holder: str, epoch: int, fires: Any, now: float) -> None:
        """The holder gives the lease up (it is stopping): the next one need not wait."""
        merge_fires(self.fires, fires)
        if (holder, epoch) == (self.ballot.holder, self.ballot.epoch):
            self.ballot = Ballot(epoch, holder, now)

    def promise(self, now: float) -> dict[str, Any]:
        """Whom this voter is promised to now ("" once the grant ran out)."""
        ballot = self.ballot
        live = now < ballot.until
        return {"epoch": ballot.epoch, "holder": ballot.holder if live else "",
                "left_s": round(ballot.until - now, 3) if live else 0.0}

    def _read(self) -> Ballot | None:
        try:
            saved = json.loads(self.path.read_text())
            return Ballot(int(saved["epoch"]), str(saved["holder"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Unreadable: honour "some grant" for a full lease, to nobody in particular.
            log.warning("timer ballot %s unreadable (%s): granting nothing new for %.1f s",
                        self.path, exc, self.lease_s)
            return Ballot(0, "?")

    def save(self) -> None:
        """Write a new grant through to disk (call before the grant is answered, off the
        event loop: it syncs), so that a restart cannot forget it. Rare: a new epoch."""
        if not self.unsaved:
            return
        self.unsaved = False
        spare = self.path.with_suffix(".new")
        with open(spare, "w") as out:
            json.dump({"epoch": self.ballot.epoch, "holder": self.ballot.holder}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(spare, self.path)


@dataclass
class Lease:
    """This node's own lease, as a holder sees it."""

    epoch: int = 0
    valid_until: float = 0.0  # monotonic; fire only before it

    def holding(self, now: float) -> bool:
        return now < self.valid_until

    def granted(self, epoch: int, asked_at: float, lease_s: float) -> None:
        """A majority granted `epoch`, asked at `asked_at`: hold it for less than they do."""
        self.epoch = epoch
        self.valid_until = asked_at + lease_s * (1 - DRIFT)

    def lost(self) -> None:
        self.valid_until = 0.0
