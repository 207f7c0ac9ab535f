"""Something other than one regular file at an object path: a symlink (even to the right
bytes), a FIFO, a directory, a second hard link.

The daemon opens every object with ``O_NOFOLLOW | O_NONBLOCK`` and ``fstat`` in one
helper (``ObjectStore.open_object``) used by rehash, serve, promote and the sweep. Each
case must be an integrity failure recorded for that artifact alone (never a 500, never a
hang on a FIFO), and the sweep must go on and report it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import SAMPLES, Deployment, upload

pytestmark = pytest.mark.e2e

ST = (SAMPLES / "sample.safetensors").read_bytes()
GG = (SAMPLES / "sample.gguf").read_bytes()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def object_path(dep: Deployment, digest: str) -> Path:
    return dep.dir / "state" / "store" / "objects" / "sha256" / digest.removeprefix("sha256:")


def _symlink(path: Path, elsewhere: Path) -> None:
    # To a file that holds exactly the right bytes: following it would pass the hash.
    shutil.copy2(path, elsewhere)
    path.unlink()
    path.symlink_to(elsewhere)


def _fifo(path: Path, elsewhere: Path) -> None:
    path.unlink()
    os.mkfifo(path, 0o600)


def _directory(path: Path, elsewhere: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_bytes(b"x")


def _hard_link(path: Path, elsewhere: Path) -> None:
    # The bytes are right, but they can change through a name the store does not own.
    os.link(path, elsewhere)


PLANTS: dict[str, Callable[[Path, Path], None]] = {
    "symlink": _symlink,
    "fifo": _fifo,
    "directory": _directory,
    "hard link": _hard_link,
}


@pytest.mark.parametrize("kind", list(PLANTS))
def test_a_non_regular_object_is_an_integrity_failure_and_the_sweep_goes_on(
    deployment: Deployment, kind: str, tmp_path: Path
) -> None:
    dep = deployment
    with dep.client() as c:
        victim = upload(c, ST, name="m/victim").json()["artifact"]["digest"]
        bystander = upload(c, GG, name="m/bystander").json()["artifact"]["digest"]
        for d in (victim, bystander):
            assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
    PLANTS[kind](object_path(dep, victim), tmp_path / "elsewhere")
    with dep.client() as c:
        # The sweep checks both, reports the victim, and does not stop at it.
        r = c.post("/v1/sweep")
        assert r.status_code == 200, r.text
        assert r.json()["failed"] == [victim] and r.json()["checked"] == 2
        art = c.get(f"/v1/artifacts/{victim}").json()["artifact"]
        assert art["integrity"] == "failed"
        r = c.get(f"/v1/artifacts/{victim}/content")
        assert r.status_code == 409 and r.json()["code"] == "artifact.integrity_failed"
        v = c.post(f"/v1/artifacts/{victim}/verify")
        assert v.status_code == 200 and v.json()["ok"] is False
        # The bystander is served as before.
        assert c.get(f"/v1/artifacts/{bystander}/content").content == GG
    (record,) = [
        x
        for x in dep.audit_records()
        if x["action"] == "artifact.integrity_failed" and x["target"] == victim
    ]
    word = {"hard link": "hard links"}.get(kind, kind)
    assert any(word in reason for reason in record["reasons"]), record["reasons"]
    assert "Traceback" not in dep.stderr()


@pytest.mark.parametrize("kind", list(PLANTS))
def test_a_non_regular_object_is_found_when_served_or_promoted_first(
    deployment: Deployment, kind: str, tmp_path: Path
) -> None:
    dep = deployment
    with dep.client() as c:
        served = upload(c, ST, name="m/served").json()["artifact"]["digest"]
        assert c.post(f"/v1/artifacts/{served}/promote").status_code == 200
        pending = upload(c, GG, name="m/pending").json()["artifact"]["digest"]
    PLANTS[kind](object_path(dep, served), tmp_path / "a")
    PLANTS[kind](object_path(dep, pending), tmp_path / "b")
    with dep.client() as c:
        r = c.get(f"/v1/artifacts/{served}/content", timeout=10)
        assert r.status_code == 409 and r.json()["code"] == "artifact.integrity_failed"
        r = c.post(f"/v1/artifacts/{pending}/promote", timeout=10)
        assert r.status_code == 409 and r.json()["code"] == "artifact.integrity_failed"
        assert c.get(f"/v1/artifacts/{pending}").json()["artifact"]["state"] == "quarantined"
    assert "Traceback" not in dep.stderr()


def test_restoring_a_regular_file_restores_integrity(
    deployment: Deployment, tmp_path: Path
) -> None:
    dep = deployment
    with dep.client() as c:
        d = upload(c, ST).json()["artifact"]["digest"]
        assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
        path = object_path(dep, d)
        _symlink(path, tmp_path / "copy")
        assert c.post(f"/v1/artifacts/{d}/verify").json()["ok"] is False
        path.unlink()
        path.write_bytes(ST)
        path.chmod(0o444)  # restored as the store keeps it
        assert c.post(f"/v1/artifacts/{d}/verify").json()["ok"] is True
        assert c.get(f"/v1/artifacts/{d}/content").content == ST


def test_deleting_an_artifact_whose_object_is_a_directory_still_answers(
    deployment: Deployment, tmp_path: Path
) -> None:
    dep = deployment
    with dep.client() as c:
        d = upload(c, ST).json()["artifact"]["digest"]
        _directory(object_path(dep, d), tmp_path)
        r = c.request("DELETE", f"/v1/artifacts/{d}", json={"reason": "cleanup"})
        assert r.status_code == 200, r.text
        assert r.json()["artifact"]["state"] == "deleted"


def test_an_upload_replaces_whatever_squats_on_its_object_path(deployment: Deployment) -> None:
    """No row, but a symlink at the object path (planted, or left by a crash): the upload
    must store its own verified bytes there, not trust what it finds."""
    dep = deployment
    path = object_path(dep, digest_of(ST))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to("/dev/null")
    with dep.client() as c:
        r = upload(c, ST)
        assert r.status_code == 201, r.text
        d = r.json()["artifact"]["digest"]
        assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
        assert c.get(f"/v1/artifacts/{d}/content").content == ST
    assert path.is_file() and not path.is_symlink()
