"""The relay's config: strict models plus the cross-references pydantic cannot see.

Why two passes: pydantic checks each block's shape and names an unknown key by its dotted
path; ``check_references`` then walks entity→table, field→column, filter→field and
aggregate→entity links and reports every broken one by its path, so an operator fixes a
config in one round instead of one error at a time. Pure: takes parsed values.
"""

from __future__ import annotations

import posixpath
from typing import Literal

from pydantic import Field, field_validator, model_validator

from assay.core import admin_config
from assay.core.admin_config import ADMIN_SCOPES, AdminConfig
from assay.core.errors import ConfigError
from assay.core.posture.config import DeploymentSection
from assay.core.schema import AuditConfig, SecretRef, ServerConfig, Strict, validate
from assay.core.strict_yaml import load_yaml
from assay.core.tokens import ID_PATTERN, SCOPE_PATTERN
from assay.relay.cellrange import CellRange, parse_range
from assay.relay.oidc_config import OidcConfig, scope_map_problems
from assay.relay.pgsource import PostgresSource

FieldType = Literal["string", "integer", "number", "boolean", "date", "timestamp"]
Op = Literal["eq", "in", "gte", "lte", "between"]
RANGE_OPS: frozenset[str] = frozenset({"gte", "lte", "between"})
NUMERIC: frozenset[str] = frozenset({"integer", "number"})

NAME = r"^[a-z][a-z0-9_]{0,63}$"
COLUMN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
#: pydantic patterns are searched, not matched: each is anchored. Its default (Rust)
#: engine reads ``$`` as the end of the text, so a trailing newline is refused
#: (tests/unit/test_validation.py proves it for every config pattern).
SCOPE = f"^{SCOPE_PATTERN.pattern}$"
ID = f"^{ID_PATTERN.pattern}$"
MiB = 1024 * 1024


class SourceField(Strict):
    """One typed column of a source file; a value that does not fit fails the load."""

    name: str = Field(pattern=COLUMN)
    type: FieldType
    nullable: bool = True


class XlsxOptions(Strict):
    """Where the table is in a workbook: one named sheet, its header row, its data cells.

    ``data_range`` (A1, e.g. ``A2:F100000``) is an upper bound on rows (rows past the
    sheet's last row are absent, not an error) and exact on columns; when omitted the
    data is every row below the header over the header's columns.
    """

    sheet: str = Field(min_length=1, max_length=31)
    header_row: int = Field(default=1, ge=1, le=1_048_575)
    data_range: str | None = None

    @field_validator("data_range")
    @classmethod
    def _a1(cls, value: str | None) -> str | None:
        if value is not None:
            parse_range(value)  # ValueError names what is wrong with it
        return value

    @model_validator(mode="after")
    def _range_below_header(self) -> XlsxOptions:
        cells = self.cells()
        if cells is not None and cells.min_row <= self.header_row:
            raise ValueError(
                f"data_range {self.data_range!r} must start below header_row {self.header_row}"
            )
        return self

    def cells(self) -> CellRange | None:
        """The parsed ``data_range`` (ValueError for a malformed one, at validation)."""
        return parse_range(self.data_range) if self.data_range is not None else None


class Source(Strict):
    """A file (``path``) or a Postgres source (``postgres``, see ``assay.relay.pgsource``)."""

    path: str | None = Field(default=None, min_length=1)
    #: Inferred from the file name (.csv, .parquet, .pq, .xlsx) when omitted; ``postgres``
    #: is implied by a ``postgres`` block.
    format: Literal["csv", "parquet", "xlsx", "postgres"] | None = None
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    postgres: PostgresSource | None = None
    #: Required for (and only allowed with) XLSX sources.
    xlsx: XlsxOptions | None = None

    @model_validator(mode="after")
    def _kind(self) -> Source:
        if self.postgres is not None:
            if self.path is not None or self.format not in (None, "postgres"):
                raise ValueError("a postgres source takes no path and no other format")
        elif self.path is None:
            raise ValueError("give a path (a file) or a postgres block")
        elif self.format == "postgres":
            raise ValueError("format postgres needs a postgres block")
        return self

    def spelling(self) -> str:
        """How the config names the source: its normalized path or its database source."""
        if self.postgres is not None:
            return self.postgres.spelling()
        assert self.path is not None
        return posixpath.normpath(self.path)

    def resolved_format(self) -> str | None:
        if self.postgres is not None:
            return "postgres"
        if self.format is not None:
            return self.format
        assert self.path is not None
        lower = self.path.lower()
        if lower.endswith(".csv"):
            return "csv"
        if lower.endswith((".parquet", ".pq")):
            return "parquet"
        if lower.endswith(".xlsx"):
            return "xlsx"
        return None


