"""The readiness probe: real store and database, checks run in a thread, staleness fails.

Deterministic: the probe's clock is trio's (autojump), and its freshness uses
``time.monotonic``, so staleness is shown by faking that one function, not by waiting.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from assay.registry import health
from assay.registry.db import RegistryDB
from assay.registry.health import Probe
from assay.registry.policy import Policy
from assay.registry.service import Registry
from assay.registry.store import ObjectStore


def make_probe(tmp_path: Path, *, audit_ok: bool = True) -> Probe:
    registry = Registry(
        store=ObjectStore(tmp_path / "store"),
        db=RegistryDB(tmp_path / "registry.db"),
        policy=Policy(name="test"),
        audit_append=lambda fields: fields,
        max_artifact_bytes=1024,
    )
    registry.open_blocking()
    return Probe(registry, audit_writable=lambda: audit_ok, audit_healthy=lambda: True)


async def test_a_healthy_deployment_is_ready(tmp_path: Path) -> None:
    probe = make_probe(tmp_path)
    assert probe.checks() == {"probe": {"ok": False, "error": "not run yet"}}
    await probe.check()
    checks = probe.checks()
    assert {name: c["ok"] for name, c in checks.items()} == {
        "store": True,
        "database": True,
        "audit": True,
    }
    assert checks["store"]["free_bytes"] > 0 and probe.healthy()


async def test_a_store_whose_temp_dir_is_gone_is_not_ready(tmp_path: Path) -> None:
    probe = make_probe(tmp_path)
    probe.registry.store.tmp_dir.rmdir()  # uploads could not stage anything
    await probe.check()
    assert probe.checks()["store"]["ok"] is False and not probe.healthy()


async def test_a_closed_database_is_not_ready(tmp_path: Path) -> None:
    probe = make_probe(tmp_path)
    probe.registry.db.close()
    await probe.check()
    assert probe.checks()["database"]["ok"] is False and not probe.healthy()


async def test_an_unwritable_audit_log_is_not_ready(tmp_path: Path) -> None:
    probe = make_probe(tmp_path, audit_ok=False)
    await probe.check()
    assert probe.checks()["audit"]["ok"] is False and not probe.healthy()


async def test_a_full_disk_is_not_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    probe = make_probe(tmp_path)
    monkeypatch.setattr(health, "MIN_FREE_BYTES", 1 << 62)  # more than any disk has
    await probe.check()
    assert probe.checks()["store"]["ok"] is False


async def test_a_stuck_probe_fails_every_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = make_probe(tmp_path)
    await probe.check()
    assert probe.healthy()
    later = health.time.monotonic() + 3 * probe.interval + 2
    monkeypatch.setattr(health.time, "monotonic", lambda: later)
    assert not probe.healthy()
    assert all(c == {"ok": False, "error": "probe stale"} for c in probe.checks().values())


async def test_run_reports_started_only_after_the_first_check(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    probe = make_probe(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(probe.run)
        assert probe.finished_at is not None
        nursery.cancel_scope.cancel()


async def test_the_daemons_extra_checks_are_reported_and_counted(tmp_path: Path) -> None:
    probe = make_probe(tmp_path)
    probe.extra = lambda: {
        "config": {"ok": False, "error": "config.yaml: registry.policyy: unknown key"},
        "policy": {"ok": True, "name": "test"},
    }
    await probe.check()
    checks = probe.checks()
    assert checks["config"] == {"ok": False, "error": "config.yaml: registry.policyy: unknown key"}
    assert checks["policy"]["ok"] is True and not probe.healthy()


async def test_extra_checks_that_raise_fail_readiness(tmp_path: Path) -> None:
    from assay.core.errors import ConfigError

    def broken() -> dict[str, dict[str, object]]:
        raise ConfigError("cannot read config")

    probe = make_probe(tmp_path)
    probe.extra = broken
    await probe.check()
    assert probe.checks()["extra"] == {"ok": False, "error": "cannot read config"}
    assert not probe.healthy()
