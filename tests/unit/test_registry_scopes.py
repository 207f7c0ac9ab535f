"""``assay token create --scope`` accepts exactly the scopes the registry checks.

The list the CLI parses against (``assay.registry.scopes.KNOWN``) is compared with what
the real app's routes declare (``@requires``, read from the app the daemon builds) and
with the admin listener's constants: a scope added to a route but not to the list (so
no token could be made for it), or a listed scope no route checks (a token that grants
nothing), fails here.
"""

from __future__ import annotations

import argparse

import pytest

from assay.cli.options import registry_scope_arg
from assay.core.admin_config import ADMIN_SCOPES
from assay.core.openapi import operations
from assay.registry import scopes
from assay.registry.upload import UPLOAD_SCOPE
from tests.unit.test_openapi_document import App, served  # noqa: F401 - the fixture


async def test_the_known_scopes_are_the_ones_the_routes_declare(served: App) -> None:  # noqa: F811
    declared = {
        view.required_scope
        for _m, _rule, view in operations(served.app)
        if getattr(view, "required_scope", None) is not None
    }
    declared.add(UPLOAD_SCOPE)  # the streamed upload is served beside Quart's routes
    assert declared == set(scopes.ARTIFACT_SCOPES)
    assert set(scopes.ADMIN_SCOPES) == set(ADMIN_SCOPES)
    assert scopes.KNOWN == set(scopes.ARTIFACT_SCOPES) | set(ADMIN_SCOPES)


@pytest.mark.parametrize("scope", ["admin", "artifact:read", "artifacts:*", "", "ARTIFACTS:READ"])
def test_an_unknown_scope_is_refused_with_the_list(scope: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as caught:
        registry_scope_arg(scope)
    assert all(known in str(caught.value) for known in scopes.KNOWN)


def test_every_known_scope_is_accepted() -> None:
    for scope in scopes.KNOWN:
        assert registry_scope_arg(scope) == scope
