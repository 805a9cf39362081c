"""Inter-node links: BERT terms over TCP, authenticated with the cluster cookie.

A link is one TCP connection between two nodes of one cluster. It opens with a
handshake in which each side proves it knows the cookie without sending it
(Erlang's distribution does the same):

    dialer   -> {yptask_hello, Version, Cluster, Name, Boot, NonceD}
    acceptor -> {yptask_challenge, Cluster, Name, Boot, NonceA, Proof(A)}
    dialer   -> {yptask_auth, Proof(D)}
    acceptor -> {yptask_welcome}

Proof(A) = HMAC(cookie, "acceptor" NonceD NonceA), Proof(D) the same with
"dialer". Either side that finds the other's proof wrong, or another cluster
name, sends `{yptask_refused, Why}`, logs why and closes. After the handshake
every frame is `{packet, 4}` framing around a 32-byte HMAC-SHA256 and a BERT
term; the MAC covers the direction and a frame counter too, under a key drawn
from both nonces, so a frame can be neither forged, replayed nor reordered.

On top of the frames a `Link` carries requests both ways, each with an id so
many can be in flight: `{req, Id, Kind, Args}` is answered by `{resp, Id,
Packet}`, where Packet is a BERT-RPC reply or error, so an error raised on
the far node arrives as the same error class here.

Before the handshake a peer is a stranger: its frames are capped at 4 KiB and
decoded within `yptask.wire.decoding.LINK_HANDSHAKE` (a few elements, shallow, no
room to inflate), and what it sent is named in errors by `describe`,
never by a whole repr. After it, frames decode within `LINK`, big ones off
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from yptask.errors import LinkError, ProtocolError, YPTaskError
from yptask.wire import codec
from yptask.wire.bertrpc import ErrorReply, Reply, answer_result, error_reply, parse_packet
from yptask.wire.decoding import LINK, LINK_HANDSHAKE, Decoder
from yptask.wire.describe import describe

__all__ = ["HANDSHAKE_TIMEOUT_S", "Identity", "Link", "LinkRefused", "accept", "dial"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
HANDSHAKE_TIMEOUT_S = 5.0
MAX_LINK_FRAME = 64 * 1024 * 1024
MAX_HANDSHAKE_FRAME = 4096  # before the peer is authenticated, it gets no big buffers
MAC_BYTES = 32
NONCE_BYTES = 32

Handler = Callable[["Link", str, list[Any]], Awaitable[Any]]  # (link, kind, args) -> answer


class LinkRefused(LinkError):
    """Raised when a handshake fails: another cluster, a wrong cookie, or a broken peer."""


@dataclass(frozen=True)
class Identity:
    """Who is at one end of a link: cluster, node name and this run's boot id."""

    cluster: str
    name: str
    boot: str


class Link:
    """One authenticated connection to a peer node. Create with `dial` or `accept`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 key: bytes, dialer: bool, peer: Identity, handler: Handler,
                 decoder: Decoder | None = None) -> None:
        self.peer = peer
        self._decoder = decoder
        self.dialer = dialer
        self._reader = reader
        self._writer = writer
        self._key = key
        self._send_tag, self._receive_tag = (b"D", b"A") if dialer else (b"A", b"D")
        self._sent = itertools.count()
        self._received = itertools.count()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._handler = handler
        self._handlers: set[asyncio.Task[None]] = set()
        self._reading: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    def start(self) -> None:
        """Start reading: answers settle requests, requests go to the handler."""
        self._reading = asyncio.get_running_loop().create_task(
            self._read_forever(), name=f"link {self.peer.name}")

    async def request(self, kind: str, args: list[Any], timeout_s: float) -> Any:
        """Ask the peer; return its answer or raise its error (LinkError if the link fails)."""
        if self.closed.is_set():
            raise LinkError(f"the link to {self.peer.name} is closed")
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._send((codec.Atom("req"), request_id, kind, args))
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            raise LinkError(f"{self.peer.name} did not answer {kind} within "
                            f"{timeout_s} s") from None
        finally:
            self._pending.pop(request_id, None)

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading
        self._closed()

    # ------------------------------------------------------------------ internals

    async def _read_forever(self) -> None:
        try:
            while True:
                term = await self._receive()
                if _is(term, "resp", 3):
                    self._settle(term[1], term[2])
                elif _is(term, "req", 4) and isinstance(term[2], str) \
                        and isinstance(term[3], list):
                    task = asyncio.get_running_loop().create_task(
                        self._answer(term[1], term[2], term[3]))
                    self._handlers.add(task)
                    task.add_done_callback(self._handlers.discard)
                else:
                    raise ProtocolError(f"unexpected link frame {describe(term)}")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except YPTaskError as exc:
            log.warning("link with %s broken: %s", self.peer.name, exc)
        finally:
            self._closed()

    def _settle(self, request_id: Any, answer: Any) -> None:
        future = self._pending.get(request_id)
        if future is None or future.done():
            return  # its requester gave up
        try:
            packet = parse_packet(answer)
            if isinstance(packet, ErrorReply):
                future.set_exception(packet.to_exception(from_node=True))
            else:
                future.set_result(answer_result(packet))
        except YPTaskError as exc:
            future.set_exception(exc)

    async def _answer(self, request_id: Any, kind: str, args: list[Any]) -> None:
        try:
            packet: Reply | ErrorReply = Reply(await self._handler(self, kind, args))
        except Exception as exc:
            if not isinstance(exc, YPTaskError):
                log.exception("link request %s from %s failed", kind, self.peer.name)
            packet = error_reply(exc)
        with contextlib.suppress(ConnectionError, LinkError):
            await self._send((codec.Atom("resp"), request_id, packet.to_term()))

    async def _send(self, term: Any) -> None:
        if self.closed.is_set():
            raise LinkError(f"the link to {self.peer.name} is closed")
        body = codec.encode(term)
        mac = _mac(self._key, self._send_tag, next(self._sent), body)
        self._writer.write(struct.pack(">I", len(mac) + len(body)) + mac + body)
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            self._closed()
            raise LinkError(f"the link to {self.peer.name} broke: {exc}") from None

    async def _receive(self) -> Any:
        data = await _read_frame(self._reader)
        mac, body = data[:MAC_BYTES], data[MAC_BYTES:]
        expected = _mac(self._key, self._receive_tag, next(self._received), body)
        if not hmac.compare_digest(mac, expected):
            raise LinkError(f"a frame from {self.peer.name} failed its HMAC check")
        if self._decoder is None:
            return LINK.decode(body)
        return await self._decoder.decode(body, LINK)

    def _closed(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self._writer.close()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(LinkError(f"the link to {self.peer.name} closed"))
        for task in self._handlers:
            task.cancel()


# ---------------------------------------------------------------------- handshake


@dataclass(frozen=True)
class _Side:
    """This end of a handshake: who we are, the cookie, who answers requests, and the
    decoder of the link's big frames."""

    me: Identity
    cookie: bytes
    handler: Handler
    decoder: Decoder | None = None


