"""Inter-node links: the cookie handshake, requests both ways, and what is refused.

Real TCP on 127.0.0.1; both ends of each link run in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct

import pytest

from yptask.cluster.link import Identity, Link, LinkRefused, accept, dial
from yptask.errors import LinkError, UnknownTask
from yptask.wire import codec

COOKIE = b"s3cret-cookie"


class Server:
    """A link port: accepts, authenticates, keeps the links it accepted."""

    def __init__(self, me: Identity, cookie: bytes) -> None:
        self.me, self.cookie = me, cookie
        self.links: list[Link] = []
        self.refusals: list[str] = []
        self.server: asyncio.Server | None = None

    async def handler(self, link: Link, kind: str, args: list) -> object:
        if kind == "echo":
            return {"from": self.me.name, "args": args}
        raise UnknownTask(f"no task named {args[0]!r}")

    async def _on_connect(self, reader, writer) -> None:
        try:
            self.links.append(await accept(reader, writer, me=self.me, cookie=self.cookie,
                                            handler=self.handler))
        except LinkRefused as exc:
            self.refusals.append(str(exc))

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def __aexit__(self, *_: object) -> None:
        for link in self.links:
            await link.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def client_handler(link: Link, kind: str, args: list) -> object:
    return {"client saw": kind}


async def dial_to(server: Server, *, cluster: str = "c1", cookie: bytes = COOKIE) -> Link:
    """Dial `server` as node "beta"."""
    return await dial("127.0.0.1", server.port, me=Identity(cluster, "beta", "boot-b"),
                      cookie=cookie, handler=client_handler)


async def wait_until(predicate, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_requests_travel_both_ways_and_errors_keep_their_class():
    async with Server(Identity("c1", "alpha", "boot-a"), COOKIE) as server:
        link = await dial_to(server)
        try:
            assert link.peer == Identity("c1", "alpha", "boot-a")
            answers = await asyncio.gather(*(link.request("echo", [i], 5) for i in range(20)))
            assert answers == [{"from": "alpha", "args": [i]} for i in range(20)]
            with pytest.raises(UnknownTask, match="'nope'"):
                await link.request("tasks", ["nope"], 5)
            await wait_until(lambda: server.links)
            (back,) = server.links
            assert back.peer.name == "beta"
            assert await back.request("ping", [], 5) == {"client saw": "ping"}
        finally:
            await link.close()


async def test_a_wrong_cookie_is_refused_and_both_sides_say_why(caplog):
    async with Server(Identity("c1", "alpha", "a"), COOKIE) as server:
        with pytest.raises(LinkRefused, match="cookie mismatch"):
            await dial_to(server, cookie=b"other")
        await wait_until(lambda: server.refusals)
        assert "cookie mismatch" in server.refusals[0] and not server.links


async def test_another_cluster_is_refused():
    async with Server(Identity("prod", "alpha", "a"), COOKIE) as server:
        with pytest.raises(LinkRefused, match=r"cluster 'prod'.*cluster 'test'"):
            await dial_to(server, cluster="test")
        assert not server.links


async def test_garbage_instead_of_a_handshake_is_refused_and_the_port_serves_on():
    async with Server(Identity("c1", "alpha", "a"), COOKIE) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(struct.pack(">I", 5) + b"hello")
        await writer.drain()
        assert await reader.read() == b""  # closed on us
        writer.close()
        await wait_until(lambda: server.refusals)
        link = await dial_to(server)
        assert (await link.request("echo", [], 5))["from"] == "alpha"
        await link.close()


async def test_an_unauthenticated_peer_cannot_make_the_node_buffer_a_big_frame():
    async with Server(Identity("c1", "alpha", "a"), COOKIE) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(struct.pack(">I", 50_000_000))  # announces 50 MB, sends nothing more
        await writer.drain()
        assert await reader.read() == b""  # refused at once, not after a timeout
        writer.close()
        await wait_until(lambda: server.refusals)
        assert "over the cap" in server.refusals[0]


async def test_a_forged_frame_breaks_the_link(caplog):
    caplog.set_level(logging.WARNING)
    async with Server(Identity("c1", "alpha", "a"), COOKIE) as server:
        link = await dial_to(server)
        await wait_until(lambda: server.links)
        # A frame with a wrong MAC, as someone who saw the handshake but lacks the key
        body = codec.encode((codec.Atom("req"), 99, "echo", []))
        link._writer.write(struct.pack(">I", 32 + len(body)) + b"\0" * 32 + body)
        await wait_until(server.links[0].closed.is_set)
        assert "failed its HMAC check" in caplog.text
        with contextlib.suppress(LinkError):
            await link.request("echo", [], 1)
        await wait_until(link.closed.is_set)
        with pytest.raises(LinkError):
            await link.request("echo", [], 1)
