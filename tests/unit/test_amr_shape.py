"""The AMR mapping as values: every shape it can produce validates against AMR's own
published schema, and its choices agree with assay's own resolution and trust rules."""

from __future__ import annotations

import string
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.core.errors import AssayError, BadRequest
from assay.registry import amr, amr_shape, bodies
from assay.registry.base import RegistryBase
from assay.registry.errors import FormatNotAllowed
from assay.registry.model import Artifact, ArtifactTable
from tests import amr_schema

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STATES = ("quarantined", "trusted", "revoked", "deleted")

segment = st.text(string.ascii_letters + string.digits + "._+-", min_size=1, max_size=12).filter(
    lambda s: s[0].isalnum()
)
names = st.lists(segment, min_size=1, max_size=4).map("/".join)
hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
stamps = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
).map(lambda d: d.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
sources = st.text(
    st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")), max_size=40
)


@st.composite
def artifacts(draw: st.DrawFn, name: str | None = None) -> Artifact:
    ts = draw(stamps)
    meta = {"license": "mit"}
    if draw(st.booleans()):
        meta["source"] = draw(sources)
    return Artifact(
        digest="sha256:" + draw(hex64),
        name=name or draw(names),
        size=draw(st.integers(0, 2**63 - 1)),
        format=draw(st.sampled_from(("gguf", "safetensors"))),
        format_details={},
        metadata=meta,
        state=draw(st.sampled_from(STATES)),
        integrity=draw(st.sampled_from(("ok", "failed"))),
        created_at=ts,
        updated_at=ts,
        uploaded_by="admin",
        state_changed_at=draw(stamps),
    )


def one_name(draw: st.DrawFn) -> list[Artifact]:
    name = draw(names)
    arts = draw(st.lists(artifacts(name), min_size=1, max_size=6))
    return list({a.digest: a for a in arts}.values())  # digests are unique in a registry


@given(artifacts())
@SETTINGS
def test_every_artifact_assay_can_hold_is_a_valid_amr_artifact(art: Artifact) -> None:
    out = amr_shape.artifact(art)
    assert amr_schema.errors(out, "#/components/schemas/Artifact") == []
    assert out["sha256"] == art.digest.removeprefix("sha256:")  # bare hex, never prefixed
    assert amr_shape.format_of_filename(out["filename"]) == art.format  # AMR's own rule


@given(st.data())
@SETTINGS
def test_every_lifecycle_record_is_a_valid_amr_audit_event(data: st.DataObject) -> None:
    art = data.draw(artifacts())
    action = data.draw(st.sampled_from(sorted(amr_shape.LIFECYCLE)))
    from_state = None if action == "artifact.ingest" else data.draw(st.sampled_from(STATES))
    to_state = {"artifact.ingest": "quarantined", "artifact.promote": "trusted",
                "artifact.revoke": "revoked", "artifact.delete": "deleted"}[action]  # fmt: skip
    rec: dict[str, Any] = {
        "seq": data.draw(st.integers(1, 2**53)), "ts": data.draw(stamps), "action": action,
        "target": art.digest, "from_state": from_state, "to_state": to_state,
        "decision": "allow", "prev_hash": data.draw(hex64), "record_hash": data.draw(hex64),
        "principal": "admin", "request_id": "r1", "reasons": ["secret-looking reason"],
    }  # fmt: skip
    event = amr_shape.audit_event(rec, art)
    # additionalProperties: false in AMR's schema: nothing but its fields leaves.
    assert amr_schema.errors(event, "#/components/schemas/AuditEvent") == []
    assert event["hash"] == rec["record_hash"] and event["sequence"] == rec["seq"]


@given(st.lists(artifacts(), max_size=12), st.booleans())
@SETTINGS
def test_stats_and_integrity_status_are_valid_amr_answers(
    arts: list[Artifact], swept: bool
) -> None:
    stats = amr_shape.stats(arts)
    pointer = "#/paths/~1v1~1stats/get/responses/200/content/application~1json/schema"
    assert amr_schema.errors(stats, pointer) == []
    assert stats["model_count"] == len(arts)
    sweep = {"started": "s", "finished": "f", "checked": len(arts), "failed": []} if swept else None
    status = amr_shape.integrity_status(arts, sweep)
    pointer = "#/paths/~1v1~1integrity~1status/get/responses/200/content/application~1json/schema"
    assert amr_schema.errors(status, pointer) == []
    kept_failed = any(a.integrity != "ok" and a.state != "deleted" for a in arts)
    assert (status["status"] == "failed") == kept_failed


@given(st.data())
@SETTINGS
def test_a_name_means_what_assay_resolves_it_to(data: st.DataObject) -> None:
    """Differential against ``RegistryBase.resolve_trusted`` (``GET /v1/trusted/{name}``)."""
    arts = one_name(data.draw)
    base = RegistryBase.__new__(RegistryBase)
    base.artifacts = ArtifactTable({a.digest: a for a in arts})
    chosen = amr_shape.current(arts)
    assert chosen in arts
    try:
        resolved: Artifact | None = base.resolve_trusted(arts[0].name)
    except AssayError:
        resolved = None
    if resolved is not None:
        assert chosen == resolved  # a trusted, intact artifact: the same one
    elif any(a.state == "trusted" for a in arts):
        assert chosen.state == "trusted" and chosen.integrity != "ok"  # path answers 409
    else:
        assert chosen == arts[-1]


@given(st.data())
@SETTINGS
def test_after_revoking_a_name_nothing_of_it_is_trusted_or_waiting(data: st.DataObject) -> None:
    arts = one_name(data.draw)
    moved = {a.digest for a in amr_shape.revocable(arts)}
    after = [a if a.digest not in moved else _with(a, "revoked") for a in arts]
    assert all(a.state in {"revoked", "deleted"} for a in after)
    chosen = amr_shape.current(after)
    assert chosen is not None and chosen.state != "trusted"
    gone = {a.digest for a in amr_shape.deletable(arts)}
    assert all(a.state == "deleted" for a in arts if a.digest not in gone)


def _with(art: Artifact, state: str) -> Artifact:
    from dataclasses import replace

    return replace(art, state=state)


@pytest.mark.parametrize("path", sorted(amr_shape.PATHS))
def test_a_refused_token_is_403_on_amr_paths_and_keeps_its_code(path: str) -> None:
    body = {"type": "t", "title": "Missing credential", "status": 401, "detail": "d",
            "code": "auth.missing_credential"}  # fmt: skip
    status, shaped = amr_shape.problem_shape(path, 401, body)
    assert (status, shaped["status"], shaped["code"], shaped["error"]) == (
        403, 403, "auth.missing_credential", "d")  # fmt: skip
    assert amr_shape.problem_shape(path, 404, body | {"status": 404})[0] == 404


@pytest.mark.parametrize("path", ["/v1/artifacts", "/v1/status", "/healthz", "/v1/model/x",
                                  "/v1/models/", "/v1/audit/"])  # fmt: skip
def test_assay_paths_keep_assay_problems(path: str) -> None:
    body = {"status": 401, "code": "auth.missing_credential"}
    assert amr_shape.problem_shape(path, 401, body) == (401, body)


def amr_accepts(name: str) -> bool:
    """AMR's ``validArtifactName``, restated from its published behaviour."""
    return (
        name != "" and len(name) <= 256 and name.strip() == name
        and not any(c in name for c in "\x00\r\n")
    )  # fmt: skip


@given(st.lists(st.text(max_size=300), max_size=3), st.booleans())
@SETTINGS
def test_name_arg_accepts_only_names_amr_accepts(values: list[str], extra: bool) -> None:
    args: dict[str, list[str]] = {"name": values} if values else {}
    if extra:
        args["other"] = ["1"]
    try:
        name = amr_shape.name_arg(args)
    except BadRequest:
        return
    assert not extra and len(values) == 1 and name == values[0] and amr_accepts(name)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.dictionaries(st.sampled_from(sorted(amr_shape.PROMOTE_FIELDS)), json_values))
