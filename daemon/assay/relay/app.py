"""The relay's HTTP routes (Quart on trio), on the core's web edge.

Scopes here are per dataset and per entity (``access.metadata_scope`` and friends), so a
route cannot name its scope in a decorator. Routes are marked with
``dataset_route(kind)``; the core edge then leaves them to this module's
``before_request`` hook, which runs right after the core's, authenticates with the same
``Authenticator``, resolves every name in the path for that credential (one answer for
unknown and invisible, see ``assay.relay.access``) and calls ``principal.require`` for
each scope the route needs, before any handler (and so before any data) runs. A startup
check refuses an app where any unmarked route would be served without a credential.
Everything else (problems, security headers, the one audit record per request) is the
core's; the audit ``route`` of a request that matched no route is a keyed hash of its
path (``audit_route``), never the path, which may hold an id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, RoutingException

from assay import __version__
from assay.core import caller_text, web
from assay.core.apidoc import attach
from assay.core.authn import Authenticator
from assay.core.errors import AuthError, BadRequest, ScopeDenied
from assay.core.openapi import build_openapi
from assay.core.tokens import Principal
from assay.core.web import AuditSink, current_audit, current_principal, public
from assay.relay import access, api, oidc, planner
from assay.relay.errors import NotAcceptable, QueryTooLarge
from assay.relay.pglive import LiveTag
from assay.relay.service import Relay, dumps
from assay.relay.snapshot import Snapshot
from assay.relay.views import Target, lookup_refused

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
Authenticate = Callable[[Mapping[str, str]], Awaitable[Principal]]
JOSE = "application/jose"
PUBLIC_ROUTES = frozenset({"/healthz", "/readyz"})
KINDS = ("metadata", "read", "aggregate", "authenticated")


def dataset_route(kind: str) -> Callable[[F], F]:
    """Mark a route whose scope is the dataset's ``<kind>_scope`` (or any credential)."""
    assert kind in KINDS

    def mark(fn: F) -> F:
        fn.required_scope = None  # type: ignore[attr-defined]  # the core skips it...
        fn.relay_scope = kind  # type: ignore[attr-defined]  # ...and this module checks it
        fn.deferred_auth = True  # type: ignore[attr-defined]  # (and its query, after auth)
        return fn

    return mark


def _json(body: Any, status: int = 200) -> Response:
    return Response(dumps(body), status=status, content_type="application/json")


def _wants_jose() -> bool:
    """Signed only when asked by name: ``*/*`` never selects a JWS."""
    if JOSE not in request.headers.get("accept", ""):
        return False
    return any(v == JOSE and q > 0 for v, q in request.accept_mimetypes)


def _purpose(required: bool) -> None:
    value = request.headers.get(web.PURPOSE_HEADER)
    if value is None or not value.strip():
        if required:
            raise BadRequest(
                f"this entity requires an {web.PURPOSE_HEADER} header",
                code="request.purpose_required",
            )
        return
    if not caller_text.purpose_valid(value):
        raise BadRequest(
            f"{web.PURPOSE_HEADER} must be at most {web.MAX_PURPOSE_CHARS} printable characters",
            code="request.purpose_invalid",
        )


def who(principal: Principal) -> str:
    """A credential as cursors and budgets know it: auth mode and id, never a secret."""
    return f"{principal.auth_mode}:{principal.id}"


def audit_route(url_map: Map, redactor: Callable[[str], str]) -> Callable[[str, str], str]:
    """``METHOD template`` for the audit, for any method and path, without the raw path.

    1. A path that a route matches (with this method or another: a 405) is its template.
    2. Any other path is ``unmatched:`` and a keyed hash of it (the audit's redaction
       key): equal paths stay correlatable for an auditor with the key, and an id in a
       path under an entity (``.../records/P0001/x``) never sits in the log in clear.
    Also used for the 431 answer, which is refused before any routing.
    """
    adapter = url_map.bind("relay.invalid")

    def route(method: str, path: str) -> str:
        for attempt in (method, "GET"):
            try:
                rule, _args = adapter.match(path, method=attempt, return_rule=True)
            except MethodNotAllowed:
                continue
            except (HTTPException, RoutingException):
                break
            return f"{method} {rule.rule}"
        return f"{method} unmatched:{redactor(path)}"

    return route


