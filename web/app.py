"""The node's aiohttp application: which URL is served by what.

It owns only the routing: `POST /rpc` (the JSON-RPC publisher API of
`yptask.web.rpc`) and `GET /healthz`. The console pages will join it here.
"""

from __future__ import annotations

from aiohttp import web

from yptask.web.rpc import PublisherNode, RPCEndpoint

__all__ = ["NODE", "make_app"]

NODE = web.AppKey("node", PublisherNode)

# aiohttp's own size check answers with a plain-text 413; allowing a little more than
# the node's limit leaves the size error to the JSON-RPC handler, which answers in JSON.
_HEADROOM_BYTES = 64 * 1024


def make_app(node: PublisherNode) -> web.Application:
    """Build the node's HTTP application; `app[NODE]` is the node."""
    app = web.Application(client_max_size=node.config.max_body_bytes + _HEADROOM_BYTES)
    app[NODE] = node
    app.router.add_post("/rpc", RPCEndpoint(node).handle)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"node": node.name, "ok": True})

    app.router.add_get("/healthz", healthz)
    return app
