"""The node's journal on disk: opened only if it is sound and the one it last ran with, and pruned.

A damaged journal, or one emptied or replaced since the node last ran, would
silently lose what the node had accepted: the node refuses to start with it
(unless told to accept a new one). Done messages are forgotten once their ids
are past the dedupe window, so the journal keeps only what is pending, dead, or
recent enough to dedupe against.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from functools import partial
from pathlib import Path

from yptask.errors import ConfigError
from yptask.store.group_commit import JournalThread
from yptask.store.journal import Journal

__all__ = ["JOURNAL_FILES", "open_checked", "prune_forever"]

log = logging.getLogger(__name__)

JOURNAL_FILE = "journal.db"
JOURNAL_FILES = (JOURNAL_FILE, JOURNAL_FILE + "-wal")  # its size on disk is theirs
JOURNAL_ID_FILE = "journal-id"  # the id of the journal this node last ran with
PRUNE_EVERY_S = 60.0


def open_checked(data_dir: Path, *, synchronous: str, accept_new: bool) -> Journal:
    """The journal in `data_dir`, checked: not damaged, and the one this node last ran with
    (ConfigError saying what to do otherwise). Blocking: call it off the loop."""
    path = data_dir / JOURNAL_FILE
    fix = ("restore it from a backup; or move it aside (with its -wal and -shm files) "
           "and start with --accept-new-journal (accept_new_journal = true) to go on "
           "with an empty one, losing what it held")
    try:
        journal = Journal(path, synchronous=synchronous)
        problem = journal.problem()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"the journal {path} is damaged ({exc}): {fix}") from None
    if problem is not None:
        journal.close()
        raise ConfigError(f"the journal {path} is damaged ({problem}): {fix}")
    marker = data_dir / JOURNAL_ID_FILE
    known = marker.read_text().strip() if marker.exists() else None
    if known is not None and (not journal.has_identity() or journal.identity() != known):
        if not accept_new:
            journal.close()
            raise ConfigError(
                f"the journal {path} was emptied or replaced since this node last ran: "
                f"the messages it had accepted and not finished are not in it. Restore "
                f"it from a backup; or start with --accept-new-journal "
                f"(accept_new_journal = true) to go on with this one")
        log.warning("the journal %s is not the one this node last ran with: going on "
                    "with it (accept_new_journal); what the old one held is lost", path)
    marker.write_text(journal.identity() + "\n")
    return journal


async def prune_forever(journal: JournalThread, window_s: float) -> None:
    """Every PRUNE_EVERY_S, forget done messages and client ids older than `window_s`."""
    while True:
        try:
            pruned = await journal.run(partial(Journal.prune, older_than_s=window_s))
            pruned += await journal.run(partial(Journal.forget_client_ids,
                                                older_than_s=window_s))
        except Exception:  # the store failed (a full disk): try again at the next round
            log.exception("pruning the journal failed; trying again in %.0f s", PRUNE_EVERY_S)
        else:
            if pruned:
                log.info("journal: forgot %d done message(s) and client id(s) older than "
                         "%.0f s", pruned, window_s)
        await asyncio.sleep(PRUNE_EVERY_S)
