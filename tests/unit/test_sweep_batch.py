"""A sweep writes the times of unchanged checks in batches, not one fsync per artifact.

Counted on the real service and database: at 5,000 artifacts the per-artifact commit was
most of a sweep's cost beyond hashing (1.4 ms each; docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

from assay.registry import policy as policy_mod
from assay.registry.db import RegistryDB
from assay.registry.integrity import TOUCH_BATCH
from assay.registry.model import Artifact
from assay.registry.service import Registry
from assay.registry.store import ObjectStore

N = 2 * TOUCH_BATCH + 7


class CountingDB(RegistryDB):
    calls: Counter[str]

    def touch_verified(self, art: Artifact, ts: str, fingerprint: Any = None) -> Artifact:
        self.calls["touch_verified"] += 1
        return super().touch_verified(art, ts, fingerprint)

    def touch_verified_many(self, digests: list[str], ts: str, fingerprints: Any = None) -> None:
        self.calls["touch_verified_many"] += 1
        super().touch_verified_many(digests, ts, fingerprints)


async def test_sweep_touches_unchanged_artifacts_in_batches(tmp_path: Path) -> None:
    async def append(fields: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError(f"nothing changed, nothing to record: {fields['action']}")

    db = CountingDB(tmp_path / "r.db")
    db.calls = Counter()
    reg = Registry(store=ObjectStore(tmp_path / "s"), db=db, policy=policy_mod.Policy(name="t"),
                   audit_append=append, max_artifact_bytes=1024)  # fmt: skip
    reg.open_blocking()
    for i in range(N):
        data = i.to_bytes(4, "little")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        reg.store.path_for(digest).write_bytes(data)
        reg.store.path_for(digest).chmod(0o444)  # as the store makes them
        art = Artifact(digest=digest, name=f"m/{i}", size=4, format="gguf", format_details={},
                       metadata={}, state="trusted", integrity="ok",
                       created_at="2026-01-01T00:00:00.000Z", updated_at="2026-01-01T00:00:00.000Z",
                       uploaded_by="u", state_changed_at="2026-01-01T00:00:00.000Z")  # fmt: skip
        db.insert(art, None)
        reg.artifacts[digest] = art
    result = await reg.sweep()
    assert result["checked"] == N and result["failed"] == []
    assert db.calls == {"touch_verified_many": 3}  # ceil(N / TOUCH_BATCH), none one by one
    stored = db.load_all()
    assert all(a.last_verified_at is not None for a in stored.values())
    assert all(reg.artifacts[d].last_verified_at == a.last_verified_at for d, a in stored.items())
