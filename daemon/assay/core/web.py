"""The Quart edge shared by registry and relay: auth, scopes, problems, audit, headers.

Why one module: every route must authenticate, check its scope, answer errors as RFC 9457
problems and leave exactly one audit record, and a route that forgets one of those is a
hole. Routes declare their scope with ``@requires``; a non-public route without one is
refused (fail closed) rather than served.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from quart import Quart, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from assay.core import apidoc, caller_text, problem
from assay.core.audit.bounds import bound
from assay.core.authn import Authenticator
from assay.core.errors import AssayError, AuditWriteFailed, AuthError, ScopeDenied
from assay.core.tokens import Principal

log = logging.getLogger("assay.http")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

PURPOSE_HEADER = "x-purpose"
MAX_PURPOSE_CHARS = caller_text.MAX_PURPOSE_CHARS
MAX_REQUEST_ID_CHARS = caller_text.MAX_REQUEST_ID_CHARS


class AuditSink(Protocol):
    """What the web edge needs from the audit log: a durable append."""

    async def append(self, fields: dict[str, Any]) -> Mapping[str, Any]: ...


#: ``(path, status, problem) -> (status, problem)``: how an app answers a problem on
#: a path whose API is not ours (e.g. a compatibility API that answers 403 for a bad
#: token where assay answers 401). Applied in the one translation, ``_problem``.
ProblemShape = Callable[[str, int, dict[str, Any]], tuple[int, dict[str, Any]]]


def requires(scope: str) -> Callable[[F], F]:
    """Declare the scope a route needs. Checked before the handler runs."""

    def mark(fn: F) -> F:
        fn.required_scope = scope  # type: ignore[attr-defined]
        return fn

    return mark


def public(fn: F) -> F:
    """Declare a route that needs no credential (only health checks are)."""
    fn.required_scope = None  # type: ignore[attr-defined]
    return fn


@dataclass
class RequestAudit:
    """What a handler tells the audit record about its request."""

    action: str = "http.request"
    target: str | None = None
    from_state: str | None = None
    to_state: str | None = None
    decision: str | None = None
    reasons: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    #: Set when the handler already wrote this request's one record (mutations do).
    written: Mapping[str, Any] | None = None
    #: Set by handlers whose success is evidence worth holding (integrity checks): the
    #: record written for the request is then signed into a receipt on the response.
    receipt: bool = False


def current_audit() -> RequestAudit:
    audit: RequestAudit = g.audit
    return audit


def current_principal() -> Principal:
    principal: Principal = g.principal
    return principal


def route_template() -> str:
    rule = request.url_rule
    return f"{request.method} {rule.rule if rule is not None else request.path}"


def purpose() -> str | None:
    return caller_text.purpose_of(request.headers.get(PURPOSE_HEADER))[0]


def purpose_of(value: str | None, audit: RequestAudit) -> str | None:
    """What a record keeps of an ``X-Purpose`` header (``assay.core.caller_text`` step
    2): a bad one is kept as absent, and ``audit`` marked ``extra.purpose_invalid``."""
    kept, dropped = caller_text.purpose_of(value)
    if dropped:
        audit.extra["purpose_invalid"] = True
    return kept


def request_id_of(value: str | None) -> str:
    """The client's ``X-Request-Id`` if it is 1 to 64 visible ASCII characters
    (``assay.core.caller_text`` step 1), else a fresh one: it is recorded and echoed."""
    if value is not None and caller_text.request_id_valid(value):
        return value
    return secrets.token_hex(8)


def base_fields(
    principal: Principal | None,
    audit: RequestAudit,
    status: int,
    error_code: str | None,
    route: str | None,
    request_id: str,
    params: list[str],
    purpose_value: str | None,
) -> dict[str, Any]:
    """The shared record shape; also used by non-Quart adapters (the upload path).

    Built through ``bounds.bound``: whatever the attacker put in the path, the query or
    the headers, the record is one the log accepts (shortened and marked, never refused).
    """
    decision = audit.decision or ("allow" if status < 400 else "deny" if status < 500 else "error")
    return bound(
        {
            "request_id": request_id,
            "principal": principal.id if principal else None,
            "auth_mode": principal.auth_mode if principal else "none",
            "action": audit.action,
            "route": route,
            "target": audit.target,
            "from_state": audit.from_state,
            "to_state": audit.to_state,
            "decision": decision,
            "reasons": list(audit.reasons),
            "status": status,
            "error_code": error_code,
            "params": params,
            "purpose": purpose_value,
            "extra": audit.extra,
        }
    )


#: Which checks (and which of their details) a caller may see; None: only the summary.
Details = Callable[[dict[str, Any]], dict[str, Any] | None]


def add_health_routes(
    app: Quart, readiness: Callable[[], dict[str, Any]], details: Details
) -> None:
    """``/healthz`` (liveness) and ``/readyz`` (named readiness checks): the only public
    routes, the same in every component so systemd and operators probe them alike.

    Public, so ``/readyz`` tells anyone only ``{"ready", "failing"}``: whether the daemon
    is ready and the names of the checks that fail. The details (paths, free bytes, the
    audit head, table digests) move as the daemon works and describe its host, so they
    are added as ``checks`` only for a caller whose credential ``details`` accepts.
    """

    @app.get("/healthz")
    @public
    @apidoc.attach(apidoc.HEALTH_API)
    async def healthz() -> dict[str, Any]:
        """Liveness: the event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    @public
    @apidoc.attach(apidoc.READY_API)
    async def readyz() -> Response:
        """Readiness: every named check (store, audit, config, tables...) passes."""
        checks = readiness()
        failing = sorted(name for name, c in checks.items() if not c.get("ok"))
        out: dict[str, Any] = {"ready": not failing, "failing": failing}
        shown = details(checks)
        if shown is not None:
            out["checks"] = shown
        current_audit().extra["details"] = shown is not None
        body = json.dumps(out, sort_keys=True)
        return Response(body, status=503 if failing else 200, content_type="application/json")


