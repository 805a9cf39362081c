"""Membership: which nodes are in the cluster, how to reach them, and whether they are up.

Nodes hear from each other through heartbeats on their links (mDNS can tell who
exists, never who died: receivers keep a crashed node's records for many
minutes). A member not heard from for `suspect_after_s` is suspect; after
`down_after_s` it is down. Hearing from it again brings it back; hearing a new
boot id means it restarted. This module is pure bookkeeping: callers pass the
time in, so it is tested without a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["Change", "Member", "MemberState", "Membership"]


class MemberState(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(frozen=True)
class Member:
    """One node as the others know it."""

    name: str
    boot: str
    link: str  # host:port of its link port
    http: str = ""  # its publisher API URL
    started_at: float = 0.0  # wall clock, its own
    state: MemberState = MemberState.ALIVE
    last_heard: float = 0.0  # monotonic, ours
    load: dict[str, Any] = field(default_factory=dict)  # task -> {"queued": n, "workers": n}

    def to_term(self) -> dict[str, Any]:
        """What a heartbeat says about its sender."""
        return {"name": self.name, "boot": self.boot, "link": self.link, "http": self.http,
                "started_at": self.started_at, "load": self.load}

    @classmethod
    def from_term(cls, term: Any) -> Member | None:
        """Read a heartbeat's sender, or None if it is not one."""
        if not isinstance(term, dict):
            return None
        name, boot, link = term.get("name"), term.get("boot"), term.get("link")
        if not (isinstance(name, str) and isinstance(boot, str) and isinstance(link, str)):
            return None
        http, started = term.get("http", ""), term.get("started_at", 0.0)
        load = term.get("load", {})
        return cls(name, boot, link, http if isinstance(http, str) else "",
                   float(started) if isinstance(started, (int, float)) else 0.0,
                   load=load if isinstance(load, dict) else {})


@dataclass(frozen=True)
class Change:
    """A member's state moved: joined, restarted, suspect, down, or back up."""

    member: Member
    what: str  # "joined" | "restarted" | "suspect" | "down" | "back"


class Membership:
    """The members this node knows, itself excluded."""

    def __init__(self, suspect_after_s: float = 1.5, down_after_s: float = 3.0) -> None:
        self.suspect_after_s = suspect_after_s
        self.down_after_s = down_after_s
        self.members: dict[str, Member] = {}

    def heard(self, news: Member, now: float) -> Change | None:
        """Record that `news.name` spoke (a heartbeat, an answer) at `now`."""
        known = self.members.get(news.name)
        member = replace(news, state=MemberState.ALIVE, last_heard=now)
        self.members[news.name] = member
        if known is None:
            return Change(member, "joined")
        if known.boot != news.boot:
            return Change(member, "restarted")
        if known.state is not MemberState.ALIVE:
            return Change(member, "back")
        return None

    def check(self, now: float) -> list[Change]:
        """Mark members silent for too long suspect, then down; return the changes."""
        changes = []
        for name, member in self.members.items():
            silent = now - member.last_heard
            if silent >= self.down_after_s and member.state is not MemberState.DOWN:
                state, what = MemberState.DOWN, "down"
            elif (self.suspect_after_s <= silent < self.down_after_s
                  and member.state is MemberState.ALIVE):
                state, what = MemberState.SUSPECT, "suspect"
            else:
                continue
            self.members[name] = replace(member, state=state)
            changes.append(Change(self.members[name], what))
        return changes

    def alive(self) -> list[Member]:
        """Members up (alive or merely suspect), by name."""
        return sorted((m for m in self.members.values() if m.state is not MemberState.DOWN),
                      key=lambda m: m.name)

    def is_up(self, name: str) -> bool:
        member = self.members.get(name)
        return member is not None and member.state is not MemberState.DOWN
