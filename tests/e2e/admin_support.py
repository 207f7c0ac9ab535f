"""Scraping an admin listener: the text format read by prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, dict[str, str], float]


def scrape(client: httpx.Client, token: str) -> list[Sample]:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    ]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sample ``name`` whose labels include ``labels`` (0 when it does not exist yet)."""
    found = [v for n, ls, v in samples if n == name and _has(ls, labels)]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def label_values(samples: list[Sample], label: str) -> set[str]:
    return {ls[label] for _n, ls, _v in samples if label in ls}


def _has(have: Mapping[str, str], want: Mapping[str, str]) -> bool:
    return all(have.get(k) == v for k, v in want.items())