async def dial(host: str, port: int, *, me: Identity, cookie: bytes, handler: Handler,
               timeout_s: float = HANDSHAKE_TIMEOUT_S, decoder: Decoder | None = None,
               allowed: Callable[[str], bool] | None = None) -> Link:
    """Connect to a peer's link port and authenticate; raise LinkRefused or LinkError.

    `allowed(ip)` is asked about the address connected to (a name may resolve
    anywhere) before anything is sent; False refuses it."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        raise LinkError(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from None
    where = f"{host}:{port}"
    address = writer.get_extra_info("peername")[0]
    if allowed is not None and not allowed(address):
        writer.close()
        raise LinkRefused(f"{where} ({address}) is not in this node's allow_from; not linking")
    return await _handshake(_dial_handshake(reader, writer, _Side(me, cookie, handler, decoder),
                                            where), writer, where, timeout_s)


async def _handshake(handshake: Awaitable[Link], writer: asyncio.StreamWriter, where: str,
                     timeout_s: float) -> Link:
    """Run one side of a handshake within `timeout_s`; on any failure close the
    connection, and say why as LinkRefused when it is the peer's doing."""
    try:
        async with asyncio.timeout(timeout_s):
            return await handshake
    except BaseException as exc:
        writer.close()
        if isinstance(exc, TimeoutError):
            raise LinkRefused(f"{where} did not finish the handshake in time") from None
        if isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)):
            raise LinkRefused(f"{where} closed the connection during the handshake") from None
        if isinstance(exc, YPTaskError) and not isinstance(exc, LinkRefused):
            raise LinkRefused(f"{where} is not a yptask node: {exc}") from None
        raise


async def _dial_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          side: _Side, where: str) -> Link:
    me, cookie = side.me, side.cookie
    nonce = os.urandom(NONCE_BYTES).hex()
    _write_plain(writer, (codec.Atom("yptask_hello"), PROTOCOL_VERSION, me.cluster, me.name,
                          me.boot, nonce))
    answer = await _read_handshake(reader)
    if _is(answer, "yptask_refused", 2):
        raise LinkRefused(f"{where} refused this node: {answer[1]}")
    if not (_is(answer, "yptask_challenge", 6) and _all_str(answer[1:6])):
        raise LinkRefused(f"{where} is not a yptask link port (it sent {describe(answer)})")
    _, cluster, name, boot, their_nonce, their_proof = answer
    peer = Identity(str(cluster), str(name), str(boot))
    if not hmac.compare_digest(their_proof, _proof(cookie, "acceptor", nonce, their_nonce)):
        why = "cookie mismatch: the two nodes do not share the cluster cookie"
        _write_plain(writer, (codec.Atom("yptask_refused"), why))
        raise LinkRefused(f"node {peer.name} at {where}: {why}")
    _write_plain(writer, (codec.Atom("yptask_auth"), _proof(cookie, "dialer", nonce,
                                                            their_nonce)))
    welcome = await _read_handshake(reader)
    if _is(welcome, "yptask_refused", 2):
        raise LinkRefused(f"node {peer.name} at {where} refused this node: {welcome[1]}")
    if not _is(welcome, "yptask_welcome", 1):
        raise LinkRefused(f"node {peer.name} at {where} sent {describe(welcome)}")
    link = Link(reader, writer, key=_session_key(cookie, nonce, their_nonce), dialer=True,
                peer=peer, handler=side.handler, decoder=side.decoder)
    link.start()
    return link