@SETTINGS
def test_hostile_promote_bodies_are_refused_as_typed_errors_only(body: dict[str, Any]) -> None:
    try:
        name, fmt, digest, size = amr_shape.identity(body, size_required=False)
        failed = amr_shape.evidence(body)
        amr_shape.require_format(fmt)
    except (BadRequest, FormatNotAllowed):
        return
    assert digest == "sha256:" + body["sha256"] and name == body["name"]
    assert fmt in amr_shape.FORMATS and (size is None or size >= 0)
    results = body.get("scan_results", {})
    assert (failed == []) == all(
        v == "pass" and body.get("scanner_versions", {}).get(k) for k, v in results.items()
    )


def _acquire(size_literal: str) -> dict[str, Any]:
    raw = ('{"name": "m/one", "filename": "one.gguf", "sha256": "' + "a" * 64
           + '", "size_bytes": ' + size_literal + "}")  # fmt: skip
    return bodies.parse_object(raw.encode(), allowed=amr_shape.ACQUIRE_FIELDS)


@given(st.integers(0, 2**52 - 1), st.sampled_from(["{}", "{}.0", "{}e0", "{}.000"]))
def test_an_integral_size_spelled_as_a_float_is_that_integer_not_a_400(
    n: int, spelling: str
) -> None:
    """Found by schemathesis: ``"size_bytes": 69888.0`` is an integer by JSON Schema (the
    document's ``type: integer``), so it is that integer; a fraction stays a 400."""
    _name, _fmt, _digest, size = amr_shape.identity(_acquire(spelling.format(n)),
                                                    size_required=True)  # fmt: skip
    assert size == n and isinstance(size, int)
    for bad in (f"{n}.5", "-1", "-1.0", "true", '"1"', f"{2**53}.0"):
        with pytest.raises(BadRequest):
            amr_shape.identity(_acquire(bad), size_required=True)


