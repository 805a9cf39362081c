"""The cluster: this node's links to its peers, their heartbeats, and the config they share.

A node listens on its link port and dials every peer it learns of: from mDNS,
from static seeds (`--join`), and from the member lists peers gossip in their
heartbeats (so one seed is enough). Each node sends its requests on the link
it dialed and answers on the links it accepted; a peer that drops is dialed
again, with a capped backoff, for as long as it is known.

Every `heartbeat_s` a node heartbeats each peer with who it is, its load and
the members it knows; the answer says the same of the peer. `Membership`
turns silence into suspect and down. Config travels two ways: each local
write is pushed to every peer at once, and every `sync_every_s` (and on every
new link) a node trades digests with each peer and both take what they lack
(anti-entropy), so a node that was away catches up when it returns.

The node plugs in through `ClusterNode`: it answers forwarded deliveries and
calls, reports its load, and hears of members changing. Config entries go to
and come from the node's `ConfigMap` (yptask.store.config_map), which tells the
node's parts of every change itself.

The node's `allow_from` networks cover the link port: a connection from
elsewhere is closed before any handshake work, and a peer found at an
address outside them (by seed, gossip or mDNS) is not dialed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from yptask.access.addresses import AllowList
from yptask.cluster.discovery import DEFAULT_SERVICE_TYPE, Discovery, Sighting
from yptask.cluster.link import HANDSHAKE_TIMEOUT_S, Identity, Link, LinkRefused, accept, dial
from yptask.cluster.membership import Change, Member, Membership, MemberState
from yptask.config.node import NodeConfig
from yptask.connection_limits import ConnectionLimit, caps, guarded
from yptask.errors import LinkError, NoSuchFunction, ProtocolError, YPTaskError
from yptask.log_limit import LogLimiter
from yptask.store.config_map import ConfigMap
from yptask.store.replicated import Entry, digest_from_term, digest_to_term
from yptask.wire.decoding import Decoder
from yptask.wire.describe import describe

__all__ = ["Cluster", "ClusterNode", "ClusterSettings"]

log = logging.getLogger(__name__)

MAX_REDIAL_S = 2.0
NODE_REQUESTS = frozenset({"deliver", "call"})  # link requests the node itself answers


class ClusterNode(Protocol):
    """What the cluster needs from its node."""

    def heartbeat_load(self) -> dict[str, Any]: ...

    async def link_request(self, peer: str, kind: str, args: list[Any]) -> Any: ...

    def member_changed(self, change: Change) -> None: ...


@dataclass(frozen=True)
class ClusterSettings:
    """How this node takes part in its cluster (from NodeConfig)."""

    cluster: str
    name: str
    cookie: bytes
    link_host: str
    link_port: int
    http_url: str = ""
    seeds: tuple[tuple[str, int], ...] = ()
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ()  # default: the link host
    service_type: str = DEFAULT_SERVICE_TYPE
    heartbeat_s: float = 0.5
    suspect_after_s: float = 1.5
    down_after_s: float = 3.0
    sync_every_s: float = 2.0
    version: str = ""
    max_connections: int = 256  # links accepted, authenticated or not
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S  # for a stranger to authenticate
    allow_from: tuple[str, ...] = ()  # networks (CIDR) that may link; empty: any

    @classmethod
    def of(cls, c: NodeConfig, *, cookie: bytes, http_url: str, version: str
           ) -> ClusterSettings:
        """A node's settings, as its config gives them."""
        seeds = tuple((host, int(port)) for host, _, port in (s.rpartition(":") for s in c.join))
        return cls(cluster=c.cluster, name=c.name, cookie=cookie, link_host=c.link_host,
                   link_port=c.link_port, http_url=http_url, seeds=seeds, mdns=c.mdns,
                   service_type=c.mdns_type, heartbeat_s=c.heartbeat_s,
                   suspect_after_s=c.down_after_s / 2, down_after_s=c.down_after_s,
                   version=version, max_connections=caps(c).link,
                   handshake_timeout_s=c.link_handshake_timeout_s, allow_from=c.allow_from)


@dataclass
class _Target:
    """An address to keep a link to, and its redial backoff."""

    host: str
    port: int
    name: str | None = None  # None: a seed not yet answered
    backoff_s: float = 0.1
    next_try: float = 0.0
    dialing: bool = False


