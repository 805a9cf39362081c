"""Delivery: each task's pool of workers, forwarding to other nodes, per-task figures."""
