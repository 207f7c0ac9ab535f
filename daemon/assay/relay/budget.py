"""Row budgets: how many rows one credential may take from one entity per window. Pure.

Why: every page is bounded, but a read key could still page through a whole entity at
``max_limit`` rows a request. A budget bounds the total: at most ``rows`` rows per
credential and entity in each window of ``window_seconds``.

The window is *fixed*, aligned to multiples of ``window_seconds`` since the Unix epoch
(UTC), so "remaining" and "resets in" are exact and cheap to keep durably (one counter
per credential and entity). The cost of that choice, stated: in any interval of
``window_seconds`` that straddles a boundary a credential can take up to twice ``rows``.
A window only ever moves forward: a clock that steps back keeps the stored window (and
what was spent in it) rather than reopening an earlier one.

Counted are rows *returned*: records of a page, a record looked up, and the groups of
an aggregate over the entity (a cell with a small ``min_group_size`` is a row), and at
least one row for every request whose filters were evaluated: a miss (an empty page, a
404 lookup, an aggregate with no group) answers a question about the data too, so a key
with a budget of 5 learns about at most 5 records, not about every id it can name. This
module holds the arithmetic only; the store that makes it durable is
``assay.relay.budgetstore``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from assay.relay.config import RowBudget


@dataclass(frozen=True)
class Usage:
    """What a credential has spent on an entity in the window that starts at ``start``."""

    start: int
    used: int


def window_start(policy: RowBudget, now: float) -> int:
    return int(now // policy.window_seconds) * policy.window_seconds


def current(policy: RowBudget, usage: Usage | None, now: float) -> Usage:
    """The usage that applies at ``now``: the stored one, or a fresh window once it ended.

    1. No stored usage: a fresh window at ``now``.
    2. ``now``'s window starts after the stored one: that window ended, start afresh.
    3. Otherwise (same window, or the clock stepped back): keep the stored usage.
    """
    start = window_start(policy, now)
    if usage is None or start > usage.start:
        return Usage(start, 0)
    return usage


def remaining(policy: RowBudget, usage: Usage, pending: int = 0) -> int:
    """Rows still to be had; ``pending`` are rows other requests hold but have not spent."""
    return max(0, policy.rows - usage.used - pending)


def resets_in(policy: RowBudget, usage: Usage, now: float) -> int:
    """Whole seconds until the window ends (at least 1): ``Retry-After`` and the header."""
    return max(1, math.ceil(usage.start + policy.window_seconds - now))


def spend(policy: RowBudget, usage: Usage | None, now: float, rows: int) -> Usage | None:
    """``usage`` after spending ``rows`` at ``now``, or None if that would go over."""
    base = current(policy, usage, now)
    if rows < 0 or base.used + rows > policy.rows:
        return None
    return Usage(base.start, base.used + rows)
