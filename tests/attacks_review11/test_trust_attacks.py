"""Attacks on the TUF publication and ``assay.consumer.is_trusted`` (review 11).

Each test asserts the SAFE behaviour: it fails while the break it names exists.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from assay.consumer.tuf import TrustCheck
from tests.conftest import Deployment, run_cli, upload
from tests.formats_factory import valid_st

pytestmark = pytest.mark.e2e


def model(i: int) -> bytes:
    return valid_st({"w": ("F32", [4 + i % 3])}, fill=i % 256)


def publish_dir(dep: Deployment) -> Path:
    return dep.dir / "run" / "trust"


def versions(dep: Deployment) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((dep.dir / "state" / "trust" / "versions.json").read_text())
    return data


def checker(dep: Deployment, cache: str = "consumer-cache") -> TrustCheck:
    root = (dep.dir / "trust" / "root" / "1.root.json").read_bytes()
    return TrustCheck(publish_dir(dep), root, dep.dir / cache)


def trusted(dep: Deployment, i: int, name: str | None = None) -> str:
    with dep.client() as c:
        r = upload(c, model(i), name=name or f"m/{i}")
        assert r.status_code in (200, 201), r.text
        d: str = r.json()["artifact"]["digest"]
        assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
    return d


def block_next_targets(dep: Deployment) -> None:
    """Make the next publish fail: a directory squats ``versions.json``, so reserving the
    next versions (PUB-1, a rename over it) fails. (Squatting the next targets file's
    name no longer works: versions follow the wall clock, so the next one is unknown.)"""
    state = dep.dir / "state" / "trust" / "versions.json"
    saved = state.read_bytes()
    state.unlink()
    state.mkdir()
    (state / "x").write_bytes(saved)


def test_attack_withdrawn_revocation_is_forgotten_once_the_daemon_is_down(
    deployment: Deployment,
) -> None:
    """A revoke whose publish fails withdraws the timestamp, and consumers trust nothing:
    right. Then the daemon stops (systemd removes its RuntimeDirectory): the consumer
    falls back to its cache, which was verified before the revoke, and the revoked
    artifact is trusted again until that old timestamp expires."""
    dep = deployment
    d = trusted(dep, 1)
    check = checker(dep)
    assert check.is_trusted("m/1", d)  # the cache now holds the pre-revoke set
    block_next_targets(dep)
    with dep.client() as c:
        r = c.post(f"/v1/artifacts/{d}/revoke", json={"reason": "compromised"})
    assert r.status_code in (200, 503), r.text
    assert (publish_dir(dep) / "timestamp.withdrawn").exists()
    assert not check.is_trusted("m/1", d)  # withdrawn: fail closed
    dep.stop()
    shutil.rmtree(publish_dir(dep))  # RuntimeDirectory= removed at stop
    verdict = check.check("m/1", d)
    assert not verdict.trusted, f"revoked artifact trusted again: {verdict}"
    fresh = checker(dep, "consumer-cache")  # a consumer restarted with the same cache
    assert not fresh.is_trusted("m/1", d), "revoked artifact trusted again after restart"


def test_attack_restored_versions_backup_never_makes_versions_go_backwards(
    deployment: Deployment,
) -> None:
    """The state dir is restored from an older backup and the published tmpfs is empty
    (a reboot): the daemon publishes versions below what consumers cached, and every
    consumer refuses the daemon's metadata as a rollback (fail closed for all, until the
    versions climb past the old ones)."""
    dep = deployment
    d = trusted(dep, 2)
    backup = (dep.dir / "state" / "trust" / "versions.json").read_bytes()
    for i in range(3, 6):
        trusted(dep, i)
    check = checker(dep)
    assert check.is_trusted("m/2", d)
    dep.stop()
    (dep.dir / "state" / "trust" / "versions.json").write_bytes(backup)
    shutil.rmtree(publish_dir(dep))
    dep.start()
    verdict = check.check("m/2", d)
    assert verdict.trusted, f"the restarted daemon's metadata is refused: {verdict}"


def test_attack_keys_and_trust_state_are_unreadable_to_others(deployment: Deployment) -> None:
    dep = deployment
    trusted(dep, 7)
    found = []
    for path in dep.dir.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        head = path.read_bytes()[:4096]
        if b"PRIVATE KEY" in head or path.name == "versions.json":
            found.append(path)
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode & 0o077 == 0, f"{path} is mode {mode:o}"
    assert any("tuf" in p.name for p in found), found


def test_attack_published_repository_cannot_be_written_by_others(deployment: Deployment) -> None:
    dep = deployment
    trusted(dep, 8)
    pub = publish_dir(dep)
    for path in [pub, *pub.iterdir()]:
        info = path.lstat()
        assert not stat.S_ISLNK(info.st_mode), path
        assert info.st_mode & 0o022 == 0, f"{path} is mode {stat.S_IMODE(info.st_mode):o}"
        assert info.st_uid == os.geteuid(), path


def test_attack_export_carries_no_private_key_and_no_withdrawn_set(
    deployment: Deployment, tmp_path: Path
) -> None:
    """``trust export`` after a failed revoke publish must not ship the pre-revoke set to
    the fleet (the daemon withdrew it locally); and never a key."""
    dep = deployment
    d = trusted(dep, 9)
    block_next_targets(dep)
    with dep.client() as c:
        r = c.post(f"/v1/artifacts/{d}/revoke", json={"reason": "compromised"})
    assert r.status_code in (200, 503), r.text
    out = tmp_path / "export"
    run_cli("trust", "export", "--config", str(dep.config), str(out))
    for path in out.rglob("*"):
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path
    root = (dep.dir / "trust" / "root" / "1.root.json").read_bytes()
    check = TrustCheck(out, root, tmp_path / "fleet-cache")
    assert not check.is_trusted("m/9", d), "the export vouches for a revoked artifact"


def test_attack_amr_revoke_reaches_the_metadata_before_it_answers(deployment: Deployment) -> None:
    dep = deployment
    d = trusted(dep, 10, name="amr/model")
    check = checker(dep)
    assert check.is_trusted("amr/model", d)
    with dep.client() as c:
        r = c.post("/v1/model/revoke", params={"name": "amr/model"}, json={})
        assert r.status_code == 200, r.text
    assert not check.is_trusted("amr/model", d)
    assert check.resolve("amr/model") is None


def test_attack_is_trusted_never_accepts_another_names_digest_or_odd_spellings(
    deployment: Deployment,
) -> None:
    dep = deployment
    a = trusted(dep, 11, name="x/a")
    b = trusted(dep, 12, name="x/b")
    check = checker(dep)
    assert check.is_trusted("x/a", a) and check.is_trusted("x/b", b)
    for name, digest in [
        ("x/a", b),
        ("x/b", a),
        ("x/a", a.upper()),
        ("x/a", a[7:]),
        ("x/a", a[:20]),
        ("x/a/", a),
        ("X/A", a),
        ("x/./a", a),
        ("x/a@" + a, a),
        ("x//a", a),
    ]:
        assert not check.is_trusted(name, digest), (name, digest)


def test_attack_cache_writable_by_others_lets_old_signed_metadata_undo_a_revocation(
    deployment: Deployment, tmp_path: Path
) -> None:
    """The consumer's cache is its rollback protection, but TrustCheck takes a cache dir
    that others can write (``mkdir(exist_ok=True)`` never checks an existing one). Another
    user saves the world-readable published metadata from before a revoke, writes it into
    the cache while the daemon is down, and the revoked artifact is trusted again."""
    dep = deployment
    d = trusted(dep, 20)
    pub = publish_dir(dep)
    ts = json.loads((pub / "timestamp.json").read_bytes())["signed"]
    sv = ts["meta"]["snapshot.json"]["version"]
    snap = json.loads((pub / f"{sv}.snapshot.json").read_bytes())["signed"]
    tv = snap["meta"]["targets.json"]["version"]
    saved = {
        "timestamp.json": (pub / "timestamp.json").read_bytes(),
        "snapshot.json": (pub / f"{sv}.snapshot.json").read_bytes(),
        "targets.json": (pub / f"{tv}.targets.json").read_bytes(),
    }
    shared = Path("/tmp") / f"assay-r11-cache-{os.getpid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)  # e.g. ASSAY_TRUST_CACHE=/tmp/assay-trust shared by services
    try:
        root = (dep.dir / "trust" / "root" / "1.root.json").read_bytes()
        check = TrustCheck(pub, root, shared)
        assert check.is_trusted("m/20", d)
        with dep.client() as c:
            assert c.post(f"/v1/artifacts/{d}/revoke", json={"reason": "x"}).status_code == 200
        assert not check.is_trusted("m/20", d)  # the cache now holds the revoked set
        for name, data in saved.items():  # the other user's write
            (shared / name).write_bytes(data)
        dep.stop()
        shutil.rmtree(pub)
        again = TrustCheck(pub, root, shared)
        assert not again.is_trusted("m/20", d), "a revoked artifact is trusted again"
    finally:
        shutil.rmtree(shared, ignore_errors=True)
