"""The published repository on disk: versions only increase, readers never see half a
set, and every publish changes what a consumer's stat sees.

The search: hypothesis drives publishes, refreshes, restarts, a published dir that a
reboot empties, a state dir restored from an older backup (with or without that
reboot: then only the wall-clock floor keeps versions climbing), crashes between reserving
versions and writing files, and a wall clock that steps backwards. After every step a
long-lived consumer (whose cache remembers every version it accepted, so a decrease
would be a refused rollback) must agree with the set last published.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.consumer.tuf import TrustCheck
from assay.trust.errors import TrustConfigError
from assay.trust.repository import TIMESTAMP, VERSIONS_FILE, Repository
from tests.trust_util import TrustFixture, artifact, entries

ARTS = [artifact(f"m/{i}", i) for i in range(4)]


@pytest.fixture
def fx(tmp_path: Path) -> TrustFixture:
    return TrustFixture(tmp_path)


class Crash(Exception):
    """Stands for the process dying at that point."""


def crash_after_reserve(repo: Repository) -> None:
    """The next publish dies after PUB-1 (versions reserved), before any file."""
    original = repo._write_timestamp

    def boom(*_args: object, **_kwargs: object) -> object:
        repo._write_timestamp = original  # type: ignore[method-assign]
        raise Crash

    repo._write_timestamp = boom  # type: ignore[method-assign]


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sets(st.integers(0, 3))),
        st.tuples(st.just("refresh"), st.none()),
        st.tuples(st.just("restart"), st.none()),
        st.tuples(st.just("reboot"), st.none()),  # the tmpfs published dir is emptied
        st.tuples(st.just("old_state"), st.none()),  # versions.json from a backup
        # ... and the published tmpfs emptied too: nothing on disk remembers the versions
        st.tuples(st.just("old_state_reboot"), st.none()),
        st.tuples(st.just("crash"), st.sets(st.integers(0, 3))),
        st.tuples(st.just("clock_back"), st.none()),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_versions_only_increase_across_restarts_reboots_and_crashes(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, object]]
) -> None:
    fx = TrustFixture(tmp_path_factory.mktemp("r"))
    repo = fx.repository()
    published: frozenset[int] = frozenset()
    repo.publish(entries())
    check = TrustCheck(fx.publish_dir, fx.pinned_root, fx.base / "cache")
    backup = (fx.state_dir / VERSIONS_FILE).read_bytes()
    seen = [repo.versions]
    for op, arg in ops:
        if op == "publish":
            assert isinstance(arg, set)
            published = frozenset(arg)
            repo.publish(entries(*(ARTS[i] for i in arg)))
        elif op == "refresh":
            repo.refresh()
        elif op == "restart":
            repo = fx.repository()
            repo.publish(entries(*(ARTS[i] for i in published)))
        elif op == "reboot":
            shutil.rmtree(fx.publish_dir)
            repo = fx.repository()
            repo.publish(entries(*(ARTS[i] for i in published)))
        elif op == "old_state":
            (fx.state_dir / VERSIONS_FILE).write_bytes(backup)
            repo = fx.repository()
            repo.publish(entries(*(ARTS[i] for i in published)))
        elif op == "old_state_reboot":
            # A restore and a reboot take time, and the wall clock is right by then (a
            # restore with the clock also set back is the residual risk THREAT_MODEL.md
            # names): any earlier step back undone, a minute passes.
            fx.clock.ns = max(fx.clock.ns, 0)
            fx.clock.advance(60)
            (fx.state_dir / VERSIONS_FILE).write_bytes(backup)
            shutil.rmtree(fx.publish_dir)
            repo = fx.repository()
            repo.publish(entries(*(ARTS[i] for i in published)))
        elif op == "crash":
            crash_after_reserve(repo)
            with pytest.raises(Crash):
                repo.publish(entries(*(ARTS[i] for i in arg)))  # type: ignore[union-attr]
            repo = fx.repository()
            repo.publish(entries(*(ARTS[i] for i in published)))
        elif op == "clock_back":
            fx.clock.ns -= 10**12  # the wall clock steps back 1000 s, then a refresh
            repo.refresh()
        v = repo.versions
        assert v.timestamp > seen[-1].timestamp and v.mtime_ns > seen[-1].mtime_ns
        assert v.snapshot >= seen[-1].snapshot and v.targets >= seen[-1].targets
        seen.append(v)
        # The long-lived consumer follows, never sees a rollback, agrees with the set.
        for i, art in enumerate(ARTS):
            verdict = check.check(art.name, art.digest)
            assert verdict.trusted == (i in published), (op, verdict)


def test_timestamp_mtime_strictly_increases_even_when_the_clock_stands_still(
    fx: TrustFixture,
) -> None:
    repo = fx.repository()
    repo.publish(entries())
    mtimes = []
    for _ in range(5):
        fx.clock.ns = 0  # the same wall time every time
        repo.refresh()
        mtimes.append((fx.publish_dir / TIMESTAMP).stat().st_mtime_ns)
    assert mtimes == sorted(set(mtimes)) and len(mtimes) == 5


def test_a_corrupt_versions_file_stops_startup_instead_of_guessing(fx: TrustFixture) -> None:
    fx.repository().publish(entries())
    (fx.state_dir / VERSIONS_FILE).write_text(json.dumps({"targets": -1}))
    with pytest.raises(TrustConfigError, match="not a versions file"):
        fx.repository()


def test_a_symlinked_publish_dir_is_refused(fx: TrustFixture, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    fx.publish_dir.parent.mkdir(parents=True)
    fx.publish_dir.symlink_to(elsewhere)
    with pytest.raises(TrustConfigError, match="not a directory"):
        fx.repository()


def test_old_versions_are_pruned_but_the_last_ones_kept(fx: TrustFixture) -> None:
    repo = fx.repository(keep_versions=3)
    used = []
    for i in range(8):
        used.append(repo.publish(entries(ARTS[i % 4])).versions.snapshot)
    names = sorted(p.name for p in fx.publish_dir.iterdir())
    kept = sorted(int(n.split(".")[0]) for n in names if n.endswith(".snapshot.json"))
    assert kept == sorted(used)[-3:]  # the newest three by rank (versions jump with time)
    assert "1.root.json" in names and TIMESTAMP in names


def test_refresh_resigns_targets_and_snapshot_before_they_expire(fx: TrustFixture) -> None:
    repo = fx.repository()
    first = repo.publish(entries(ARTS[0]))
    second = repo.refresh()
    assert second.versions.targets == first.versions.targets  # only the timestamp moved
    assert second.versions.timestamp > first.versions.timestamp
    # Past half of targets' life: the next refresh signs them again.
    fx.clock.advance(fx.section.targets_expiry_seconds / 2 + 1)
    third = repo.refresh()
    assert third.versions.targets > first.versions.targets
    assert third.targets_expires - fx.clock.now > timedelta(days=6)
    assert third.entries == first.entries


def test_published_files_are_world_readable_and_state_is_private(fx: TrustFixture) -> None:
    fx.repository().publish(entries(ARTS[0]))
    assert fx.publish_dir.stat().st_mode & 0o777 == 0o755
    for p in fx.publish_dir.iterdir():
        assert p.stat().st_mode & 0o777 == 0o644, p
    assert fx.state_dir.stat().st_mode & 0o777 == 0o700
    assert (fx.state_dir / VERSIONS_FILE).stat().st_mode & 0o777 == 0o600
