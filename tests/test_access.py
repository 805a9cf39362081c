"""Auth on every publishing and admin surface: publisher tokens and the network allow-list.

Real nodes in this process, spoken to over real HTTP and BERT-RPC TCP on loopback.
"""

from __future__ import annotations

import asyncio
import struct

import pytest
from support import ALONE, ECHO

from yptask.client import Client
from yptask.config.node import NodeConfig
from yptask.config.tasks import TaskDef
from yptask.errors import ConfigError, RPCError, Unauthorized
from yptask.node import Node
from yptask.wire.bertrpc import Call, ErrorReply, Info, Reply, decode_packet, frame

TOKEN = "shop-token-0123456789"


@pytest.fixture
async def start(tmp_path):
    nodes: list[Node] = []

    async def start_node(**config) -> Node:
        node = await Node.start(NodeConfig(name="locked", data_dir=tmp_path / f"d{len(nodes)}",
                                           **ALONE, **config), tasks=[TaskDef.from_dict(ECHO)])
        nodes.append(node)
        return node

    yield start_node
    for node in nodes:
        await node.stop()


async def bert(node: Node, *packets) -> object:
    """Send packets on one BERT-RPC connection; return the last answer (None if closed)."""
    host, port = node.bert_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for packet in packets:
            writer.write(frame(packet))
        await writer.drain()
        answer = None
        for packet in packets:
            if isinstance(packet, Info):
                continue
            header = await reader.readexactly(4)
            answer = decode_packet(await reader.readexactly(struct.unpack(">I", header)[0]))
        return answer
    except asyncio.IncompleteReadError:
        return None
    finally:
        writer.close()


def call(client: Client, *args):
    return asyncio.to_thread(client.call, *args)


async def test_with_tokens_every_surface_wants_one(start):
    node = await start(api_tokens={"shop": TOKEN})
    url = node.http_url + "/rpc"
    # HTTP: publishing and administration both refuse the unauthenticated
    with pytest.raises(Unauthorized, match="publisher token"):
        await call(Client(url), "upai.echo", 1)
    with pytest.raises(Unauthorized):
        await asyncio.to_thread(Client(url).tasks)
    with pytest.raises(Unauthorized):
        await call(Client(url, token="not-the-token-000000"), "upai.echo", 1)
    assert await call(Client(url, token=TOKEN), "upai.echo", 1) == 1
    # BERT-RPC: the same rule; {info, auth, [Token]} opens the connection
    refused = await bert(node, Call("yptask", "call", ["upai.echo", 2, 5]))
    assert isinstance(refused, ErrorReply) and refused.error_class == "Unauthorized"
    answer = await bert(node, Info("auth", [TOKEN]), Call("yptask", "call", ["upai.echo", 2, 5]))
    assert answer == Reply(2)


async def test_an_address_off_the_allow_list_is_refused_everywhere(start):
    node = await start(allow_from=["10.9.9.0/24"])  # not loopback, where the test is
    with pytest.raises(RPCError, match="HTTP 403"):
        await call(Client(node.http_url + "/rpc"), "upai.echo", 1)
    refused = await bert(node, Call("yptask", "call", ["upai.echo", 1, 5]))
    assert isinstance(refused, ErrorReply) and "may not use this node" in refused.detail
    allowed = await start(allow_from=["127.0.0.0/8"])
    assert await call(Client(allowed.http_url + "/rpc"), "upai.echo", 3) == 3


def test_bad_tokens_and_networks_are_refused_in_the_config():
    with pytest.raises(ConfigError, match="at least 16"):
        NodeConfig.from_dict({"api_tokens": {"shop": "short"}})
    with pytest.raises(ConfigError, match="not a network"):
        NodeConfig.from_dict({"allow_from": ["10.0.0.300/8"]})
