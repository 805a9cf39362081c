"""The Redis-protocol ingress: casts over RESP, for any language's Redis client. Off by default.

A node with the setting `redis = "HOST:PORT"` listens there and serves:

    PUBLISH name msg             -> :N, N the tasks subscribed to name
    RPUSH name msg [msg ...]     -> :N, N the messages cast (LPUSH: the same)
    AUTH [user] token            a publisher token (or the admin token)
    HELLO [2|3 [AUTH user token] [SETNAME name]], PING [msg], ECHO msg, QUIT,
    SELECT 0, CLIENT SETNAME|SETINFO|GETNAME|ID, COMMAND [DOCS|COUNT]

Every cast is answered once it is journaled, as over JSON-RPC. A message's
bytes become its payload by `yptask.wire.resp.payload_of` (JSON if they are
JSON, else the text). Commands pipelined in one read are parsed and answered
in order; their casts go to the node together, one group commit. An error of
a cast is one `-CODE text` line (`ERROR_CODES`) and the connection serves on;
malformed input, or a command over a bound (`yptask.wire.resp.RequestLimits`:
a bulk string over `max_payload_bytes`, 64 KiB before a token on a node with
`api_tokens`), gets one `-ERR Protocol error` line and that connection is
closed. So is one past `max_redis_connections`, one with no whole command for
`redis_idle_timeout_s`, and one from outside `allow_from`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

from yptask import __version__
from yptask.access.addresses import is_loopback
from yptask.access.policy import AccessPolicy, current_publisher
from yptask.connection_limits import ConnectionLimit, caps, guarded
from yptask.errors import (
    IdPending,
    NodeStopping,
    NotAccepting,
    Overloaded,
    ProtocolError,
    YPTaskError,
)
from yptask.ingress.cast import CastRequest
from yptask.log_limit import LogLimiter
from yptask.service import Service
from yptask.wire import resp
from yptask.wire.resp import RequestLimits, RequestParser

__all__ = ["ERROR_CODES", "RespEndpoint", "error_line"]

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024  # one read: the most a connection holds beyond one command
PRE_AUTH_MAX_COMMAND = 64 * 1024  # before a token, on a node that wants one
COMMAND_HEADROOM = 64 * 1024  # a command's bytes besides its one message: name, headers
CASTS = frozenset({b"PUBLISH", b"RPUSH", b"LPUSH"})
BEFORE_AUTH = frozenset({b"AUTH", b"HELLO", b"QUIT"})
NOAUTH = "NOAUTH Authentication required."
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."
# The code an error's line starts with, by class (the most specific wins); ERR otherwise.
ERROR_CODES: dict[type[YPTaskError], str] = {
    IdPending: "TRYAGAIN", NotAccepting: "NOTACCEPTING", Overloaded: "OVERLOADED",
    NodeStopping: "STOPPING"}


def error_line(exc: YPTaskError, before: str = "") -> bytes:
    """The error reply for a refused command: its code, `before`, the error's text."""
    code = next((ERROR_CODES[k] for k in type(exc).__mro__ if k in ERROR_CODES), "ERR")
    return resp.error(f"{code} {before}{exc}")


@dataclass
class _Session:
    """One client's connection: its protocol version, whether it may cast, its name."""

    id: int
    authorized: bool
    protocol: int = 2
    name: str = ""
    quit: bool = False
    busy: bool = False  # answering what it sent (a stop lets it finish)


@dataclass
class _Casts:
    """Casts of consecutive commands, sent to the node together; each command's reply
    goes to its place in the replies."""

    requests: list[CastRequest] = field(default_factory=list)
    # per command: its place in the replies, its command name, and for each of its
    # messages the index of its request, or the error that refused it before sending
    commands: list[tuple[int, bytes, list[int | YPTaskError]]] = field(default_factory=list)


