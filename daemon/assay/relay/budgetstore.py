"""Row budgets kept durably: one SQLite row per credential and entity, plus what is pending.

Why SQLite: a spend must be durable before the rows it pays for leave (so a restart, or a
crash, cannot reset a budget), atomic against concurrent spends (from this process or
another one on the same file) and cheap: one small ``IMMEDIATE`` transaction, one fsync
(WAL, ``synchronous=FULL``). Only a credential's auth mode and id are stored, never a key.

Two layers, so that neither a race nor a restart gets past a budget:

1. The file holds what was *spent*, and is the authority: a spend that would go over is
   refused inside its transaction, whatever any other process did meanwhile.
2. In memory, rows *pending*: reserved by requests still running, not yet spent. A
   request reserves (no await between looking and reserving, so it is atomic on the
   trio loop) before it touches data, and a page is clamped to what it got; so
   concurrent requests of one credential share what is left instead of all passing one
   look and then going over. A crash loses only reservations, never a spend, since rows
   leave only after their spend is on disk.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from assay.core.errors import StorageError
from assay.relay import budget
from assay.relay.budget import Usage
from assay.relay.config import RowBudget
from assay.relay.errors import BudgetExhausted, BudgetUnavailable

FILE_NAME = "row-budgets.sqlite3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS spent (
    credential TEXT NOT NULL,
    dataset TEXT NOT NULL,
    entity TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    used INTEGER NOT NULL,
    PRIMARY KEY (credential, dataset, entity)
) WITHOUT ROWID;
"""

#: (credential, dataset, entity); the credential is ``auth_mode:id``.
Key = tuple[str, str, str]


@dataclass(frozen=True)
class Grant:
    """Rows one request reserved; released (and what it used, spent) when it ends."""

    key: Key
    policy: RowBudget
    rows: int


def headers(policy: RowBudget, left: int, reset: int) -> dict[str, str]:
    """The budget as response headers: documented in docs/relay.md (API, headers)."""
    return {
        "Assay-Row-Budget-Limit": str(policy.rows),
        "Assay-Row-Budget-Remaining": str(left),
        "Assay-Row-Budget-Reset": str(reset),
        "Assay-Row-Budget-Window": str(policy.window_seconds),
    }


class BudgetStore:
    def __init__(self, directory: Path, clock: Callable[[], float]) -> None:
        self.path = directory / FILE_NAME
        self.clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._spent: dict[Key, Usage] = {}
        self._pending: dict[Key, int] = {}

    # --- lifetime (blocking: startup and shutdown) -------------------------------------

    def open(self) -> None:
        """Open (or create) the file and load every spent budget; fail closed if unusable."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(SCHEMA)
            rows = conn.execute(
                "SELECT credential, dataset, entity, window_start, used FROM spent"
            ).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(
                f"row budget state {self.path} unusable: {exc}", code="relay.row_budget_unavailable"
            ) from None
        self.path.chmod(0o600)
        self._spent = {(c, d, e): Usage(int(s), int(u)) for c, d, e, s, u in rows}
        self._conn = conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- in memory: looking and reserving (never awaits) -------------------------------

    def state(self, key: Key, policy: RowBudget) -> tuple[int, int]:
        """(rows left, seconds until the window resets), counting pending reservations."""
        now = self.clock()
        usage = budget.current(policy, self._spent.get(key), now)
        left = budget.remaining(policy, usage, self._pending.get(key, 0))
        return left, budget.resets_in(policy, usage, now)

    def reserve(self, key: Key, policy: RowBudget, want: int, *, whole: bool = False) -> Grant:
        """Reserve up to ``want`` rows (all of them if ``whole``), or refuse with 429.

        Nothing is left, or less than ``want`` when ``whole``: ``relay.row_budget_exhausted``.
        Reserving nothing always succeeds (an aggregate with no groups spends nothing).
        """
        left, _reset = self.state(key, policy)
        if want > 0 and (left <= 0 or (whole and left < want)):
            raise BudgetExhausted(
                "this credential's row budget for this entity is spent for the current "
                "window; see Retry-After",
                reasons=["row budget exhausted"],
            )
        rows = min(want, left)
        self._pending[key] = self._pending.get(key, 0) + rows
        return Grant(key, policy, rows)

    def release(self, grant: Grant) -> None:
        left = self._pending.get(grant.key, 0) - grant.rows
        if left > 0:
            self._pending[grant.key] = left
        else:
            self._pending.pop(grant.key, None)

    # --- durable: spending -------------------------------------------------------------

    async def spend(self, grant: Grant, rows: int) -> Usage:
        """Spend ``rows`` (at most the grant) durably before they are released."""
        assert 0 <= rows <= grant.rows
        return await trio.to_thread.run_sync(self._spend_blocking, grant.key, grant.policy, rows)

    def _spend_blocking(self, key: Key, policy: RowBudget, rows: int) -> Usage:
        with self._lock:
            conn = self._conn
            if conn is None:
                raise BudgetUnavailable("row budget state is not open")
            try:
                # 1. One IMMEDIATE transaction: no other writer between reading and writing.
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute(
                    "SELECT window_start, used FROM spent "
                    "WHERE credential = ? AND dataset = ? AND entity = ?",
                    key,
                ).fetchone()
                stored = Usage(int(row[0]), int(row[1])) if row is not None else None
                # 2. The file decides: a spend over the budget is refused here.
                after = budget.spend(policy, stored, self.clock(), rows)
                if after is None:
                    conn.execute("ROLLBACK")
                    self._spent[key] = budget.current(policy, stored, self.clock())
                    raise BudgetExhausted(
                        "this credential's row budget for this entity is spent for the "
                        "current window; see Retry-After",
                        reasons=["row budget exhausted"],
                    )
                # 3. Write and commit (fsync): only then may the rows leave.
                conn.execute(
                    "INSERT INTO spent (credential, dataset, entity, window_start, used) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (credential, dataset, entity) "
                    "DO UPDATE SET window_start = excluded.window_start, used = excluded.used",
                    (*key, after.start, after.used),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise BudgetUnavailable(f"row budget could not be recorded: {exc}") from None
            self._spent[key] = after
            return after
