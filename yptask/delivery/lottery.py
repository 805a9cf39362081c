"""The priority lottery: which of the levels waiting for a task its next claim takes from.

A task's deliveries wait at ten priority levels, 0 (lowest) to 9. Taking strictly the
highest first starves the low levels under a steady high stream, so each claim DRAWS:
every level holds tickets, and each delivery claimed goes to a level with a chance
proportional to its tickets among the levels that still have deliveries waiting (a
level with nothing waiting gets no draw, so its share goes to the others).

DEFAULT_TICKETS is 2**level: each level is drawn twice as often as the one below it.
Against p0, p9 wins 512 draws to 1 (99.8 %), which is close enough to strict order for
a few urgent casts to overtake a backlog, while a p0 waiting under a saturating stream
of p9 is still drawn about once every 513 claims (under p5, once every 33): slow,
never starved. Steeper weights (3**level) would push that to one in 19 684.

A level with 0 tickets (a task's `priority_tickets` may say so) is a background level:
it is taken only when no level with tickets has anything waiting, the highest of such
levels first. Pure: no I/O, the random source is handed in (seeded in tests).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["DEFAULT_TICKETS", "LEVELS", "draw", "tickets"]

LEVELS = 10  # priorities 0 (lowest) to 9
DEFAULT_TICKETS: tuple[int, ...] = tuple(2 ** level for level in range(LEVELS))

_RNG = random.Random()  # the claimer's own: only the journal thread draws from it


def tickets(task: object) -> tuple[int, ...]:
    """The tickets of each level for a task (its `priority_tickets`, or the defaults)."""
    own = tuple(getattr(task, "priority_tickets", ()) or ())
    return own if len(own) == LEVELS else DEFAULT_TICKETS


def draw(counts: Sequence[int], weights: Sequence[int] = DEFAULT_TICKETS, n: int = 1,
         rng: random.Random | None = None) -> list[int]:
    """The levels of the next `n` deliveries to claim, in the order drawn.

    `counts[level]` is how many wait at each level (a count above `n` may be given as
    `n`: no more are drawn). Each draw picks a level with a chance proportional to its
    tickets among the levels with deliveries left, which is the same as drawing among
    all and drawing again when the level drawn has none left: so the draws are made in
    batches (`random.choices`, one call per batch), keeping those of levels not yet used
    up, in order. Returns at most min(n, sum(counts)) levels.
    """
    rng = rng or _RNG
    left = {level: count for level, count in enumerate(counts) if count > 0}
    n = min(n, sum(left.values()))
    ticketed = [level for level in left if weights[level] > 0]
    if len(left) == 1 or not ticketed:  # the usual case: nothing to draw between
        return _background(left, n)
    drawn: list[int] = []
    while len(drawn) < n and ticketed:
        batch = rng.choices(ticketed, [weights[level] for level in ticketed],
                            k=n - len(drawn))
        for level in batch:
            if left[level]:
                left[level] -= 1
                drawn.append(level)
        ticketed = [level for level in ticketed if left[level]]
    return drawn + _background({level: left[level] for level in left if weights[level] == 0},
                               n - len(drawn))


def _background(left: dict[int, int], n: int) -> list[int]:
    """`n` levels taken highest first (no lottery): for a single level or 0-ticket ones."""
    taken: list[int] = []
    for level in sorted(left, reverse=True):
        take = min(left[level], n - len(taken))
        taken += [level] * take
    return taken