def create_app(
    relay: Relay,
    *,
    authenticator: Authenticator,
    audit: AuditSink,
    readiness: Callable[[], dict[str, Any]],
    authenticate: Authenticate | None = None,
) -> QuartTrio:
    """``authenticate`` (async) replaces ``authenticator`` on dataset routes when given:
    the OIDC verifier, which may have to fetch the provider's keys first."""
    app = QuartTrio("assay.relay")

    async def verify(headers: Mapping[str, str]) -> Principal:
        if authenticate is not None:
            return await authenticate(headers)
        return authenticator.authenticate(headers)

    app.config["MAX_CONTENT_LENGTH"] = 1024  # every route is a GET
    app.config["BODY_TIMEOUT"] = 10
    server = relay.config.server
    route_of = audit_route(app.url_map, relay.redactor)

    def request_route() -> str:
        rule = request.url_rule
        if rule is not None:
            return f"{request.method} {rule.rule}"
        return route_of(request.method, request.path)

    web.install(
        app,
        authenticator=authenticator,
        audit=audit,
        param_names=lambda: planner.param_names(list(request.args.keys())),
        route=request_route,
    )

    @app.before_request
    async def _dataset_scope() -> None:
        g.relay_headers = {}
        view = app.view_functions.get(request.endpoint or "")
        kind = getattr(view, "relay_scope", None)
        if kind is None:
            return
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            principal = await verify(headers)
        except AuthError as exc:
            current_audit().extra.update(oidc.audit_fields(None, exc))
            raise
        current_audit().extra.update(oidc.audit_fields(principal, None))
        g.principal = principal
        if len(request.query_string) > server.max_query_bytes:
            raise QueryTooLarge(f"query string over {server.max_query_bytes} bytes")
        if kind == "authenticated":
            web.check_query()
            return
        names = request.view_args or {}
        # 1. Every name in the path, resolved for this credential: unknown and invisible
        #    give one and the same 404, so nothing here depends on what exists.
        target = relay.resolve(
            principal.scopes, names.get("dataset", ""), names.get("entity"), names.get("aggregate")
        )
        g.relay_target = target
        entity = target.view.entity if target.view is not None else None
        # 2. Then the scopes: the dataset's and, where it has its own access, the entity's.
        #    A metadata route on the dataset itself needs only the dataset's.
        scopes = access.required(kind, target.dataset, entity)
        audit_state = current_audit()
        audit_state.target = target.dataset.id
        audit_state.extra["dataset"] = target.dataset.id
        audit_state.extra["scopes_used"] = ",".join(scopes)
        for scope in scopes:
            principal.require(scope)
        if kind == "aggregate":
            relay.refuse_conflict(principal.scopes, target)
        # 3. Then the query: a name this credential may not know of is the same 404
        #    whatever parameters came with it.
        web.check_query()

    @app.after_request
    async def _budget_headers(response: Response) -> Response:
        for name, value in g.get("relay_headers", {}).items():
            response.headers[name] = value
        return response

    def answer(
        body: dict[str, Any], dataset: str, query_doc: dict[str, Any], snap: Snapshot | LiveTag
    ) -> Response:
        # The audit keeps the source's digest and the tag the caller saw, side by side.
        audit_state = current_audit()
        audit_state.extra["snapshot"] = snap.digest
        audit_state.extra["snapshot_tag"] = body["snapshot"]
        if not _wants_jose():
            return _json(body)
        if relay.signing_key is None:
            raise NotAcceptable(
                "this relay has no answer signing key", code="answer.signing_unavailable"
            )
        current_audit().extra["signed"] = True
        route = web.route_template().split(" ", 1)[1]
        token = relay.sign(
            dataset, route, body["snapshot"], query_doc, body, g.get("request_id", "")
        )
        return Response(token, status=200, content_type=JOSE)

    def readiness_details(checks: dict[str, Any]) -> dict[str, Any] | None:
        """Only the tables of datasets whose metadata scope the caller holds: their ids
        and digests are that dataset's metadata. The audit check for anyone who sees one."""
        principal = web.optional_principal(authenticator)
        if principal is None:
            return None
        visible = {
            d.id for d in relay.config.datasets if d.access.metadata_scope in principal.scopes
        }
        if not visible:
            return None
        shown = {s.where for s in relay.store.tables() if s.dataset in visible}
        return visible_checks(checks, shown)

    web.add_health_routes(app, readiness, readiness_details)

    @attach(api.OPENAPI)
    async def openapi() -> Response:
        """This API's OpenAPI 3.1 description."""
        current_audit().action = "relay.openapi"
        return _json(openapi_doc(app))

    if server.openapi_requires_auth:
        openapi = dataset_route("authenticated")(openapi)
    else:
        openapi = public(openapi)
    app.get("/openapi.json")(openapi)

    @app.get("/v1/datasets")
    @dataset_route("authenticated")
    @attach(api.DATASETS)
    async def list_datasets() -> Response:
        """Datasets whose metadata scope the caller holds."""
        principal = current_principal()
        audit_state = current_audit()
        audit_state.action = "relay.datasets"
        visible = [d for d in relay.config.datasets if d.access.metadata_scope in principal.scopes]
        if not visible:
            raise ScopeDenied("no dataset's metadata scope is held by this credential")
        audit_state.extra["scopes_used"] = ",".join(
            sorted({d.access.metadata_scope for d in visible})
        )
        return _json(
            {
                "catalog": relay.config.catalog.model_dump(),
                "instance": relay.config.instance.id,
                "datasets": [
                    {"id": d.id, "title": d.title, "sensitivity": d.sensitivity} for d in visible
                ],
            }
        )

    def target() -> Target:
        resolved: Target = g.relay_target
        return resolved

    @app.get("/v1/datasets/<dataset>")
    @dataset_route("metadata")
    @attach(api.DATASET)
    async def get_dataset(dataset: str) -> Response:
        """One dataset's catalog metadata, entities and aggregates."""
        current_audit().action = "relay.dataset"
        return _json(relay.dataset_doc(target().dataset, current_principal().scopes))

    @app.get("/v1/datasets/<dataset>/entities")
    @dataset_route("metadata")
    @attach(api.ENTITIES)
    async def list_entities(dataset: str) -> Response:
        """A dataset's entities with their public fields."""
        current_audit().action = "relay.entities"
        shown = relay.listed(target().dataset, current_principal().scopes)
        return _json({"entities": [relay.entity_doc(v) for v in shown]})

    @app.get("/v1/datasets/<dataset>/entities/<entity>")
    @dataset_route("metadata")
    @attach(api.ENTITY)
    async def get_entity(dataset: str, entity: str) -> Response:
        """An entity's public fields, filters, limits and current snapshot (its tag)."""
        current_audit().action = "relay.entity"
        view = target().view
        assert view is not None
        current_audit().target = f"{dataset}/{entity}"
        return _json(relay.entity_doc(view))

    @app.get("/v1/datasets/<dataset>/entities/<entity>/records")
    @dataset_route("read")
    @attach(api.RECORDS)
    async def list_records(dataset: str, entity: str) -> Response:
        """A page of records matching allowed filters; only declared fields."""
        audit_state = current_audit()
        audit_state.action = "relay.records"
        view = target().view
        assert view is not None
        audit_state.target = f"{dataset}/{entity}"
        audit_state.extra["entity"] = entity
        _purpose(view.entity.require_purpose_header)
        body, query_doc, snap = await relay.records(
            view,
            list(request.args.items(multi=True)),
            audit_state,
            who(current_principal()),
            g.relay_headers,
        )
        return answer(body, dataset, query_doc, snap)

    @app.get("/v1/datasets/<dataset>/entities/<entity>/records/<record_id>")
    @dataset_route("read")
    @attach(api.RECORD)
    async def get_record(dataset: str, entity: str, record_id: str) -> Response:
        """One record by primary key, where the entity exposes and filters it; takes the
        entity's other required filters as parameters; only declared fields."""
        audit_state = current_audit()
        audit_state.action = "relay.record"
        view = target().view
        assert view is not None
        audit_state.target = f"{dataset}/{entity}"
        audit_state.extra["entity"] = entity
        if not view.lookup:  # first: the answer depends on the entity's config alone
            raise lookup_refused()
        _purpose(view.entity.require_purpose_header)
        body, query_doc, snap = await relay.record(
            view,
            record_id,
            list(request.args.items(multi=True)),
            audit_state,
            who(current_principal()),
            g.relay_headers,
        )
        return answer(body, dataset, query_doc, snap)

    @app.get("/v1/datasets/<dataset>/aggregates/<aggregate>")
    @dataset_route("aggregate")
    @attach(api.AGGREGATE)
    async def get_aggregate(dataset: str, aggregate: str) -> Response:
        """Grouped counts, sums and averages with small cells suppressed."""
        audit_state = current_audit()
        audit_state.action = "relay.aggregate"
        resolved = target()
        assert resolved.aggregate is not None and resolved.view is not None
        audit_state.target = f"{dataset}/{aggregate}"
        audit_state.extra["aggregate"] = aggregate
        body, query_doc, snap = await relay.aggregate(
            resolved.dataset,
            resolved.aggregate,
            resolved.view,
            list(request.args.items(multi=True)),
            audit_state,
            who(current_principal()),
            g.relay_headers,
        )
        return answer(body, dataset, query_doc, snap)

    check_routes(app)
    return app


