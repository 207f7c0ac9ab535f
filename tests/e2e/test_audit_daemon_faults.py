"""The audit directory fails under the running daemon: full disk, read-only directory.

Under ``fail_closed`` (the default) every mutation must answer 503 ``audit.write_failed``
and change nothing; reads fail closed too, so the state is checked once the fault is
cleared and again after a restart. Under ``availability_first`` mutations keep working
without records: the documented trade-off, made visible here.

Tests run as root, so permissions do not stop writes: the faults are real mounts (a tiny
tmpfs over the audit directory, a read-only bind mount), skipped where mounting is not
permitted, and always unmounted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import save as st_save

from tests.conftest import Deployment, init_deployment, run_cli, upload

pytestmark = pytest.mark.e2e

TMPFS_SIZE = "256k"
MAX_PROBES = 200
ROTATE_BYTES = 65536  # AuditConfig.rotate_bytes minimum


def artifact(i: int) -> bytes:
    return st_save({"w": np.full(8, 1000 + i, dtype=np.int32)})


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _require_mount() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the faults are tmpfs and bind mounts over the audit dir")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount(8)/umount(8) not installed")


class Mounts:
    """Mounts made by one test, undone (daemon first, so nothing is busy) at teardown."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.stack: list[Path] = []

    def tmpfs_over_audit_dir(self) -> None:
        """Before the daemon starts: the audit dir's files move onto a tiny tmpfs."""
        audit = self.dep.audit_dir
        saved = audit.parent / "audit.saved"
        shutil.copytree(audit, saved)
        self.tmpfs(audit, TMPFS_SIZE)
        for f in saved.iterdir():
            shutil.copy2(f, audit / f.name)

    def tmpfs(self, path: Path, size: str) -> None:
        proc = _mount("-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path))
        if proc.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip()}")
        self.stack.append(path)

    def read_only_bind(self, path: Path) -> None:
        proc = _mount("--bind", str(path), str(path))
        if proc.returncode != 0:
            pytest.skip(f"bind mounts are not permitted here: {proc.stderr.strip()}")
        self.stack.append(path)
        proc = _mount("-o", "remount,ro,bind", str(path))
        assert proc.returncode == 0, proc.stderr

    def pop(self) -> None:
        _umount(self.stack.pop())

    def close(self) -> None:
        self.dep.stop()
        while self.stack:
            self.pop()


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[tuple[Deployment, Mounts]]:
    _require_mount()
    dep = init_deployment(tmp_path, max_bytes=1024 * 1024)
    mounts = Mounts(dep)
    try:
        yield dep, mounts
    finally:
        mounts.close()


def fill(directory: Path) -> Path:
    """Write a filler file until the file system says ENOSPC."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for _ in range(10_000):
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        else:
            raise AssertionError("tmpfs never filled up")
    finally:
        os.close(fd)
    return filler


def probe_until(c: httpx.Client, path: str, done: Callable[[httpx.Response], bool]) -> None:
    """Cheap requests until ``done``: they use up what is left of the log's last page."""
    for _ in range(MAX_PROBES):
        if done(c.get(path)):
            return
    raise AssertionError(f"{path}: condition never reached")


def assert_write_failed(r: httpx.Response) -> None:
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.json()["code"] == "audit.write_failed"
    assert "assay-receipt" not in r.headers


def states(dep: Deployment, digests: dict[str, str]) -> dict[str, str | int]:
    out: dict[str, str | int] = {}
    with dep.client() as c:
        for label, d in digests.items():
            r = c.get(f"/v1/artifacts/{d}")
            out[label] = r.json()["artifact"]["state"] if r.status_code == 200 else r.status_code
    return out


def verify_log(dep: Deployment) -> dict[str, object]:
    secrets = dep.dir / "secrets"
    args = ["audit", "verify", str(dep.audit_dir), "--key-file", str(secrets / "audit-hmac.key")]
    checkpoints = dep.audit_dir / "checkpoints.jsonl"
    if checkpoints.exists():  # the first one is signed at shutdown (or after 60 s)
        args += [
            "--checkpoint",
            str(checkpoints),
            "--public-key",
            str(secrets / "audit-signing.pub"),
        ]
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report: dict[str, object] = json.loads(proc.stdout)
    return report


