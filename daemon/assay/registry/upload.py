"""``POST /v1/artifacts`` as a raw ASGI adapter, so uploads stream with backpressure.

Why not a Quart view: Quart's request body buffers everything the client sends without
backpressure, so a fast 4 GiB upload would sit in memory. Here the body is a
``BodySource`` that the ingest pump pulls from only as fast as blocks are written: over
hypercorn, each ``receive()`` pulls from its bounded queue; over the direct transport
(``assay.registry.direct``) the socket is read straight into the block. Authentication,
scope, problem rendering and the audit record are the shared core's, not copies.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import parse_qsl

from assay.core import problem
from assay.core.asgi import ASGIApp, Receive, Scope, Send, respond
from assay.core.authn import Authenticator
from assay.core.errors import AssayError, BadRequest, PayloadTooLarge
from assay.core.tokens import Principal
from assay.core.web import AuditSink, RequestAudit, base_fields, purpose_of, request_id_of
from assay.registry.body import DIRECT_BODY_EXTENSION, AsgiBody, BodySource
from assay.registry.digests import parse_digest
from assay.registry.service import Registry
from assay.registry.validate import check_metadata, check_name

log = logging.getLogger("assay.http")

UPLOAD_PATH = "/v1/artifacts"
UPLOAD_ROUTE = "POST /v1/artifacts"
UPLOAD_SCOPE = "artifacts:write"
MAX_QUERY_FIELDS = 80
MAX_QUERY_BYTES = 64 * 1024

#: Extra hook so the app can decorate mutation responses (receipts).
ResponseHook = Callable[[dict[str, Any], Mapping[str, Any]], dict[str, str]]


class UploadAdapter:
    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: Registry,
        authenticator: Authenticator,
        audit: AuditSink,
        max_name_chars: int,
        max_metadata_entries: int,
        response_hook: ResponseHook | None = None,
    ) -> None:
        self.app = app
        self.registry = registry
        self.authenticator = authenticator
        self.audit = audit
        self.max_name_chars = max_name_chars
        self.max_metadata_entries = max_metadata_entries
        self.response_hook = response_hook

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == UPLOAD_PATH and scope["method"] == "POST":
            await self._upload(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _upload(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = request_id_of(headers.get("x-request-id"))
        audit_state = RequestAudit(action="artifact.ingest")
        principal: Principal | None = None
        params: list[str] = []
        try:
            principal = self.authenticator.authenticate(headers)
            principal.require(UPLOAD_SCOPE)
            query = scope.get("query_string", b"")
            if len(query) > MAX_QUERY_BYTES:
                raise BadRequest("query string too long")
            try:
                pairs = parse_qsl(
                    query.decode(),
                    keep_blank_values=True,
                    strict_parsing=False,
                    max_num_fields=MAX_QUERY_FIELDS,
                )
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRequest(f"bad query string: {exc}") from None
            params = sorted({f"{k}:eq" for k, _ in pairs})
            names = [v for k, v in pairs if k == "name"]
            unknown = sorted({k for k, _ in pairs} - {"name", "meta", "digest"})
            if unknown:
                raise BadRequest(f"unknown query parameters: {', '.join(unknown)}")
            if len(names) != 1:
                raise BadRequest("exactly one name= query parameter is required")
            name = check_name(names[0], max_chars=self.max_name_chars)
            metadata = check_metadata(
                (v for k, v in pairs if k == "meta"), max_entries=self.max_metadata_entries
            )
            declared_values = [v for k, v in pairs if k == "digest"]
            if "assay-digest" in headers:
                declared_values.append(headers["assay-digest"])
            declared = parse_digest(declared_values[0]) if declared_values else None
            if len(set(declared_values)) > 1:
                raise BadRequest("conflicting declared digests")
            length = headers.get("content-length")
            if length is not None:
                if not length.isdigit():
                    raise BadRequest("bad Content-Length")
                if int(length) > self.registry.max_artifact_bytes:
                    raise PayloadTooLarge(
                        f"artifact larger than the {self.registry.max_artifact_bytes}-byte cap"
                    )
            audit_state.target = declared
            outcome = await self.registry.ingest(
                principal,
                name=name,
                metadata=metadata,
                declared=declared,
                body=_body_source(scope, receive),
                route=UPLOAD_ROUTE,
                request_id=request_id,
            )
        except AssayError as err:
            audit_state.reasons = list(err.reasons)
            status, body = problem.from_error(err, instance=UPLOAD_PATH, request_id=request_id)
            await self._refuse(send, status, body, err.code, audit_state, principal, params,
                               request_id, headers)  # fmt: skip
            return
        except Exception:
            # A bug, not the client's doing: still one record and a problem, never a
            # bare 500 from the server without either.
            log.exception("upload failed")
            status, body = problem.from_status(
                500, "internal error", instance=UPLOAD_PATH, request_id=request_id
            )
            await self._refuse(send, status, body, body["code"], audit_state, principal, params,
                               request_id, headers)  # fmt: skip
            return
        body_obj: dict[str, Any] = {
            "artifact": outcome.artifact.public(),
            "created": outcome.created,
        }
        extra = self.response_hook(body_obj, outcome.record) if self.response_hook else {}
        await respond(
            send,
            201 if outcome.created else 200,
            json.dumps(body_obj, sort_keys=True).encode(),
            "application/json",
            request_id,
            extra,
        )

    async def _refuse(
        self,
        send: Send,
        status: int,
        body: dict[str, Any],
        code: str,
        audit_state: RequestAudit,
        principal: Principal | None,
        params: list[str],
        request_id: str,
        headers: Mapping[str, str],
    ) -> None:
        """The refused upload's one record, then its problem (503 if it cannot be written)."""
        fields = base_fields(principal, audit_state, status, code, UPLOAD_ROUTE, request_id,
                             params, purpose_of(headers.get("x-purpose"), audit_state))  # fmt: skip
        extra_headers: dict[str, str] = {}
        try:
            await self.audit.append(fields)
        except AssayError as audit_err:
            status, body = problem.from_error(
                audit_err, instance=UPLOAD_PATH, request_id=request_id
            )
        if status == 401:
            extra_headers["WWW-Authenticate"] = 'Bearer realm="assay"'
        await respond(
            send, status, problem.encode(body), problem.PROBLEM_TYPE, request_id, extra_headers
        )


def _body_source(scope: Scope, receive: Receive) -> BodySource:
    """The transport's direct source when it offers one, else the ASGI messages."""
    direct = scope.get("extensions", {}).get(DIRECT_BODY_EXTENSION)
    return cast(BodySource, direct) if direct is not None else AsgiBody(receive)