class Refresh(Strict):
    """``mtime`` reloads when the file changes, ``interval`` on a timer, ``manual`` on SIGHUP."""

    mode: Literal["mtime", "interval", "manual"] = "mtime"
    interval_seconds: float = Field(default=5.0, gt=0, le=86_400)


class Table(Strict):
    """A private storage table: never named in a URL, only reached through entities."""

    id: str = Field(pattern=NAME)
    source: Source
    primary_key: str = Field(pattern=COLUMN)
    columns: list[SourceField] = Field(alias="schema", min_length=1, max_length=512)
    refresh: Refresh = Refresh()
    #: Overrides ``server.max_source_bytes`` for this table (it may only lower it).
    max_bytes: int | None = Field(default=None, ge=1)
    #: Source columns not in ``schema`` are refused unless this is true (then never loaded).
    ignore_extra_columns: bool = False


class EntityField(Strict):
    """A public field: ``name`` is what callers see, ``from`` the column it reads."""

    name: str = Field(pattern=NAME)
    from_: str | None = Field(default=None, alias="from", pattern=COLUMN)
    #: The audit keeps this field's filter values only as keyed hashes.
    sensitive: bool = False

    @property
    def column(self) -> str:
        return self.from_ or self.name


class AllowedFilter(Strict):
    field: str = Field(pattern=NAME)
    ops: list[Op] = Field(min_length=1, max_length=5)


class Access(Strict):
    metadata_scope: str = Field(pattern=SCOPE)
    read_scope: str = Field(pattern=SCOPE)
    aggregate_scope: str = Field(pattern=SCOPE)

    @model_validator(mode="after")
    def _distinct(self) -> Access:
        if len({self.metadata_scope, self.read_scope, self.aggregate_scope}) != 3:
            raise ValueError("metadata_scope, read_scope and aggregate_scope must differ")
        return self


class RowBudget(Strict):
    """At most ``rows`` rows per credential and entity in each fixed window."""

    rows: int = Field(ge=1, le=10**12)
    window_seconds: int = Field(ge=1, le=366 * 86_400)


class Entity(Strict):
    name: str = Field(pattern=NAME)
    title: str = ""
    description: str = ""
    table: str = Field(pattern=NAME)
    fields: list[EntityField] = Field(min_length=1, max_length=256)
    allowed_filters: list[AllowedFilter] = Field(default_factory=list, max_length=64)
    required_filters: list[str] = Field(default_factory=list, max_length=16)
    default_limit: int = Field(default=50, ge=1)
    max_limit: int = Field(default=100, ge=1, le=10_000)
    require_purpose_header: bool = False
    #: Scopes of this entity's own, needed as well as the dataset's (never instead).
    access: Access | None = None
    #: Overrides ``row_budgets.default`` for this entity.
    row_budget: RowBudget | None = None

    @model_validator(mode="after")
    def _limits(self) -> Entity:
        if self.default_limit > self.max_limit:
            raise ValueError("default_limit must not exceed max_limit")
        return self


class Indicator(Strict):
    id: str = Field(pattern=NAME)
    function: Literal["count", "sum", "avg"]
    #: Entity field to sum or average; for ``count`` omit it to count rows.
    field: str | None = Field(default=None, pattern=NAME)

    @model_validator(mode="after")
    def _field_needed(self) -> Indicator:
        if self.function != "count" and self.field is None:
            raise ValueError(f"{self.function} needs a field")
        return self


