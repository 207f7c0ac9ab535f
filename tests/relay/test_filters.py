"""Filter abuse, limits, cursors, purpose header and projection, over the real routes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.relay.conftest import Running

PEOPLE = "/v1/datasets/civil/entities/person/records"
HOUSEHOLDS = "/v1/datasets/civil/entities/household/records"
RESIDENTS = "/v1/datasets/civil/entities/resident/records"


async def _problem(
    running: Running, path: str, status: int, code: str, **kw: Any
) -> dict[str, Any]:
    r = await running.get(path, **kw)
    body: dict[str, Any] = await r.get_json()
    assert r.status_code == status, body
    assert body["code"] == code, body
    assert r.headers["content-type"].startswith("application/problem+json")
    return body


async def _national_id(running: Running) -> str:
    table = running.parts.store.get("civil", "people").data
    return str(table.column("national_id")[0].as_py())


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("case_note=x", "entity.filter_not_allowed"),  # a real but undeclared column
        ("shoe_size=42", "entity.filter_not_allowed"),  # no such field at all
        ("size.like=3", "entity.filter_not_allowed"),  # not an op
        ("size.in=1,2", "entity.filter_not_allowed"),  # op not allowed for size
        ("status.gte=active", "entity.filter_not_allowed"),
        ("Size=3", "entity.filter_not_allowed"),  # names are exact
        ("size.eq.eq=3", "entity.filter_not_allowed"),
        ("size=three", "entity.filter_value_invalid"),
        ("size=99999999999999999999", "entity.filter_value_invalid"),
        ("size=1e3", "entity.filter_value_invalid"),
        ("size.between=5,1", "entity.filter_value_invalid"),
        ("size.between=1,2,3", "entity.filter_value_invalid"),
        ("status=%00active", "entity.filter_value_invalid"),
        ("status=", "entity.filter_value_invalid"),
        ("size=1&size.gte=1", "entity.filter_duplicate"),
        ("limit=201", "entity.limit_exceeded"),
        ("limit=0", "entity.limit_invalid"),
        ("limit=-1", "entity.limit_invalid"),
        ("limit=ten", "entity.limit_invalid"),
        ("limit=1&limit=2", "request.parameter_duplicate"),
        ("fields=id,case_note", "entity.field_not_allowed"),
        ("fields=national_id", "entity.field_not_allowed"),
        ("cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "entity.cursor_invalid"),
        ("cursor=" + "A" * 300, "entity.cursor_invalid"),
    ],
)
async def test_household_filter_abuse_is_refused(running: Running, query: str, code: str) -> None:
    await _problem(running, f"{HOUSEHOLDS}?{query}", 400, code)


async def test_status_in_list_over_the_bound_is_refused_before_splitting(running: Running) -> None:
    many = ",".join(["active"] * 101)
    body = await _problem(
        running, f"{HOUSEHOLDS}?status.in={many}", 400, "entity.filter_too_many_values"
    )
    assert "101" in body["detail"]


async def test_more_filters_than_allowed_is_refused(running: Running) -> None:
    query = "&".join(f"f{i}=1" for i in range(21))
    await _problem(running, f"{HOUSEHOLDS}?{query}", 400, "entity.too_many_filters")


async def test_query_string_over_its_byte_bound_is_refused_with_414(running: Running) -> None:
    await _problem(running, f"{HOUSEHOLDS}?status={'a' * 5000}", 414, "request.query_too_large")


async def test_person_without_required_national_id_filter_is_refused(running: Running) -> None:
    await _problem(running, PEOPLE, 400, "entity.filter_required")
    await _problem(running, f"{PEOPLE}?household=H0000001", 400, "entity.filter_required")


async def test_person_lookup_without_purpose_header_is_refused(running: Running) -> None:
    nid = await _national_id(running)
    await _problem(
        running, f"{PEOPLE}?national_id={nid}", 400, "request.purpose_required", purpose=False
    )
    # person answers no lookups by id at all (its key is not filterable; it requires a
    # national id): refused before the purpose header is even looked at.
    await _problem(running, f"{PEOPLE}/P00000001", 404, "entity.lookup_not_allowed", purpose=False)
    headers = running.env.headers("all", purpose=False) | {"X-Purpose": "bad\tpurpose"}
    await _problem(
        running, f"{PEOPLE}?national_id={nid}", 400, "request.purpose_invalid", headers=headers
    )


async def test_person_lookup_with_purpose_answers_only_that_person(running: Running) -> None:
    nid = await _national_id(running)
    r = await running.get(f"{PEOPLE}?national_id={nid}")
    body = await r.get_json()
    assert r.status_code == 200, body
    assert [rec["national_id"] for rec in body["records"]] == [nid]


async def test_cursor_pages_through_and_cannot_be_replayed_on_another_query(
    running: Running,
) -> None:
    seen: list[str] = []
    path = f"{HOUSEHOLDS}?status=active&limit=50"
    cursor: str | None = None
    for _ in range(100):
        r = await running.get(path + (f"&cursor={cursor}" if cursor else ""))
        body = await r.get_json()
        seen += [rec["id"] for rec in body["records"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert cursor is None and len(seen) == len(set(seen)) > 50
    first = await (await running.get(path)).get_json()
    stolen = first["next_cursor"]
    for other in (
        f"{HOUSEHOLDS}?status=closed&limit=50",
        f"{HOUSEHOLDS}?status=active&limit=49",
        f"{HOUSEHOLDS}?status=active&limit=50&fields=id",
    ):
        await _problem(running, f"{other}&cursor={stolen}", 400, "entity.cursor_invalid")
    tampered = stolen[:-2] + ("AA" if not stolen.endswith("AA") else "BB")
    await _problem(running, f"{path}&cursor={tampered}", 400, "entity.cursor_invalid")


async def test_projection_never_leaks_an_undeclared_column(running: Running) -> None:
    """case_note and national_id exist in the source; resident and household never show them."""
    table = running.parts.store.get("civil", "people").data
    notes = set(table.column("case_note").to_pylist()[:200])
    nids = set(table.column("national_id").to_pylist()[:200])
    bodies: list[str] = []
    for path in (
        f"{RESIDENTS}?municipality=M01&limit=100",
        f"{HOUSEHOLDS}?limit=200",
        f"{HOUSEHOLDS}?limit=5&fields=id",
        "/v1/datasets/civil/entities/household/records/H0000001",
        "/v1/datasets/civil/aggregates/people_by_municipality",
        "/v1/datasets/civil/entities/resident",
        "/v1/datasets/civil",
    ):
        r = await running.get(path, key="stats" if "/aggregates/" in path else "all")
        assert r.status_code == 200, path
        bodies.append((await r.get_data()).decode())
        if "/records" in path and "fields=id" not in path:
            body = await r.get_json()
            records = body.get("records") or [body["record"]]
            entity = path.split("/entities/")[1].split("/")[0]
            declared = {
                f["name"]
                for f in running.parts.relay.entity_doc(
                    running.parts.relay.entities[("civil", entity)]
                )["fields"]
            }
            assert all(set(rec) <= declared for rec in records)
    text = "\n".join(bodies)
    assert "case_note" not in text and "person_id" not in text
    assert not any(n in text for n in notes) and not any(n in text for n in nids)


async def test_fields_parameter_narrows_but_never_widens(running: Running) -> None:
    r = await running.get(f"{HOUSEHOLDS}?limit=3&fields=id,status")
    body = await r.get_json()
    assert all(set(rec) == {"id", "status"} for rec in body["records"])


async def test_record_by_id_of_the_wrong_type_or_missing_is_refused(running: Running) -> None:
    await _problem(running, f"{HOUSEHOLDS}/H9999999", 404, "record.not_found")
    await _problem(running, f"{HOUSEHOLDS}/{'H' * 300}", 400, "record.id_invalid")
    await _problem(running, f"{HOUSEHOLDS}/H0000001?fields=id", 400, "request.invalid")


async def test_unknown_dataset_entity_and_aggregate_are_404(running: Running) -> None:
    # One code for every unknown name (and every name the caller may not know of).
    await _problem(running, "/v1/datasets/nope", 404, "resource.not_found", key="everything")
    await _problem(running, "/v1/datasets/civil/entities/nope/records", 404, "resource.not_found")
    await _problem(running, "/v1/datasets/civil/aggregates/nope", 404, "resource.not_found")
