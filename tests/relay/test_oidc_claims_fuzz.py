"""The claim checks over any JSON a provider (or a forger with a valid signature) can put in
a token: each run ends in ``Verified`` or a typed ``TokenRejected`` with an ``auth.*``
code, never another exception (a 500), and no admin scope is ever granted."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from assay.core.admin_config import ADMIN_SCOPE_PREFIX
from assay.core.errors import TokenRejected
from assay.relay.oidc_claims import Verified, check_claims
from tests.relay.test_oidc import claims, policy

# JSON values as json.loads gives them: unbounded ints, floats incl. huge ones, nesting.
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
CLAIMS = st.sampled_from(["exp", "nbf", "iat", "iss", "aud", "sub", "azp", "client_id",
                          "scope", "typ", "nonce"])  # fmt: skip
SCOPES = st.text(st.sampled_from("admin:ivlredmtcsp* "), max_size=40)


@settings(max_examples=400, deadline=None)
@given(overrides=st.dictionaries(CLAIMS, JSON, max_size=4), scope=st.none() | SCOPES)
def test_any_claim_values_end_in_a_verdict_or_a_typed_refusal(
    overrides: dict[str, Any], scope: str | None
) -> None:
    body = claims(**({"scope": scope} if scope is not None else {}))
    body.update(overrides)
    body = json.loads(json.dumps(body))  # as the JOSE library hands claims over
    try:
        verified = check_claims(body, policy(), time.time())
    except TokenRejected as exc:
        assert exc.code.startswith("auth."), exc.code
        return
    assert isinstance(verified, Verified)
    assert not any(s.startswith(ADMIN_SCOPE_PREFIX) for s in verified.scopes), verified.scopes
    assert all(s.startswith(ADMIN_SCOPE_PREFIX) for s in verified.dropped), verified.dropped


def test_a_scope_map_onto_an_admin_scope_is_refused_at_config_load() -> None:
    import pydantic
    import pytest

    with pytest.raises(pydantic.ValidationError, match="admin"):
        policy(scope_map={"ops": ["admin:reload"]})
