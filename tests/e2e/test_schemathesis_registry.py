"""Schemathesis, every check, against the real registry daemon and its own document.

With a token that holds every scope, and again with none. Where the document cannot
express a rule (below, each with its reason) the run is told so per operation; no check
is switched off for the API as a whole.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import schemathesis_run
from tests.conftest import SAMPLES, Deployment, init_deployment

pytestmark = pytest.mark.e2e

ST = (SAMPLES / "sample.safetensors").read_bytes()

#: Per-operation settings, each for a rule JSON Schema cannot state:
#: 1. AMR's compatible routes answer a missing token with 403, as AMR's published schema
#:    says (``amr_shape.problem_shape``); schemathesis insists on 401 for a missing
#:    Authorization, so the ``amr`` tag runs on its own without that one check (``RUNS``).
#: 2. An upload's body is judged by its content (the format gate, 422): arbitrary
#:    schema-valid bytes are refused by design. An AMR promote's scanner evidence is a
#:    verdict (every result ``pass``, each with its scanner's version), refused with 422.
#: 3. ``cursor`` is a value the registry issued: the run is given a real one.
CONFIG = """
[parameters]
"query.cursor" = "{cursor}"

[[operations]]
include-operation-id = ["post_v1_artifacts", "post_v1_model_promote"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422"]
"""


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = init_deployment(tmp_path_factory.mktemp("schemathesis"), max_bytes=1024 * 1024)
    d.start()
    try:
        yield d
    finally:
        d.stop()


#: The runs: assay's own operations with every check; the AMR-compatible ones with every
#: check but ``missing_required_header`` (reason 1 above); and every operation without a
#: token, fuzzed (every answer is then a refusal, which must match the document, and
#: ``ignored_auth`` finds a route that serves anyway).
RUNS: dict[str, tuple[str, ...]] = {
    "registry": ("--exclude-tag", "amr"),
    "amr": ("--include-tag", "amr", "--exclude-checks", "missing_required_header"),
    "anonymous": ("--phases", "fuzzing"),
}
#: Each run's time cap in seconds (``schemathesis_run``).
SECONDS = {"registry": 40, "amr": 35, "anonymous": 15}


def failures(report: Path) -> list[str]:
    """Every failed or erroring test case in the JUnit report, with its message."""
    out = []
    for case in ET.parse(report).getroot().iter("testcase"):
        for bad in [*case.iter("failure"), *case.iter("error")]:
            out.append(f"{case.get('name')}: {(bad.get('message') or bad.text or '')[:2000]}")
    return out


def run(dep: Deployment, tmp: Path, token: str | None, part: str) -> None:
    with dep.client() as c:
        r = c.post("/v1/artifacts", params={"name": "fuzz/seed"}, content=ST)
        assert r.status_code in (200, 201), r.text
        cursor = r.json()["artifact"]["digest"]
        doc = c.get("/openapi.json").json()
    report = tmp / "junit.xml"
    proc = schemathesis_run.run(
        dep.url,
        doc,
        token=token,
        config=CONFIG.format(cursor=cursor),
        report=report,
        extra=RUNS[part],
        max_seconds=SECONDS[part],
    )
    found = failures(report) if report.exists() else []
    output = proc.stdout[-20000:] + proc.stderr[-5000:]
    assert proc.returncode == 0 and not found, "\n".join(found) + output


@pytest.mark.parametrize("part", ["registry", "amr"])
def test_schemathesis_finds_nothing_with_every_scope(
    dep: Deployment, tmp_path: Path, part: str
) -> None:
    run(dep, tmp_path, dep.admin_token, part)


def test_schemathesis_finds_nothing_without_a_token(dep: Deployment, tmp_path: Path) -> None:
    """Unauthenticated: the document (fetched with a token, the run sends none) must
    still hold for every refusal, and no scoped route may serve."""
    run(dep, tmp_path, None, "anonymous")


def test_an_upload_to_a_path_the_router_folds_onto_the_upload_is_404_not_500(
    dep: Deployment,
) -> None:
    """Found attacking the declared upload route: Quart matches ``//v1/artifacts`` to
    ``POST /v1/artifacts`` but the streaming adapter takes only the exact path, so the
    request reached the placeholder view and answered 500. Now: a recorded 4xx problem."""
    for path in ("//v1/artifacts", "/v1//artifacts", "/v1/artifacts/", "/v1/./artifacts"):
        before = len(dep.audit_records())
        with dep.client() as c:
            r = c.send(c.build_request("POST", dep.url + path, params={"name": "x/y"},
                                       content=ST))  # fmt: skip
        assert r.status_code < 500, (path, r.status_code, r.text)
        if r.status_code >= 400:
            assert r.headers["content-type"] == "application/problem+json", path
        assert len(dep.audit_records()) == before + 1, path