def baseline(dep: Deployment) -> dict[str, str]:
    """trusted (to revoke), trusted (to delete), quarantined (to promote)."""
    with dep.client() as c:
        out = {}
        for label, i in (("revokable", 1), ("deletable", 2), ("promotable", 3)):
            r = upload(c, artifact(i), name=f"m/{label}")
            assert r.status_code == 201, r.text
            out[label] = r.json()["artifact"]["digest"]
        for label in ("revokable", "deletable"):
            assert c.post(f"/v1/artifacts/{out[label]}/promote").status_code == 200
    out["newcomer"] = "sha256:" + hashlib.sha256(artifact(4)).hexdigest()
    return out


EXPECTED = {"revokable": "trusted", "deletable": "trusted", "promotable": "quarantined"}


def attempt_every_mutation(dep: Deployment, d: dict[str, str]) -> list[httpx.Response]:
    with dep.client() as c:
        return [
            upload(c, artifact(4), name="m/newcomer"),
            c.post(f"/v1/artifacts/{d['promotable']}/promote"),
            c.post(f"/v1/artifacts/{d['revokable']}/revoke", json={"reason": "during outage"}),
            c.request("DELETE", f"/v1/artifacts/{d['deletable']}", json={"reason": "outage"}),
        ]


def no_mutation_records(dep: Deployment, digests: dict[str, str]) -> None:
    """No record claims one of the attempted mutations (refused, or done unrecorded)."""
    for rec in dep.audit_records():
        action, target = rec["action"], rec["target"]
        assert not (action == "artifact.ingest" and target == digests["newcomer"]), rec
        assert not (action.endswith(("promote", "approve")) and target == digests["promotable"])
        assert action not in ("artifact.revoke", "artifact.delete"), rec


# -- fail_closed ----------------------------------------------------------------------------


def test_full_audit_disk_refuses_every_mutation_and_changes_nothing(
    faulty: tuple[Deployment, Mounts],
) -> None:
    dep, mounts = faulty
    mounts.tmpfs_over_audit_dir()
    dep.start()
    digests = baseline(dep)
    filler = fill(dep.audit_dir)
    with dep.client() as c:
        # The log's last page may still hold a few small records; use it up.
        probe_until(c, "/healthz", lambda r: r.status_code == 503)
        for r in attempt_every_mutation(dep, digests):
            assert_write_failed(r)
        # Reads need their record too under fail_closed.
        assert_write_failed(c.get(f"/v1/artifacts/{digests['revokable']}"))
        assert_write_failed(c.get(f"/v1/artifacts/{digests['revokable']}/content"))
    filler.unlink()
    # A failed write is cut off again, so the daemon recovers without a restart.
    assert states(dep, digests) == {**EXPECTED, "newcomer": 404}
    with dep.client() as c:
        assert c.get(f"/v1/artifacts/{digests['revokable']}/content").status_code == 200
    no_mutation_records(dep, digests)
    verify_log(dep)
    # And the database agrees after a restart (reconcile finds nothing to replay).
    dep.stop()
    dep.start()
    assert states(dep, digests) == {**EXPECTED, "newcomer": 404}
    assert "reconciled" not in dep.stderr()
    dep.stop()
    verify_log(dep)


def test_audit_dir_turned_read_only_refuses_mutations_at_rotation(
    faulty: tuple[Deployment, Mounts],
) -> None:
    """A read-only bind mount over the audit dir while the daemon runs.

    The daemon's open ``audit.jsonl`` descriptor still reaches the real file system (a bind
    mount is only a view), so appends go on; what needs the directory itself fails. Here
    that is rotation: the log is filled to ``rotate_bytes`` first, so the next append must
    rename the file, and gets EROFS.
    """
    dep, mounts = faulty
    dep.edit_config(
        "  write_policy: fail_closed\n",
        f"  write_policy: fail_closed\n  rotate_bytes: {ROTATE_BYTES}\n",
    )
    dep.start()
    digests = baseline(dep)
    current = dep.audit_dir / "audit.jsonl"
    with dep.client() as c:
        probe_until(c, "/healthz", lambda r: current.stat().st_size >= ROTATE_BYTES)
    assert not list(dep.audit_dir.glob("audit.0*.jsonl")), "rotated too early"
    mounts.read_only_bind(dep.audit_dir)
    for r in attempt_every_mutation(dep, digests):
        assert_write_failed(r)
    with dep.client() as c:
        assert_write_failed(c.get("/v1/artifacts"))
    mounts.pop()
    assert states(dep, digests) == {**EXPECTED, "newcomer": 404}
    assert [p.name for p in dep.audit_dir.glob("audit.0*.jsonl")] == ["audit.000001.jsonl"]
    no_mutation_records(dep, digests)
    verify_log(dep)
    dep.stop()
    dep.start()
    assert states(dep, digests) == {**EXPECTED, "newcomer": 404}
    dep.stop()
    verify_log(dep)