class DisclosureControl(Strict):
    #: At least 3: a suppressed cell is known to hold 1..k-1 rows (mask mode shows its key,
    #: omit mode counts it), which at k = 2 is exactly 1.
    min_group_size: int = Field(ge=3, le=1_000_000)
    suppression: Literal["omit", "mask"] = "omit"


class Aggregate(Strict):
    id: str = Field(pattern=NAME)
    title: str = ""
    description: str = ""
    source_entity: str = Field(pattern=NAME)
    #: Groups are always formed over all of these: a caller cannot pick a coarser grouping.
    dimensions: list[str] = Field(min_length=1, max_length=8)
    indicators: list[Indicator] = Field(min_length=1, max_length=16)
    #: Only dimension fields may be filtered, so a filter selects whole cells.
    allowed_filters: list[AllowedFilter] = Field(default_factory=list, max_length=8)
    disclosure_control: DisclosureControl


class Dataset(Strict):
    id: str = Field(pattern=NAME)
    title: str = Field(min_length=1, max_length=200)
    description: str = ""
    owner: str = Field(min_length=1, max_length=200)
    sensitivity: Literal["public", "internal", "personal", "confidential", "secret"]
    access_rights: Literal["public", "restricted", "non_public"]
    update_frequency: Literal[
        "continuous", "daily", "weekly", "monthly", "quarterly", "annual", "irregular"
    ]
    access: Access
    tables: list[Table] = Field(min_length=1, max_length=64)
    entities: list[Entity] = Field(min_length=1, max_length=64)
    aggregates: list[Aggregate] = Field(default_factory=list, max_length=64)


class Catalog(Strict):
    title: str = Field(min_length=1, max_length=200)
    publisher: str = ""
    description: str = ""


class AnswerSigning(Strict):
    """The deployment's Ed25519 key for signed answers (PEM PKCS#8, or 64 hex of seed)."""

    key: SecretRef
    key_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    ttl_seconds: int = Field(default=300, ge=1, le=86_400)


class Instance(Strict):
    id: str = Field(default="assay-relay", pattern=r"^[A-Za-z0-9._:-]{1,128}$")
    environment: str = ""
    owner: str = ""
    answer_signing: AnswerSigning | None = None


class RelayServerConfig(ServerConfig):
    """The core server block with the relay's own port and request bounds."""

    bind: str = "127.0.0.1:8480"
    openapi_requires_auth: bool = True
    max_query_bytes: int = Field(default=4096, ge=256, le=64 * 1024)
    max_filters: int = Field(default=20, ge=1, le=32)
    max_in_values: int = Field(default=100, ge=1, le=500)
    max_value_chars: int = Field(default=256, ge=8, le=4096)
    max_cursor_chars: int = Field(default=256, ge=64, le=1024)
    max_source_bytes: int = Field(default=512 * MiB, ge=1, le=64 * 1024 * MiB)


class ApiKey(Strict):
    """An API key: its fingerprint lives in a secret store, its commitment here."""

    id: str = Field(pattern=ID)
    fingerprint: SecretRef
    commitment: str = Field(pattern=r"^commit:sha256:[0-9a-f]{64}$")
    scopes: list[str] = Field(min_length=1, max_length=64)


class RelayAuthConfig(Strict):
    """One mode at a time: ``api_key`` (the default: core tokens and API keys) or
    ``oidc`` (bearer JWTs from one OpenID Connect provider, and nothing else)."""

    mode: Literal["api_key", "oidc"] = "api_key"
    token_file: SecretRef | None = None
    api_keys: list[ApiKey] = Field(default_factory=list, max_length=1024)
    oidc: OidcConfig | None = None

    @model_validator(mode="after")
    def _some_credential(self) -> RelayAuthConfig:
        if self.mode == "oidc":
            if self.oidc is None:
                raise ValueError("auth.mode oidc needs an auth.oidc section")
            if self.token_file is not None or self.api_keys:
                raise ValueError(
                    "auth.mode oidc accepts only the provider's tokens: remove token_file "
                    "and api_keys (one auth mode at a time)"
                )
            return self
        if self.oidc is not None:
            raise ValueError("auth.oidc is set but auth.mode is not oidc")
        if self.token_file is None and not self.api_keys:
            raise ValueError("configure token_file, api_keys or both")
        return self


