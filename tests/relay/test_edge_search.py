"""The relay's edge: a search for a request that leaves no record or gets a 5xx, and
its readiness answer, which must not name private tables to whoever asks.

Against the real relay process (``running_relay``), its real audit log counted line by
line: hypothesis draws raw requests (``tests.attacks``) over the relay's routes, its
filter, paging and projection parameters (``national_id.in``, ``limit``, ``cursor``,
``fields``) and the headers it reads (``X-API-Key``, ``X-Purpose``, ``Accept``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.attacks import request_strategy
from tests.conftest import run_cli
from tests.rawhttp import exchange
from tests.relay.conftest import RelayEnv, build_env
from tests.relay.test_e2e import running_relay

pytestmark = pytest.mark.e2e

ROUTES = [
    "/healthz", "/readyz", "/openapi.json", "/v1/datasets", "/v1/datasets/civil",
    "/v1/datasets/housing", "/v1/datasets/ghost", "/v1/datasets/civil/entities",
    "/v1/datasets/civil/entities/person", "/v1/datasets/civil/entities/person/records",
    "/v1/datasets/civil/entities/household/records",
    "/v1/datasets/civil/entities/household/records/H0000001",
    "/v1/datasets/civil/entities/resident/records/P00000002",
    "/v1/datasets/civil/aggregates/people_by_municipality",
]  # fmt: skip
NAMES = [
    "national_id", "national_id.in", "enrolled_on.gte", "enrolled_on.between", "municipality",
    "size.gte", "limit", "cursor", "fields", "status", "sex",
]  # fmt: skip
SEARCH = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayEnv, int]]:
    tmp = tmp_path_factory.mktemp("relay-search")
    env = build_env(tmp, people=300)
    with running_relay(env, tmp / "relay.log") as (url, _proc):
        yield env, int(url.rsplit(":", 1)[1])
    audit_dir = Path(env.doc["audit"]["dir"])
    out = run_cli("audit", "verify", str(audit_dir), "--key-file",
                  env.doc["audit"]["hmac_key"]["file"], "--json")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def record_count(env: RelayEnv) -> int:
    audit_dir = Path(env.doc["audit"]["dir"])
    return sum(f.read_bytes().count(b"\n") for f in audit_dir.glob("audit*.jsonl"))


def test_no_relay_request_escapes_its_record_or_gets_a_server_error(
    live: tuple[RelayEnv, int],
) -> None:
    env, port = live
    key = env.keys["all"].encode()
    credentials = [
        (b"Authorization", b"Bearer " + key),
        (b"X-API-Key", key),
        (b"X-Purpose", b"benefit-eligibility-check"),
    ]
    seen: Counter[int] = Counter()

    @SEARCH
    @given(raw=request_strategy(ROUTES, credentials, NAMES))
    def one(raw: bytes) -> None:
        before = record_count(env)
        got = exchange(port, raw)
        assert got is not None, "closed without an answer"
        assert got.status < 500 or got.status == 501, (got.status, got.body[:300])
        assert record_count(env) == before + 1, got
        seen[got.status] += 1

    one()
    assert {200, 400, 401, 404} <= set(seen), seen


def test_unauthenticated_relay_readiness_names_no_table(live: tuple[RelayEnv, int]) -> None:
    env, port = live
    url = f"http://127.0.0.1:{port}"
    anonymous = httpx.get(f"{url}/readyz", timeout=10)
    assert anonymous.status_code == 200
    assert anonymous.json() == {"ready": True, "failing": []}
    with_key = httpx.get(f"{url}/readyz", headers={"X-API-Key": env.keys["other"]}, timeout=10)
    tables = with_key.json()["checks"]["tables"]["tables"]
    assert tables and all(name.startswith("housing.") for name in tables)  # not civil's
    everything = httpx.get(f"{url}/readyz", headers={"X-API-Key": env.keys["all"]}, timeout=10)
    assert any(n.startswith("civil.") for n in everything.json()["checks"]["tables"]["tables"])
    bad = httpx.get(f"{url}/readyz", headers={"X-API-Key": "nope"}, timeout=10)
    assert bad.status_code == 200 and "checks" not in bad.json()
