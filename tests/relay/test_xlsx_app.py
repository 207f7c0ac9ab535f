"""The relay over an XLSX source answers exactly as over the same rows in Parquet: the
example's people table, converted to a workbook, behind the real app (in process), with
the same disclosure control, record lookups and pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tests.relay.conftest import RelayEnv, build_env, start
from tests.relay.xlsxmaker import table_rows, workbook

QUERIES = [
    "/v1/datasets/civil/aggregates/people_by_municipality",
    "/v1/datasets/civil/aggregates/people_by_municipality?municipality=M01",
    "/v1/datasets/civil/entities/household/records?status=active&limit=5",
]


def _as_xlsx(env: RelayEnv) -> None:
    """Point the people table at a workbook of the same rows, under a title row."""
    table = next(t for t in env.doc["datasets"][0]["tables"] if t["id"] == "people")
    people = pq.read_table(table["source"]["path"])
    path = env.data / "people.xlsx"
    path.write_bytes(workbook([["Synthetic people (never real data)"], *table_rows(people)],
                              sheet="People"))  # fmt: skip
    table["source"] = {"path": str(path), "xlsx": {"sheet": "People", "header_row": 2}}
    env.write()


def _answer(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("snapshot", "links", "next_cursor")}


async def _answers(env: RelayEnv, national_ids: list[str]) -> list[Any]:
    parts, _ = start(env)
    out: list[Any] = []
    async with parts.app.test_app() as app:
        client = app.test_client()
        paths = QUERIES + [
            f"/v1/datasets/civil/entities/person/records?national_id={n}" for n in national_ids
        ]
        for path in paths:
            # No key both aggregates a population and reads its rows: one of each.
            key = "stats" if "/aggregates/" in path else "all"
            r = await client.get(path, headers=env.headers(key))
            out.append((path, r.status_code, _answer(await r.get_json())))
    return out


async def test_relay_over_xlsx_answers_as_over_parquet(tmp_path: Path) -> None:
    parquet = build_env(tmp_path / "parquet")
    xlsx = build_env(tmp_path / "xlsx")
    _as_xlsx(xlsx)
    people = pq.read_table(parquet.data / "people.parquet").column("national_id").to_pylist()
    ids = people[:3] + people[-2:]
    theirs, mine = await _answers(parquet, ids), await _answers(xlsx, ids)
    assert [status for _, status, _ in mine] == [200] * len(mine)
    assert mine == theirs
    assert all(answer["count"] == 1 for _, _, answer in mine[len(QUERIES) :])
    groups = mine[0][2]["groups"]
    assert groups and all("people" in g for g in groups)
