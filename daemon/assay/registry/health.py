"""What ``/readyz`` and the watchdog know about the daemon's own resources.

Why a probe task: every check touches the disk or the database (blocking), while
``/readyz`` must answer from the event loop without blocking and the watchdog must not
ping a daemon that cannot write. One task runs the checks in a worker thread every few
seconds; both read its latest results, and a result older than three periods counts as
a failure (the probe itself is stuck).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from assay.core.errors import AssayError
from assay.registry.service import Registry

#: Below this much free space in the store, uploads would fail: not ready.
MIN_FREE_BYTES = 64 * 1024 * 1024


@dataclass
class Probe:
    """The latest result of each check, and when the checks last finished."""

    registry: Registry
    audit_writable: Callable[[], bool]
    audit_healthy: Callable[[], bool]
    interval: float = 5.0
    #: More named checks, run in the same worker thread (e.g. config and policy on disk):
    #: one call returns them all, so they can share their I/O.
    extra: Callable[[], dict[str, dict[str, Any]]] | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    finished_at: float | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check now (so readiness is known before READY), then every ``interval``."""
        await self.check()
        task_status.started()
        while True:
            await trio.sleep(self.interval)
            await self.check()

    async def check(self) -> None:
        self.results = await trio.to_thread.run_sync(self._check_blocking)
        self.finished_at = time.monotonic()

    def _check_blocking(self) -> dict[str, dict[str, Any]]:
        store = self.registry.store
        # Step H-1 (store): temp dir writable, objects dir present, room for uploads.
        try:
            fs = os.statvfs(store.tmp_dir)
            free = fs.f_bavail * fs.f_frsize
            store_ok = (
                os.access(store.tmp_dir, os.W_OK)
                and store.objects.is_dir()
                and free >= MIN_FREE_BYTES
            )
            store_check: dict[str, Any] = {"ok": store_ok, "free_bytes": free}
        except OSError as exc:
            store_check = {"ok": False, "error": exc.strerror or str(exc)}
        # Step H-2 (database): a read transaction completes.
        try:
            self.registry.db.ping()
            db_check: dict[str, Any] = {"ok": True}
        except AssayError as exc:
            db_check = {"ok": False, "error": exc.detail}
        # Step H-3 (audit): the writer has not failed and its directory takes writes.
        audit_check = {"ok": self.audit_healthy() and self.audit_writable()}
        checks = {"store": store_check, "database": db_check, "audit": audit_check}
        # Step H-4 (extra): the daemon's own named checks; a raise fails them as "extra".
        if self.extra is not None:
            try:
                checks.update(self.extra())
            except (AssayError, OSError) as exc:
                checks["extra"] = {"ok": False, "error": str(exc)[:500]}
        return checks

    def fresh(self) -> bool:
        return (
            self.finished_at is not None
            and time.monotonic() - self.finished_at < 3 * self.interval + 1
        )

    def healthy(self) -> bool:
        """Every check passed, recently enough to trust (for the watchdog)."""
        return self.fresh() and all(c.get("ok") for c in self.results.values())

    def checks(self) -> dict[str, dict[str, Any]]:
        """The checks for ``/readyz``: a stale probe fails every one of them."""
        if not self.fresh():
            return {name: {"ok": False, "error": "probe stale"} for name in self.results} or {
                "probe": {"ok": False, "error": "not run yet"}
            }
        return dict(self.results)
