"""Digest prefixes: the bucketed lookup agrees with a plain scan, page by page.

A differential property test: for generated tables (digests drawn from a few shared
prefixes so that collisions are common) and any prefix, paging through
``ArtifactTable.page(digest_prefix=...)`` gives exactly the rows a scan of the whole
table in listing order gives, whatever the page size and with rows added between
pages. Then the CLI's side: what it sends, and what it refuses before sending.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.cli import digests
from assay.cli.errors import DigestAmbiguous, UsageError
from assay.core.errors import BadRequest, NotFound
from assay.registry.base import _digest_prefix
from assay.registry.model import Artifact, ArtifactTable


def art(digest: str) -> Artifact:
    return Artifact(digest=digest, name="m", size=1, format="gguf", format_details={},
                    metadata={}, state="quarantined", integrity="ok", created_at="t",
                    updated_at="t", uploaded_by="u", state_changed_at="t")  # fmt: skip


hexes = st.text("0123456789abcdef", min_size=60, max_size=60)
stems = st.sampled_from(["abcd", "abce", "0000", "abcd0", "abcd00"])
digests_st = st.lists(st.tuples(stems, hexes).map(lambda t: "sha256:" + (t[0] + t[1])[:64]),
                      unique=True, max_size=40)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    first=digests_st,
    later=digests_st,
    prefix=st.sampled_from(["abcd", "abce", "abcd0", "abcd00", "0000", "ffff"]),
    limit=st.integers(1, 7),
)
def test_prefix_pages_match_a_full_scan(
    first: list[str], later: list[str], prefix: str, limit: int
) -> None:
    table = ArtifactTable({d: art(d) for d in first})
    pending = [d for d in later if d not in table]
    seen: list[str] = []
    cursor = None
    for _ in range(200):
        page, cursor = table.page(after=cursor, limit=limit, keep=lambda a: True,
                                  digest_prefix="sha256:" + prefix)  # fmt: skip
        seen += [a.digest for a in page]
        if pending:  # rows that become visible mid-walk are found if behind the cursor
            d = pending.pop(0)
            table[d] = art(d)
        if cursor is None:
            break
    expected = [d for d in table if d.startswith("sha256:" + prefix)]
    assert seen == expected[: len(seen)] and set(expected) - set(seen) <= set(later)
    # Without more rows arriving, one walk is exactly the scan.
    again: list[str] = []
    cursor = None
    for _ in range(200):
        page, cursor = table.page(after=cursor, limit=limit, keep=lambda a: True,
                                  digest_prefix="sha256:" + prefix)  # fmt: skip
        again += [a.digest for a in page]
        if cursor is None:
            break
    assert again == expected


@pytest.mark.parametrize("bad", ["abc", "ABCD", "sha256:", "sha256:xyz0", "g000", "a" * 65, ""])
def test_the_daemon_refuses_a_prefix_that_is_short_or_not_lowercase_hex(bad: str) -> None:
    with pytest.raises(BadRequest) as info:
        _digest_prefix(bad)
    assert info.value.code == "request.bad_digest"


class FakeClient:
    """The daemon's listing, over a fixed set of digests (a fake, not a mock)."""

    def __init__(self, known: list[str]) -> None:
        self.known = known
        self.asked: list[dict[str, Any]] = []

    def request(self, method: str, path: str, query: dict[str, Any]) -> tuple[Any, Any]:
        self.asked.append(query)
        assert (method, path) == ("GET", "/v1/artifacts")
        found = [d for d in self.known if d.startswith("sha256:" + query["digest_prefix"])]
        limit = int(query["limit"])
        arts = [{"digest": d, "name": "n", "state": "trusted"} for d in found[:limit]]
        return {"artifacts": arts, "next_cursor": "c" if len(found) > limit else None}, {}


def test_cli_resolution_unique_ambiguous_unknown_and_full() -> None:
    a, b = "sha256:abcd" + "1" * 60, "sha256:abcd" + "2" * 60
    client = FakeClient([a, b])
    assert digests.resolve(client, "ABCD1") == a  # type: ignore[arg-type]
    assert digests.resolve(client, "sha256:abcd2") == b  # type: ignore[arg-type]
    with pytest.raises(DigestAmbiguous) as amb:
        digests.resolve(client, "abcd")  # type: ignore[arg-type]
    assert amb.value.reasons == [f"{a} n (trusted)", f"{b} n (trusted)"]
    with pytest.raises(NotFound):
        digests.resolve(client, "abce")  # type: ignore[arg-type]
    asked = len(client.asked)
    assert digests.resolve(client, a.upper().replace("SHA256", "sha256")) == a  # type: ignore[arg-type]
    assert len(client.asked) == asked  # a full digest needs no request
    for bad in ("abc", "sha256:", "xyz12", "a" * 65, "../../etc"):
        with pytest.raises(UsageError):
            digests.resolve(client, bad)  # type: ignore[arg-type]


def test_an_ambiguity_past_the_shown_matches_says_or_more() -> None:
    many = [f"sha256:abcd{i:060x}" for i in range(30)]
    with pytest.raises(DigestAmbiguous) as amb:
        digests.resolve(FakeClient(many), "abcd")  # type: ignore[arg-type]
    assert "or more" in amb.value.detail and len(amb.value.reasons) == digests.SHOW_MATCHES