class RespEndpoint:
    """A TCP server speaking the Redis protocol to publishers, in front of one node."""

    def __init__(self, node: Service, access: AccessPolicy) -> None:
        self.node = node
        self.access = access
        self._strangers = LogLimiter(log)  # refusals: a line every few seconds
        self._server: asyncio.Server | None = None
        self._ids = itertools.count(1)
        self._open: dict[asyncio.StreamWriter, _Session] = {}
        self._stopping = False
        self.address = ""
        config = node.config
        self.limits = RequestLimits(
            max_bulk=config.max_payload_bytes,
            max_command=max(config.max_payload_bytes, config.max_body_bytes) + COMMAND_HEADROOM)
        self.pre_auth = RequestLimits(max_bulk=PRE_AUTH_MAX_COMMAND,
                                      max_inline=PRE_AUTH_MAX_COMMAND,
                                      max_command=PRE_AUTH_MAX_COMMAND)

    async def start(self, host: str, port: int) -> str:
        """Listen on host:port; return the address listened on."""
        if self.access.publishing_open and not is_loopback(host):
            log.warning("SECURITY: this node listens for the Redis protocol on %s with no "
                        "publisher tokens: anyone who reaches it may cast", host)
        self.connections: ConnectionLimit[asyncio.StreamWriter] = ConnectionLimit(
            "Redis-protocol", "max_redis_connections", caps(self.node.config).redis)
        self._server = await asyncio.start_server(
            guarded(self.connections, self._serve, self._refuse), host, port)
        sock_host, sock_port = self._server.sockets[0].getsockname()[:2]
        self.address = f"{sock_host}:{sock_port}"
        return self.address

    async def stop(self) -> None:
        """Listen no more; close the connections waiting for a command (the others once
        their replies are written)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
            for writer, session in list(self._open.items()):
                if not session.busy:
                    writer.close()
            await self._server.wait_closed()

    @staticmethod
    def _refuse(writer: asyncio.StreamWriter, why: str) -> None:
        writer.write(resp.error(f"ERR max number of clients reached: {why}"))  # never waits

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            if not self.access.address_allowed(peer[0] if peer else None):
                self._strangers.warning("refused a Redis-protocol client from %s: not in "
                                        "allow_from", peer)
                writer.write(resp.error("DENIED this address may not use this node"))
                await writer.drain()
                return
            session = self._open[writer] = _Session(next(self._ids),
                                                    authorized=self.access.publishing_open)
            await self._converse(reader, writer, session, peer)
        except ConnectionError:
            pass
        except Exception:  # a bug here ends this connection only; the node serves on
            log.exception("Redis-protocol client %s: unexpected error; closing", peer)
        finally:
            self._open.pop(writer, None)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        session: _Session, peer: Any) -> None:
        """Read, answer what is whole, write the answers; until the client goes, quits,
        idles or breaks the protocol."""
        parser = RequestParser(self.limits if session.authorized else self.pre_auth)
        idle_s = self.node.config.redis_idle_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + idle_s  # for the next whole command
        while not (session.quit or self._stopping):
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:  # idle, or a command trickling in: either holds a place
                log.debug("Redis-protocol client %s: no whole command in %.0f s "
                          "(redis_idle_timeout_s); closing", peer, idle_s)
                return
            if not data:
                return
            parser.feed(data)
            session.busy = True
            replies, broken = await self._answer(parser, session)
            if replies:
                deadline = loop.time() + idle_s
            if broken is not None:
                self._strangers.warning("Redis-protocol client %s: %s; closing", peer, broken)
                replies.append(resp.error(f"ERR Protocol error: {broken}"))
            if replies:
                writer.write(b"".join(replies))
                try:
                    async with asyncio.timeout(idle_s):  # a client that never reads
                        await writer.drain()
                except TimeoutError:
                    return
            session.busy = False
            if broken is not None:
                return

    async def _answer(self, parser: RequestParser, session: _Session
                      ) -> tuple[list[bytes], ProtocolError | None]:
        """The replies to every whole command received, in order, and the protocol error
        that ends the connection after them, if any."""
        replies: list[bytes] = []
        casts = _Casts()
        broken: ProtocolError | None = None
        while not session.quit:
            try:
                command = parser.next_command()
            except ProtocolError as exc:
                broken = exc
                break
            if command is None:
                break
            verb = command[0].upper()
            if verb in CASTS and session.authorized:
                if len(command) < 3 or (verb == b"PUBLISH" and len(command) != 3):
                    replies.append(_arity(verb))
                    continue
                self._queue(casts, len(replies), verb, command)
                replies.append(b"")  # its place, filled once its casts are answered
                continue
            await self._flush(casts, replies)  # what came before, first
            replies.append(self._control(verb, command, session))
            parser.limits = self.limits if session.authorized else self.pre_auth
        await self._flush(casts, replies)
        return replies, broken

    @staticmethod
    def _queue(casts: _Casts, place: int, verb: bytes, command: list[bytes]) -> None:
        """Queue the casts of a PUBLISH, RPUSH or LPUSH."""
        name = command[1].decode("utf-8", "replace")  # the node refuses what is no name
        outcomes: list[int | YPTaskError] = []
        for data in command[2:]:
            try:
                payload = resp.payload_of(data)
            except YPTaskError as exc:
                outcomes.append(exc)
                continue
            outcomes.append(len(casts.requests))
            casts.requests.append(CastRequest(name, payload))
        casts.commands.append((place, verb, outcomes))

    async def _flush(self, casts: _Casts, replies: list[bytes]) -> None:
        """Cast what is queued, and put each command's reply in its place."""
        if not casts.commands:
            return
        results: list[Any] = []
        if casts.requests:
            try:
                results = await self.node.cast_many(casts.requests)
            except YPTaskError as exc:  # refused whole (the node is stopping)
                results = [exc] * len(casts.requests)
            except Exception as exc:
                log.exception("Redis-protocol casts failed")
                results = [YPTaskError(f"internal error: {type(exc).__name__}; see the "
                                       "node's log")] * len(casts.requests)
        for place, verb, outcomes in casts.commands:
            done = [o if isinstance(o, YPTaskError) else results[o] for o in outcomes]
            replies[place] = _cast_reply(verb, done)
        casts.requests.clear()
        casts.commands.clear()

    def _control(self, verb: bytes, command: list[bytes], session: _Session) -> bytes:
        """The reply to any command but a cast (or to a cast before AUTH)."""
        if not session.authorized and verb not in BEFORE_AUTH:
            return resp.error(NOAUTH)
        handler = _CONTROLS.get(verb)
        if handler is None:
            return resp.error(f"ERR unknown command '{_shown(command[0])}', with args "
                              "beginning with: " + " ".join(f"'{_shown(a)}'"
                                                            for a in command[1:4]))
        return handler(self, command[1:], session)

    # ------------------------------------------------------------------ the controls

    def _auth(self, args: list[bytes], session: _Session) -> bytes:
        if len(args) not in (1, 2):
            return _arity(b"AUTH")
        return b"+OK\r\n" if self._log_in(args, session) else resp.error(WRONGPASS)

    def _log_in(self, args: list[bytes], session: _Session) -> bool:
        """AUTH's [user] token: a publisher token, its user (if given) "default" or its
        application; or the admin token, its user "default" or "admin"."""
        user = args[0].decode("utf-8", "replace") if len(args) == 2 else "default"
        token = args[-1].decode("utf-8", "replace")
        app = self.access.application(token)
        if app is not None and user in ("default", app):
            current_publisher.set(app)  # this connection's casts are that application's
        elif not (self.access.is_admin_token(token) and user in ("default", "admin")):
            return False
        session.authorized = True
        return True

    def _hello(self, args: list[bytes], session: _Session) -> bytes:
        protocol = session.protocol
        if args:
            if args[0] not in (b"2", b"3"):
                return resp.error("NOPROTO unsupported protocol version")
            protocol = int(args[0])
        rest = args[1:]
        while rest:
            option = rest[0].upper()
            if option == b"AUTH" and len(rest) >= 3:
                if not self._log_in(rest[1:3], session):
                    return resp.error(WRONGPASS)
                rest = rest[3:]
            elif option == b"SETNAME" and len(rest) >= 2:
                session.name, rest = rest[1].decode("utf-8", "replace"), rest[2:]
            else:
                return resp.error(f"ERR syntax error in HELLO option '{_shown(rest[0])}'")
        if not session.authorized:
            return resp.error("NOAUTH HELLO must be called with the client already "
                              "authenticated, otherwise the HELLO <proto> AUTH <user> <pass> "
                              "option can be used to authenticate the client and select "
                              "the RESP protocol version at the same time")
        session.protocol = protocol
        return resp.map_reply([
            ("server", resp.bulk("yptask")), ("version", resp.bulk(__version__)),
            ("proto", resp.integer(protocol)), ("id", resp.integer(session.id)),
            ("mode", resp.bulk("standalone")), ("role", resp.bulk("master")),
            ("modules", resp.array([]))], protocol)

    def _ping(self, args: list[bytes], session: _Session) -> bytes:
        if len(args) > 1:
            return _arity(b"PING")
        return resp.bulk(args[0]) if args else b"+PONG\r\n"

    def _echo(self, args: list[bytes], session: _Session) -> bytes:
        return resp.bulk(args[0]) if len(args) == 1 else _arity(b"ECHO")

    def _quit(self, args: list[bytes], session: _Session) -> bytes:
        session.quit = True
        return b"+OK\r\n"

    def _select(self, args: list[bytes], session: _Session) -> bytes:
        if len(args) != 1:
            return _arity(b"SELECT")
        return b"+OK\r\n" if args[0] == b"0" else resp.error("ERR DB index is out of range")

    def _client(self, args: list[bytes], session: _Session) -> bytes:
        sub = args[0].upper() if args else b""
        if sub == b"SETNAME" and len(args) == 2:
            session.name = args[1].decode("utf-8", "replace")
            return b"+OK\r\n"
        if sub == b"SETINFO" and len(args) == 3:
            return b"+OK\r\n"  # a client library's name and version: nothing to keep
        if sub == b"GETNAME" and len(args) == 1:
            return resp.bulk(session.name) if session.name else resp.null(session.protocol)
        if sub == b"ID" and len(args) == 1:
            return resp.integer(session.id)
        return resp.error(f"ERR unknown subcommand '{_shown(sub)}'. Try CLIENT HELP.")

    def _command(self, args: list[bytes], session: _Session) -> bytes:
        sub = args[0].upper() if args else b""
        if sub == b"":
            return resp.array([])  # no command table: clients fall back to their own
        if sub == b"DOCS":
            return resp.map_reply([], session.protocol)
        if sub == b"COUNT":
            return resp.integer(0)
        return resp.error(f"ERR unknown subcommand '{_shown(sub)}'. Try COMMAND HELP.")


