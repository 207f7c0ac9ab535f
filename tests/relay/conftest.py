"""Relay fixtures: a synthetic registry in a temp dir, keys for every scope, an in-process app.

The audit sink is a small in-memory fake (not a mock) that validates each record against
the audit core's schema, so a field the real chain would refuse fails the test here too.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from assay.core.audit.keys import generate_signing_key
from assay.core.audit.schema import check_fields
from assay.relay import apikeys, jws
from assay.relay.settings import load_config, load_secrets
from assay.relay.wiring import Assembled, assemble

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "relay" / "example"

_spec = importlib.util.spec_from_file_location("relay_example_gen", EXAMPLE / "generate_dataset.py")
assert _spec is not None and _spec.loader is not None
GEN: Any = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(GEN)

#: Keys for the scope matrix: one per single scope, a reader's and a statistician's civil
#: scopes, another dataset's. No key holds an aggregate's scope together with read access
#: to an entity over its population: the relay refuses such a key (assay.relay.conflicts),
#: since reading the rows gives back what the aggregate suppresses.
KEYS: dict[str, list[str]] = {
    "meta": ["civil:metadata"],
    "read": ["civil:read"],
    "agg": ["civil:aggregate"],
    "all": ["civil:metadata", "civil:read"],
    "stats": ["civil:metadata", "civil:aggregate"],
    "other": ["housing:metadata", "housing:read", "housing:aggregate"],
    # Sees every dataset's metadata, but not the entity that has access of its own.
    "everything": ["civil:metadata", "civil:read", "housing:metadata"],
    # A reader's civil scopes plus the ``case`` entity's (which has its own access).
    "case": ["civil:metadata", "civil:read", "case:metadata", "case:read"],
    # A statistician's: civil's and case's aggregate scopes, no read scope.
    "case_stats": ["civil:metadata", "civil:aggregate", "case:metadata", "case:aggregate"],
    # A reader's civil scopes plus only the ``case`` entity's metadata scope.
    "case_meta": ["civil:metadata", "civil:read", "case:metadata"],
    # Every scope of ``case`` but only the dataset's metadata scope: both are needed.
    "case_only": ["civil:metadata", "case:metadata", "case:read", "case:aggregate"],
}  # fmt: skip
#: An entity with ``access`` of its own (next to the dataset's), and an aggregate over it.
CASE_ACCESS = {
    "metadata_scope": "case:metadata",
    "read_scope": "case:read",
    "aggregate_scope": "case:aggregate",
}
PURPOSE = {"X-Purpose": "benefit-eligibility-check"}


class FakeAudit:
    """In-memory audit sink: validates like the real chain, keeps records in order."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        record = {"seq": len(self.records) + 1, **check_fields(fields)}
        self.records.append(record)
        return record


def _secret(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


@dataclass
class RelayEnv:
    dir: Path
    data: Path
    config_path: Path
    doc: dict[str, Any]
    keys: dict[str, str] = field(default_factory=dict)
    signing_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    def write(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.doc, sort_keys=False))

    def headers(
        self, key: str | None, *, purpose: bool = True, scheme: str = "bearer"
    ) -> dict[str, str]:
        out = dict(PURPOSE) if purpose else {}
        if key is not None:
            raw = self.keys.get(key, key)
            if scheme == "bearer":
                out["Authorization"] = f"Bearer {raw}"
            else:
                out["X-API-Key"] = raw
        return out

    @property
    def public_pem(self) -> bytes:
        return jws.public_pem(self.signing_key)


def example_doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLE / "relay.yaml").read_text())
    return doc


