"""A task module that cannot be imported: its worker exits before it can serve."""

from __future__ import annotations

raise RuntimeError("BROKEN_DATABASE_URL is not set; export it before starting the worker")
