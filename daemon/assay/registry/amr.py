"""AMR (SecAI ai-model-registry) compatibility routes, mapped onto the registry service.

Thin: each view parses with ``amr_shape``, calls the same ``Registry`` operations that
assay's own routes call (list, get, verify, sweep, transition, audit replay), and answers
in AMR's schema (its ``schemas/openapi.yaml``), so AMR's ``securectl`` works unchanged.
The shared edge still authenticates, checks the scope each view declares, writes the
request's audit record and renders problems; ``amr_shape.problem_shape`` gives them AMR's
statuses (403 for a bad token). The mapping, route by route: ``docs/amr-compat.md``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from assay.core import web
from assay.core.apidoc import attach
from assay.core.audit.reader import Position
from assay.core.errors import NotFound, StorageError
from assay.core.web import current_audit, current_principal, public, requires
from assay.registry import amr_api, amr_shape, bodies
from assay.registry.errors import PolicyRefused, StateConflict, StoredBytesCorrupt
from assay.registry.model import Artifact
from assay.registry.service import Registry
from assay.registry.states import Action
from assay.registry.store import describe

#: Authenticated audit records after a seq (``AuditRuntime.records_after``; blocking).
AuditRecords = Callable[[int, Position | None], Iterator[dict[str, Any]]]

#: One ``/v1/audit`` page reads at most this many records of the log, lifecycle or not
#: (about a fifth of a second), and says where to go on if it stopped there.
MAX_SCAN = 100_000
REVOKE_REASON = "revoked through the ai-model-registry compatible API"
DELETE_REASON = "deleted through the ai-model-registry compatible API"
NO_MANIFEST = (
    "assay keeps no gguf-guard manifests: its GGUF inspector validates every byte of the "
    "file at upload and again at every promote"
)


def install(app: QuartTrio, registry: Registry, *, audit_records: AuditRecords | None) -> None:
    """Register every path in ``amr_shape.PATHS`` on ``app``."""
    scans = trio.CapacityLimiter(1)  # one audit scan at a time: each may read 100k lines

    def named(name: str) -> list[Artifact]:
        """The name's artifacts in registration order; 404 if it has none."""
        arts = [a for a in registry.artifacts.values() if a.name == name]
        if not arts:
            raise NotFound(f"model {name!r} not found", code="artifact.not_found")
        return arts

    def the(name: str) -> Artifact:
        art = amr_shape.current(named(name))
        assert art is not None
        current_audit().target = art.digest
        return art

    async def no_body() -> None:
        """AMR clients post ``{}``; nothing else is accepted where no field is defined."""
        await _body()

    @app.get("/health")
    @public
    @attach(amr_api.HEALTH)
    async def amr_health() -> dict[str, Any]:
        """AMR: liveness (as ``/healthz``)."""
        return {"status": "ok"}

    @app.get("/v1/models")
    @requires("artifacts:read")
    @attach(amr_api.LIST)
    async def amr_list_models() -> Response:
        """AMR: artifacts in registration order, a page at a time (``Link: rel=next``)."""
        limit, cursor = amr_shape.page_args(_args(), "cursor")
        arts, next_cursor = registry.list(limit=limit, cursor=cursor)
        resp = _json([amr_shape.artifact(a) for a in arts])
        if next_cursor is not None:
            _next(resp, f"/v1/models?limit={limit}&cursor={next_cursor}", next_cursor)
        return resp

    @app.get("/v1/model")
    @requires("artifacts:read")
    @attach(amr_api.GET)
    async def amr_get_model() -> Response:
        """AMR: the artifact a name means (its current trusted one, else its newest)."""
        return _json(amr_shape.artifact(the(amr_shape.name_arg(_args()))))

    @app.get("/v1/model/path")
    @requires("artifacts:read")
    @attach(amr_api.PATH)
    async def amr_model_path() -> Response:
        """AMR: the content-addressed path of a name's trusted, re-verified bytes."""
        current_audit().action = "artifact.locate"
        name = amr_shape.name_arg(_args())
        art = the(name)
        # Step PATH-1 (trust): trusted and intact (403 not trusted, 409 integrity failed).
        registry.check_consumable(art.digest)

        def still_current() -> None:
            # Step PATH-3 (still current): trust did not change while the bytes hashed.
            registry.check_consumable(art.digest)
            now = amr_shape.current(named(name))
            if now is None or now.digest != art.digest:
                raise StateConflict(f"the trusted artifact named {name!r} changed while "
                                    "it was being verified; ask again")  # fmt: skip

        settled: list[bool] = []

        async def settle(result: dict[str, Any]) -> Mapping[str, Any]:
            """The answer, decided under the digest's lock after the hash and recorded
            before anything changes (an integrity change records itself instead)."""
            if not result["ok"]:
                raise StoredBytesCorrupt(f"{art.digest}: {describe(result['actual'])}")
            still_current()
            settled.append(True)
            return await web.record_request(200)

        # Step PATH-2 (re-hash): the bytes at the path hash to the digest now; a failure
        # is recorded (the request's record) and blocks serving, like a fetch's.
        result, record = await registry.verify(
            art.digest, principal=current_principal(), route=web.route_template(),
            request_id=_rid(), status=200, record_request=settle,
            failure=(409, StoredBytesCorrupt.code),
        )  # fmt: skip
        if record is None:
            # Deleted between the trust check and the hash: nothing was checked (403).
            registry.check_consumable(art.digest)
            raise StateConflict(f"{art.digest} changed while it was being verified")
        current_audit().written = record
        if not result["ok"]:
            raise StoredBytesCorrupt(f"{art.digest}: {describe(result['actual'])}")
        if not settled:  # an integrity change recorded the check: PATH-3 was not run yet
            still_current()
        path = registry.store.path_for(art.digest).absolute()
        return _json({
            "path": str(path),
            "sha256": amr_shape.bare_hex(art.digest),
            "size_bytes": art.size,
            "storage_contract": amr_shape.STORAGE_CONTRACT,
        })  # fmt: skip

    @app.post("/v1/model/verify")
    @requires("artifacts:verify")
    @attach(amr_api.VERIFY)
    async def amr_verify_model() -> Response:
        """AMR: re-hash a name's current artifact now (409 if its bytes do not match)."""
        current_audit().action = "artifact.verify"
        name = amr_shape.name_arg(_args())
        await no_body()
        art = the(name)
        expected = amr_shape.bare_hex(art.digest)
        gone = "deleted: its bytes were removed"
        if art.state == "deleted":
            current_audit().reasons = [gone]
            return _json(_failed(name, expected, "", gone), 409)
        audit_state = current_audit()

        async def record_request(result: dict[str, Any]) -> Mapping[str, Any]:
            audit_state.reasons = [] if result["ok"] else [describe(str(result["actual"]))]
            return await web.record_request(200 if result["ok"] else 409)

        result, record = await registry.verify(
            art.digest, principal=current_principal(), route=web.route_template(),
            request_id=_rid(), status=200, record_request=record_request,
            failure=(409, StoredBytesCorrupt.code),
        )  # fmt: skip
        if "skipped" in result:  # deleted meanwhile: nothing was checked
            audit_state.reasons = [gone]
            return _json(_failed(name, expected, "", gone), 409)
        audit_state.written = record  # durable before anything changed
        if not result["ok"]:
            actual = str(result["actual"])
            shown = amr_shape.bare_hex(actual) if actual.startswith("sha256:") else ""
            return _json(_failed(name, expected, shown, describe(actual)), 409)
        after = registry.get(art.digest)
        still = amr_shape.current(named(name))
        safe = (after.state == "trusted" and after.integrity == "ok"
                and still is not None and still.digest == art.digest)  # fmt: skip
        return _json({
            "status": "verified", "name": name, "sha256": expected, "state": after.state,
            "safe_to_use": "true" if safe else "false",
        })  # fmt: skip

    @app.post("/v1/models/verify-all")
    @requires("artifacts:verify")
    @attach(amr_api.VERIFY_ALL)
    async def amr_verify_all() -> Response:
        """AMR: re-hash every stored artifact now (a sweep); 409 if any failed."""
        audit_state = current_audit()
        audit_state.action = "artifact.sweep"
        await no_body()

        async def record_request(summary: dict[str, Any]) -> Mapping[str, Any]:
            # The answer's status is the hashes' verdict, recorded before any is applied.
            audit_state.extra = {"checked": summary["checked"], "failed": len(summary["failed"])}
            return await web.record_request(409 if summary["failed"] else 200)

        # Taken in the same step as the sweep's own list: no other task runs between.
        listed = list(registry.artifacts.values())
        result = await registry.sweep(
            principal=current_principal(), route=web.route_template(), request_id=_rid(),
            record_request=record_request,
        )  # fmt: skip
        failed = set(result["failed"])
        # A finding whose change could not be recorded afterwards is reported on its
        # line; the status stays what the request's record already says.
        errors = {e["digest"]: e["code"] for e in result.get("errors", [])}
        models = [_checked(registry.get(a.digest), failed, errors) for a in listed]
        body = {"status": "failed" if failed else "ok", "models": models, "checked": len(models)}
        return _json(body, 409 if failed else 200)

    @app.get("/v1/integrity/status")
    @requires("artifacts:read")
    @attach(amr_api.INTEGRITY)
    async def amr_integrity_status() -> Response:
        """AMR: the integrity of the stored bytes as last checked."""
        values = registry.artifacts.values()
        return _json(amr_shape.integrity_status(values, registry.last_sweep))

    @app.post("/v1/model/verify-manifest")
    @requires("artifacts:verify")
    @attach(amr_api.MANIFEST)
    async def amr_verify_manifest() -> Response:
        """AMR: gguf-guard manifest check; always skipped (assay keeps no manifests)."""
        current_audit().action = "amr.verify_manifest"
        name = amr_shape.name_arg(_args())
        await no_body()
        the(name)
        return _json({"status": "skipped", "name": name, "reason": NO_MANIFEST})

    @app.post("/v1/model/acquire")
    @requires("artifacts:write")
    @attach(amr_api.ACQUIRE)
    async def amr_acquire() -> Response:
        """AMR: acquire; answered for bytes already uploaded (assay takes bytes, not paths)."""
        current_audit().action = "amr.acquire"
        body = await _body()
        name, fmt, digest, size = amr_shape.identity(body, size_required=True)
        current_audit().target = digest
        amr_shape.require_format(fmt)
        art = registry.artifacts.get(digest)
        if art is None:
            # 409, not 400: the request is well formed; the registry has no such upload
            # yet (AMR's schema allows 409 here too).
            raise StateConflict(
                "assay registers bytes, not file names: upload them first with "
                f"POST /v1/artifacts?name={name}&digest={digest} (they enter quarantined, "
                "AMR's acquired and quarantined in one step), then acquire",
                code="artifact.not_uploaded",
            )
        _matches(art, name, fmt, size)
        if art.state != "quarantined":
            raise StateConflict(f"artifact {name!r} is already registered and {art.state}",
                                state=art.state)  # fmt: skip
        return _json(amr_shape.artifact(art), 201)

    @app.post("/v1/model/quarantine")
    @requires("artifacts:write")
    @attach(amr_api.QUARANTINE)
    async def amr_quarantine() -> Response:
        """AMR: quarantine; every upload already is quarantined, so this only confirms."""
        current_audit().action = "amr.quarantine"
        name = amr_shape.name_arg(_args())
        await no_body()
        arts = named(name)
        waiting = [a for a in arts if a.state == "quarantined"]
        if waiting:
            current_audit().target = waiting[-1].digest
            return _json({"status": "already_quarantined", "name": name})
        art = the(name)
        raise StateConflict(f"cannot quarantine artifact {name!r}: must be in acquired "
                            f"state, currently {art.state}", state=art.state)  # fmt: skip

    @app.post("/v1/model/promote")
    @requires("artifacts:promote")
    @attach(amr_api.PROMOTE)
    async def amr_promote() -> Response:
        """AMR: promote the quarantined upload a request names; assay's policy decides."""
        current_audit().action = "amr.promote"  # a refusal's record; a change records itself
        body = await _body()
        name, fmt, digest, size = amr_shape.identity(body, size_required=False)
        current_audit().target = digest
        failed = amr_shape.evidence(body)
        if failed:
            raise PolicyRefused("promotion scanner evidence did not pass validation: "
                                + "; ".join(failed), reasons=failed)  # fmt: skip
        amr_shape.require_format(fmt)
        art = registry.artifacts.get(digest)
        if art is None:
            raise StateConflict("promotion requires a matching quarantined artifact: no "
                                "upload has these bytes", code="artifact.mismatch")  # fmt: skip
        _matches(art, name, fmt, size)
        out = await registry.transition(
            current_principal(), digest, Action.PROMOTE, route=web.route_template(),
            request_id=_rid(), status=201,
        )  # fmt: skip
        current_audit().written = out.record
        promoted = out.artifact.state == "trusted"
        # An approval recorded while the policy waits for more is assay's 202: AMR has
        # no multi-party approval, and only a 201 means the artifact is trusted now.
        return _json(amr_shape.artifact(out.artifact), 201 if promoted else 202)

    @app.post("/v1/model/revoke")
    @requires("artifacts:revoke")
    @attach(amr_api.REVOKE)
    async def amr_revoke() -> Response:
        """AMR: revoke a name: every artifact of it that is not yet revoked or deleted."""
        current_audit().action = "amr.revoke"
        name = amr_shape.name_arg(_args())
        reason = bodies.reason(await _body(), required=False) or REVOKE_REASON
        arts = named(name)
        the(name)
        targets = amr_shape.revocable(arts)
        if not targets:
            if any(a.state == "revoked" for a in arts):
                return _json({"status": "already_revoked", "name": name})
            raise StateConflict(f"cannot revoke artifact {name!r}: already in deleted state",
                                state="deleted")  # fmt: skip
        await _each(registry, targets, Action.REVOKE, reason)
        return _json({"status": "revoked", "name": name})

    @app.delete("/v1/model/delete")
    @requires("artifacts:delete")
    @attach(amr_api.DELETE)
    async def amr_delete() -> Response:
        """AMR: soft-delete a name: every artifact of it (bytes removed, metadata kept)."""
        current_audit().action = "amr.delete"
        name = amr_shape.name_arg(_args())
        reason = bodies.reason(await _body(), required=False) or DELETE_REASON
        arts = named(name)
        the(name)
        targets = amr_shape.deletable(arts)
        if not targets:
            return _json({"status": "already_deleted", "name": name})
        await _each(registry, targets, Action.DELETE, reason)
        return _json({"status": "deleted", "name": name})

    @app.get("/v1/stats")
    @requires("artifacts:read")
    @attach(amr_api.STATS)
    async def amr_stats() -> Response:
        """AMR: counts of artifacts by state."""
        return _json(amr_shape.stats(registry.artifacts.values()))

    @app.get("/v1/audit")
    @requires("audit:read")
    @attach(amr_api.AUDIT)
    async def amr_audit() -> Response:
        """AMR: lifecycle events from the audit chain, a page at a time (``?after=``)."""
        limit, raw = amr_shape.page_args(_args(), "after")
        after = amr_shape.seq_cursor(raw)
        if audit_records is None:
            raise StorageError("this daemon has no audit log reader", code="audit.unavailable")
        through = registry.settled_through()
        found, next_after = await trio.to_thread.run_sync(
            _scan, audit_records, after, through, limit, limiter=scans
        )
        seqs = [int(r["seq"]) for r in found]
        applied = await trio.to_thread.run_sync(registry.db.applied_seqs, seqs) if seqs else set()
        events = [
            amr_shape.audit_event(r, registry.artifacts[str(r["target"])])
            for r in found
            if r["seq"] in applied and str(r["target"]) in registry.artifacts
        ]
        current_audit().extra = {"events": len(events), "after": after}
        resp = _json(events)
        if next_after is not None:
            _next(resp, f"/v1/audit?limit={limit}&after={next_after}", str(next_after))
        return resp


