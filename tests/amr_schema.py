"""AMR's published OpenAPI document (vendored test data, ``tests/data/amr/``) and checks of
real answers against it.

Validation uses the OpenAPI 3.1 dialect (JSON Schema 2020-12): AMR's document says
3.0.3 but uses ``const`` (``storage_contract: content-addressed-v1``), which the 3.0
dialect would silently ignore; every other keyword it uses means the same in both.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import httpx
import yaml
from jsonschema import FormatChecker
from openapi_schema_validator import OAS31Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

FILE = Path(__file__).resolve().parent / "data" / "amr" / "openapi.yaml"
#: The vendored file, unmodified (see tests/data/amr/README.md for its source commit).
SHA256 = "a83fe65c8a5a91ea6ba7ea76dd64aee5c4617c95d9f3516f2e2a59d8f4d59621"
URI = "urn:amr:openapi"


@functools.cache
def document() -> dict[str, Any]:
    raw = FILE.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == SHA256, "tests/data/amr/openapi.yaml was changed"
    doc = yaml.safe_load(raw)
    assert isinstance(doc, dict)
    return doc


@functools.cache
def _registry() -> Registry:  # type: ignore[type-arg]
    resource = Resource.from_contents(document(), default_specification=DRAFT202012)
    return Registry().with_resource(URI, resource)


def operations() -> set[tuple[str, str]]:
    """Every (METHOD, path) the document describes."""
    return {(m.upper(), p) for p, ops in document()["paths"].items() for m in ops}


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def errors(instance: Any, pointer: str) -> list[str]:
    """Every way ``instance`` breaks the schema at ``pointer`` (``#/components/...``)."""
    validator = OAS31Validator(
        {"$ref": URI + pointer}, registry=_registry(), format_checker=FormatChecker()
    )
    return [
        f"/{'/'.join(str(p) for p in e.absolute_path)}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def check(method: str, path: str, r: httpx.Response, *, auth_failure: bool = False) -> None:
    """The answer is one AMR's schema documents for the operation, and its JSON body (if
    the schema gives one for that status) validates. A refused token is 403 on every
    operation: the document's global ``security`` requires the bearer token, and AMR
    refuses a missing or wrong one with 403. ``path`` may carry its query."""
    path = path.split("?", 1)[0]
    op = document()["paths"][path][method.lower()]
    status = str(r.status_code)
    if auth_failure:
        assert r.status_code == 403, (method, path, r.status_code, r.text[:300])
        assert op.get("security", document()["security"]), (method, path, "public route")
        return
    assert status in op["responses"], (method, path, status, sorted(op["responses"]), r.text)
    content = op["responses"][status].get("content", {})
    if "application/json" not in content:
        return
    assert r.headers["content-type"].startswith("application/json"), r.headers
    pointer = "/".join(
        ["#/paths", _escape(path), method.lower(), "responses", status, "content",
         _escape("application/json"), "schema"]
    )  # fmt: skip
    found = errors(r.json(), pointer)
    assert not found, (method, path, status, found, r.text[:500])