# -- the audit page scan, over a fake log ---------------------------------------------


class FakeLog:
    """``records_after`` over records made in memory; remembers that it was closed."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = records
        self.opened = 0
        self.closed = 0

    def __call__(self, after: int, _anchor: object) -> Any:
        self.opened += 1

        def stream() -> Any:
            try:
                for rec in self.records:
                    if rec["seq"] > after:
                        yield rec
            finally:
                self.closed += 1

        return stream()


def lifecycle(seq: int) -> dict[str, Any]:
    return {"seq": seq, "action": "artifact.revoke", "decision": "allow", "target": "t",
            "from_state": "trusted", "to_state": "revoked"}  # fmt: skip


def request(seq: int) -> dict[str, Any]:
    return {"seq": seq, "action": "http.request", "decision": "allow", "target": None,
            "from_state": None, "to_state": None}  # fmt: skip


@given(
    st.lists(st.booleans(), min_size=1, max_size=40),
    st.integers(1, 5),
    st.integers(0, 45),
    st.integers(1, 10),
)
@SETTINGS
def test_paging_the_audit_view_visits_every_settled_event_once(
    kinds: list[bool], limit: int, through: int, scan: int
) -> None:
    """However the log mixes requests and lifecycle records, wherever the settled mark
    is and however small the scan bound, following the cursor yields every lifecycle
    record up to the mark exactly once, in order, and never one past it."""
    log = FakeLog([lifecycle(i + 1) if k else request(i + 1) for i, k in enumerate(kinds)])
    want = [r["seq"] for r in log.records if amr_shape.is_lifecycle(r) and r["seq"] <= through]
    got: list[int] = []
    after: int | None = 0
    pages = 0
    saved = amr.MAX_SCAN
    amr.MAX_SCAN = scan
    try:
        while after is not None and pages <= len(kinds) + 1:
            found, after = amr._scan(log, after, through, limit)
            assert len(found) <= limit
            got += [r["seq"] for r in found]
            pages += 1
    finally:
        amr.MAX_SCAN = saved
    assert after is None, "the cursor must reach the end in a bounded number of pages"
    assert got == want
    assert log.closed == log.opened  # every stream released its file descriptors
