"""What strangers cause is logged a line every few seconds, with a count of the rest."""

from __future__ import annotations

import logging

from yptask.log_limit import LogLimiter


def test_a_flood_of_refusals_makes_one_line_then_a_counted_one(caplog):
    logger = logging.getLogger("yptask.test_log_limit")
    limiter = LogLimiter(logger, every_s=10)
    with caplog.at_level(logging.WARNING, logger=logger.name):
        # Given a thousand refusals at once: one line
        for i in range(1000):
            limiter.warning("refused %s", i)
        assert [r.getMessage() for r in caplog.records] == ["refused 0"]
        # When the window is over, the next line says how many were held back
        limiter._next = 0.0  # the window is over (as if 10 s had passed)
        limiter.warning("refused %s", "again")
    assert caplog.records[-1].getMessage() == (
        "refused again (and 999 more such line(s) held back in the 10 s before)")
