"""The real daemon publishes its trusted set as TUF metadata; consumers check it with no
request. Each test drives the daemon over loopback HTTP and reads the published
directory the way a local consumer does (``assay.consumer.tuf``)."""

from __future__ import annotations

import itertools
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from assay.consumer.tuf import TrustCheck
from tests.conftest import Deployment, run_cli, upload
from tests.formats_factory import valid_st
from tests.trust_util import Clock

pytestmark = pytest.mark.e2e


def model(i: int) -> bytes:
    return valid_st({"w": ("F32", [4 + i % 3])}, fill=i % 256)


def publish_dir(dep: Deployment) -> Path:
    return dep.dir / "run" / "trust"


def checker(dep: Deployment, cache: str = "consumer-cache", **kw: Any) -> TrustCheck:
    root = (dep.dir / "trust" / "root" / "1.root.json").read_bytes()
    return TrustCheck(publish_dir(dep), root, dep.dir / cache, **kw)


def trusted(dep: Deployment, i: int, name: str | None = None) -> str:
    with dep.client() as c:
        r = upload(c, model(i), name=name or f"m/{i}")
        assert r.status_code in (200, 201), r.text
        d: str = r.json()["artifact"]["digest"]
        assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
    return d


def test_revocation_is_in_the_published_metadata_before_the_revoke_answers(
    deployment: Deployment,
) -> None:
    """A thread reads the published targets, racing each revoke's HTTP answer: no read
    after an answer arrived may show the revoked artifact trusted."""
    dep = deployment
    digests = [trusted(dep, i) for i in range(6)]
    check = checker(dep)
    for i, d in enumerate(digests):
        assert check.is_trusted(f"m/{i}", d)
    observations: list[tuple[float, int, bool]] = []
    stop = threading.Event()

    def race() -> None:
        racer = checker(dep, "racer-cache")
        for _ in range(1_000_000):  # bounded; stopped long before
            if stop.is_set():
                return
            for i, d in enumerate(digests):
                before = time.monotonic()
                observations.append((before, i, racer.is_trusted(f"m/{i}", d)))

    thread = threading.Thread(target=race)
    thread.start()
    answered: dict[int, float] = {}
    try:
        with dep.client() as c:
            for i, d in enumerate(digests):
                r = c.post(f"/v1/artifacts/{d}/revoke", json={"reason": "race"})
                answered[i] = time.monotonic()
                assert r.status_code == 200, r.text
                # The next check, at once, sees it.
                assert not check.is_trusted(f"m/{i}", d)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert observations, "the racing reader never ran"
    late = [(t, i) for t, i, ok in observations if ok and t >= answered[i]]
    assert late == [], f"trusted after its revoke answered: {late[:5]}"
    assert any(not ok for _t, _i, ok in observations)


def test_promotion_is_published_before_the_promote_answers(deployment: Deployment) -> None:
    dep = deployment
    check = checker(dep)
    with dep.client() as c:
        for i in range(4):
            d = upload(c, model(10 + i), name="m/rolling").json()["artifact"]["digest"]
            assert not check.is_trusted("m/rolling", d)
            assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
            assert check.is_trusted("m/rolling", d)
            # The name resolves as GET /v1/trusted/{name} answers.
            assert check.resolve("m/rolling") == c.get("/v1/trusted/m/rolling").json()["digest"]


def test_integrity_failure_and_restoration_leave_and_rejoin_the_trusted_set(
    deployment: Deployment,
) -> None:
    dep = deployment
    d = trusted(dep, 20)
    check = checker(dep)
    path = dep.dir / "state" / "store" / "objects" / "sha256" / d.removeprefix("sha256:")
    good = path.read_bytes()
    with dep.client() as c:
        path.chmod(0o644)
        path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        assert c.post(f"/v1/artifacts/{d}/verify").json()["ok"] is False
        assert not check.is_trusted("m/20", d)
        path.write_bytes(good)
        path.chmod(0o444)  # restored as the store keeps it: a loosened mode fails too
        assert c.post(f"/v1/artifacts/{d}/verify").json()["ok"] is True
        assert check.is_trusted("m/20", d)


def test_versions_only_increase_across_restarts_and_a_reboot_that_empties_the_dir(
    deployment: Deployment,
) -> None:
    dep = deployment
    d = trusted(dep, 30)
    check = checker(dep)  # its cache would refuse any version going back
    seen = [status(dep)]
    for round_ in range(2):
        dep.stop()
        if round_ == 0:
            shutil.rmtree(publish_dir(dep))  # a tmpfs RuntimeDirectory after a reboot
        dep.start()
        seen.append(status(dep))
        assert check.check("m/30", d).trusted, check.check("m/30", d)
    for before, after in itertools.pairwise(seen):
        for role in ("timestamp", "snapshot", "targets"):
            assert after[role]["version"] > before[role]["version"], (role, seen)


def status(dep: Deployment) -> dict[str, Any]:
    out = run_cli("trust", "status", "--config", str(dep.config), "--json", check=True)
    data: dict[str, Any] = json.loads(out.stdout)
    assert data["ok"], data
    return dict(data["versions"])


def test_a_daemon_that_is_down_is_trusted_until_the_timestamp_expires(
    deployment: Deployment,
) -> None:
    dep = deployment
    d = trusted(dep, 40)
    clock = Clock()
    check = checker(dep, clock=clock.posix)
    assert check.is_trusted("m/40", d)
    expires = check.status()["expires"]
    dep.stop()
    # Down, with its published dir still there; then gone, as systemd removes it.
    assert check.is_trusted("m/40", d)
    shutil.rmtree(publish_dir(dep))
    assert check.is_trusted("m/40", d)
    assert checker(dep, clock=clock.posix).is_trusted("m/40", d)  # a fresh consumer too
    deadline = time.mktime(time.strptime(expires, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    clock.advance(deadline - clock.posix() - 1)
    assert check.is_trusted("m/40", d)
    clock.advance(2)
    assert not check.is_trusted("m/40", d)
    assert not checker(dep, clock=clock.posix).is_trusted("m/40", d)


def test_readyz_reports_the_published_versions(deployment: Deployment) -> None:
    dep = deployment
    trusted(dep, 50)
    with dep.client() as c:  # the details need artifacts:read
        trust = c.get("/readyz").json()["checks"]["trust"]
    assert trust["ok"] and trust["trusted"] == 1
    assert trust["timestamp"]["version"] >= 2
    with dep.client(token=None) as c:  # the public summary names no versions
        assert c.get("/readyz").json() == {"ready": True, "failing": []}


def test_a_corrupt_versions_file_or_a_foreign_online_key_stops_startup_in_one_line(
    stopped_deployment: Deployment,
) -> None:
    dep = stopped_deployment
    state = dep.dir / "state" / "trust"
    state.mkdir(parents=True, exist_ok=True)
    (state / "versions.json").write_text('{"targets": "many"}')
    proc = run_cli("serve", "--config", str(dep.config), timeout=60)
    assert proc.returncode == 2 and "trust.config_invalid" in proc.stderr
    assert "Traceback" not in proc.stderr
    (state / "versions.json").unlink()
    # A key the pinned root does not name would sign metadata every consumer refuses.
    run_cli("publisher", "keygen", "--id", "other", "--out", str(dep.dir / "other"), check=True)
    dep.edit_config("secrets/tuf-online.key", "other/other.key")
    proc = run_cli("serve", "--config", str(dep.config), timeout=60)
    assert proc.returncode == 2 and "is not the threshold-1 key" in proc.stderr
    assert "Traceback" not in proc.stderr
