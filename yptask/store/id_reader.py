"""The client-id checks' own read-only view of a journal (yptask.cluster.client_ids).

Those of a list of ids taken in the cluster as this home node knows: journaled
here, or taken by another node that told us (the journal's `client_ids` table).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

__all__ = ["IdReader", "known_client_ids"]

ID_CHUNK = 400  # ids per query: two lists of them stay under SQLite's 999 parameters


class IdReader:
    """A read-only connection of its own to a journal, for the client-id checks of
    yptask.cluster.client_ids: they run beside the journal's thread (WAL lets them), so they
    never wait for its commits nor split its group commits. Used by one thread."""

    def __init__(self, path: str | Path) -> None:
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)

    def known(self, ids: list[str]) -> set[str]:
        """Those of `ids` taken in the cluster as this home node knows: taken here (a
        message of this journal) or by another node that told us."""
        return known_client_ids(self._db, ids)

    def close(self) -> None:
        self._db.close()


def known_client_ids(db: sqlite3.Connection, ids: list[str]) -> set[str]:
    known: set[str] = set()
    for start in range(0, len(ids), ID_CHUNK):
        chunk = ids[start:start + ID_CHUNK]
        marks = ",".join("?" * len(chunk))
        known.update(row[0] for row in db.execute(
            f"SELECT id FROM client_ids WHERE id IN ({marks}) UNION"
            f" SELECT id FROM messages WHERE id IN ({marks})", chunk * 2))
    return known
