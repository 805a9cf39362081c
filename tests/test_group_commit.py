"""Group commit: concurrent casts share transactions; order and errors are kept."""

from __future__ import annotations

import asyncio

import pytest

from yptask.store.group_commit import JournalThread
from yptask.store.journal import Envelope, Journal


@pytest.fixture
def journal_thread(tmp_path):
    thread = JournalThread(Journal(tmp_path / "journal.db", synchronous="FULL"))
    yield thread
    thread.close()


def envelope(i: int) -> Envelope:
    return Envelope(f"m{i}", "upai.echo", {"i": i}, 0.0)


async def test_concurrent_appends_are_committed_together(journal_thread):
    results = await asyncio.gather(*(journal_thread.append(envelope(i), ["t"])
                                     for i in range(500)))
    assert results == [True] * 500
    assert journal_thread.commits < 500  # batched: fewer commits than casts
    claimed = await journal_thread.run(lambda j: j.claim("t", limit=1000))
    assert sorted(int(d.message.id[1:]) for d in claimed) == list(range(500))


async def test_duplicates_in_one_batch_are_reported(journal_thread):
    first, second = await asyncio.gather(journal_thread.append(envelope(1), ["t"]),
                                         journal_thread.append(envelope(1), ["t"]))
    assert sorted([first, second]) == [False, True]


async def test_operations_run_in_submission_order(journal_thread):
    append = asyncio.ensure_future(journal_thread.append(envelope(7), ["t"]))
    await asyncio.sleep(0)  # the append is queued before the claim below
    claimed = await journal_thread.run(lambda j: j.claim("t"))
    assert await append is True
    assert [d.message.id for d in claimed] == ["m7"]


async def test_an_error_reaches_the_caller_and_the_thread_serves_on(journal_thread):
    def broken(journal: Journal) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await journal_thread.run(broken)
    assert await journal_thread.append(envelope(2), ["t"]) is True
