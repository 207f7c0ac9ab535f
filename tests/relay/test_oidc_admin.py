"""A provider's token never opens the admin listener (review 13): the identity provider
is trusted for who a caller is and for data scopes, never for operators' routes.

Two locks, each tested alone: ``oidc_claims`` drops every ``admin:*`` scope a token
carries (and the audit record says which), and the admin listener of an ``auth.mode:
oidc`` relay authenticates with the relay's own credentials only, of which that mode
has none, so it answers 401 to a provider token whatever that token says.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from assay.core.admin import create_admin_app
from assay.core.admin_config import ADMIN_SCOPES
from assay.core.metrics import Metrics
from assay.relay.admin_routes import reload_routes
from tests.relay.conftest import start
from tests.relay.idp import IdP
from tests.relay.test_oidc_e2e import META, PURPOSE, oidc_env, register_clients

ALL_ADMIN = " ".join(sorted(ADMIN_SCOPES))
ADMIN_ROUTES = [("GET", "/metrics"), ("GET", "/admin/v1/posture"),
                ("POST", "/admin/v1/tables/civil/households/reload")]  # fmt: skip


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    provider = IdP()
    with provider.serving():
        register_clients(provider)
        yield provider


async def test_a_provider_token_with_every_admin_scope_gets_no_admin_route_and_is_recorded(
    tmp_path: Path, idp: IdP
) -> None:
    env = oidc_env(tmp_path, idp)
    env.doc["admin"] = {"bind": "127.0.0.1:9"}
    env.write()
    parts, audit = start(env)
    token = idp.sign(idp.claims(sub="svc-ops", azp="reporting",
                                scope=f"{ALL_ADMIN} admin:anything civil:metadata"))  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"} | PURPOSE
    # Lock 1 alone: the verified principal holds no admin scope.
    principal = await parts.oidc.authenticate({k.lower(): v for k, v in headers.items()})  # type: ignore[union-attr]
    assert principal.scopes == {"civil:metadata"}, principal.scopes
    # Lock 2 alone: the admin listener's gate never consults the provider.
    admin = create_admin_app("relay", authenticator=parts.admin_authenticator, audit=audit,
                             metrics=Metrics("relay"), routes=reload_routes(parts.store),
                             posture=lambda: {"findings": []})  # fmt: skip
    try:
        async with admin.test_app() as app:
            client = app.test_client()
            for method, path in ADMIN_ROUTES:
                r = await client.open(path, method=method, headers=headers)
                body = await r.get_json()
                assert r.status_code == 401, (path, r.status_code, body)
                assert body["code"].startswith("auth."), body
        # And the public listener serves the data scope, recording what it dropped.
        async with parts.app.test_app() as app:
            r = await app.test_client().get(META, headers=headers)
            assert r.status_code == 200, await r.get_json()
        [served] = [rec for rec in audit.records if rec.get("principal") == "svc-ops"]
        dropped = served["extra"]["oidc_dropped_admin_scopes"].split()
        assert set(dropped) == ADMIN_SCOPES | {"admin:anything"}, served["extra"]
        assert token not in repr(audit.records)
    finally:
        parts.close()