def visible_checks(checks: dict[str, Any], tables: set[str]) -> dict[str, Any]:
    """``checks`` with the ``tables`` check narrowed to the named tables."""
    out = dict(checks)
    if isinstance(checks.get("tables"), dict):
        full = checks["tables"]
        out["tables"] = {
            "ok": full.get("ok"),
            "stale": [t for t in full.get("stale", []) if t in tables],
            "tables": {k: v for k, v in full.get("tables", {}).items() if k in tables},
        }
    return out


def check_routes(app: QuartTrio) -> None:
    """Fail closed: only the health checks (and a public OpenAPI) may skip credentials."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        if getattr(view, "required_scope", "<undeclared>") is None and not (
            getattr(view, "relay_scope", None) in KINDS
            or rule.rule in PUBLIC_ROUTES
            or rule.rule == "/openapi.json"
        ):
            raise RuntimeError(f"route {rule.rule} would be served without a credential")


def openapi_doc(app: QuartTrio) -> dict[str, Any]:
    """The relay's document: the core's builder over its routes and declarations."""
    return build_openapi(app, title="assay relay", version=__version__,
                         path_params=api.PATH_PARAMS, auth_of=_auth_of,
                         security_schemes={"apiKey": {"type": "apiKey", "in": "header",
                                                      "name": "X-API-Key"}})  # fmt: skip


def _auth_of(view: Any) -> tuple[list[dict[str, list[str]]], str] | None:
    """A dataset route takes a bearer token or an API key; its scope is the config's."""
    kind = getattr(view, "relay_scope", None)
    if kind is None:
        return None
    if kind == "authenticated":
        return [{"bearer": []}, {"apiKey": []}], "any credential"
    return (
        [{"bearer": []}, {"apiKey": []}],
        f"datasets[].access.{kind}_scope (and the "
        f"entity's {kind}_scope where the entity has access of its own)",
    )
