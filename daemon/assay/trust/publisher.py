"""The daemon side of the TUF repository: publish on every trusted-set change, refresh on
an interval, and fail closed when publishing fails.

The registry awaits ``on_trusted_change`` after each change that can alter the trusted
set is committed and visible in memory, before the operation returns, so a revocation
is in the published metadata before the revoke request answers. Publishes are
serialized (one lock, one worker thread at a time) and coalesced: a change that finds a
later publish already carried it returns at once.

When a publish fails (disk full, I/O error):
  FAIL-1 if what consumers can read vouches only for artifacts still trusted (e.g. a
         promote failed to publish), it stays: consumers miss the new artifact, which is
         the safe direction;
  FAIL-2 otherwise (a revoke, delete or integrity failure failed to publish, or nothing
         is known of what is out there, at startup) the timestamp is withdrawn, so
         consumers trust nothing rather than the revoked artifact;
  FAIL-3 if even the withdrawal fails, the operation answers ``trust.publish_failed``
         (503): the change is recorded, but consumers may believe the old set until its
         timestamp expires.
In every case ``/readyz`` reports ``trust`` not ok and the refresh task retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import trio

from assay.core.errors import AssayError
from assay.registry.model import Artifact
from assay.trust.errors import TrustPublishFailed
from assay.trust.metadata import Entry, trusted_entries
from assay.trust.repository import Published, Repository

log = logging.getLogger("assay.trust")

#: After a failed publish, the next try comes this soon (or at the interval, if sooner).
RETRY_SECONDS = 5.0


class TrustPublisher:
    def __init__(self, repo: Repository, artifacts: Callable[[], Iterable[Artifact]]) -> None:
        self.repo = repo
        self._artifacts = artifacts
        self._lock = trio.Lock()
        #: Bumped at every notified change; ``_carried`` is the highest one published.
        self._changes = 0
        self._carried = 0
        #: What consumers can read vouches for at most these (None: unknown, as at start).
        self._vouched: frozenset[Entry] | None = None
        self.ok = False
        self.last_error: str | None = None
        self.published: Published | None = None
        self.last_success: float | None = None

    async def on_trusted_change(self, digest: str) -> None:
        """The registry's hook: returns once the current trusted set is published or
        withdrawn; raises ``TrustPublishFailed`` when neither could be done."""
        self._changes += 1
        wanted = self._changes
        async with self._lock:
            if self._carried >= wanted:
                return  # a publish that started after this change already carried it
            await self._publish_locked(full=True, reason=digest)

    async def refresh(self) -> None:
        async with self._lock:
            await self._publish_locked(full=False, reason="refresh")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish the set as it is at startup (the repository already open), then keep
        the timestamp fresh."""
        try:
            async with self._lock:
                await self._publish_locked(full=True, reason="startup")
        except TrustPublishFailed as exc:
            log.critical("trust: %s", exc.detail)
        task_status.started()
        interval = float(self.repo.section.refresh_interval_seconds)
        while True:
            await trio.sleep(interval if self.ok else min(interval, RETRY_SECONDS))
            try:
                await self.refresh()
            except TrustPublishFailed as exc:
                log.critical("trust: %s", exc.detail)

    async def _publish_locked(self, *, full: bool, reason: str) -> None:
        # The set is read here, on the event loop, after every change notified so far
        # was applied in memory: it carries all of them.
        carried = self._changes
        entries = trusted_entries(self._artifacts())
        if self.published is None or entries != self.published.entries:
            full = True  # withdrawn, or a change whose own publish failed is still to go
        try:
            with trio.CancelScope(shield=True):
                published = await trio.to_thread.run_sync(
                    self.repo.publish if full else _refresh_of(self.repo), entries
                )
        except (OSError, AssayError) as exc:
            await self._failed(entries, reason, exc)
            return
        self.published = published
        self._vouched = published.entries
        self._carried = max(self._carried, carried)
        self.ok = True
        self.last_error = None
        self.last_success = time.monotonic()

    async def _failed(self, entries: frozenset[Entry], reason: str, exc: Exception) -> None:
        self.ok = False
        self.last_error = f"publish ({reason}) failed: {_describe(exc)}"
        log.error("trust: %s", self.last_error)
        # Step FAIL-1: nothing out there vouches for an artifact that is not trusted now.
        if self._vouched is not None and self._vouched <= entries:
            return
        # Step FAIL-2: withdraw, so consumers trust nothing rather than too much.
        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.repo.withdraw)
        except OSError as wexc:
            # Step FAIL-3: the old metadata stands until its timestamp expires.
            self.last_error += f"; withdrawal failed too: {_describe(wexc)}"
            raise TrustPublishFailed(
                "the trusted set changed but could neither be published nor withdrawn; "
                "consumers may trust the previous set until its timestamp expires"
            ) from None
        self._vouched = frozenset()
        self.published = None
        log.critical("trust: metadata withdrawn; consumers trust nothing until a publish")

    def readiness(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok}
        if self.published is not None:
            out.update(self.published.status())
        else:
            out["withdrawn"] = self._vouched == frozenset()
        if self.last_error:
            out["error"] = self.last_error[:500]
        return out


def _refresh_of(repo: Repository) -> Callable[[frozenset[Entry]], Published]:
    def refresh(_entries: frozenset[Entry]) -> Published:
        return repo.refresh()

    return refresh


def _describe(exc: Exception) -> str:
    if isinstance(exc, AssayError):
        return exc.detail
    return f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}"