def _scan(
    records: AuditRecords, after: int, through: int, limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Lifecycle records in ``(after, through]``: up to ``limit`` of them, reading at most
    ``MAX_SCAN`` records; and the seq to go on after, if the page stopped short of
    ``through`` (every record up to it is settled: its change applied or never will be).
    Blocking: reads the log, authenticating each record (a forged one raises)."""
    if after >= through:
        return [], None
    found: list[dict[str, Any]] = []
    stream = records(after, None)
    try:
        for scanned, rec in enumerate(stream, start=1):
            seq = int(rec["seq"])
            if seq > through:
                return found, None
            if amr_shape.is_lifecycle(rec):
                found.append(rec)
            if len(found) >= limit or scanned >= MAX_SCAN:
                return found, (seq if seq < through else None)
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # releases the log's file descriptors
    return found, None


async def _each(registry: Registry, targets: list[Artifact], action: Action, reason: str) -> None:
    """Apply ``action`` to each target; each change is its own record (this request's).

    A target that another request moved meanwhile (a state conflict now) is skipped: the
    name is revoked or deleted either way. Any other failure is answered as itself.
    """
    records: list[Mapping[str, Any]] = []
    for art in targets:
        try:
            out = await registry.transition(
                current_principal(), art.digest, action, route=web.route_template(),
                request_id=_rid(), reason=reason,
            )  # fmt: skip
        except StateConflict:
            continue
        records.append(out.record)
    if records:
        current_audit().written = records[-1]


def _matches(art: Artifact, name: str, fmt: str, size: int | None) -> None:
    differs = amr_shape.mismatch(art, name, fmt, size)
    if differs:
        raise StateConflict("the quarantined artifact does not match: " + "; ".join(differs),
                            code="artifact.mismatch", reasons=differs)  # fmt: skip


def _checked(art: Artifact, failed: set[str], errors: Mapping[str, str]) -> dict[str, Any]:
    """One artifact's line in AMR's ``VerifyAllResult``."""
    line: dict[str, Any] = {"name": art.name, "state": art.state}
    if art.state == "deleted":
        return line | {"status": "skipped", "reason": "deleted artifact bytes are removed"}
    line["sha256"] = amr_shape.bare_hex(art.digest)
    if art.digest in errors:
        return line | {"status": "failed", "error": f"check not finished: {errors[art.digest]}"}
    if art.digest in failed:
        return line | {"status": "failed", "error": "stored bytes do not match the digest"}
    return line | {"status": "verified"}


def _failed(name: str, expected: str, actual: str, error: str) -> dict[str, Any]:
    return {"status": "failed", "name": name, "expected": expected, "actual": actual,
            "error": error, "safe_to_use": "false"}  # fmt: skip


def _next(resp: Response, url: str, cursor: str) -> None:
    resp.headers["Link"] = f'<{url}>; rel="next"'
    resp.headers["X-Next-Cursor"] = cursor


def _args() -> dict[str, list[str]]:
    return request.args.to_dict(flat=False)


async def _raw() -> bytes:
    raw = await request.get_data(cache=True, as_text=False)
    assert isinstance(raw, bytes)
    return raw


async def _body() -> dict[str, Any]:
    """The body as the route declared it (``amr_api``): only its fields are known."""
    return bodies.parse_object(await _raw(), allowed=web.declared_fields())


def _rid() -> str:
    rid: str = g.request_id
    return rid


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj, sort_keys=True), status=status, content_type="application/json")
