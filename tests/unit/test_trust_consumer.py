"""``assay.consumer.tuf``: attacks on the published metadata a consumer reads.

The attacker here can write the published directory (which only the daemon's user can
in a deployment) or plays the daemon being down; each test shows what the consumer
answers. Clocks are injected; nothing sleeps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.consumer.tuf import TrustCheck
from assay.trust.repository import TIMESTAMP, WITHDRAWN
from tests.trust_util import Clock, TrustFixture, artifact, entries

ALPHA = artifact("models/alpha", 1)
ALPHA2 = artifact("models/alpha", 2, promoted="2030-01-02T00:00:00.000Z")
BETA = artifact("models/beta", 1)
GAMMA = artifact("models/gamma", 1)  # as long as alpha: its files are the same length


@pytest.fixture
def fx(tmp_path: Path) -> TrustFixture:
    return TrustFixture(tmp_path)


def consumer(fx: TrustFixture, cache: str = "cache", clock: Clock | None = None) -> TrustCheck:
    c = clock or fx.clock
    return TrustCheck(fx.publish_dir, fx.pinned_root, fx.base / cache, clock=c.posix)


def snapshot_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def restore(directory: Path, files: dict[str, bytes]) -> None:
    for p in directory.iterdir():
        p.unlink()
    for name, data in files.items():
        (directory / name).write_bytes(data)


def test_trusted_artifact_is_trusted_at_its_digest_and_resolves(fx: TrustFixture) -> None:
    repo = fx.repository()
    repo.publish(entries(ALPHA, ALPHA2, BETA))
    check = consumer(fx)
    for art in (ALPHA, ALPHA2, BETA):
        verdict = check.check(art.name, art.digest)
        assert verdict.trusted, verdict
        assert verdict.length == art.size and verdict.format == "safetensors"
    # The name resolves to the latest promotion, as GET /v1/trusted/{name} does.
    assert check.resolve("models/alpha") == ALPHA2.digest


def test_consumer_never_trusts_a_digest_other_than_the_one_asked(fx: TrustFixture) -> None:
    fx.repository().publish(entries(ALPHA, BETA))
    check = consumer(fx)
    # Another trusted artifact's digest under this name, and this name's digest in
    # another case or form, are all refused.
    assert not check.is_trusted("models/alpha", BETA.digest)
    assert not check.is_trusted("models/beta", ALPHA.digest)
    assert not check.is_trusted("models/alpha", ALPHA.digest.upper())
    assert not check.is_trusted("models/alpha", ALPHA.digest.removeprefix("sha256:"))
    assert not check.is_trusted("models/alpha", ALPHA.digest + "\n")
    # The name alone (the resolution entry) is not an artifact at a digest.
    assert not check.is_trusted("models/alpha@" + ALPHA.digest, ALPHA.digest)
    assert not check.is_trusted("models/../models/alpha", ALPHA.digest)


@settings(max_examples=60, deadline=None)
@given(flip=st.integers(min_value=7, max_value=70), bit=st.integers(min_value=0, max_value=3))
def test_any_other_digest_is_refused(tmp_path_factory: pytest.TempPathFactory, flip: int,
                                     bit: int) -> None:  # fmt: skip
    fx = TrustFixture(tmp_path_factory.mktemp("t"))
    fx.repository().publish(entries(ALPHA))
    check = consumer(fx)
    hexes = "0123456789abcdef"
    chars = list(ALPHA.digest)
    chars[flip] = hexes[(hexes.index(chars[flip]) + (1 << bit)) % 16]
    other = "".join(chars)
    assert other != ALPHA.digest
    assert check.is_trusted("models/alpha", ALPHA.digest)
    assert not check.is_trusted("models/alpha", other)


def test_revocation_is_visible_at_the_next_check(fx: TrustFixture) -> None:
    repo = fx.repository()
    repo.publish(entries(ALPHA, BETA))
    check = consumer(fx)
    assert check.is_trusted("models/alpha", ALPHA.digest)
    # Many publishes in the same millisecond of wall time: each one is still seen.
    for round_ in range(20):
        repo.publish(entries(BETA) if round_ % 2 == 0 else entries(ALPHA, BETA))
        assert check.is_trusted("models/alpha", ALPHA.digest) == (round_ % 2 == 1)


def test_rolled_back_metadata_is_refused_by_is_trusted(fx: TrustFixture) -> None:
    repo = fx.repository()
    repo.publish(entries(ALPHA))
    old = snapshot_files(fx.publish_dir)  # the set that still trusts alpha
    repo.publish(entries())  # alpha revoked
    check = consumer(fx)
    assert not check.is_trusted("models/alpha", ALPHA.digest)
    # Attack: the old, validly signed files put back.
    restore(fx.publish_dir, old)
    verdict = check.check("models/alpha", ALPHA.digest)
    assert not verdict.trusted
    assert "rolled back" in verdict.reason
    # A new consumer process with the same cache refuses it too.
    assert not consumer(fx).is_trusted("models/alpha", ALPHA.digest)


def test_expired_timestamp_is_refused_by_is_trusted(fx: TrustFixture) -> None:
    """Freeze: the metadata stops changing; once its timestamp expires, nothing is
    trusted, by the consumer's clock (and by the real clock: below)."""
    fx.repository().publish(entries(ALPHA))
    clock = Clock(fx.clock.now)
    check = consumer(fx, clock=clock)
    assert check.is_trusted("models/alpha", ALPHA.digest)
    clock.advance(fx.section.timestamp_expiry_seconds - 1)
    assert check.is_trusted("models/alpha", ALPHA.digest)
    clock.advance(2)
    verdict = check.check("models/alpha", ALPHA.digest)
    assert not verdict.trusted and "expired" in verdict.reason