def optional_principal(authenticator: Authenticator) -> Principal | None:
    """The caller, if it presented a credential that authenticates; else None, no error.

    For the public health routes: a probe with a stale or missing credential is still
    answered (the summary), never refused; a good one is recorded as the principal.
    """
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        principal = authenticator.authenticate(headers)
    except AuthError:
        return None
    g.principal = principal
    return principal


def scoped_details(authenticator: Authenticator, scope: str) -> Details:
    """Every check in full, for a caller holding ``scope``."""

    def details(checks: dict[str, Any]) -> dict[str, Any] | None:
        principal = optional_principal(authenticator)
        return checks if principal is not None and scope in principal.scopes else None

    return details


def check_query() -> None:
    """Refuse query parameters the matched route did not declare (``apidoc``)."""
    api = apidoc.api_of(current_app.view_functions.get(request.endpoint or ""))
    if api is not None:
        apidoc.unknown_query(api, request.args.keys())


def declared_fields() -> frozenset[str]:
    """The body fields the matched route declared: the only ones its parser accepts."""
    api = apidoc.api_of(current_app.view_functions.get(request.endpoint or ""))
    return apidoc.body_fields(api) if api is not None else frozenset()


@dataclass(frozen=True)
class _Edge:
    """What ``record_request`` needs from ``install``: the sink and the params reader."""

    audit: AuditSink
    params: Callable[[], list[str]]
    route: Callable[[], str]


_EDGE = "assay.edge"


def _request_fields(status: int, error_code: str | None = None) -> dict[str, Any]:
    edge: _Edge = current_app.extensions[_EDGE]
    return base_fields(
        g.get("principal"),
        g.get("audit") or RequestAudit(),
        status,
        error_code,
        edge.route(),
        g.get("request_id", ""),
        edge.params(),
        g.purpose if "purpose" in g else purpose(),
    )


async def record_request(status: int) -> Mapping[str, Any]:
    """Write this request's one record *now*, as ``status``, before the handler's side
    effects (verify, sweep): if it cannot be written (``AuditWriteFailed``, a 503), the
    handler stops and nothing changed. The edge then writes no second record."""
    edge: _Edge = current_app.extensions[_EDGE]
    record = await edge.audit.append(_request_fields(status))
    current_audit().written = record
    return record


