"""verify and sweep change nothing unless the request's own record is durable first.

The real registry app in-process, a real store and database, and a fake audit sink (not
a mock: it validates like the real chain and keeps the records in order) that can be
told to fail the appends of one action. Each test fails the request's record and shows
that nothing moved: no integrity change, no last-check time, no last sweep.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from assay.core import tokenfile
from assay.core.audit.schema import check_fields
from assay.core.authn import Authenticator
from assay.core.errors import AuditWriteFailed
from assay.core.tokens import Principal
from assay.registry.app import create_app
from assay.registry.db import RegistryDB
from assay.registry.policy import Policy
from assay.registry.service import Registry
from assay.registry.store import ObjectStore
from tests.unit.test_ingest_blocks import PieceBody

SAMPLE = Path(__file__).resolve().parents[2] / "artifacts" / "sample.safetensors"
SCOPES = ["artifacts:read", "artifacts:write", "artifacts:verify"]


@dataclass
class FlakyAudit:
    """An in-memory audit sink that refuses, as a full disk would, the actions named."""

    records: list[dict[str, Any]] = field(default_factory=list)
    failing: Callable[[dict[str, Any]], bool] = lambda _fields: False

    async def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        checked = check_fields(fields)
        if self.failing(checked):
            raise AuditWriteFailed("No space left on device")
        record = {"seq": len(self.records) + 1, **checked}
        self.records.append(record)
        return record


@dataclass
class Harness:
    registry: Registry
    audit: FlakyAudit
    client: Any
    headers: dict[str, str]
    digest: str
    db_path: Path

    def stored(self) -> tuple[str, str | None]:
        """integrity and last_verified_at as the database holds them (not the cache)."""
        with sqlite3.connect(self.db_path) as db:
            row = db.execute(
                "SELECT integrity, last_verified_at FROM artifacts WHERE digest = ?",
                (self.digest,),
            ).fetchone()
        return row[0], row[1]

    def corrupt(self) -> None:
        path = self.registry.store.path_for(self.digest)
        path.chmod(0o600)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    audit = FlakyAudit()
    registry = Registry(
        store=ObjectStore(tmp_path / "store"),
        db=RegistryDB(tmp_path / "registry.db"),
        policy=Policy(name="test"),
        audit_append=audit.append,
        max_artifact_bytes=10 * 1024 * 1024,
        block_bytes=64 * 1024,
    )
    registry.open_blocking()
    token_path = tmp_path / "tokens.json"
    raw, _ = tokenfile.create(token_path, "checker", SCOPES)
    authn = Authenticator(token_path)
    authn.load()
    principal = Principal(id="checker", scopes=frozenset(SCOPES), auth_mode="token")
    out = await registry.ingest(
        principal, name="m/one", metadata={}, declared=None,
        body=PieceBody(SAMPLE.read_bytes(), [65536]), route="test", request_id="setup",
    )  # fmt: skip
    app = create_app(registry, authenticator=authn, audit=audit, max_json_body_bytes=65536,
                     readiness=dict)  # fmt: skip
    async with app.test_app() as test_app:
        yield Harness(
            registry, audit, test_app.test_client(), {"Authorization": f"Bearer {raw}"},
            out.artifact.digest, tmp_path / "registry.db",
        )  # fmt: skip
    registry.db.close()


def failing(action: str) -> Callable[[dict[str, Any]], bool]:
    return lambda fields: fields["action"] == action


async def test_a_verify_whose_record_cannot_be_written_does_not_move_the_check_time(
    harness: Harness,
) -> None:
    before = harness.stored()
    harness.audit.failing = failing("artifact.verify")
    r = await harness.client.post(f"/v1/artifacts/{harness.digest}/verify", headers=harness.headers)
    assert r.status_code == 503
    assert (await r.get_json())["code"] == "audit.write_failed"
    assert harness.stored() == before
    assert harness.registry.artifacts[harness.digest].last_verified_at == before[1]


async def test_a_verify_that_finds_corruption_marks_nothing_without_its_record(
    harness: Harness,
) -> None:
    harness.corrupt()
    harness.audit.failing = failing("artifact.integrity_failed")
    r = await harness.client.post(f"/v1/artifacts/{harness.digest}/verify", headers=harness.headers)
    assert r.status_code == 503
    assert harness.stored()[0] == "ok"  # not marked: the change's record came first
    harness.audit.failing = failing("none")
    r = await harness.client.post(f"/v1/artifacts/{harness.digest}/verify", headers=harness.headers)
    assert r.status_code == 200 and harness.stored()[0] == "failed"
    assert harness.audit.records[-1]["action"] == "artifact.integrity_failed"


async def test_a_sweep_whose_record_cannot_be_written_changes_nothing(harness: Harness) -> None:
    harness.corrupt()
    before = harness.stored()
    appended = len(harness.audit.records)
    harness.audit.failing = failing("artifact.sweep")
    r = await harness.client.post("/v1/sweep", headers=harness.headers)
    assert r.status_code == 503
    assert harness.stored() == before  # neither marked failed nor touched
    assert harness.registry.last_sweep is None
    assert len(harness.audit.records) == appended  # no integrity record either


async def test_a_sweeps_record_comes_before_the_changes_it_finds(harness: Harness) -> None:
    harness.corrupt()
    r = await harness.client.post(
        "/v1/sweep", headers=harness.headers | {"X-Request-Id": "sweep-1"}
    )
    assert r.status_code == 200
    body = await r.get_json()
    assert body["failed"] == [harness.digest] and body["checked"] == 1
    mine = [rec for rec in harness.audit.records if rec["request_id"] == "sweep-1"]
    assert [rec["action"] for rec in mine] == ["artifact.sweep", "artifact.integrity_failed"]
    assert mine[0]["extra"] == {"checked": 1, "failed": 1} and mine[0]["status"] == 200
    assert harness.stored()[0] == "failed"


async def test_an_unchanged_verify_writes_its_record_before_the_check_time(
    harness: Harness,
) -> None:
    r = await harness.client.post(f"/v1/artifacts/{harness.digest}/verify", headers=harness.headers)
    assert r.status_code == 200
    assert harness.audit.records[-1]["action"] == "artifact.verify"
    assert harness.stored()[1] is not None