def test_metadata_signed_in_the_past_and_frozen_is_refused(fx: TrustFixture) -> None:
    past = Clock(fx.clock.now.replace(year=fx.clock.now.year - 1))
    fx.repository(clock=past).publish(entries(ALPHA))
    verdict = consumer(fx).check("models/alpha", ALPHA.digest)
    assert not verdict.trusted and "expired" in verdict.reason


def test_mixed_and_matched_targets_are_refused_by_is_trusted(fx: TrustFixture) -> None:
    repo = fx.repository()
    first = repo.publish(entries(ALPHA))
    old_targets = (fx.publish_dir / f"{first.versions.targets}.targets.json").read_bytes()
    second = repo.publish(entries(GAMMA))
    new_targets = fx.publish_dir / f"{second.versions.targets}.targets.json"
    # Attack: the new timestamp and snapshot, with the old targets (that trust alpha,
    # and are exactly as long) under the new targets' name.
    assert len(new_targets.read_bytes()) == len(old_targets)
    new_targets.write_bytes(old_targets)
    verdict = consumer(fx).check("models/alpha", ALPHA.digest)
    assert not verdict.trusted
    assert "mixed and matched" in verdict.reason, verdict.reason


def test_mixed_and_matched_snapshot_is_refused_by_is_trusted(fx: TrustFixture) -> None:
    repo = fx.repository()
    first = repo.publish(entries(ALPHA))
    old_snapshot = (fx.publish_dir / f"{first.versions.snapshot}.snapshot.json").read_bytes()
    second = repo.publish(entries(BETA))
    (fx.publish_dir / f"{second.versions.snapshot}.snapshot.json").write_bytes(old_snapshot)
    assert not consumer(fx).is_trusted("models/alpha", ALPHA.digest)
    assert not consumer(fx, "cache2").is_trusted("models/beta", BETA.digest)