def install(
    app: Quart,
    *,
    authenticator: Authenticator,
    audit: AuditSink,
    param_names: Callable[[], list[str]] | None = None,
    receipt_hook: Callable[[dict[str, Any], Mapping[str, Any]], dict[str, str]] | None = None,
    route: Callable[[], str] | None = None,
    problem_shape: ProblemShape | None = None,
) -> None:
    """Wire the auth/scope/problem/audit/header discipline into ``app``.

    ``route`` names the request in its audit record (default ``route_template``); the
    relay passes one that never records a raw unmatched path. ``problem_shape`` reshapes
    every problem answer before it is sent and recorded.
    """

    def params() -> list[str]:
        if param_names is not None:
            return param_names()
        return sorted({f"{k}:eq" for k in request.args})

    edge = _Edge(audit, params, route or route_template)
    app.extensions[_EDGE] = edge

    @app.before_request
    async def _authenticate() -> None:
        # One pass over the headers. Werkzeug's ``Headers.get`` raises and catches an
        # exception for every absent header, which the profile showed per request; a
        # plain dict lookup does not. ``lowered`` keeps the last value of a repeated
        # header (what the authenticator always saw), ``first`` the first one (what
        # ``request.headers.get`` returns, used for the request id and purpose).
        lowered: dict[str, str] = {}
        first: dict[str, str] = {}
        for k, v in request.headers.items():
            lk = k.lower()
            lowered[lk] = v
            if lk not in first:
                first[lk] = v
        g.request_id = request_id_of(first.get("x-request-id"))
        g.audit = RequestAudit()
        g.purpose = purpose_of(first.get(PURPOSE_HEADER), g.audit)
        g.started = time.monotonic()
        g.principal = None
        g.error_code = None
        view = app.view_functions.get(request.endpoint or "")
        if view is None:  # 404/405 are raised by routing; nothing to authorise
            return
        if not hasattr(view, "required_scope"):
            # Fail closed: a route that never declared its scope is never served.
            raise ScopeDenied("route has no declared scope", code="auth.route_unscoped")
        if apidoc.api_of(view) is None:
            # Nor one that never declared its API: its parameters would go unchecked and
            # the OpenAPI document could not describe it (``assay.core.apidoc``).
            raise ScopeDenied("route has no declared API", code="auth.route_undeclared")
        scope = getattr(view, "required_scope")  # noqa: B009 - checked just above
        if scope is None:
            # A route another hook authenticates (the relay's) checks its query after.
            if not getattr(view, "deferred_auth", False):
                check_query()
            return
        principal = authenticator.authenticate(lowered)
        g.principal = principal
        principal.require(scope)
        check_query()

    def _problem(
        status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Response:
        if problem_shape is not None:
            status, body = problem_shape(request.path, status, body)
        g.error_code = body.get("code")
        resp = Response(problem.encode(body), status=status, content_type=problem.PROBLEM_TYPE)
        if status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="assay"'
        for k, v in (headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.errorhandler(AssayError)
    async def _typed(err: AssayError) -> Response:
        audit_state: RequestAudit | None = g.get("audit")
        if audit_state is not None and err.reasons:
            audit_state.reasons = list(err.reasons)
        if audit_state is not None and err.written_record is not None:
            audit_state.written = err.written_record
        status, body = problem.from_error(
            err, instance=request.path, request_id=g.get("request_id", "")
        )
        return _problem(status, body)

    @app.errorhandler(HTTPException)
    async def _http(err: HTTPException) -> Response:
        code = err.code or 500
        status, body = problem.from_status(
            code, err.description or "", instance=request.path, request_id=g.get("request_id", "")
        )
        methods = getattr(err, "valid_methods", None)
        headers = {"Allow": ", ".join(methods)} if methods else None
        return _problem(status, body, headers)

    @app.errorhandler(Exception)
    async def _unexpected(err: Exception) -> Response:
        # The route as the audit names it (a template, or the relay's keyed hash), never
        # the raw path, which may hold an id; the exception's type and frames, never its
        # message, which may quote a value (a KeyError is its key).
        log.error("unhandled %s on %s\n%s", type(err).__name__, edge.route(), _frames(err))
        status, body = problem.from_status(
            500, "internal error", instance=request.path, request_id=g.get("request_id", "")
        )
        return _problem(status, body)

    @app.after_request
    async def _finish(response: Response) -> Response:
        # Same as ``headers.setdefault`` per name, without werkzeug's raise-and-catch
        # for each absent header (five exceptions per request in the profile).
        present = {k.lower() for k in response.headers.keys()}  # noqa: SIM118 - Headers
        for name, value in problem.SECURITY_HEADERS:
            if name.lower() not in present:
                response.headers.add(name, value)
        response.headers["X-Request-Id"] = g.get("request_id", "")
        audit_state: RequestAudit | None = g.get("audit")
        if audit_state is None:
            audit_state = RequestAudit()
        if audit_state.written is not None:
            return response
        fields = _request_fields(response.status_code, g.get("error_code"))
        try:
            record = await audit.append(fields)
        except AuditWriteFailed as exc:
            status, body = problem.from_error(exc, instance=request.path, request_id=g.request_id)
            failed = _problem(status, body)
            for name, value in problem.SECURITY_HEADERS:
                failed.headers[name] = value
            return failed
        if audit_state.receipt and receipt_hook is not None and response.status_code < 400:
            await _attach_receipt(response, record, receipt_hook)
        return response


def _frames(err: BaseException) -> str:
    """The traceback of ``err`` and of what caused it: types and source lines only."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(parts) < 8:
        seen.add(id(current))
        if parts:
            parts.append(f"caused by {type(current).__name__}:\n")
        parts.extend(traceback.format_tb(current.__traceback__))
        suppressed = current.__suppress_context__
        current = current.__cause__ or (None if suppressed else current.__context__)
    return "".join(parts)


async def _attach_receipt(
    response: Response,
    record: Mapping[str, Any],
    hook: Callable[[dict[str, Any], Mapping[str, Any]], dict[str, str]],
) -> None:
    """Sign the request's durable record into the JSON body and headers, as mutations do."""
    body = json.loads(await response.get_data())
    headers = hook(body, record)
    response.set_data(json.dumps(body, sort_keys=True))
    for name, value in headers.items():
        response.headers[name] = value