class Cluster:
    """Links, membership and config replication for one node."""

    def __init__(self, settings: ClusterSettings, node: ClusterNode, config: ConfigMap,
                 boot: str) -> None:
        self._strangers = LogLimiter(log)  # refused links: a line every few seconds
        self.settings = settings
        self.node = node
        self.config = config
        self.me = Identity(settings.cluster, settings.name, boot)
        self.started_at = time.time()
        self.membership = Membership(settings.suspect_after_s, settings.down_after_s)
        self.link_address = ""
        self._out: dict[str, Link] = {}  # peer name -> the link we dialed
        self._in: set[Link] = set()
        self._targets: dict[tuple[str, int], _Target] = {}
        self._server: asyncio.Server | None = None
        self._discovery: Discovery | None = None
        self._allowed = AllowList(settings.allow_from)
        self._decoder = Decoder("link decode")
        self._background: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._handlers: dict[str, Callable[[Link, list[Any]], Awaitable[Any]]] = {
            "heartbeat": self._on_heartbeat, "sync": self._on_sync, "push": self._on_push}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.settings
        self._accepted: ConnectionLimit[asyncio.StreamWriter] = ConnectionLimit(
            "link", "max_link_connections", s.max_connections)
        # Past the cap a stranger gets a plain close: it cannot be told why before it is
        # known, and a peer redials with a backoff.
        self._server = await asyncio.start_server(
            guarded(self._accepted, self._on_connect, lambda writer, why: None),
            s.link_host, s.link_port)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.link_address = f"{host}:{port}"
        for seed in s.seeds:
            self._target(*seed)
        if s.mdns:
            self._discovery = Discovery(
                cluster=s.cluster, name=s.name, boot=self.me.boot, host=host, port=port,
                http=s.http_url, version=s.version,
                interfaces=list(s.mdns_interfaces or (host,)), found=self._sighted,
                service_type=s.service_type)
            await self._discovery.start()
        loop = asyncio.get_running_loop()
        self._loops = [loop.create_task(self._connect_forever(), name="cluster connect"),
                       loop.create_task(self._heartbeat_forever(), name="cluster heartbeat"),
                       loop.create_task(self._check_forever(), name="cluster check"),
                       loop.create_task(self._sync_forever(), name="cluster sync")]
        log.info("cluster %s: link port %s%s", s.cluster, self.link_address,
                 f", mDNS {s.service_type}" if s.mdns else "")

    async def stop(self) -> None:
        for task in [*self._loops, *self._background]:
            task.cancel()
        for task in [*self._loops, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._discovery is not None:
            await self._discovery.stop()
        if self._server is not None:
            self._server.close()
        for link in [*self._out.values(), *self._in]:
            await link.close()
        self._decoder.close()

    # ------------------------------------------------------------------ for the node

    def members(self) -> list[dict[str, Any]]:
        """Every member, this node first: state, addresses, boot time, last heard."""
        now = time.monotonic()
        rows = [{"name": self.me.name, "state": "alive", "self": True,
                 "link": self.link_address, "http": self.settings.http_url,
                 "boot": self.me.boot, "started_at": self.started_at, "last_heard_s": 0.0}]
        for member in sorted(self.membership.members.values(), key=lambda m: m.name):
            rows.append({"name": member.name, "state": member.state.value, "self": False,
                         "link": member.link, "http": member.http, "boot": member.boot,
                         "started_at": member.started_at,
                         "last_heard_s": round(now - member.last_heard, 2)})
        return rows

    def up(self) -> list[Member]:
        """Peers not declared down, by name."""
        return self.membership.alive()

    def publish(self, entries: list[Entry]) -> None:
        """Push local config writes to every peer now (anti-entropy repairs any miss)."""
        self._spawn(self.publish_now(entries))

    async def publish_now(self, entries: list[Entry]) -> None:
        """Push local config writes to every peer, and wait until each took them or failed
        (for writes that must leave before the node does)."""
        terms = [entry.to_term() for entry in entries]
        await asyncio.gather(*(self._quietly(link.request("push", [terms], self._timeout()))
                               for link in list(self._out.values())))

    def serve(self, kind: str, handler: Callable[[str, list[Any]], Awaitable[Any]]) -> None:
        """Answer the link requests of one `kind` with `handler(peer name, args)`."""
        self._handlers[kind] = lambda link, args: handler(link.peer.name, args)

    async def request(self, peer: str, kind: str, args: list[Any], timeout_s: float) -> Any:
        """Ask a peer on our link to it; LinkError if there is none or it fails."""
        link = self._out.get(peer)
        if link is None or link.closed.is_set():
            raise LinkError(f"no link to node {peer}")
        return await link.request(kind, args, timeout_s)

    # ------------------------------------------------------------------ links

    def _sighted(self, sighting: Sighting) -> None:
        self._target(sighting.host, sighting.port, sighting.name)

    def _target(self, host: str, port: int, name: str | None = None) -> None:
        key = (host, port)
        target = self._targets.get(key)
        if target is None:
            self._targets[key] = _Target(host, port, name)
        elif name is not None:
            target.name = name
            target.next_try = min(target.next_try, time.monotonic())  # seen again: try now

    async def _connect_forever(self) -> None:
        while True:
            now = time.monotonic()
            for target in list(self._targets.values()):
                linked = target.name is not None and target.name in self._out
                if not linked and not target.dialing and now >= target.next_try:
                    target.dialing = True
                    self._spawn(self._dial(target))
            await asyncio.sleep(0.1)

    async def _dial(self, target: _Target) -> None:
        where = f"{target.host}:{target.port}"
        try:
            # Bounded like any request, not by a stranger's handshake time: a dial begun
            # into a partition gives up soon, so a fresh one links as soon as it heals.
            link = await dial(target.host, target.port, me=self.me,
                              cookie=self.settings.cookie, handler=self._handle,
                              decoder=self._decoder, allowed=self._allowed.allows,
                              timeout_s=self._timeout())
        except LinkRefused as exc:
            log.warning("link to %s refused: %s", where, exc)
            self._backoff(target, refused=True)
            return
        except LinkError as exc:
            log.debug("link to %s: %s", where, exc)
            self._backoff(target)
            return
        finally:
            target.dialing = False
        peer = link.peer.name
        if peer == self.me.name or peer in self._out:  # ourselves via a seed, or a duplicate
            await link.close()
            if peer == self.me.name:
                del self._targets[(target.host, target.port)]
            return
        target.name, target.backoff_s = peer, 0.1
        self._out[peer] = link
        log.info("linked to node %s at %s (boot %s)", peer, where, link.peer.boot)
        self._spawn(self._after_link(link, target))

    async def _after_link(self, link: Link, target: _Target) -> None:
        await self._heartbeat(link)
        await self._quietly(self._sync(link))
        await link.closed.wait()
        if self._out.get(link.peer.name) is link:
            del self._out[link.peer.name]
        target.next_try = time.monotonic() + 0.1

    def _backoff(self, target: _Target, *, refused: bool = False) -> None:
        target.next_try = time.monotonic() + (MAX_REDIAL_S * 5 if refused else target.backoff_s)
        # A member (a target with a name) that restarts is back within a heartbeat or two;
        # an address nobody answered from yet backs off further.
        cap = min(MAX_REDIAL_S, self.settings.heartbeat_s) if target.name else MAX_REDIAL_S
        target.backoff_s = min(target.backoff_s * 2, cap)

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not self._allowed.allows(peer[0] if peer else None):
            self._strangers.warning("refused a link from %s: not in allow_from", peer)
            writer.close()
            return
        try:
            link = await accept(reader, writer, me=self.me, cookie=self.settings.cookie,
                                handler=self._handle, decoder=self._decoder,
                                timeout_s=self.settings.handshake_timeout_s)
        except YPTaskError as exc:  # LinkRefused, and anything else a stranger may cause
            self._strangers.warning("refused a link: %s", exc)
            return
        self._in.add(link)
        self._spawn(self._forget_when_closed(link))

    async def _forget_when_closed(self, link: Link) -> None:
        await link.closed.wait()
        self._in.discard(link)

    async def _handle(self, link: Link, kind: str, args: list[Any]) -> Any:
        """Answer a peer's request on any link."""
        handler = self._handlers.get(kind)
        if handler is not None:
            return await handler(link, args)
        if kind in NODE_REQUESTS:
            return await self.node.link_request(link.peer.name, kind, args)
        raise NoSuchFunction(f"no link request {kind!r}")

    # ------------------------------------------------------------------ heartbeats

    def _me_as_member(self) -> Member:
        return Member(self.me.name, self.me.boot, self.link_address, self.settings.http_url,
                      self.started_at, load=self.node.heartbeat_load())

    def _gossip(self) -> list[list[Any]]:
        return [[m.name, m.link] for m in self.membership.alive()]

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            await asyncio.gather(*(self._heartbeat(link) for link in list(self._out.values())))

    async def _heartbeat(self, link: Link) -> None:
        try:
            answer = await link.request("heartbeat", [self._me_as_member().to_term(),
                                                      self._gossip()], self._timeout())
        except YPTaskError:
            return
        self._heard(link, answer)

    async def _on_heartbeat(self, link: Link, args: list[Any]) -> Any:
        if len(args) != 2:
            raise ProtocolError("heartbeat takes [member, peers]")
        member = self._heard(link, args[0])
        # The peers it knows, and the peer itself: a node that only dialled us (joined by a
        # seed) gets a link from us too, so our heartbeats bring it the members we know.
        known = args[1] if isinstance(args[1], list) else []
        if member is not None:
            known = [*known, [member.name, member.link]]
        for pair in known:
            if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[1], str) \
                    and pair[0] != self.me.name and pair[0] not in self._out:
                host, _, port = pair[1].rpartition(":")
                if port.isdigit():
                    self._target(host, int(port), str(pair[0]))
        return self._me_as_member().to_term()

    def _heard(self, link: Link, term: Any) -> Member | None:
        """Note a peer's heartbeat (or its answer to ours); the member it describes."""
        member = Member.from_term(term)
        if member is None or member.name != link.peer.name:
            log.warning("node %s sent a malformed heartbeat", link.peer.name)
            return None
        change = self.membership.heard(member, time.monotonic())
        if change is not None:
            self._report(change)
        return member

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(min(0.2, self.settings.heartbeat_s))
            for change in self.membership.check(time.monotonic()):
                self._report(change)
                if change.member.state is MemberState.DOWN:
                    link = self._out.pop(change.member.name, None)
                    if link is not None:
                        await link.close()

    def _report(self, change: Change) -> None:
        level = logging.WARNING if change.what in ("suspect", "down") else logging.INFO
        log.log(level, "node %s %s (%s, boot %s)", change.member.name, change.what,
                change.member.link, change.member.boot)
        link = self._out.get(change.member.name)
        if change.what == "back" and link is not None:
            # Back over a link that never closed (it was suspect or paused, not down): what
            # it missed is traded now, not at the next anti-entropy round.
            self._spawn(self._quietly(self._sync(link)))
        self.node.member_changed(change)

    # ------------------------------------------------------------------ config

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sync_every_s)
            await asyncio.gather(*(self._quietly(self._sync(link))
                                   for link in list(self._out.values())))

    async def _sync(self, link: Link) -> None:
        """Anti-entropy with one peer: take what it has newer, give what we have newer."""
        answer = await link.request("sync", [digest_to_term(await self.config.digest())],
                                    self._timeout())
        if not (isinstance(answer, list) and len(answer) == 2 and isinstance(answer[0], list)):
            raise ProtocolError(f"node {link.peer.name} answered sync with {describe(answer)}")
        await self.config.merge([Entry.from_term(term) for term in answer[0]])
        theirs = digest_from_term(answer[1])
        ours = [entry.to_term() for entry in await self.config.newer_than(theirs)]
        if ours:
            await link.request("push", [ours], self._timeout())

    async def _on_sync(self, link: Link, args: list[Any]) -> Any:
        theirs = digest_from_term(args[0] if args else None)
        newer = await self.config.newer_than(theirs)
        return [[entry.to_term() for entry in newer], digest_to_term(await self.config.digest())]

    async def _on_push(self, link: Link, args: list[Any]) -> Any:
        if not args or not isinstance(args[0], list):
            raise ProtocolError("push takes [entries]")
        await self.config.merge([Entry.from_term(term) for term in args[0]])
        return None

    # ------------------------------------------------------------------ helpers

    def _timeout(self) -> float:
        return max(1.0, self.settings.heartbeat_s * 4)

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _quietly(coroutine: Awaitable[Any]) -> None:
        with contextlib.suppress(YPTaskError):
            await coroutine
