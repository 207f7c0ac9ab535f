"""The daemon's publisher under faults: a publish that fails never leaves consumers
trusting a revoked artifact, and every change is carried before its hook returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from assay.consumer.tuf import TrustCheck
from assay.registry.model import Artifact
from assay.trust.errors import TrustPublishFailed
from assay.trust.publisher import TrustPublisher
from assay.trust.repository import Repository
from tests.trust_util import TrustFixture, artifact

ALPHA = artifact("models/alpha", 1)
BETA = artifact("models/beta", 1)


class Faulty:
    """Makes the repository's next publishes (and optionally withdrawals) fail."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.fail_publish = 0
        self.fail_withdraw = False
        self.publishes = 0
        self._publish, self._refresh, self._withdraw = repo.publish, repo.refresh, repo.withdraw
        repo.publish = self.publish  # type: ignore[method-assign]
        repo.withdraw = self.withdraw  # type: ignore[method-assign]

    def publish(self, entries: Any) -> Any:
        self.publishes += 1
        if self.fail_publish:
            self.fail_publish -= 1
            raise OSError(28, "No space left on device")
        return self._publish(entries)

    def withdraw(self) -> None:
        if self.fail_withdraw:
            raise OSError(5, "Input/output error")
        self._withdraw()


class Setup:
    def __init__(self, base: Path) -> None:
        self.fx = TrustFixture(base)
        self.repo = self.fx.repository()
        self.faults = Faulty(self.repo)
        self.artifacts: dict[str, Artifact] = {}
        self.publisher = TrustPublisher(self.repo, lambda: self.artifacts.values())
        self.check = TrustCheck(self.fx.publish_dir, self.fx.pinned_root, base / "cache")

    def set(self, *arts: Artifact) -> None:
        self.artifacts = {a.digest: a for a in arts}

    def trusts(self, art: Artifact) -> bool:
        return self.check.is_trusted(art.name, art.digest)


@pytest.fixture
def s(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


async def test_a_revocation_whose_publish_fails_withdraws_the_metadata(s: Setup) -> None:
    s.set(ALPHA, BETA)
    await s.publisher.on_trusted_change(ALPHA.digest)
    assert s.trusts(ALPHA) and s.trusts(BETA)
    s.set(BETA)  # alpha revoked
    s.faults.fail_publish = 1
    await s.publisher.on_trusted_change(ALPHA.digest)  # answers: consumers trust nothing
    assert not s.trusts(ALPHA)
    assert not s.trusts(BETA)  # fail closed: nothing at all
    ready = s.publisher.readiness()
    assert not ready["ok"] and ready["withdrawn"] and "No space" in ready["error"]
    # The retry publishes the set as it is now.
    await s.publisher.refresh()
    assert s.publisher.readiness()["ok"]
    assert not s.trusts(ALPHA) and s.trusts(BETA)


async def test_a_promotion_whose_publish_fails_leaves_the_old_metadata(s: Setup) -> None:
    s.set(BETA)
    await s.publisher.on_trusted_change(BETA.digest)
    s.set(ALPHA, BETA)
    s.faults.fail_publish = 1
    await s.publisher.on_trusted_change(ALPHA.digest)
    # Nothing out there vouches for more than is trusted: it stays, alpha waits.
    assert s.trusts(BETA) and not s.trusts(ALPHA)
    assert not s.publisher.readiness()["ok"]
    await s.publisher.refresh()
    assert s.trusts(ALPHA)


async def test_a_revocation_that_can_neither_publish_nor_withdraw_answers_an_error(
    s: Setup,
) -> None:
    s.set(ALPHA)
    await s.publisher.on_trusted_change(ALPHA.digest)
    s.set()
    s.faults.fail_publish = 1
    s.faults.fail_withdraw = True
    with pytest.raises(TrustPublishFailed):
        await s.publisher.on_trusted_change(ALPHA.digest)
    assert "withdrawal failed too" in s.publisher.readiness()["error"]


async def test_a_failed_startup_publish_withdraws_what_an_earlier_run_left(s: Setup) -> None:
    """At startup nothing is known of what is out there (a crash may have come between
    a revoke's commit and its publish): a failed publish withdraws it."""
    s.set(ALPHA)
    await s.publisher.on_trusted_change(ALPHA.digest)
    restarted = TrustPublisher(s.repo, lambda: {}.values())  # alpha revoked meanwhile
    s.faults.fail_publish = 1
    async with trio.open_nursery() as nursery:
        await nursery.start(restarted.run)
        assert not s.trusts(ALPHA)
        assert restarted.readiness()["withdrawn"]
        nursery.cancel_scope.cancel()


async def test_concurrent_changes_are_all_carried_and_coalesced(s: Setup) -> None:
    arts = [artifact(f"m/{i}", i) for i in range(12)]
    s.set()
    await s.publisher.on_trusted_change("start")
    before = s.faults.publishes

    async def change(i: int) -> None:
        s.artifacts[arts[i].digest] = arts[i]
        await s.publisher.on_trusted_change(arts[i].digest)
        # When the hook returns, this change is published.
        assert TrustCheck(s.fx.publish_dir, s.fx.pinned_root, s.fx.base / f"c{i}").is_trusted(
            arts[i].name, arts[i].digest
        )

    async with trio.open_nursery() as nursery:
        for i in range(len(arts)):
            nursery.start_soon(change, i)
    assert all(s.trusts(a) for a in arts)
    assert s.faults.publishes - before < len(arts)  # later publishes carried earlier ones
