"""No answer names a source by its SHA-256, on any route, to any credential.

The source digest is a confirmation oracle: a caller who guesses a whole file (the
suppressed cells included) checks the guess against it, and it tells every refresh
apart. The outside review caught it on one aggregate; the class is every route that
names a snapshot. So the relay is crawled as each test credential would crawl it, from
the catalog down (datasets, their entities and aggregates, a page, a lookup, an
aggregate, each plain and signed, and ``/readyz``), and every body, header and signed
claim is searched for the digest of any source file, in any spelling.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from tests.relay.conftest import KEYS, Running

JOSE = {"Accept": "application/jose"}
TAG = re.compile(r"snap:[0-9a-f]{64}")
#: Answers that hold rows, one per route kind, with the filters the example requires.
ANSWERS = (
    "/v1/datasets/{d}/entities/household/records?status=active&limit=3",
    "/v1/datasets/{d}/entities/household/records/H0000001",
    "/v1/datasets/{d}/entities/resident/records?municipality=M01&limit=3",
    "/v1/datasets/{d}/aggregates/people_by_municipality?municipality=M01",
    "/v1/datasets/{d}/aggregates/cases_by_status",
)


def _spellings(running: Running) -> set[str]:
    """Every source's digest as hex and base64 (standard and url-safe, with and without
    padding), lower-case for the search."""
    out: set[str] = set()
    for path in running.env.data.iterdir():
        raw = hashlib.sha256(path.read_bytes()).digest()
        out.add(raw.hex())
        for b64 in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
            text = b64.decode()
            out |= {text.lower(), text.rstrip("=").lower()}
    return out


def _claims(text: str) -> str:
    """A compact JWS's payload as text (the header and signature name no snapshot)."""
    parts = text.split(".")
    assert len(parts) == 3, text[:200]
    return base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)).decode()


async def _texts(running: Running, key: str) -> list[str]:
    """Everything one credential is told while crawling the relay from its catalog."""
    headers = running.env.headers(key)
    seen: list[str] = []

    async def get(path: str, extra: dict[str, str] | None = None) -> Any:
        r = await running.client.get(path, headers=headers | (extra or {}))
        text = str(await r.get_data(as_text=True))
        seen.append(_claims(text) if r.content_type == "application/jose" else text)
        seen.append(json.dumps(sorted(r.headers.items())))
        return json.loads(text) if r.content_type == "application/json" else None

    await get("/readyz")
    catalog = await get("/v1/datasets") or {}
    for dataset in [d["id"] for d in catalog.get("datasets", [])] + ["civil", "housing"]:
        doc = await get(f"/v1/datasets/{dataset}") or {}
        await get(f"/v1/datasets/{dataset}/entities")
        for entity in doc.get("entities", []):
            await get(f"/v1/datasets/{dataset}/entities/{entity['name']}")
        for path in ANSWERS:
            await get(path.format(d=dataset))
            await get(path.format(d=dataset), JOSE)
    return seen


async def test_no_route_names_a_source_by_its_digest_to_any_credential(
    running: Running,
) -> None:
    digests = _spellings(running)
    tags: set[str] = set()
    for key in KEYS:
        for text in await _texts(running, key):
            lowered = text.lower()
            assert not [d for d in digests if d in lowered], (key, text[:300])
            tags |= set(TAG.findall(text))
    # The crawl saw answers, entity metadata and readiness name their snapshots (so the
    # search above had something to find): one tag per table, none of them a digest.
    tables = {f"{t.dataset}.{t.spec.id}" for t in running.parts.store.tables()}
    assert len(tags) == len(tables), (tags, tables)
