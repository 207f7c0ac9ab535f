"""The registry's OpenAPI document is its route table: nothing missing, nothing invented.

The real app in-process (real store and database, an in-memory audit sink). Every rule
Quart serves is in the document with exactly its methods and the reverse; every
documented query parameter is taken by its route and an undocumented one is refused;
``OPTIONS`` on every path lists exactly its methods; the documented patterns agree with
the parsers that decide (differential, by hypothesis).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from quart_trio import QuartTrio

from assay.core import tokenfile, web
from assay.core.apidoc import api_of, body_fields
from assay.core.authn import Authenticator
from assay.core.errors import BadRequest
from assay.core.openapi import build_openapi, operations, template
from assay.core.tokens import Principal
from assay.core.web import requires
from assay.registry import amr_api, amr_shape
from assay.registry.api import DIGEST_PATTERN, NAME_PATTERN
from assay.registry.app import create_app
from assay.registry.db import RegistryDB
from assay.registry.digests import parse_digest
from assay.registry.policy import Policy
from assay.registry.service import Registry
from assay.registry.store import ObjectStore
from assay.registry.validate import check_name
from tests.unit.test_ingest_blocks import PieceBody
from tests.unit.test_integrity_records import SAMPLE, FlakyAudit

SCOPES = ["artifacts:read", "artifacts:write", "artifacts:verify", "artifacts:promote",
          "artifacts:revoke", "artifacts:delete", "audit:read"]  # fmt: skip


#: Longer than the default 200, so a route that ignored the configured bound shows.
NAME_CHARS = 300


@dataclass
class App:
    app: Any
    client: Any
    headers: dict[str, str]
    digest: str
    doc: dict[str, Any]


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[App]:
    audit = FlakyAudit()
    registry = Registry(
        store=ObjectStore(tmp_path / "store"), db=RegistryDB(tmp_path / "registry.db"),
        policy=Policy(name="test"), audit_append=audit.append,
        max_artifact_bytes=10 * 1024 * 1024, block_bytes=64 * 1024,
    )  # fmt: skip
    registry.open_blocking()
    token_path = tmp_path / "tokens.json"
    raw, _ = tokenfile.create(token_path, "all", SCOPES)
    authn = Authenticator(token_path)
    authn.load()
    principal = Principal(id="all", scopes=frozenset(SCOPES), auth_mode="token")
    out = await registry.ingest(
        principal, name="m/one", metadata={}, declared=None,
        body=PieceBody(SAMPLE.read_bytes(), [65536]), route="test", request_id="setup",
    )  # fmt: skip
    app = create_app(registry, authenticator=authn, audit=audit, max_json_body_bytes=65536,
                     readiness=dict, max_name_chars=NAME_CHARS)  # fmt: skip
    headers = {"Authorization": f"Bearer {raw}"}
    async with app.test_app() as test_app:
        client = test_app.test_client()
        doc = await (await client.get("/openapi.json", headers=headers)).get_json()
        yield App(app, client, headers, out.artifact.digest, doc)
    registry.db.close()


def concrete(path: str, digest: str) -> str:
    return path.replace("{digest}", digest).replace("{name}", "m/one")


async def test_every_route_quart_serves_is_documented_with_exactly_its_methods(served: App) -> None:
    routed = {(m.lower(), template(rule)) for m, rule, _view in operations(served.app)}
    documented = {(m, p) for p, ops in served.doc["paths"].items() for m in ops}
    assert routed == documented
    assert ("post", "/v1/artifacts") in documented  # the streamed upload too
    for _m, rule, view in operations(served.app):
        assert api_of(view) is not None, rule


async def test_promote_documents_its_202_and_every_problem_is_rfc9457(served: App) -> None:
    promote = served.doc["paths"]["/v1/artifacts/{digest}/promote"]["post"]
    assert {"200", "202", "400", "401", "403", "404", "409", "413", "422", "503"} <= set(
        promote["responses"]
    )
    upload = served.doc["paths"]["/v1/artifacts"]["post"]
    assert "507" in upload["responses"]
    assert "application/octet-stream" in upload["requestBody"]["content"]
    problem = served.doc["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "code"} <= set(problem["required"])
    for path, ops in served.doc["paths"].items():
        for method, op in ops.items():
            for status, reply in op["responses"].items():
                if int(status) >= 400:  # a problem, or a declared JSON answer (AMR's 409s)
                    media = set(reply["content"])
                    assert media & {"application/problem+json", "application/json"}, (
                        method, path, status)  # fmt: skip
                assert reply["headers"]["X-Request-Id"]["required"], (method, path, status)


async def test_the_digest_path_parameter_carries_its_pattern(served: App) -> None:
    for path, ops in served.doc["paths"].items():
        for op in ops.values():
            for p in op["parameters"]:
                if p["name"] == "digest":
                    assert p["schema"] == {"$ref": "#/components/schemas/DigestParam"}, path
    assert served.doc["components"]["schemas"]["DigestParam"]["pattern"] == DIGEST_PATTERN


async def test_a_long_trusted_name_is_bounded_by_the_config_as_documented(served: App) -> None:
    """Found by reading the document: ``/v1/trusted/{name}`` checked names against 200
    characters whatever ``max_name_chars`` let uploads use, so a long name could be
    uploaded and never resolved. The bound is the documented ``Name`` one now."""
    assert served.doc["components"]["schemas"]["Name"]["maxLength"] == NAME_CHARS
    long_name = "m/" + "a" * (NAME_CHARS - 2)
    r = await served.client.get(f"/v1/trusted/{long_name}", headers=served.headers)
    assert r.status_code == 404, await r.get_data(as_text=True)
    r = await served.client.get(f"/v1/trusted/{long_name}a", headers=served.headers)
    assert r.status_code == 400 and (await r.get_json())["code"] == "request.bad_name"


def example(schema: dict[str, Any], digest: str) -> str:
    """A value the schema accepts, for the query parameters the document names."""
    ref = schema.get("$ref", "")
    if schema.get("type") == "array":
        return example(schema["items"], digest)
    if ref.endswith(("/Digest", "/DigestParam")):
        return digest
    if ref.endswith(("/Name", "/AmrName")):
        return "m/one"
    if "enum" in schema:
        return str(schema["enum"][0])
    if schema.get("type") == "integer":
        return str(schema.get("minimum", 1))
    if schema.get("format") == "assay-meta":
        return "source=test"
    if "pattern" in schema:
        return "1"
    return "x"


async def test_every_documented_query_parameter_is_taken_and_no_other(served: App) -> None:
    """Each documented parameter alone gets past the query check; an undocumented one is
    refused with 400 by every route, before its handler runs."""
    for path, ops in served.doc["paths"].items():
        url = concrete(path, served.digest)
        for method, op in ops.items():
            if method == "post" and path == "/v1/artifacts":
                continue  # the upload adapter: tests/e2e/test_registry_http.py
            for p in op["parameters"]:
                if p["in"] != "query":
                    continue
                value = example(p["schema"], served.digest)
                r = await served.client.open(url, method=method.upper(), headers=served.headers,
                                             query_string={p["name"]: value})  # fmt: skip
                text = await r.get_data(as_text=True)
                assert "unknown query parameters" not in text, (method, path, p["name"], text)
            r = await served.client.open(url, method=method.upper(), headers=served.headers,
                                         query_string={"zz_undocumented": "1"})  # fmt: skip
            body = await r.get_json()
            assert r.status_code == 400, (method, path, r.status_code)
            assert "unknown query parameters" in body["detail"], (method, path, body)


async def test_options_lists_exactly_each_routes_methods(served: App) -> None:
    """``OPTIONS /v1/artifacts`` names POST (the streamed upload), and every other path
    names exactly the methods its rules take."""
    by_path: dict[str, set[str]] = {}
    for rule in served.app.url_map.iter_rules():
        if rule.endpoint != "static":
            by_path.setdefault(template(rule.rule), set()).update(rule.methods or set())
    for path, methods in by_path.items():
        r = await served.client.options(concrete(path, served.digest), headers=served.headers)
        allow = {m.strip() for m in r.headers["Allow"].split(",")}
        assert allow == methods, (path, allow, methods)
    r = await served.client.options("/v1/artifacts", headers=served.headers)
    assert "POST" in r.headers["Allow"]


def test_amr_bodies_declare_exactly_the_fields_amr_defines() -> None:
    assert body_fields(amr_api.ACQUIRE) == amr_shape.ACQUIRE_FIELDS
    assert body_fields(amr_api.PROMOTE) == amr_shape.PROMOTE_FIELDS


def _accepts(fn: Any, value: str) -> bool:
    try:
        fn(value)
    except BadRequest:
        return False
    return True


@given(st.one_of(st.text(max_size=80), st.from_regex(DIGEST_PATTERN, fullmatch=True),
                 st.from_regex(r"\s*(sha256:)?[0-9a-fA-F]{63,65}\s*", fullmatch=True)))  # fmt: skip
def test_the_documented_digest_pattern_is_what_parse_digest_accepts(value: str) -> None:
    """A value matching the pattern is accepted; an accepted one matches once stripped
    of the surrounding whitespace ``parse_digest`` tolerates."""
    matches = re.search(DIGEST_PATTERN, value) is not None and "\n" not in value
    if matches:
        assert _accepts(parse_digest, value)
    if _accepts(parse_digest, value):
        assert re.fullmatch(DIGEST_PATTERN[1:-1], value.strip())


@given(st.one_of(st.text(max_size=40), st.from_regex(NAME_PATTERN, fullmatch=True),
                 st.from_regex(r"[A-Za-z0-9./+_-]{0,30}", fullmatch=True)))  # fmt: skip
def test_the_documented_name_pattern_is_what_check_name_accepts(value: str) -> None:
    documented = re.fullmatch(NAME_PATTERN[1:-1], value) is not None and len(value) <= 200
    assert documented == _accepts(check_name, value)


async def test_a_route_that_declares_no_api_is_never_served_nor_documented(
    tmp_path: Path,
) -> None:
    """Fail closed, as for a route without a scope: its parameters would go unchecked."""
    token_path = tmp_path / "tokens.json"
    raw, _ = tokenfile.create(token_path, "reader", ["artifacts:read"])
    authn = Authenticator(token_path)
    authn.load()
    app = QuartTrio("undeclared")
    web.install(app, authenticator=authn, audit=FlakyAudit())

    @app.get("/v1/forgotten")
    @requires("artifacts:read")
    async def forgotten() -> dict[str, Any]:
        """A route someone added without a declaration."""
        return {"served": True}

    with pytest.raises(RuntimeError, match="no API declaration"):
        build_openapi(app, title="t", version="0", path_params={})
    async with app.test_app() as test_app:
        r = await test_app.test_client().get(
            "/v1/forgotten", headers={"Authorization": f"Bearer {raw}"}
        )
        assert r.status_code == 403
        assert (await r.get_json())["code"] == "auth.route_undeclared"