class RowBudgets(Strict):
    """Where spent budgets are kept (durably: a restart must not reset one) and the default."""

    state_dir: str = Field(min_length=1)
    default: RowBudget | None = None


class LoggingSection(Strict):
    journald: bool | None = None
    level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")


class RelayConfig(Strict):
    instance: Instance = Instance()
    server: RelayServerConfig = RelayServerConfig()
    catalog: Catalog
    auth: RelayAuthConfig
    audit: AuditConfig
    datasets: list[Dataset] = Field(min_length=1, max_length=256)
    row_budgets: RowBudgets | None = None
    logging: LoggingSection = LoggingSection()
    #: The deployment profile, evidence and waivers (``docs/posture.md``); absent = local.
    deployment: DeploymentSection = DeploymentSection()
    #: The admin listener (``/metrics``, table reload); absent = off (``assay.core.admin``).
    admin: AdminConfig | None = None

    def row_budget(self, entity: Entity) -> RowBudget | None:
        """The entity's budget: its own, else the default, else none."""
        if entity.row_budget is not None:
            return entity.row_budget
        return self.row_budgets.default if self.row_budgets is not None else None


def _dupes(values: list[str]) -> set[int]:
    seen: set[str] = set()
    out: set[int] = set()
    for i, v in enumerate(values):
        if v in seen:
            out.add(i)
        seen.add(v)
    return out


def _check_filters(
    filters: list[AllowedFilter], types: dict[str, str], at: str, problems: list[str]
) -> None:
    for k in _dupes([f.field for f in filters]):
        problems.append(f"{at}[{k}].field: duplicate filter field {filters[k].field!r}")
    for k, flt in enumerate(filters):
        if flt.field not in types:
            problems.append(f"{at}[{k}].field: no field {flt.field!r}")
            continue
        if len(set(flt.ops)) != len(flt.ops):
            problems.append(f"{at}[{k}].ops: duplicate op")
        if types[flt.field] == "boolean" and RANGE_OPS & set(flt.ops):
            problems.append(f"{at}[{k}].ops: range ops on boolean field {flt.field!r}")


