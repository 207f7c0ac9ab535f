"""The root chain: what the daemon accepts at startup is what a client accepts, and the
root key (which the daemon never holds) can renew the root and rotate the online key."""

from __future__ import annotations

from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Root

from assay.consumer.tuf import TrustCheck
from assay.core.errors import ConfigError
from assay.trust import metadata
from assay.trust.bootstrap import renew_root
from assay.trust.errors import TrustConfigError
from assay.trust.keys import load_signer_file
from assay.trust.repository import read_root_chain
from tests.trust_util import TrustFixture, artifact, entries

ALPHA = artifact("models/alpha", 1)


@pytest.fixture
def fx(tmp_path: Path) -> TrustFixture:
    return TrustFixture(tmp_path)


def test_renewing_the_root_is_followed_by_consumers_pinned_to_version_1(
    fx: TrustFixture,
) -> None:
    fx.repository().publish(entries(ALPHA))
    check = TrustCheck(fx.publish_dir, fx.pinned_root, fx.base / "cache")
    assert check.is_trusted(ALPHA.name, ALPHA.digest)
    out = renew_root(fx.root_key, fx.root_dir, expiry_days=30)
    assert out["version"] == 2
    fx.repository().publish(entries(ALPHA))  # a restart publishes 2.root.json
    assert check.is_trusted(ALPHA.name, ALPHA.digest)
    assert check.status()["versions"]["root"]["version"] == 2


def test_a_rotated_online_key_replaces_the_old_one_for_consumers(fx: TrustFixture) -> None:
    repo = fx.repository()
    repo.publish(entries(ALPHA))
    old_signer = repo.signer
    check = TrustCheck(fx.publish_dir, fx.pinned_root, fx.base / "cache")
    assert check.is_trusted(ALPHA.name, ALPHA.digest)
    new_key = fx.base / "secrets" / "tuf-online-2.key"
    renew_root(fx.root_key, fx.root_dir, new_online_key=new_key)
    # The daemon refuses to start with the old key now...
    with pytest.raises(TrustConfigError, match="not the threshold-1 key"):
        chain = metadata.check_root_chain(read_root_chain(fx.root_dir))
        metadata.check_online_key(chain.latest, old_signer.public_key)
    # ...and with the new one, consumers follow the chain from the root they pinned.
    rotated = fx.repository()
    rotated.signer = load_signer_file(new_key, what="new online key")
    rotated.publish(entries(ALPHA))
    assert check.is_trusted(ALPHA.name, ALPHA.digest)
    # Metadata the compromised old key signs after the rotation is refused.
    leaked = fx.repository()
    leaked.signer = old_signer
    leaked.publish(entries(ALPHA, artifact("evil/model", 9)))
    assert not check.is_trusted("evil/model", artifact("evil/model", 9).digest)
    fresh = TrustCheck(fx.publish_dir, fx.pinned_root, fx.base / "fresh-cache")
    assert not fresh.is_trusted("evil/model", artifact("evil/model", 9).digest)


def test_a_root_signed_by_a_key_the_previous_root_does_not_name_is_refused(
    fx: TrustFixture,
) -> None:
    chain = read_root_chain(fx.root_dir)
    latest = metadata.check_root_chain(chain).latest
    forged = Root.from_dict(latest.to_dict())
    forged.version = 2
    attacker = CryptoSigner.generate_ed25519()
    for role in ("root", *metadata.ONLINE_ROLES):
        for keyid in list(forged.roles[role].keyids):
            forged.revoke_key(keyid, role)
        forged.add_key(attacker.public_key, role)
    with pytest.raises(TrustConfigError, match="not signed as required"):
        metadata.check_root_chain([*chain, metadata.sign(forged, attacker)])
    # In the root dir, it stops the daemon from starting (it would publish it).
    (fx.root_dir / "2.root.json").write_bytes(metadata.sign(forged, attacker))
    with pytest.raises(TrustConfigError):
        fx.repository()


def test_a_gap_or_a_wrong_version_in_the_chain_is_refused(fx: TrustFixture) -> None:
    chain = read_root_chain(fx.root_dir)
    with pytest.raises(TrustConfigError, match="no root metadata"):
        metadata.check_root_chain([])
    with pytest.raises(TrustConfigError, match="carries version 1"):
        metadata.check_root_chain([*chain, chain[0]])
    with pytest.raises(TrustConfigError, match="not root metadata"):
        metadata.check_root_chain([b"{}"])


def test_renew_root_refuses_a_key_that_is_not_the_root_key(fx: TrustFixture) -> None:
    with pytest.raises(ConfigError, match="is not a key of root"):
        renew_root(fx.online_key, fx.root_dir)


def test_names_resolve_to_the_latest_promotion_then_the_digest() -> None:
    early = artifact("m/x", 1, promoted="2030-01-01T00:00:00.000Z")
    late = artifact("m/x", 2, promoted="2030-02-01T00:00:00.000Z")
    files = metadata.target_files(entries(early, late))
    assert files["m/x"].hashes["sha256"] == late.digest.removeprefix("sha256:")
    assert set(files) == {"m/x", f"m/x@{early.digest}", f"m/x@{late.digest}"}
    # Not trusted, or not intact: not in the set at all.
    revoked = artifact("m/y", 3, state="revoked")
    broken = artifact("m/z", 4, integrity="failed")
    assert metadata.target_files(entries(revoked, broken)) == {}
