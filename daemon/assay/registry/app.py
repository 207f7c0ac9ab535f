"""The registry's HTTP routes (Quart on trio). Thin: parse, call the service, shape JSON.

Every view declares its scope with ``@requires`` (or ``@public`` for health checks); the
shared core authenticates, checks scope, renders problems and writes the audit record.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import trio
from quart import Response, g, request
from quart_trio import QuartTrio

from assay import __version__
from assay.core import web
from assay.core.apidoc import attach
from assay.core.asgi import ASGIApp
from assay.core.authn import Authenticator
from assay.core.errors import BadRequest, NotFound
from assay.core.openapi import build_openapi
from assay.core.web import AuditSink, current_audit, current_principal, requires
from assay.registry import amr, amr_api, amr_shape, api, bodies
from assay.registry.digests import parse_digest
from assay.registry.download import OpenObject, ReleaseAtEnd, own
from assay.registry.service import Registry
from assay.registry.states import Action
from assay.registry.store import describe
from assay.registry.upload import UPLOAD_PATH, UPLOAD_SCOPE
from assay.registry.validate import check_name

SERVE_CHUNK = 1024 * 1024
READINESS_SCOPE = "artifacts:read"

#: Hook that turns a mutation's audit record into response headers (receipts).
ReceiptHook = Callable[[dict[str, Any], Mapping[str, Any]], dict[str, str]]

#: One digest's history read: the rows, or the exception the read raised.
_Read = tuple[list[dict[str, Any]] | None, BaseException | None]


@dataclass(eq=False)
class _HistoryWait:
    digest: str
    wake: trio.Event = field(default_factory=trio.Event)
    result: _Read | None = None


class HistoryReads:
    """Concurrent ``db.history`` reads share one worker-thread hop (a group read).

    Why: each GET of an artifact's metadata used to start its own ``to_thread`` call;
    at 50 connections the profile showed the thread hand-offs (spawn, wake-up socket,
    reschedule) and up to 40 threads queueing on the DB lock as a large share of the
    event loop's time. Here the first caller leads: it takes every read queued so far,
    runs them in one thread call, hands each waiter its own result, and wakes the oldest
    read that queued meanwhile to lead the next batch. Every read still starts after
    its request arrived (a batch is taken only once its members are queued), so each
    answer is what a read of its own would have returned; an error fails only the reads
    of the digest it came from. The waits are shielded like the audit writer's, so a
    cancelled caller can never leave the queue without a leader.
    """

    def __init__(self, read: Callable[[str], list[dict[str, Any]]]) -> None:
        self._read = read
        self._queue: list[_HistoryWait] = []
        self._busy = False

    def _read_many(self, digests: list[str]) -> dict[str, _Read]:
        out: dict[str, _Read] = {}
        for digest in digests:
            try:
                out[digest] = (self._read(digest), None)
            except Exception as exc:
                out[digest] = (None, exc)
        return out

    async def history(self, digest: str) -> list[dict[str, Any]]:
        wait = _HistoryWait(digest)
        self._queue.append(wait)
        with trio.CancelScope(shield=True):
            if self._busy:
                await wait.wake.wait()  # woken with a result, or to lead the next batch
            if wait.result is None:
                await self._lead()
        assert wait.result is not None
        rows, error = wait.result
        if error is not None:
            raise error
        assert rows is not None
        return rows  # shared by the reads of one digest in a batch: callers only serialise it

    async def _lead(self) -> None:
        self._busy = True
        batch, self._queue = self._queue, []
        digests = list(dict.fromkeys(w.digest for w in batch))
        results: dict[str, _Read] = {}
        try:
            results = await trio.to_thread.run_sync(self._read_many, digests)
        except Exception as exc:  # the hop itself failed: every read in it fails
            results = {d: (None, exc) for d in digests}
        finally:
            for w in batch:
                w.result = results.get(w.digest, (None, RuntimeError("history read abandoned")))
                w.wake.set()
            if self._queue:
                self._queue[0].wake.set()  # the oldest waiter leads the next batch
            else:
                self._busy = False


async def _body() -> dict[str, Any]:
    """The request's JSON object, parsed strictly (``assay.registry.bodies``); its known
    fields are the ones the route declared (``assay.registry.api``)."""
    raw = await request.get_data(cache=True, as_text=False)
    assert isinstance(raw, bytes)
    return bodies.parse_object(raw, allowed=web.declared_fields())


def create_app(
    registry: Registry,
    *,
    authenticator: Authenticator,
    audit: AuditSink,
    max_json_body_bytes: int,
    readiness: Callable[[], dict[str, Any]],
    receipt_hook: ReceiptHook | None = None,
    audit_records: amr.AuditRecords | None = None,
    max_name_chars: int = 200,
    max_metadata_entries: int = 64,
) -> QuartTrio:
    app = QuartTrio("assay.registry")
    # Whatever a request's handler owns (a download's open file) is closed when its ASGI
    # call returns, however the request ended (``assay.registry.download``).
    app.asgi_app = cast(Any, ReleaseAtEnd(cast(ASGIApp, app.asgi_app)))  # type: ignore[method-assign]
    app.config["MAX_CONTENT_LENGTH"] = max_json_body_bytes
    app.config["BODY_TIMEOUT"] = 30
    app.config["JSON_SORT_KEYS"] = True
    web.install(app, authenticator=authenticator, audit=audit, receipt_hook=receipt_hook,
                problem_shape=amr_shape.problem_shape)  # fmt: skip
    started = time.monotonic()
    history_reads = HistoryReads(registry.db.history)

    def mutation_response(body: dict[str, Any], record: Mapping[str, Any], status: int) -> Response:
        current_audit().written = record
        headers = receipt_hook(body, record) if receipt_hook else {}
        resp = Response(_dumps(body), status=status, content_type="application/json")
        for k, v in headers.items():
            resp.headers[k] = v
        return resp

    #: Readiness details describe the host (paths, free bytes, the audit head): readers only.
    web.add_health_routes(app, readiness, web.scoped_details(authenticator, READINESS_SCOPE))

    @app.get("/v1/status")
    @requires("artifacts:read")
    @attach(api.STATUS)
    async def status() -> dict[str, Any]:
        """Version, uptime, counts and the last integrity sweep."""
        return {
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - started, 3),
            "counts": registry.counts(),
            "policy": registry.policy.name,
            "last_sweep": registry.last_sweep,
            "replay": registry.last_replay,
            "replay_mark": registry.replay_mark,
            "tokens": authenticator.token_count,
            "ready": readiness(),
        }

    schemas = (
        api.components(max_name_chars=max_name_chars, max_metadata_entries=max_metadata_entries)
        | amr_api.SCHEMAS
    )

    @app.get("/openapi.json")
    @requires("artifacts:read")
    @attach(api.OPENAPI)
    async def openapi() -> dict[str, Any]:
        """This API's OpenAPI 3.1 description."""
        return build_openapi(app, title="assay registry", version=__version__,
                             path_params=api.PATH_PARAMS, schemas=schemas,
                             shape=amr_shape.problem_statuses, tag_of=_tag)  # fmt: skip

    @app.post(UPLOAD_PATH)
    @requires(UPLOAD_SCOPE)
    @attach(api.UPLOAD)
    async def upload() -> Response:
        """Upload an artifact (streamed); it enters quarantined.

        Served by ``assay.registry.upload.UploadAdapter`` before Quart sees the request,
        so it streams with backpressure; declared here so the route table, its ``Allow``
        and the OpenAPI document know it. A request reaches this view only on a path the
        router takes for this one but the adapter does not (``//v1/artifacts``): that is
        not the upload route, and is answered as any other unknown path is.
        """
        raise NotFound(f"uploads are POST {UPLOAD_PATH} exactly", code="request.not_found")

    @app.get("/v1/artifacts")
    @requires("artifacts:read")
    @attach(api.LIST)
    async def list_artifacts() -> dict[str, Any]:
        """List artifacts a page at a time, in registration order, by ?state= and ?name=.

        ``?limit=`` (default 100, at most 1000) bounds the page; pass ``next_cursor``
        back as ``?cursor=`` for the next one (null on the last page).
        """
        arts, next_cursor = registry.list(
            state=request.args.get("state"),
            name=request.args.get("name"),
            limit=_page_limit(request.args.get("limit")),
            cursor=request.args.get("cursor"),
        )
        return {
            "artifacts": [a.public() for a in arts],
            "count": len(arts),
            "next_cursor": next_cursor,
        }

    @app.get("/v1/artifacts/<digest>")
    @requires("artifacts:read")
    @attach(api.SHOW)
    async def show(digest: str) -> dict[str, Any]:
        """One artifact's metadata, state and history."""
        art = registry.get(digest)
        current_audit().target = art.digest
        history = await history_reads.history(art.digest)
        return {"artifact": art.public(), "history": history}

    @app.post("/v1/artifacts/<digest>/promote")
    @requires("artifacts:promote")
    @attach(api.PROMOTE)
    async def promote(digest: str) -> Response:
        """Approve and, once the policy passes, promote quarantined -> trusted."""
        current_audit().target = parse_digest(digest)
        body = await _body()
        out = await registry.transition(
            current_principal(),
            digest,
            Action.PROMOTE,
            route=web.route_template(),
            request_id=_rid(),
            signatures=bodies.signatures(body),
        )
        decision = out.decision
        payload = {
            "artifact": out.artifact.public(),
            "promoted": out.artifact.state == "trusted",
            "decision": {
                "failed": list(decision.failed) if decision else [],
                "passed": list(decision.passed) if decision else [],
            },
        }
        return mutation_response(payload, out.record, 200 if payload["promoted"] else 202)

    @app.post("/v1/artifacts/<digest>/revoke")
    @requires("artifacts:revoke")
    @attach(api.REVOKE)
    async def revoke(digest: str) -> Response:
        """Revoke (terminal). A reason is required."""
        current_audit().target = parse_digest(digest)
        reason = bodies.reason(await _body(), required=True)
        out = await registry.transition(
            current_principal(),
            digest,
            Action.REVOKE,
            route=web.route_template(),
            request_id=_rid(),
            reason=reason,
        )
        return mutation_response({"artifact": out.artifact.public()}, out.record, 200)

    @app.delete("/v1/artifacts/<digest>")
    @requires("artifacts:delete")
    @attach(api.DELETE)
    async def delete(digest: str) -> Response:
        """Soft delete: bytes removed, metadata and history kept."""
        current_audit().target = parse_digest(digest)
        reason = bodies.reason(await _body(), required=False)
        out = await registry.transition(
            current_principal(),
            digest,
            Action.DELETE,
            route=web.route_template(),
            request_id=_rid(),
            reason=reason,
        )
        return mutation_response({"artifact": out.artifact.public()}, out.record, 200)

    @app.post("/v1/artifacts/<digest>/verify")
    @requires("artifacts:verify")
    @attach(api.VERIFY)
    async def verify(digest: str) -> Response:
        """Re-hash one artifact's stored bytes now."""
        audit_state = current_audit()
        audit_state.target = parse_digest(digest)
        audit_state.action = "artifact.verify"
        audit_state.receipt = True  # evidence of the check, signed like a mutation

        async def record_request(result: dict[str, Any]) -> Mapping[str, Any]:
            audit_state.reasons = [] if result["ok"] else [describe(result["actual"])]
            return await web.record_request(200)

        result, record = await registry.verify(
            digest,
            principal=current_principal(),
            route=web.route_template(),
            request_id=_rid(),
            status=200,
            record_request=record_request,
        )
        if record is not None:
            # Durable before anything changed: the integrity change's record, or the
            # request's own. Either is this request's one record, signed into a receipt.
            return mutation_response(result, record, 200)
        return Response(_dumps(result), status=200, content_type="application/json")

    @app.post("/v1/sweep")
    @requires("artifacts:verify")
    @attach(api.SWEEP_API)
    async def sweep() -> Response:
        """Re-hash every stored artifact now."""
        audit_state = current_audit()
        audit_state.action = "artifact.sweep"
        audit_state.receipt = True

        async def record_request(summary: dict[str, Any]) -> Mapping[str, Any]:
            audit_state.extra = {"checked": summary["checked"], "failed": len(summary["failed"])}
            return await web.record_request(200)

        result = await registry.sweep(
            principal=current_principal(),
            route=web.route_template(),
            request_id=_rid(),
            record_request=record_request,
        )
        assert audit_state.written is not None  # SWP-2 ran: the record came first
        return mutation_response(result, audit_state.written, 200)

    @app.get("/v1/artifacts/<digest>/content")
    @requires("artifacts:read")
    @attach(api.CONTENT)
    async def content(digest: str) -> Response:
        """Stream a trusted artifact's bytes; a hash mismatch aborts before the last chunk."""
        current_audit().target = parse_digest(digest)
        current_audit().action = "artifact.fetch"
        art, fd = await registry.open_consumable(
            digest, principal=current_principal(), route=web.route_template(), request_id=_rid()
        )
        # No checkpoint between the open and here: the request owns the descriptor from
        # now on, and it is closed when the request ends even if the body never runs.
        obj = OpenObject(fd)
        own(request.scope, obj)
        if request.method == "HEAD":
            obj.close()  # the length is known; HEAD reads and hashes nothing
            resp = Response(b"", status=200, content_type="application/octet-stream")
        else:
            resp = Response(
                _serve(registry, art.digest, obj),
                status=200,
                content_type="application/octet-stream",
            )
            # Not Quart's 60 s response timeout: a 70 GB download takes longer. A client
            # that stops taking bytes is cut by the server's request timeout instead.
            resp.timeout = None
        resp.headers["Content-Length"] = str(art.size)
        resp.headers["Digest"] = art.digest
        return resp

    @app.get("/v1/trusted/<path:name>")
    @requires("artifacts:read")
    @attach(api.TRUSTED)
    async def trusted(name: str) -> dict[str, Any]:
        """Resolve a name to its current trusted digest, for local services."""
        art = registry.resolve_trusted(check_name(name, max_chars=max_name_chars))
        current_audit().target = art.digest
        current_audit().action = "artifact.resolve"
        return {"name": name, "digest": art.digest, "size": art.size, "format": art.format}

    amr.install(app, registry, audit_records=audit_records)
    return app