def _check_dataset(ds: Dataset, at: str, problems: list[str]) -> None:
    for label, ids in (
        ("tables", [t.id for t in ds.tables]),
        ("entities", [e.name for e in ds.entities]),
        ("aggregates", [a.id for a in ds.aggregates]),
    ):
        for i in _dupes(ids):
            problems.append(f"{at}.{label}[{i}]: duplicate id {ids[i]!r}")
    columns: dict[str, dict[str, str]] = {}
    for i, t in enumerate(ds.tables):
        tat = f"{at}.tables[{i}]"
        names = [c.name for c in t.columns]
        for j in _dupes(names):
            problems.append(f"{tat}.schema[{j}].name: duplicate column {names[j]!r}")
        if t.primary_key not in names:
            problems.append(f"{tat}.primary_key: no column {t.primary_key!r} in schema")
        fmt = t.source.resolved_format()
        if fmt is None:
            problems.append(f"{tat}.source.format: cannot infer from {t.source.path!r}")
        elif fmt == "xlsx" and t.source.xlsx is None:
            problems.append(f"{tat}.source.xlsx: an XLSX source needs xlsx.sheet")
        elif fmt != "xlsx" and t.source.xlsx is not None:
            problems.append(f"{tat}.source.xlsx: only for XLSX sources, this one is {fmt}")
        columns[t.id] = {c.name: c.type for c in t.columns}
    entity_types: dict[str, dict[str, str]] = {}
    columns_of: dict[str, dict[str, str]] = {}
    for i, e in enumerate(ds.entities):
        eat = f"{at}.entities[{i}]"
        cols = columns.get(e.table)
        if cols is None:
            problems.append(f"{eat}.table: no table {e.table!r} in {at}.tables")
            continue
        names = [f.name for f in e.fields]
        for j in _dupes(names):
            problems.append(f"{eat}.fields[{j}].name: duplicate field {names[j]!r}")
        types: dict[str, str] = {}
        for j, f in enumerate(e.fields):
            if f.column not in cols:
                problems.append(f"{eat}.fields[{j}].from: no column {f.column!r} in {e.table!r}")
            else:
                types[f.name] = cols[f.column]
        entity_types[e.name] = types
        columns_of[e.name] = {f.name: f.column for f in e.fields if f.name in types}
        _check_filters(e.allowed_filters, types, f"{eat}.allowed_filters", problems)
        allowed = {f.field for f in e.allowed_filters}
        for j, name in enumerate(e.required_filters):
            if name not in allowed:
                problems.append(f"{eat}.required_filters[{j}]: {name!r} is not an allowed filter")
    for i, a in enumerate(ds.aggregates):
        aat = f"{at}.aggregates[{i}]"
        types_or_none = entity_types.get(a.source_entity)
        if types_or_none is None:
            problems.append(f"{aat}.source_entity: no entity {a.source_entity!r}")
            continue
        types = types_or_none
        e_name = a.source_entity
        for j in _dupes(a.dimensions):
            problems.append(f"{aat}.dimensions[{j}]: duplicate dimension")
        for j, dim in enumerate(a.dimensions):
            if dim not in types:
                problems.append(f"{aat}.dimensions[{j}]: no field {dim!r} in {a.source_entity!r}")
        for j in _dupes([ind.id for ind in a.indicators]):
            problems.append(f"{aat}.indicators[{j}].id: duplicate indicator")
        dim_columns = {columns_of[e_name][d] for d in a.dimensions if d in columns_of[e_name]}
        for j, ind in enumerate(a.indicators):
            if ind.field is None:
                continue
            if ind.field not in types:
                problems.append(f"{aat}.indicators[{j}].field: no field {ind.field!r}")
            elif ind.function != "count" and types[ind.field] not in NUMERIC:
                problems.append(f"{aat}.indicators[{j}].field: {ind.field!r} is not numeric")
            elif columns_of[e_name].get(ind.field) in dim_columns:
                # Every row of a cell carries its key: the key would be the average, and
                # the sum would be the key times the count, masked or not.
                problems.append(
                    f"{aat}.indicators[{j}].field: {ind.field!r} reads a dimension's column; "
                    "the published key would give its masked values back"
                )
        _check_filters(a.allowed_filters, types, f"{aat}.allowed_filters", problems)
        for j, flt in enumerate(a.allowed_filters):
            if flt.field in types and flt.field not in a.dimensions:
                problems.append(
                    f"{aat}.allowed_filters[{j}].field: {flt.field!r} is not a dimension; "
                    "a filter on another field would split cells and allow differencing"
                )


def _check_postgres(ds: Dataset, at: str, problems: list[str]) -> None:
    """A Postgres table refreshes by its change token; a live one serves only entities
    that expose their key (live pages are in key order; the keyed order of hidden-key
    entities needs a snapshot) and no aggregates (one grouping per population is checked
    by content, which a live table does not have)."""
    live: set[str] = set()
    for i, t in enumerate(ds.tables):
        pg = t.source.postgres
        if pg is None:
            continue
        if pg.mode == "live":
            live.add(t.id)
        elif t.refresh.mode == "mtime" and pg.change_token_sql is None:
            problems.append(
                f"{at}.tables[{i}].refresh.mode: mtime on a postgres source needs "
                "source.postgres.change_token_sql (or use interval or manual)"
            )
    entities = {e.name: e for e in ds.entities}
    tables = {t.id: t for t in ds.tables}
    for j, e in enumerate(ds.entities):
        if e.table in live and tables[e.table].primary_key not in {f.column for f in e.fields}:
            problems.append(
                f"{at}.entities[{j}].table: {e.table!r} is live; an entity over it must "
                "expose the primary key (live pages are in key order)"
            )
    for j, agg in enumerate(ds.aggregates):
        ent = entities.get(agg.source_entity)
        if ent is not None and ent.table in live:
            problems.append(
                f"{at}.aggregates[{j}].source_entity: table {ent.table!r} is live; "
                "aggregates need a snapshot (disclosure checks are by content)"
            )


