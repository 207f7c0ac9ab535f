"""Every route, enumerated from the running app, leaves exactly one audit record per call,
and every mutating 2xx carries a receipt that verifies offline with only the public key.

Routes come from the daemon's own ``/openapi.json``, so a new route is covered (or this
test fails asking for a realistic call) without anyone remembering to add it here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from safetensors.numpy import save as st_save

from assay.core.audit.checkpoint import b64u_decode, b64u_encode
from tests.conftest import Deployment, init_deployment, run_cli, upload

pytestmark = pytest.mark.e2e

#: Routes whose 2xx changes an artifact's lifecycle state: each must carry a receipt.
MUTATING = {
    ("POST", "/v1/artifacts"),
    ("POST", "/v1/artifacts/{digest}/promote"),
    ("POST", "/v1/artifacts/{digest}/revoke"),
    ("DELETE", "/v1/artifacts/{digest}"),
}
#: Non-GET routes that re-check bytes rather than move state: their outcome is evidence
#: (they can mark an artifact failed), so they carry a receipt for their record too.
CHECKS = {("POST", "/v1/artifacts/{digest}/verify"), ("POST", "/v1/sweep")}
#: The AMR-compatible non-GET routes: their bodies are AMR's own schema's, so they carry
#: no receipt (docs/amr-compat.md); assay's own routes do the same things with one.
AMR_NON_GET = {
    ("POST", "/v1/model/acquire"),
    ("POST", "/v1/model/quarantine"),
    ("POST", "/v1/model/promote"),
    ("POST", "/v1/model/revoke"),
    ("DELETE", "/v1/model/delete"),
    ("POST", "/v1/model/verify"),
    ("POST", "/v1/models/verify-all"),
    ("POST", "/v1/model/verify-manifest"),
}


def artifact(i: int) -> bytes:
    return st_save({"w": np.full(8, 2000 + i, dtype=np.int32)})


@dataclass
class Fixture:
    trusted: str  # promoted, named m/trusted: fetched, resolved, verified, shown
    to_promote: str
    to_revoke: str
    to_delete: str
    amr_quarantined: str  # the AMR routes' own: acquired, quarantined
    amr_promote: str
    amr_revoke: str
    amr_delete: str


AMR_NAMES = ("m/amr-quarantined", "m/amr-promote", "m/amr-revoke", "m/amr-delete")


def prepare(dep: Deployment) -> Fixture:
    with dep.client() as c:
        digests = []
        names = ("m/trusted", "m/promote", "m/revoke", "m/delete", *AMR_NAMES)
        for i, name in enumerate(names):
            r = upload(c, artifact(i), name=name)
            assert r.status_code == 201, r.text
            digests.append(r.json()["artifact"]["digest"])
        for d in (digests[0], digests[2]):
            assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
    return Fixture(*digests)


def amr_body(digest: str, name: str) -> dict[str, object]:
    return {"name": name, "filename": name.rsplit("/", 1)[-1] + ".safetensors",
            "sha256": digest.removeprefix("sha256:")}  # fmt: skip


Call = Callable[[httpx.Client, dict[str, str]], httpx.Response]


def calls(f: Fixture) -> dict[tuple[str, str], tuple[Call, int]]:
    """A realistic call per route, and the status it must get."""
    return {
        ("GET", "/healthz"): (lambda c, h: c.get("/healthz", headers=h), 200),
        ("GET", "/readyz"): (lambda c, h: c.get("/readyz", headers=h), 200),
        ("GET", "/v1/status"): (lambda c, h: c.get("/v1/status", headers=h), 200),
        ("GET", "/openapi.json"): (lambda c, h: c.get("/openapi.json", headers=h), 200),
        ("GET", "/v1/artifacts"): (
            lambda c, h: c.get("/v1/artifacts", params={"state": "trusted"}, headers=h),
            200,
        ),
        ("POST", "/v1/artifacts"): (
            lambda c, h: upload_with(c, h, artifact(99), "m/uploaded"),
            201,
        ),
        ("GET", "/v1/artifacts/{digest}"): (
            lambda c, h: c.get(f"/v1/artifacts/{f.trusted}", headers=h),
            200,
        ),
        ("GET", "/v1/artifacts/{digest}/content"): (
            lambda c, h: c.get(f"/v1/artifacts/{f.trusted}/content", headers=h),
            200,
        ),
        ("GET", "/v1/trusted/{name}"): (
            lambda c, h: c.get("/v1/trusted/m/trusted", headers=h),
            200,
        ),
        ("POST", "/v1/artifacts/{digest}/promote"): (
            lambda c, h: c.post(f"/v1/artifacts/{f.to_promote}/promote", headers=h),
            200,
        ),
        ("POST", "/v1/artifacts/{digest}/revoke"): (
            lambda c, h: c.post(
                f"/v1/artifacts/{f.to_revoke}/revoke", json={"reason": "key leaked"}, headers=h
            ),
            200,
        ),
        ("DELETE", "/v1/artifacts/{digest}"): (
            lambda c, h: c.request(
                "DELETE", f"/v1/artifacts/{f.to_delete}", json={"reason": "dup"}, headers=h
            ),
            200,
        ),
        ("POST", "/v1/artifacts/{digest}/verify"): (
            lambda c, h: c.post(f"/v1/artifacts/{f.trusted}/verify", headers=h),
            200,
        ),
        ("POST", "/v1/sweep"): (lambda c, h: c.post("/v1/sweep", headers=h), 200),
        # The AMR-compatible routes (AMR's statuses: 201 for acquire and promote).
        ("GET", "/health"): (lambda c, h: c.get("/health", headers=h), 200),
        ("GET", "/v1/models"): (lambda c, h: c.get("/v1/models", headers=h), 200),
        ("GET", "/v1/model"): (lambda c, h: c.get("/v1/model?name=m/trusted", headers=h), 200),
        ("GET", "/v1/model/path"): (
            lambda c, h: c.get("/v1/model/path?name=m/trusted", headers=h),
            200,
        ),
        ("GET", "/v1/stats"): (lambda c, h: c.get("/v1/stats", headers=h), 200),
        ("GET", "/v1/integrity/status"): (
            lambda c, h: c.get("/v1/integrity/status", headers=h),
            200,
        ),
        ("GET", "/v1/audit"): (lambda c, h: c.get("/v1/audit", headers=h), 200),
        ("POST", "/v1/model/verify"): (
            lambda c, h: c.post("/v1/model/verify?name=m/trusted", content=b"{}", headers=h),
            200,
        ),
        ("POST", "/v1/models/verify-all"): (
            lambda c, h: c.post("/v1/models/verify-all", content=b"{}", headers=h),
            200,
        ),
        ("POST", "/v1/model/verify-manifest"): (
            lambda c, h: c.post("/v1/model/verify-manifest?name=m/trusted", headers=h),
            200,
        ),
        ("POST", "/v1/model/acquire"): (
            lambda c, h: c.post(
                "/v1/model/acquire",
                json=amr_body(f.amr_quarantined, AMR_NAMES[0]) | {"size_bytes": 0},
                headers=h,
            ),
            201,
        ),
        ("POST", "/v1/model/quarantine"): (
            lambda c, h: c.post(f"/v1/model/quarantine?name={AMR_NAMES[0]}", headers=h),
            200,
        ),
        ("POST", "/v1/model/promote"): (
            lambda c, h: c.post(
                "/v1/model/promote", json=amr_body(f.amr_promote, AMR_NAMES[1]), headers=h
            ),
            201,
        ),
        ("POST", "/v1/model/revoke"): (
            lambda c, h: c.post(f"/v1/model/revoke?name={AMR_NAMES[2]}", headers=h),
            200,
        ),
        ("DELETE", "/v1/model/delete"): (
            lambda c, h: c.delete(f"/v1/model/delete?name={AMR_NAMES[3]}", headers=h),
            200,
        ),
    }


def upload_with(c: httpx.Client, headers: dict[str, str], data: bytes, name: str) -> httpx.Response:
    return c.post(
        "/v1/artifacts",
        params=[("name", name), ("meta", "source=test"), ("meta", "license=mit")],
        content=data,
        headers={"Content-Type": "application/octet-stream", **headers},
    )


def app_routes(dep: Deployment) -> list[tuple[str, str]]:
    with dep.client() as c:
        spec = c.get("/openapi.json").json()
    return sorted((m.upper(), p) for p, ops in spec["paths"].items() for m in ops)


def template_of(route: str) -> str:
    """``POST /v1/artifacts/<digest>/promote`` -> ``/v1/artifacts/{digest}/promote``."""
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route.split(" ", 1)[1])


@dataclass
class Observed:
    route: tuple[str, str]
    response: httpx.Response
    record: dict[str, object]


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Deployment, list[Observed]]]:
    dep = init_deployment(tmp_path_factory.mktemp("coverage"), max_bytes=1024 * 1024)
    dep.start()
    try:
        f = prepare(dep)
        table = calls(f)
        routes = app_routes(dep)
        missing = sorted(set(routes) - set(table))
        assert not missing, f"routes without a realistic call in this test: {missing}"
        assert len(routes) >= 14
        seen: list[Observed] = []
        with dep.client() as c:
            for n, route in enumerate(routes):
                call, status = table[route]
                rid = f"coverage-{n}"
                before = len(dep.audit_records())
                r = call(c, {"X-Request-Id": rid})
                r.read()  # content streams: the record must not depend on the body
                assert r.status_code == status, (route, r.status_code, r.text[:300])
                records = dep.audit_records()
                assert len(records) == before + 1, (route, records[before:])
                rec = records[-1]
                assert rec["request_id"] == rid, (route, rec)
                seen.append(Observed(route, r, rec))
        yield dep, seen
    finally:
        dep.stop()


def test_every_route_writes_exactly_one_record_per_request(
    observed: tuple[Deployment, list[Observed]],
) -> None:
    _dep, seen = observed
    for o in seen:
        method, template = o.route
        route = str(o.record["route"])
        assert route.split(" ", 1)[0] == method and template_of(route) == template, (o.route, route)
        assert o.record["status"] == o.response.status_code, o.route
        assert o.record["decision"] == "allow", o.route
        assert o.record["principal"] in ("admin", None), o.route
    # Liveness (assay's and AMR's) is public and never looks at a credential; everything
    # else, readiness included (its details need artifacts:read), was done as the admin.
    public = {o.route for o in seen if o.record["principal"] is None}
    assert public == {("GET", "/healthz"), ("GET", "/health")}  # /health: AMR's liveness


def test_lifecycle_records_name_their_transition(
    observed: tuple[Deployment, list[Observed]],
) -> None:
    _dep, seen = observed
    by_route = {o.route: o.record for o in seen}
    expect = {
        ("POST", "/v1/artifacts"): ("artifact.ingest", None, "quarantined"),
        ("POST", "/v1/artifacts/{digest}/promote"): ("artifact.promote", "quarantined", "trusted"),
        ("POST", "/v1/artifacts/{digest}/revoke"): ("artifact.revoke", "trusted", "revoked"),
        ("DELETE", "/v1/artifacts/{digest}"): ("artifact.delete", "quarantined", "deleted"),
        ("GET", "/v1/artifacts/{digest}/content"): ("artifact.fetch", None, None),
        ("GET", "/v1/trusted/{name}"): ("artifact.resolve", None, None),
    }
    for route, (action, from_state, to_state) in expect.items():
        rec = by_route[route]
        assert (rec["action"], rec["from_state"], rec["to_state"]) == (action, from_state, to_state)


def receipt_cli(dep: Deployment, receipt: str, *extra: str) -> tuple[int, dict[str, object]]:
    pub = dep.dir / "secrets" / "audit-signing.pub"
    proc = run_cli("receipt", "verify", receipt, "--public-key", str(pub), *extra, "--json")
    return proc.returncode, json.loads(proc.stdout)


def test_every_mutating_or_checking_2xx_carries_a_receipt_the_public_key_verifies(
    observed: tuple[Deployment, list[Observed]],
) -> None:
    dep, seen = observed
    non_get = {o.route for o in seen if o.route[0] != "GET"}
    assert non_get == MUTATING | CHECKS | AMR_NON_GET, "classify the new route"
    receipted = [o for o in seen if o.route in MUTATING | CHECKS]
    assert len(receipted) == len(MUTATING | CHECKS)
    for o in receipted:
        header = o.response.headers.get("assay-receipt")
        assert header, f"{o.route}: 2xx mutation or check without a receipt"
        assert o.response.json()["receipt"] == header
        code, out = receipt_cli(dep, header)  # only the public key: no HMAC key, no log
        assert code == 0, (o.route, out)
        receipt = out["receipt"]
        assert isinstance(receipt, dict)
        assert receipt["seq"] == o.record["seq"], o.route
        assert receipt["record_hash"] == o.record["record_hash"], o.route
        assert receipt["action"] == o.record["action"], o.route
        assert receipt["target"] == o.record["target"], o.route
    # Reads carry none, nor do the AMR-compatible routes.
    assert all("assay-receipt" not in o.response.headers for o in seen if o.route[0] == "GET")
    assert all("assay-receipt" not in o.response.headers for o in seen
               if o.route in AMR_NON_GET)  # fmt: skip


def test_receipt_is_found_in_the_daemon_log(observed: tuple[Deployment, list[Observed]]) -> None:
    dep, seen = observed
    promote = next(o for o in seen if o.route == ("POST", "/v1/artifacts/{digest}/promote"))
    code, out = receipt_cli(
        dep, promote.response.headers["assay-receipt"], "--log", str(dep.audit_dir)
    )
    assert code == 0 and out["in_log"] is True, out


@pytest.mark.parametrize(
    "field,forge",
    [
        ("seq", lambda v: v + 1),
        ("action", lambda v: "artifact.revoke"),
        ("target", lambda v: "sha256:" + "0" * 64),
        ("record_hash", lambda v: "f" * 64),
    ],
)
def test_modified_receipt_is_refused(
    observed: tuple[Deployment, list[Observed]], field: str, forge: Callable[[object], object]
) -> None:
    dep, seen = observed
    upload_obs = next(o for o in seen if o.route == ("POST", "/v1/artifacts"))
    body = json.loads(b64u_decode(upload_obs.response.headers["assay-receipt"]))
    body[field] = forge(body[field])
    forged = b64u_encode(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    code, out = receipt_cli(dep, forged)
    assert code == 1, out
    error = out["error"]
    assert isinstance(error, dict) and error["code"] == "audit.receipt_invalid", out


def test_receipt_header_is_not_a_secret_carrier(
    observed: tuple[Deployment, list[Observed]],
) -> None:
    """A receipt goes to clients: it must hold no token, HMAC key or signing key."""
    dep, seen = observed
    secrets = [
        dep.admin_token,
        (dep.dir / "secrets" / "audit-hmac.key").read_text().strip(),
        (dep.dir / "secrets" / "audit-signing.key").read_text().strip().splitlines()[1],
    ]
    for o in seen:
        header = o.response.headers.get("assay-receipt")
        if header:
            decoded = b64u_decode(header).decode()
            assert not any(s in decoded or s in header for s in secrets)