def build_env(tmp: Path, *, people: int = 600, seed: int = 7) -> RelayEnv:
    data = tmp / "data"
    GEN.write(data, people, seed)
    sec = tmp / "secrets"
    sec.mkdir(mode=0o700)
    _secret(sec / "audit-hmac.key", secrets.token_hex(32).encode())
    env = RelayEnv(tmp, data, tmp / "relay.yaml", example_doc())
    _secret(sec / "answer-signing.key", jws.private_pem(env.signing_key))
    doc = env.doc
    doc["server"]["bind"] = "127.0.0.1:8480"
    # The example's budgets, kept in this test's directory; the default raised so tests
    # about other things can page freely (tests/relay/test_budgets.py sets its own).
    doc["row_budgets"] = {"state_dir": str(tmp / "state" / "row-budgets"),
                          "default": {"rows": 1_000_000, "window_seconds": 86_400}}  # fmt: skip
    doc["audit"]["dir"] = str(tmp / "state" / "audit")
    doc["audit"]["hmac_key"] = {"file": str(sec / "audit-hmac.key")}
    generate_signing_key(sec / "audit-signing.key", sec / "audit-signing.pub")
    doc["audit"]["signing_key"] = {"file": str(sec / "audit-signing.key")}
    doc["instance"]["answer_signing"]["key"] = {"file": str(sec / "answer-signing.key")}
    civil = doc["datasets"][0]
    for table in civil["tables"]:
        table["source"]["path"] = str(data / Path(table["source"]["path"]).name)
    housing = copy.deepcopy(civil)
    housing.update(id="housing", title="Housing", aggregates=[])
    housing["access"] = {
        "metadata_scope": "housing:metadata",
        "read_scope": "housing:read",
        "aggregate_scope": "housing:aggregate",
    }
    housing["tables"] = [t for t in housing["tables"] if t["id"] == "households"]
    housing["entities"] = [e for e in housing["entities"] if e["table"] == "households"]
    doc["datasets"].append(housing)
    civil["entities"].append(
        {
            "name": "case",
            "title": "Household case file",
            "table": "households",
            "fields": [{"name": "id", "from": "household_id"}, {"name": "status"},
                       {"name": "municipality"}],
            "allowed_filters": [{"field": "id", "ops": ["eq"]},
                                {"field": "status", "ops": ["eq"]}],
            "access": dict(CASE_ACCESS),
        }
    )  # fmt: skip
    civil["aggregates"].append(
        {
            "id": "cases_by_status",
            "source_entity": "case",
            "dimensions": ["status"],
            "indicators": [{"id": "households", "function": "count"}],
            "disclosure_control": {"min_group_size": 5},
        }
    )
    doc["auth"]["api_keys"] = []
    for key_id, scopes in KEYS.items():
        made = apikeys.new_key(key_id)
        _secret(sec / f"{key_id}.fp", made["fingerprint"].encode())
        env.keys[key_id] = made["key"]
        doc["auth"]["api_keys"].append(
            {
                "id": key_id,
                "fingerprint": {"file": str(sec / f"{key_id}.fp")},
                "commitment": made["commitment"],
                "scopes": list(scopes),
            }
        )
    env.write()
    return env


@pytest.fixture
def relay_env(tmp_path: Path) -> RelayEnv:
    return build_env(tmp_path)


@dataclass
class Running:
    env: RelayEnv
    parts: Assembled
    audit: FakeAudit
    client: Any

    async def get(self, path: str, key: str | None = "all", **kw: Any) -> Any:
        headers = kw.pop("headers", None)
        if headers is None:
            headers = self.env.headers(key, purpose=kw.pop("purpose", True))
        return await self.client.get(path, headers=headers, **kw)


def start(env: RelayEnv, clock: Callable[[], float] | None = None) -> tuple[Assembled, FakeAudit]:
    loaded = load_config(env.config_path)
    audit = FakeAudit()
    return assemble(loaded, load_secrets(loaded), audit=audit, clock=clock), audit


@pytest.fixture
async def running(relay_env: RelayEnv) -> AsyncIterator[Running]:
    parts, audit = start(relay_env)
    async with parts.app.test_app() as test_app:
        yield Running(relay_env, parts, audit, test_app.test_client())


def all_text(records: list[dict[str, Any]]) -> str:
    return "\n".join(repr(r) for r in records)


def source_state(path: Path) -> tuple[int, bytes]:
    return os.stat(path).st_mtime_ns, path.read_bytes()