_CONTROLS = {b"AUTH": RespEndpoint._auth, b"HELLO": RespEndpoint._hello,
             b"PING": RespEndpoint._ping, b"ECHO": RespEndpoint._echo,
             b"QUIT": RespEndpoint._quit, b"SELECT": RespEndpoint._select,
             b"CLIENT": RespEndpoint._client, b"COMMAND": RespEndpoint._command}


def _cast_reply(verb: bytes, outcomes: list[Any]) -> bytes:
    """PUBLISH: the subscribed tasks; RPUSH: the messages cast, or what refused them."""
    refused = [(i, o) for i, o in enumerate(outcomes, 1) if isinstance(o, YPTaskError)]
    if not refused:
        return resp.integer(len(outcomes[0]["tasks"]) if verb == b"PUBLISH" else len(outcomes))
    first, exc = refused[0]
    if len(refused) == len(outcomes):
        return error_line(exc)
    stored = ", ".join(str(i) for i, o in enumerate(outcomes, 1) if not isinstance(o, Exception))
    return error_line(exc, f"{len(outcomes) - len(refused)} of {len(outcomes)} messages cast "
                           f"(message(s) {stored}, stored); message {first} refused: ")


def _arity(verb: bytes) -> bytes:
    return resp.error(f"ERR wrong number of arguments for '{verb.decode().lower()}' command")


def _shown(data: bytes) -> str:
    """A client's bytes in an error: at most 40 characters, printable."""
    text = data[:40].decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text).replace("'", "?")