def test_upload_refused_for_a_full_audit_disk_leaves_no_blob_behind(
    faulty: tuple[Deployment, Mounts],
) -> None:
    dep, mounts = faulty
    mounts.tmpfs_over_audit_dir()
    dep.start()
    before = dep.objects()
    filler = fill(dep.audit_dir)
    with dep.client() as c:
        probe_until(c, "/healthz", lambda r: r.status_code == 503)
        assert_write_failed(upload(c, artifact(9), name="m/orphan"))
    filler.unlink()
    assert dep.objects() == before


def test_durable_revoke_whose_db_commit_failed_is_voided_and_never_applied(
    faulty: tuple[Deployment, Mounts],
) -> None:
    """The record of a revoke is fsynced, then its SQLite commit fails (disk full). The
    client is told it failed, so the log must not claim it happened: a void record
    follows, and neither the running daemon nor a restart applies the revoke. (Under
    kill -9 no one was told anything, and the durable record is applied at startup:
    see test_audit_daemon_crash.py.)"""
    dep, mounts = faulty
    dep.edit_config("  db_path: state/registry.db\n", "  db_path: dbfs/registry.db\n")
    dbfs = dep.dir / "dbfs"
    dbfs.mkdir(mode=0o700)
    mounts.tmpfs(dbfs, "1m")
    dep.start()
    digests = baseline(dep)
    victim = digests["revokable"]
    filler = fill(dbfs)
    with dep.client() as c:
        r = c.post(f"/v1/artifacts/{victim}/revoke", json={"reason": "db full"})
        assert r.status_code >= 500, r.text
        filler.unlink()
        assert upload(c, artifact(4), name="m/newcomer").status_code == 201
    records = dep.audit_records()
    (revoke,) = [x for x in records if x["action"] == "artifact.revoke"]
    (void,) = [x for x in records if x["action"] == "audit.void"]
    assert void["extra"]["voids_seq"] == revoke["seq"] and void["seq"] > revoke["seq"]
    assert void["request_id"] == revoke["request_id"]
    assert states(dep, {"v": victim}) != {"v": "revoked"}
    dep.stop()
    dep.start()
    assert states(dep, {"v": victim}) != {"v": "revoked"}


# -- availability_first ---------------------------------------------------------------------


def test_availability_first_keeps_mutating_without_records_and_says_so(
    faulty: tuple[Deployment, Mounts],
) -> None:
    """The documented trade-off: service continues, the trail has a visible hole."""
    dep, mounts = faulty
    dep.edit_config("  write_policy: fail_closed\n", "  write_policy: availability_first\n")
    mounts.tmpfs_over_audit_dir()
    dep.start()
    digests = baseline(dep)
    filler = fill(dep.audit_dir)
    with dep.client() as c:
        # Readiness reports the audit log unhealthy once a batch has failed.
        probe_until(c, "/readyz", lambda r: r.status_code == 503)
        assert c.get("/readyz").json()["checks"]["audit"]["ok"] is False
        responses = attempt_every_mutation(dep, digests)
        assert [r.status_code for r in responses] == [201, 200, 200, 200]
        # No durable record, so no receipt can be signed.
        assert all("assay-receipt" not in r.headers for r in responses)
        assert c.get(f"/v1/artifacts/{digests['newcomer']}").status_code == 200
    assert "dropped (availability_first)" in dep.stderr()
    filler.unlink()
    changed = {
        "revokable": "revoked",
        "deletable": "deleted",
        "promotable": "trusted",
        "newcomer": "quarantined",
    }
    assert states(dep, digests) == changed
    with dep.client() as c:
        assert c.get("/readyz").status_code == 200  # healthy again after a good batch
    # The chain itself is intact: the gap is in coverage, not in the sequence.
    verify_log(dep)
    no_mutation_records(dep, digests)
    dep.stop()
    dep.start()
    assert states(dep, digests) == changed
