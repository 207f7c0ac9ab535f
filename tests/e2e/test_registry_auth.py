"""Fail-closed auth over every route, enumerated from the app's own OpenAPI document."""

from __future__ import annotations

import re
import time

import pytest

from assay.registry import amr_shape
from tests.conftest import Deployment

pytestmark = pytest.mark.e2e

PUBLIC = {"/healthz", "/readyz", "/health"}
FAKE = "sha256:" + "ab" * 32


def routes(dep: Deployment) -> list[tuple[str, str, str | None]]:
    with dep.client() as c:
        spec = c.get("/openapi.json").json()
    out = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            concrete = re.sub(r"\{digest\}", FAKE, path)
            concrete = re.sub(r"\{name\}", "some/name", concrete)
            out.append((method.upper(), concrete, op.get("x-required-scope")))
    return sorted(out)


def test_route_list_covers_the_documented_api(deployment: Deployment) -> None:
    got = {(m, p) for m, p, _ in routes(deployment)}
    assert ("POST", "/v1/artifacts") in got
    assert ("GET", f"/v1/artifacts/{FAKE}/content") in got
    assert len(got) >= 12


def test_every_route_without_a_token_is_401_and_audited(deployment: Deployment) -> None:
    """401 on assay's routes; 403 on the AMR-compatible ones, as AMR's schema says."""
    for method, path, _scope in routes(deployment):
        before = len(deployment.audit_records())
        with deployment.client(token=None) as c:
            r = c.request(method, path)
        if path in PUBLIC:
            assert r.status_code in (200, 503), (method, path)
        elif path in amr_shape.PATHS:
            assert r.status_code == 403, (method, path, r.text)
            assert r.json()["code"] == "auth.missing_credential"
            assert "www-authenticate" not in r.headers
        else:
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["code"] == "auth.missing_credential"
            assert r.headers["www-authenticate"].startswith("Bearer")
        after = deployment.audit_records()
        assert len(after) == before + 1, (method, path)
        assert after[-1]["status"] == r.status_code


def test_every_route_with_the_wrong_scope_is_403_and_audited(deployment: Deployment) -> None:
    deployment.create_token("nobody", "audit:read")
    import time

    for _ in range(50):
        with deployment.client("nobody") as c:
            if c.get("/v1/artifacts").status_code == 403:
                break
        time.sleep(0.1)
    for method, path, scope in routes(deployment):
        if path in PUBLIC or scope == "audit:read":  # the one scope this token holds
            continue
        before = len(deployment.audit_records())
        with deployment.client("nobody") as c:
            r = c.request(method, path)
        assert r.status_code == 403, (method, path, r.text)
        assert r.json()["code"] == "auth.scope_denied"
        rec = deployment.audit_records()[-1]
        assert len(deployment.audit_records()) == before + 1
        assert rec["principal"] == "nobody" and rec["decision"] == "deny"


def test_invalid_token_is_401_invalid_credential(deployment: Deployment) -> None:
    with deployment.client("assay_" + "A" * 43) as c:
        r = c.get("/v1/artifacts")
    assert r.status_code == 401 and r.json()["code"] == "auth.invalid_credential"


def test_no_token_or_secret_ever_reaches_any_output(deployment: Deployment) -> None:
    """Drive allowed, denied and failed requests over HTTP and the CLI, then grep every
    output: audit segments, checkpoint files, daemon stderr, CLI stdout/stderr and HTTP
    response heads and bodies. No token (admin, reader, or a guessed one), no HMAC key and
    no signing key may appear in any of them."""
    from tests.conftest import SAMPLES, run_cli, upload

    reader = deployment.create_token("reader", "artifacts:read")
    guessed = "assay_" + "G" * 43
    outputs: list[str] = []
    st = (SAMPLES / "sample.safetensors").read_bytes()
    with deployment.client() as c:
        r = upload(c, st)
        outputs.append(str(r.headers) + r.text)
        digest = r.json()["artifact"]["digest"]
        for resp in (
            c.post(f"/v1/artifacts/{digest}/promote"),
            c.get("/v1/artifacts", headers={"Authorization": f"Bearer {guessed}"}),
            c.get("/v1/artifacts", headers={"Authorization": f"Basic {guessed}"}),
            c.get("/v1/status"),
            c.post(f"/v1/artifacts/{digest}/verify"),
        ):
            outputs.append(str(resp.headers) + resp.text)
    with deployment.client(reader) as c:
        for _ in range(50):  # the daemon picks up the new token within about a second
            resp = c.post(f"/v1/artifacts/{digest}/revoke", json={"reason": "x"})
            if resp.status_code != 401:
                break
            time.sleep(0.1)
        assert resp.status_code == 403
        outputs.append(str(resp.headers) + resp.text)
    for args in (("list",), ("show", digest), ("status",), ("verify", digest)):
        proc = deployment.cli(*args, "--json")
        outputs += [proc.stdout, proc.stderr]
    key_file = str(deployment.dir / "secrets" / "audit-hmac.key")
    proc = run_cli("audit", "verify", str(deployment.audit_dir), "--key-file", key_file, "--json")
    assert proc.returncode == 0, proc.stdout
    outputs += [proc.stdout, proc.stderr]
    proc = run_cli("token", "list", "--config", str(deployment.config), "--json")
    outputs += [proc.stdout, proc.stderr]
    deployment.stop()  # the final checkpoint and shutdown lines are outputs too
    outputs += [p.read_text(errors="replace") for p in deployment.audit_dir.iterdir()
                if p.is_file()]  # fmt: skip
    outputs.append(deployment.stderr())
    text = "\n".join(outputs)
    assert digest in text  # the outputs are the real ones
    secrets_dir = deployment.dir / "secrets"
    hmac_key = (secrets_dir / "audit-hmac.key").read_text().strip()
    signing_pem = (secrets_dir / "audit-signing.key").read_text()
    signing_body = "".join(line for line in signing_pem.splitlines() if "-----" not in line)
    for secret in (deployment.admin_token, deployment.admin_token[6:], reader, reader[6:],
                   guessed, guessed[6:], hmac_key, signing_body):  # fmt: skip
        assert secret not in text, f"a secret leaked ({secret[:8]}...)"