def _check_entity_access(cfg: RelayConfig, ds: Dataset, at: str, problems: list[str]) -> set[str]:
    """The scopes of entities with access of their own; a budget needs a state dir."""
    scopes: set[str] = set()
    for j, ent in enumerate(ds.entities):
        if ent.access is not None:
            scopes |= {ent.access.metadata_scope, ent.access.read_scope, ent.access.aggregate_scope}
        if ent.row_budget is not None and cfg.row_budgets is None:
            problems.append(
                f"{at}.entities[{j}].row_budget: needs row_budgets.state_dir, where spent "
                "budgets are kept across restarts"
            )
    return scopes


def check_references(cfg: RelayConfig) -> list[str]:
    """Every broken cross-reference as ``path: problem`` (empty when the config is sound)."""
    problems: list[str] = []
    ids = [d.id for d in cfg.datasets]
    for i in _dupes(ids):
        problems.append(f"datasets[{i}].id: duplicate dataset id {ids[i]!r}")
    scopes: set[str] = set()
    aggregated_sources: dict[str, str] = {}
    for i, ds in enumerate(cfg.datasets):
        at = f"datasets[{i}]"
        _check_dataset(ds, at, problems)
        _check_postgres(ds, at, problems)
        scopes |= {ds.access.metadata_scope, ds.access.read_scope, ds.access.aggregate_scope}
        scopes |= _check_entity_access(cfg, ds, at, problems)
        tables = {t.id: t for t in ds.tables}
        entities = {e.name: e for e in ds.entities}
        for j, agg in enumerate(ds.aggregates):
            entity = entities.get(agg.source_entity)
            table = tables.get(entity.table) if entity else None
            if table is None:
                continue
            source = table.source.spelling()
            where = f"{at}.aggregates[{j}]"
            if source in aggregated_sources:
                # Two groupings of one population let a caller difference their totals.
                # This is the pure first line, by spelling; settings and snapshot compare
                # what the files are and hold (assay.relay.population) when they can.
                problems.append(
                    f"{where}.source_entity: source {source!r} is already "
                    f"aggregated by {aggregated_sources[source]}; two groupings of one "
                    "population let a caller recover suppressed cells by subtraction"
                )
            aggregated_sources.setdefault(source, where)
    problems += admin_config.conflicts(cfg.admin, cfg.server.bind, cfg.server.unix_socket)
    if cfg.admin is not None:
        scopes |= ADMIN_SCOPES  # an operator's key may hold admin:* once there is a listener
    key_ids = [k.id for k in cfg.auth.api_keys]
    for i in _dupes(key_ids):
        problems.append(f"auth.api_keys[{i}].id: duplicate key id {key_ids[i]!r}")
    for i, key in enumerate(cfg.auth.api_keys):
        for j, scope in enumerate(key.scopes):
            if scope not in scopes:
                problems.append(
                    f"auth.api_keys[{i}].scopes[{j}]: no dataset or entity uses {scope!r}"
                )
    if cfg.auth.oidc is not None:
        problems += scope_map_problems(cfg.auth.oidc, scopes)
    return problems


def aggregate_sources(cfg: RelayConfig) -> list[tuple[str, str, str]]:
    """``(aggregate path, dataset id, table id)`` for every aggregate, in config order."""
    out: list[tuple[str, str, str]] = []
    for i, ds in enumerate(cfg.datasets):
        entities = {e.name: e for e in ds.entities}
        for j, agg in enumerate(ds.aggregates):
            entity = entities.get(agg.source_entity)
            if entity is not None:
                out.append((f"datasets[{i}].aggregates[{j}]", ds.id, entity.table))
    return out


def config_error(source: str, problems: list[str]) -> ConfigError:
    return ConfigError(
        f"{source}: " + "; ".join(problems),
        path=problems[0].split(":", 1)[0],
        paths=[p.split(":", 1)[0] for p in problems],
        reasons=problems,
    )


def parse_config(text: str | bytes, *, source: str = "<config>") -> RelayConfig:
    """Parse and fully validate one relay config; every problem names its dotted path."""
    cfg = validate(RelayConfig, load_yaml(text, source=source), source=source)
    problems = check_references(cfg)
    if problems:
        raise config_error(source, problems)
    return cfg
