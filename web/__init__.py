"""The node's aiohttp application: JSON-RPC endpoint, admin API and console."""