async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 me: Identity, cookie: bytes, handler: Handler,
                 timeout_s: float = HANDSHAKE_TIMEOUT_S, decoder: Decoder | None = None) -> Link:
    """Authenticate a connection a peer opened to our link port; raise LinkRefused."""
    where = "{}:{}".format(*writer.get_extra_info("peername")[:2])
    return await _handshake(_accept_handshake(reader, writer,
                                              _Side(me, cookie, handler, decoder), where),
                            writer, where, timeout_s)


async def _accept_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            side: _Side, where: str) -> Link:
    me, cookie = side.me, side.cookie
    hello = await _read_handshake(reader)
    if not (_is(hello, "yptask_hello", 6) and isinstance(hello[1], int)
            and _all_str(hello[2:6])):
        raise LinkRefused(f"{where} is not a yptask node (it sent {describe(hello)})")
    _, version, cluster, name, boot, their_nonce = hello
    peer = Identity(str(cluster), str(name), str(boot))
    if version != PROTOCOL_VERSION or cluster != me.cluster:
        why = (f"cluster {me.cluster!r} speaks link protocol {PROTOCOL_VERSION}; node "
               f"{peer.name} is in cluster {cluster!r}, protocol {version}")
        _write_plain(writer, (codec.Atom("yptask_refused"), why))
        raise LinkRefused(f"node {peer.name} at {where} refused: {why}")
    nonce = os.urandom(NONCE_BYTES).hex()
    _write_plain(writer, (codec.Atom("yptask_challenge"), me.cluster, me.name, me.boot, nonce,
                          _proof(cookie, "acceptor", their_nonce, nonce)))
    auth = await _read_handshake(reader)
    if _is(auth, "yptask_refused", 2):
        raise LinkRefused(f"node {peer.name} at {where} refused this node: {auth[1]}")
    if not (_is(auth, "yptask_auth", 2) and isinstance(auth[1], str) and hmac.compare_digest(
            auth[1], _proof(cookie, "dialer", their_nonce, nonce))):
        why = "cookie mismatch: the two nodes do not share the cluster cookie"
        _write_plain(writer, (codec.Atom("yptask_refused"), why))
        raise LinkRefused(f"node {peer.name} at {where}: {why}")
    _write_plain(writer, (codec.Atom("yptask_welcome"),))
    link = Link(reader, writer, key=_session_key(cookie, their_nonce, nonce), dialer=False,
                peer=peer, handler=side.handler, decoder=side.decoder)
    link.start()
    return link


# ---------------------------------------------------------------------- helpers


def _proof(cookie: bytes, role: str, dialer_nonce: str, acceptor_nonce: str) -> str:
    """Hex HMAC proving knowledge of the cookie; nonces are hex strings."""
    text = f"yptask proof {role} {dialer_nonce} {acceptor_nonce}"
    return hmac.digest(cookie, text.encode(), hashlib.sha256).hex()


def _session_key(cookie: bytes, dialer_nonce: str, acceptor_nonce: str) -> bytes:
    text = f"yptask session {dialer_nonce} {acceptor_nonce}"
    return hmac.digest(cookie, text.encode(), hashlib.sha256)


def _mac(key: bytes, direction: bytes, counter: int, body: bytes) -> bytes:
    return hmac.digest(key, direction + counter.to_bytes(8, "big") + body, hashlib.sha256)


async def _read_frame(reader: asyncio.StreamReader, cap: int = MAX_LINK_FRAME) -> bytes:
    header = await reader.readexactly(4)
    (length,) = struct.unpack(">I", header)
    if length > cap:
        raise LinkError(f"a link frame of {length} bytes is over the cap of {cap}")
    return await reader.readexactly(length)


async def _read_handshake(reader: asyncio.StreamReader) -> Any:
    # a stranger's frame: small, so decoded on the loop in microseconds
    return LINK_HANDSHAKE.decode(await _read_frame(reader, MAX_HANDSHAKE_FRAME))


def _write_plain(writer: asyncio.StreamWriter, term: Any) -> None:
    body = codec.encode(term)
    writer.write(struct.pack(">I", len(body)) + body)


def _is(term: Any, tag: str, size: int) -> bool:
    return (isinstance(term, tuple) and len(term) == size and isinstance(term[0], codec.Atom)
            and term[0] == tag)


def _all_str(values: tuple[Any, ...]) -> bool:
    return all(isinstance(v, str) and 0 < len(v) <= 256 for v in values)
