"""Attacks on the consumer's TUF cache (``assay.consumer.cache``): it is the rollback
protection and the answer while the daemon is down, so anything that lets another user
write it, or lets the checker forget a withdrawal it saw, undoes a revocation.

The search: every way a planted file, link or loosened mode can sit in the cache is
tried against a cache that held the post-revoke set; the checker must never trust the
revoked artifact again. Runs as root too: ownership is faked by ``os.chown`` to another
uid, which root may do.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from assay.consumer.cache import WITHDRAWN_MARKER
from assay.consumer.tuf import TrustCheck
from tests.trust_util import TrustFixture, artifact, entries

ALPHA = artifact("models/alpha", 1)
OTHER_UID = 54399


@pytest.fixture
def fx(tmp_path: Path) -> TrustFixture:
    return TrustFixture(tmp_path)


def cached_pre_revoke(fx: TrustFixture, cache: Path) -> dict[str, bytes]:
    """Publish ALPHA, let a checker cache it, then revoke it (the cache follows); return
    the pre-revoke metadata an attacker saved from the world-readable published dir."""
    repo = fx.repository()
    repo.publish(entries(ALPHA))
    check = TrustCheck(fx.publish_dir, fx.pinned_root, cache)
    assert check.is_trusted(ALPHA.name, ALPHA.digest)
    saved = {n: (cache / n).read_bytes() for n in ("timestamp.json", "snapshot.json",
                                                   "targets.json")}  # fmt: skip
    repo.publish(entries())
    assert not check.is_trusted(ALPHA.name, ALPHA.digest)
    return saved


PLANTS = ["owned_by_other", "group_writable", "symlink", "dir_loose", "lock_symlink",
          "root_link_elsewhere", "root_history_other"]  # fmt: skip


@pytest.mark.parametrize("plant", PLANTS)
def test_attack_planted_cache_never_undoes_a_revocation_while_the_daemon_is_down(
    fx: TrustFixture, tmp_path: Path, plant: str
) -> None:
    cache = tmp_path / "cache"
    saved = cached_pre_revoke(fx, cache)
    elsewhere = tmp_path / "saved"
    elsewhere.mkdir()
    for name, data in saved.items():
        (elsewhere / name).write_bytes(data)
    if plant == "owned_by_other":
        for name, data in saved.items():
            (cache / name).write_bytes(data)
            os.chown(cache / name, OTHER_UID, OTHER_UID)
    elif plant == "group_writable":
        for name, data in saved.items():
            (cache / name).write_bytes(data)
            (cache / name).chmod(0o664)
    elif plant == "symlink":
        for name in saved:
            (cache / name).unlink()
            (cache / name).symlink_to(elsewhere / name)
    elif plant == "dir_loose":
        for name, data in saved.items():
            (cache / name).write_bytes(data)
        cache.chmod(0o777)
    elif plant == "lock_symlink":
        for name, data in saved.items():
            (cache / name).write_bytes(data)
        (cache / ".lock").unlink()
        (cache / ".lock").symlink_to(elsewhere / "lockfile")
    elif plant == "root_link_elsewhere":
        for name, data in saved.items():
            (cache / name).write_bytes(data)
        (cache / "root.json").unlink()
        (cache / "root.json").symlink_to(elsewhere / "timestamp.json")
    elif plant == "root_history_other":
        for name, data in saved.items():
            (cache / name).write_bytes(data)
        os.chown(cache / "root_history", OTHER_UID, OTHER_UID)
    honest = plant in {"dir_loose", "lock_symlink", "root_link_elsewhere", "root_history_other"}
    shutil.rmtree(fx.publish_dir)  # the daemon is down
    again = TrustCheck(fx.publish_dir, fx.pinned_root, cache)
    verdict = again.check(ALPHA.name, ALPHA.digest)
    assert not verdict.trusted, (plant, verdict)
    if not honest:
        assert "cache" in verdict.reason, verdict
    assert not (elsewhere / "lockfile").exists()  # never created through the link


def test_attack_cache_dir_owned_by_another_user_is_not_used(
    fx: TrustFixture, tmp_path: Path
) -> None:
    cache = tmp_path / "theirs"
    cache.mkdir(mode=0o700)
    os.chown(cache, OTHER_UID, OTHER_UID)
    fx.repository().publish(entries(ALPHA))
    check = TrustCheck(fx.publish_dir, fx.pinned_root, cache)
    assert check.cache_refused and "owned by uid" in check.cache_refused
    assert check.is_trusted(ALPHA.name, ALPHA.digest)  # from the published dir alone
    assert list(cache.iterdir()) == []  # nothing written where another user decides
    assert "cache_refused" in check.status()


def test_attack_withdrawal_is_remembered_by_a_restarted_consumer_until_a_newer_publish(
    fx: TrustFixture, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    repo = fx.repository()
    repo.publish(entries(ALPHA))
    check = TrustCheck(fx.publish_dir, fx.pinned_root, cache)
    assert check.is_trusted(ALPHA.name, ALPHA.digest)
    repo.withdraw()
    assert not check.is_trusted(ALPHA.name, ALPHA.digest)
    marker = json.loads((cache / WITHDRAWN_MARKER).read_bytes())
    assert marker["above_timestamp_version"] >= repo.versions.timestamp
    # The daemon goes down: neither this checker nor a restarted one uses the cache.
    held = fx.publish_dir.with_name("held")
    fx.publish_dir.rename(held)
    for checker in (check, TrustCheck(fx.publish_dir, fx.pinned_root, cache)):
        verdict = checker.check(ALPHA.name, ALPHA.digest)
        assert not verdict.trusted and "withdrew" in verdict.reason, verdict
    # The old timestamp put back (e.g. a published dir restored from a copy) is no end to
    # the withdrawal: only a newer one is.
    (held / "timestamp.withdrawn").rename(held / "timestamp.json")
    held.rename(fx.publish_dir)
    verdict = TrustCheck(fx.publish_dir, fx.pinned_root, cache).check(ALPHA.name, ALPHA.digest)
    assert not verdict.trusted and "withdrew" in verdict.reason, verdict
    repo.publish(entries(ALPHA))
    fresh = TrustCheck(fx.publish_dir, fx.pinned_root, cache)
    assert fresh.is_trusted(ALPHA.name, ALPHA.digest)
    assert not (cache / WITHDRAWN_MARKER).exists()