def test_targets_signed_by_a_key_the_root_does_not_name_are_refused(fx: TrustFixture) -> None:
    """Forgery: a key of the attacker's own signs a targets file trusting alpha."""
    from securesystemslib.signer import CryptoSigner

    from assay.trust import metadata

    published = fx.repository().publish(entries(BETA))
    forged = metadata.targets_bytes(entries(ALPHA, BETA), version=published.versions.targets,
                                    expires=published.targets_expires,
                                    signer=CryptoSigner.generate_ed25519())  # fmt: skip
    (fx.publish_dir / f"{published.versions.targets}.targets.json").write_bytes(forged)
    assert not consumer(fx).is_trusted("models/alpha", ALPHA.digest)


@pytest.mark.parametrize("kind", ["endless", "fifo", "symlink", "directory"])
def test_unbounded_or_special_metadata_files_are_refused_without_hanging(
    fx: TrustFixture, kind: str
) -> None:
    published = fx.repository().publish(entries(ALPHA))
    path = fx.publish_dir / f"{published.versions.snapshot}.snapshot.json"
    path.unlink()
    if kind == "endless":
        path.write_bytes(b"{" * (8 * 1024 * 1024))  # far past the signed length
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    verdict = consumer(fx).check("models/alpha", ALPHA.digest)
    assert not verdict.trusted


def test_daemon_down_answers_until_expiry_then_fails_closed(fx: TrustFixture) -> None:
    fx.repository().publish(entries(ALPHA))
    clock = Clock(fx.clock.now)
    check = consumer(fx, clock=clock)
    assert check.is_trusted("models/alpha", ALPHA.digest)
    # The daemon stops: under systemd its RuntimeDirectory goes with it.
    shutil.rmtree(fx.publish_dir)
    assert check.is_trusted("models/alpha", ALPHA.digest)
    # A consumer started while the daemon is down answers from the same cache.
    fresh = consumer(fx, clock=clock)
    assert fresh.check("models/alpha", ALPHA.digest).trusted
    assert fresh.status()["source"] == "cache"
    clock.advance(fx.section.timestamp_expiry_seconds - 1)
    assert check.is_trusted("models/alpha", ALPHA.digest)
    clock.advance(2)
    assert not check.is_trusted("models/alpha", ALPHA.digest)
    assert not fresh.is_trusted("models/alpha", ALPHA.digest)


def test_a_consumer_that_never_verified_trusts_nothing_while_the_daemon_is_down(
    fx: TrustFixture,
) -> None:
    fx.repository().publish(entries(ALPHA))
    shutil.rmtree(fx.publish_dir)
    verdict = consumer(fx).check("models/alpha", ALPHA.digest)
    assert not verdict.trusted and "no verified metadata" in verdict.reason


def test_withdrawn_metadata_fails_closed_at_once_with_no_cache_fallback(fx: TrustFixture) -> None:
    repo = fx.repository()
    repo.publish(entries(ALPHA))
    check = consumer(fx)
    assert check.is_trusted("models/alpha", ALPHA.digest)
    repo.withdraw()
    assert not (fx.publish_dir / TIMESTAMP).exists() and (fx.publish_dir / WITHDRAWN).exists()
    verdict = check.check("models/alpha", ALPHA.digest)
    assert not verdict.trusted and "withdrew" in verdict.reason
    repo.publish(entries(ALPHA))
    assert check.is_trusted("models/alpha", ALPHA.digest)
    assert not (fx.publish_dir / WITHDRAWN).exists()


def test_a_wrong_pinned_root_trusts_nothing(fx: TrustFixture, tmp_path: Path) -> None:
    fx.repository().publish(entries(ALPHA))
    other = TrustFixture(tmp_path / "other")
    check = TrustCheck(fx.publish_dir, other.pinned_root, tmp_path / "c")
    assert not check.is_trusted("models/alpha", ALPHA.digest)


def test_consumer_module_imports_with_trio_quart_and_hypercorn_blocked() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'trio', 'quart', 'quart_trio', 'hypercorn'}:\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import assay.consumer.tuf as t\n"
        "assert callable(t.is_trusted) and t.TrustCheck\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
