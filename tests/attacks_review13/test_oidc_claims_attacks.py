"""OIDC claim attacks (review 13): what a verified token's claims may and may not do.

Pure: ``check_claims`` runs after the signature verified, so each case is a token the
provider signed. The relay must still refuse by a stable ``auth.*`` code (never an
untyped exception, which the web edge turns into a 500) and must not let a provider's
scope name open the admin listener, whose gate is the daemon's own credentials.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from assay.core.admin_config import ADMIN_SCOPES
from assay.core.errors import TokenRejected
from assay.relay.oidc_claims import check_claims
from tests.relay.test_oidc import claims, policy


@pytest.mark.parametrize(
    "override",
    [
        {"exp": 10**400},
        {"exp": -(10**400)},
        {"nbf": 10**400},
        {"iat": 10**400},
    ],
    ids=["exp-huge-int", "exp-huge-negative-int", "nbf-huge-int", "iat-huge-int"],
)
def test_numericdate_too_large_for_a_float_is_a_typed_refusal_not_a_crash(
    override: dict[str, Any],
) -> None:
    # JSON has arbitrary-precision integers; json.loads gives a Python int that
    # math.isfinite() cannot convert: an OverflowError escapes the claim checks.
    with pytest.raises(TokenRejected) as info:
        check_claims(claims(**override), policy(), time.time())
    assert info.value.code.startswith("auth.")


@pytest.mark.parametrize("claim_value", [
    "admin:reload admin:metrics admin:posture civil:read",
    ["admin:reload", "civil:read"],
    {"admin:metrics": {}, "civil:read": {}},
], ids=["string", "array", "object"])  # fmt: skip
def test_provider_scope_named_admin_does_not_open_the_admin_listener(claim_value: Any) -> None:
    # docs/relay.md: admin routes need a credential "from the daemon's own token file or
    # API keys"; an unmapped provider scope is passed through as is, so any client the
    # IdP grants a scope spelled admin:* gets the reload route and the metrics.
    verified = check_claims(claims(scope=claim_value), policy(), time.time())
    assert "civil:read" in verified.scopes
    assert not (verified.scopes & ADMIN_SCOPES), sorted(verified.scopes)
