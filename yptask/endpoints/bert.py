"""The BERT-RPC TCP endpoint: publish and call over `{packet, 4}` TCP, for non-HTTP clients.

Serves module `yptask`, one packet at a time per connection:

    {call, yptask, cast, [Name, Msg]}            -> {reply, #{id, tasks, duplicate}}
    {call, yptask, cast, [Name, Msg, Opts]}      Opts: #{id => Binary, priority => 0..9,
                                                 ttl_s, deadline, delay_s, at, traceparent,
                                                 parent} (each optional; docs/api.md)
    {call, yptask, call, [Name, Msg, Timeout]}   -> {reply, Result}   (Timeout in seconds)
    {call, yptask, call, [Name, Msg, Opts]}      Opts: #{timeout, traceparent, parent}
    {call, yptask, call, [Name, Msg, Timeout, Opts]}   Opts: #{traceparent, parent}
    {cast, yptask, cast, [Name, Msg | _]}        -> {noreply} once the message is journaled
    {call, yptask, cancel, [Id]}                 -> {reply, #{cancelled, running, unreached}}
                                                 admin: after {info, auth, [AdminToken]}
    {call, yptask, whoami, []}                   -> {reply, #{role, via}} (auth.whoami)
    {info, auth, [Token]}                        a publisher token for what follows,
                                                 on a node with `api_tokens`, the node's
                                                 admin token (also for cancel), or a
                                                 viewer token (whoami only: a viewer
                                                 is refused casts, calls and cancel
                                                 with Forbidden); never answered
    {info, ...}                                  tolerated, never answered

Errors are `{error, {Type, Code, Class, Detail, Backtrace}}` coded by the one
table in `yptask.errors`. A frame that is no term gets a protocol error and the
connection serves on; a frame header over the cap, or input ending inside a
frame, gets a protocol error and the connection is closed. Nothing a client
sends takes the node down. The node's `allow_from` list closes the endpoint to
other addresses (who may publish is the node's `yptask.access.policy.AccessPolicy`).
A connection past `max_bert_connections` gets an `Overloaded` error and is
closed; one with no whole frame for `bert_idle_timeout_s` is closed.

Decoding is bounded by `yptask.wire.decoding` (PUBLISHER, or the much smaller
PRE_AUTH on a node with `api_tokens` until the connection shows a token,
which also caps its frames at PRE_AUTH_MAX_FRAME), and big frames decode off
the event loop.

The endpoint only decodes: it takes a call's fields apart and hands them, as
they came, to the node's `yptask.service.Service`, which checks every one
(`yptask.ingress.checks`) exactly as it does for JSON-RPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from yptask.access.policy import (
    VIEWER,
    AccessPolicy,
    Caller,
    current_caller,
    current_publisher,
    forbidden,
    may,
)
from yptask.connection_limits import ConnectionLimit, caps, guarded
from yptask.errors import (
    EncodeError,
    Forbidden,
    FrameError,
    InvalidParams,
    NoSuchFunction,
    NoSuchModule,
    Overloaded,
    ProtocolError,
    Unauthorized,
    YPTaskError,
    wire_name,
)
from yptask.ingress import checks as ingress
from yptask.ingress.cast import CAST_OPTIONS
from yptask.log_limit import LogLimiter
from yptask.service import Service
from yptask.wire.bertrpc import (
    DEFAULT_MAX_FRAME,
    Call,
    Cast,
    ErrorReply,
    Info,
    NoReply,
    Reply,
    check_length,
    error_reply,
    frame,
    parse_packet,
)
from yptask.wire.decoding import PRE_AUTH, PUBLISHER, Decoder, InflationBudget

__all__ = ["BertEndpoint"]

log = logging.getLogger(__name__)
_CAST_OPTIONS = frozenset(CAST_OPTIONS)

PRE_AUTH_MAX_FRAME = 64 * 1024  # before a token: room for {info, auth, [Token]} and more
# The functions the endpoint serves, as the access policy names them (kind_of, may).
FUNCTIONS = {"cast": "cast", "call": "call", "cancel": "cancel", "whoami": "auth.whoami"}


class BertEndpoint:
    """A TCP server speaking BERT-RPC to publishers, in front of one node."""

    def __init__(self, node: Service, access: AccessPolicy,
                 max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._strangers = LogLimiter(log)  # refusals: a line every few seconds
        self.node = node
        self.access = access
        self.max_frame = max_frame
        self._server: asyncio.Server | None = None
        self._decoder = Decoder("bert decode")
        self.address = ""

    async def start(self, host: str, port: int) -> None:
        self.connections: ConnectionLimit[asyncio.StreamWriter] = ConnectionLimit(
            "BERT-RPC", "max_bert_connections", caps(self.node.config).bert)
        self._server = await asyncio.start_server(
            guarded(self.connections, self._serve, self._refuse), host, port)
        sock_host, sock_port = self._server.sockets[0].getsockname()[:2]
        self.address = f"{sock_host}:{sock_port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._decoder.close()

    @staticmethod
    def _refuse(writer: asyncio.StreamWriter, why: str) -> None:
        writer.write(frame(error_reply(Overloaded(why))))  # one write; never waits on the peer

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        connection = _Connection(authorized=self.access.publishing_open,
                                 address=peer[0] if peer else "")
        try:
            if not self.access.address_allowed(peer[0] if peer else None):
                self._strangers.warning("refused BERT-RPC from %s: not in allow_from", peer)
                await self._send(writer, error_reply(Unauthorized(
                    "this address may not use this node")))
                return
            while True:
                try:
                    async with asyncio.timeout(self.node.config.bert_idle_timeout_s):
                        body = await self._read_frame(reader, connection)
                except TimeoutError:  # idle, or a frame trickling in: either holds a place
                    log.debug("BERT-RPC client %s: no whole frame in %.0f s "
                              "(bert_idle_timeout_s); closing", peer,
                              self.node.config.bert_idle_timeout_s)
                    return
                except FrameError as exc:
                    self._strangers.warning("BERT-RPC client %s sent a bad frame: %s; closing",
                                            peer, exc)
                    await self._send(writer, error_reply(exc))
                    return
                if body is None:
                    return
                answer = await self._answer(body, connection)
                if answer is not None:
                    await self._send(writer, answer)
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _read_frame(self, reader: asyncio.StreamReader, connection: _Connection
                          ) -> bytes | None:
        try:
            header = await reader.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise FrameError("input ended inside a frame header") from None
            return None
        if connection.authorized:
            length = check_length(header, self.max_frame)
        else:
            try:
                length = check_length(header, min(self.max_frame, PRE_AUTH_MAX_FRAME))
            except FrameError as exc:
                raise FrameError(f"{exc} before a publisher token: send {{info, auth, [Token]}}"
                                 " first") from None
        try:
            return await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise FrameError("input ended inside a frame") from None

    async def _answer(self, body: bytes, connection: _Connection
                      ) -> Reply | NoReply | ErrorReply | None:
        try:
            packet = parse_packet(await self._decoder.decode(
                body, PUBLISHER if connection.authorized else PRE_AUTH, connection.inflation))
        except ProtocolError as exc:
            return error_reply(exc)
        if isinstance(packet, Info):
            if packet.command == "auth":  # {info, auth, [Token]}: for the calls that follow
                token = packet.options[0] if packet.options else None
                if isinstance(token, str):
                    app = self.access.application(token)
                    if app is not None:  # this connection's casts and calls are that app's
                        current_publisher.set(app)
                    self._show(connection, token)
                    connection.authorized = connection.authorized or (
                        connection.caller is not None) or (app is not None)
            return None
        if not connection.authorized:
            return error_reply(Unauthorized(
                "this node wants a publisher token: send {info, auth, [Token]} first"))
        if not isinstance(packet, Call):
            return error_reply(ProtocolError(
                f"the endpoint serves calls and casts; it got a {type(packet).__name__}"))
        try:
            if isinstance(packet, Cast):
                await self._dispatch(packet, connection)
                return NoReply()
            return Reply(await self._dispatch(packet, connection))
        except Exception as exc:
            if not isinstance(exc, YPTaskError):
                log.exception("BERT-RPC %s:%s failed", packet.module, packet.function)
            return error_reply(exc)

    def _show(self, connection: _Connection, token: str) -> None:
        """A token shown: an admin or viewer token makes this connection's caller."""
        caller = self.access.token_caller(token, connection.address)
        if caller is not None and (connection.caller is None or caller.role != VIEWER):
            connection.caller = caller
            current_caller.set(caller)  # the connection's task: what follows is theirs

    async def _dispatch(self, call: Call, connection: _Connection) -> Any:
        if call.module != "yptask":
            raise NoSuchModule(f"no module '{call.module}'; the endpoint serves 'yptask'")
        args = call.args
        caller = connection.caller
        method = FUNCTIONS.get(call.function)
        if method is not None and caller is not None and not may(caller.role, method):
            if method == "cancel" and not connection.forbidden_kept:
                connection.forbidden_kept = True  # the first of a connection is audited
                await self.node.audited(method, args, "Forbidden")
            raise Forbidden(forbidden(method))
        if method == "auth.whoami" and not args:
            if caller is None:
                raise Unauthorized("whoami needs an admin or viewer token: send "
                                   "{info, auth, [Token]} first")
            return {"role": caller.role, "via": caller.via}
        if call.function == "cast" and len(args) in (2, 3):
            opts = args[2] if len(args) == 3 else {}
            if not isinstance(opts, dict) or not opts.keys() <= _CAST_OPTIONS:
                got = (f"the key(s) {', '.join(map(repr, opts.keys() - _CAST_OPTIONS))}"
                       if isinstance(opts, dict) else ingress.json_type(opts))
                raise InvalidParams("cast options must be a map with the keys "
                                    f"{', '.join(CAST_OPTIONS)} (each optional); "
                                    f"got {got[:200]}")
            return await self.node.cast(args[0], args[1], **{str(k): v for k, v in opts.items()})
        if call.function == "call" and len(args) in (2, 3, 4):
            return await self.node.call(args[0], args[1], **_call_options(args[2:]))
        if call.function == "cancel" and len(args) == 1:
            if caller is None:
                raise Unauthorized("cancel needs the node's admin token: send "
                                   "{info, auth, [AdminToken]} first")
            return await self._cancel(args)
        raise NoSuchFunction(f"no function yptask:{call.function}/{len(args)}; the endpoint "
                             "serves cast/2, cast/3, call/2, call/3, call/4, cancel/1 and "
                             "whoami/0")

    async def _cancel(self, args: list[Any]) -> Any:
        """cancel, kept in the audit log with its outcome."""
        try:
            result = await self.node.cancel(args[0])
        except YPTaskError as exc:
            await self.node.audited("cancel", args, wire_name(exc))
            raise
        await self.node.audited("cancel", args, "ok")
        return result

    async def _send(self, writer: asyncio.StreamWriter, packet: Reply | NoReply | ErrorReply
                    ) -> None:
        try:
            data = frame(packet)
        except EncodeError as exc:
            data = frame(error_reply(EncodeError(f"the result has no BERT term: {exc}")))
        writer.write(data)
        await writer.drain()