async def _serve(registry: Registry, digest: str, obj: OpenObject) -> AsyncIterator[bytes]:
    """Yield chunks while hashing, always holding the last one back until the hash checks."""
    h = hashlib.sha256()
    pending: bytes | None = None
    try:
        while chunk := await trio.to_thread.run_sync(os.read, obj.fd, SERVE_CHUNK):
            h.update(chunk)
            if pending is not None:
                yield pending
            pending = chunk
            # Re-check on every chunk: a revoke mid-stream stops the rest from going out.
            registry.check_consumable(digest)
        # Step SRV-2 (whole-file digest): the final chunk leaves only if the hash matches.
        actual = "sha256:" + h.hexdigest()
        if actual != digest:
            await registry.mark_corrupt_while_serving(digest, actual)
            raise RuntimeError(f"integrity failure while serving {digest}; aborting stream")
        if pending is not None:
            yield pending
    finally:
        obj.close()


#: A listing page: the default, and the most one request may ask for.
LIST_PAGE_DEFAULT = 100
LIST_PAGE_MAX = 1000


def _page_limit(raw: str | None) -> int:
    if raw is None:
        return LIST_PAGE_DEFAULT
    if re.fullmatch(r"[0-9]{1,4}", raw) is None or not 1 <= int(raw) <= LIST_PAGE_MAX:
        raise BadRequest(f"limit must be an integer from 1 to {LIST_PAGE_MAX}",
                         code="request.bad_limit")  # fmt: skip
    return int(raw)


def _tag(path: str) -> str:
    """Operations are grouped: assay's own, and the AMR-compatible ones."""
    return "amr" if path in amr_shape.PATHS else "registry"


def _rid() -> str:
    rid: str = g.request_id
    return rid


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()
