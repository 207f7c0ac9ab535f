"""Listing pages: bounded answers, a stable order, cursors that cannot be forged into
anything else, and a CLI that follows every page (streaming, ``--json`` too)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import Deployment, init_deployment, list_all
from tests.fill import fill

pytestmark = pytest.mark.e2e

N = 2_345


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, list[str]]]:
    dep = init_deployment(tmp_path_factory.mktemp("listing"))
    digests = fill(dep.config, artifacts=N, reads=0).digests
    dep.start()
    yield dep, digests
    dep.stop()


def test_a_listing_answer_is_one_bounded_page(listed: tuple[Deployment, list[str]]) -> None:
    dep, _ = listed
    with dep.client() as c:
        first = c.get("/v1/artifacts").json()
        assert first["count"] == len(first["artifacts"]) == 100
        assert first["next_cursor"] == first["artifacts"][-1]["digest"]
        for bad in ("0", "1001", "-1", "1e3", "²", "9" * 5000, ""):
            r = c.get("/v1/artifacts", params={"limit": bad})
            assert r.status_code == 400 and r.json()["code"] == "request.bad_limit", (bad, r.text)


def test_pages_cover_every_artifact_once_in_order(listed: tuple[Deployment, list[str]]) -> None:
    dep, digests = listed
    with dep.client() as c:
        seen = list_all(c)
    assert [a["digest"] for a in seen] == digests  # the order they were registered


def test_a_cursor_not_issued_here_is_refused(listed: tuple[Deployment, list[str]]) -> None:
    dep, _ = listed
    with dep.client() as c:
        for bad in ("sha256:" + "0" * 64, "../etc", "x" * 300, "sha256:" + "A" * 64):
            r = c.get("/v1/artifacts", params={"cursor": bad})
            assert r.status_code == 400 and r.json()["code"] == "request.bad_cursor", r.text


def test_filters_page_too(listed: tuple[Deployment, list[str]]) -> None:
    dep, _ = listed
    with dep.client() as c:
        assert list_all(c, state="quarantined") == []
        assert len(list_all(c, state="trusted")) == N
        one = c.get("/v1/artifacts", params={"name": "fill/m7"}).json()
        assert [a["name"] for a in one["artifacts"]] == ["fill/m7"] and one["next_cursor"] is None


def test_the_cli_follows_every_page_as_json_and_as_a_table(
    listed: tuple[Deployment, list[str]],
) -> None:
    dep, digests = listed
    out = dep.cli("list", "--json", check=True).stdout
    doc = json.loads(out)
    assert doc["count"] == N == len(doc["artifacts"])
    assert sorted(a["digest"] for a in doc["artifacts"]) == sorted(digests)
    table = dep.cli("list", check=True).stdout.splitlines()
    assert table[0].split() == ["DIGEST", "STATE", "FORMAT", "SIZE", "INTEGRITY", "NAME"]
    assert len(table) == N + 1