@dataclass
class _Connection:
    """One publisher's connection: has it shown a token (or is none needed)? What may
    its compressed frames still inflate by?"""

    authorized: bool
    address: str = ""
    caller: Caller | None = None  # showed the admin token or a viewer token
    forbidden_kept: bool = False  # a viewer's refused cancel is in the audit log
    inflation: InflationBudget = field(default_factory=InflationBudget)


_CALL_OPTIONS = ("timeout", "traceparent", "parent")


def _call_options(rest: list[Any]) -> dict[str, Any]:
    """A call's options after [Name, Msg]: nothing, a Timeout, an options map, or a Timeout
    and a map (the node checks each value)."""
    if not rest:
        return {"timeout_s": 30}
    if len(rest) == 1 and not isinstance(rest[0], dict):
        return {"timeout_s": rest[0]}
    opts, allowed = rest[-1], _CALL_OPTIONS if len(rest) == 1 else _CALL_OPTIONS[1:]
    if not isinstance(opts, dict) or not opts.keys() <= set(allowed):
        got = (f"the key(s) {', '.join(map(repr, opts.keys() - set(allowed)))}"
               if isinstance(opts, dict) else ingress.json_type(opts))
        raise InvalidParams(f"call options must be a map with the keys {', '.join(allowed)} "
                            f"(each optional); got {got[:200]}")
    options = {str(key): value for key, value in opts.items()}
    timeout = options.pop("timeout", 30) if len(rest) == 1 else rest[0]
    return {"timeout_s": timeout, **options}
