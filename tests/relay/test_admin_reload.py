"""The reload route in process, where the audit sink can be made to fail: a reload whose
record cannot be written must not swap the table (fail closed, as every mutation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from assay.core.admin import create_admin_app
from assay.core.errors import AuditWriteFailed
from assay.core.metrics import Metrics
from assay.relay.admin_routes import reload_routes
from tests.relay.conftest import FakeAudit, build_env, start
from tests.relay.test_admin import RELOAD, add_key, replace_source


class FailingAudit(FakeAudit):
    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    async def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise AuditWriteFailed("disk gone")
        return await super().append(fields)


async def test_a_reload_whose_record_cannot_be_written_swaps_nothing(tmp_path: Path) -> None:
    env = build_env(tmp_path, people=50)
    env.doc["admin"] = {"bind": "127.0.0.1:9"}
    add_key(env, "ops", "admin:reload")
    env.write()
    parts, _public_audit = start(env)
    audit = FailingAudit()
    app = create_admin_app("relay", authenticator=parts.authenticator, audit=audit,
                           metrics=Metrics("relay"), routes=reload_routes(parts.store))  # fmt: skip
    source = env.data / "households.csv"
    before = parts.store.get("civil", "households")
    replace_source(source, b"".join(source.read_bytes().splitlines(keepends=True)[:-1]))
    headers = {"Authorization": f"Bearer {env.keys['ops']}"}
    async with app.test_app() as test_app:
        client = test_app.test_client()
        audit.fail = True
        refused = await client.post(RELOAD, headers=headers)
        assert refused.status_code == 503
        assert (await refused.get_json())["code"] == "audit.write_failed"
        assert parts.store.get("civil", "households") is before  # still the old snapshot
        audit.fail = False
        done = await client.post(RELOAD, headers=headers)
        assert done.status_code == 200, await done.get_data()
    after = parts.store.get("civil", "households")
    assert after.digest != before.digest and after.rows == before.rows - 1
    # One record for the reload that happened, written before it served, and marked.
    [record] = audit.records
    assert record["action"] == "relay.table_reload" and record["status"] == 200
    assert record["extra"]["outcome"] == "reloaded"
    assert record["extra"]["generation"] == after.generation
    assert record["extra"]["listener"] == "admin"
    parts.close()
