"""Review 9: the disk fills under the database, and the mutation is not an upload.

Issue 9 point 5 fixed a full disk during an upload (507 ``storage.full``, recorded,
clean). The next members of the class: promote, revoke, delete, verify and sweep, each
of which writes the database. With the database on a full tmpfs each must answer a
problem+json (507 ``storage.full``, or a 503), never a bare 500 or a traceback, leave
its record, change no state, and work again once there is room.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Deployment, init_deployment, upload
from tests.e2e.test_registry_disk_full import _mount_tmpfs, _umount, fill, small

pytestmark = pytest.mark.e2e


@pytest.fixture
def full_db(tmp_path: Path) -> Iterator[tuple[Deployment, str, Path]]:
    dep = init_deployment(tmp_path, max_bytes=1024 * 1024)
    dep.edit_config("  db_path: state/registry.db\n", "  db_path: dbfs/registry.db\n")
    dbfs = dep.dir / "dbfs"
    _mount_tmpfs(dbfs, "1m")
    try:
        dep.start()
        with dep.client() as c:
            r = upload(c, small(7), name="m/full")
            assert r.status_code == 201, r.text
            digest = str(r.json()["artifact"]["digest"])
        filler = fill(dbfs)
        yield dep, digest, filler
    finally:
        dep.stop()
        _umount(dbfs)


def assert_refused_cleanly(dep: Deployment, r: httpx.Response) -> None:
    assert r.status_code in (503, 507), (r.status_code, r.text[:300])
    assert r.headers["content-type"] == "application/problem+json", r.text[:300]
    rid = r.headers["x-request-id"]
    assert [x for x in dep.audit_records() if x["request_id"] == rid], "no record"
    assert "Traceback" not in dep.stderr(), dep.stderr()[-3000:]


MUTATIONS = {
    "promote": ("POST", "/v1/artifacts/{d}/promote"),
    "revoke": ("POST", "/v1/artifacts/{d}/revoke"),
    "delete": ("DELETE", "/v1/artifacts/{d}"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_mutation_on_a_full_database_disk_answers_a_problem_and_recovers(
    full_db: tuple[Deployment, str, Path], name: str
) -> None:
    dep, digest, filler = full_db
    method, path = MUTATIONS[name]
    with dep.client() as c:
        body = {"reason": "review9"} if name == "revoke" else None
        r = c.request(method, path.format(d=digest), json=body)
        if r.status_code < 400:
            # Succeeding is also safe if the state really moved and was recorded.
            state = c.get(f"/v1/artifacts/{digest}")
            assert state.status_code in (200, 404), state.text
            return
        assert_refused_cleanly(dep, r)
        assert c.get(f"/v1/artifacts/{digest}").json()["artifact"]["state"] == "quarantined"
        filler.unlink()
        again = c.request(method, path.format(d=digest), json=body)
        assert again.status_code < 400, again.text


def test_verify_and_sweep_on_a_full_database_disk_answer_a_problem(
    full_db: tuple[Deployment, str, Path],
) -> None:
    dep, digest, _filler = full_db
    with dep.client() as c:
        for r in (c.post(f"/v1/artifacts/{digest}/verify"), c.post("/v1/sweep")):
            if r.status_code >= 400:
                assert_refused_cleanly(dep, r)
    assert "Traceback" not in dep.stderr(), dep.stderr()[-3000:]
