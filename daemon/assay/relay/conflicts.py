"""No credential both aggregates a population and reads its rows. Pure.

Why: suppression hides a small cell from callers who see only the aggregate. A
credential that may also read records of an entity over the same rows counts them: the
example's ``resident`` view (it exposes ``sex``, requires a ``municipality`` filter)
gave back every suppressed (municipality, sex) cell of ``people_by_municipality`` for a
few rows each, and any readable entity over those rows gives back at least the grand
total, which minus the published cells is the sum of the suppressed ones. So the rule
is broader than "an entity that exposes a dimension": a credential may hold aggregate
access to an aggregate or read access to entities over its population, not both.

*Aggregate access* is what the aggregate route needs (the dataset's ``aggregate_scope``
and, where the source entity has ``access``, its own); *read access* is what the records
route needs (the dataset's ``read_scope`` and the entity's own). *Over its population*
is the aggregate's own table, another table over the same file (path or file identity),
or, for API keys, a table that the population check (``assay.relay.population``) finds
to be the same rows once loaded.

Enforced where it can be: API keys are declared in the config with their scopes, so a
conflicting key stops startup (and ``check-config``), by path and file at load and by
content once the sources are read, and a reload that would create one is refused. An
``auth.oidc.scope_map`` entry is a credential shape the config declares too: one provider
scope mapped onto both accesses over one population is refused the same way.
Bearer tokens live in the token file, not the config: every request to an aggregate is
refused (403 ``auth.scope_conflict``) for a credential that also reads the aggregate's
table, another table over the same file, any live table (its rows cannot be compared,
so it is taken to be the population: ``settings.population_readers``), or, beside an
aggregate over a database, any other database source; a file copy under another path
is caught for API keys only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from assay.relay.access import required
from assay.relay.config import Aggregate, Dataset, Entity, RelayConfig

TableKey = tuple[str, str]  # (dataset id, table id)


@dataclass(frozen=True)
class Conflict:
    """A credential the config declares (an API key, a ``scope_map`` entry) with aggregate
    access to ``aggregate`` and read access to ``entity``; a problem if the entity's
    table is the aggregate's population."""

    key: str  # config path of the credential: auth.api_keys[i], auth.oidc.scope_map['x']
    key_id: str
    aggregate: str  # config path: datasets[i].aggregates[j]
    aggregate_name: str  # dataset.aggregate
    aggregate_table: TableKey
    entity: str  # config path: datasets[i].entities[j]
    entity_name: str  # dataset.entity
    entity_table: TableKey


def aggregate_access(scopes: frozenset[str], ds: Dataset, agg: Aggregate) -> bool:
    source = next((e for e in ds.entities if e.name == agg.source_entity), None)
    return set(required("aggregate", ds, source)) <= scopes


def read_access(scopes: frozenset[str], ds: Dataset, entity: Entity) -> bool:
    return set(required("read", ds, entity)) <= scopes


def _aggregates(cfg: RelayConfig) -> list[tuple[str, Dataset, Aggregate, TableKey]]:
    out = []
    for i, ds in enumerate(cfg.datasets):
        tables = {e.name: e.table for e in ds.entities}
        for j, agg in enumerate(ds.aggregates):
            if agg.source_entity in tables:
                out.append((f"datasets[{i}].aggregates[{j}]", ds, agg,
                            (ds.id, tables[agg.source_entity])))  # fmt: skip
    return out


def _entities(cfg: RelayConfig) -> list[tuple[str, Dataset, Entity]]:
    return [
        (f"datasets[{i}].entities[{j}]", ds, e)
        for i, ds in enumerate(cfg.datasets)
        for j, e in enumerate(ds.entities)
    ]


SCOPE_MAP_AT = "auth.oidc.scope_map"


def credentials(cfg: RelayConfig) -> list[tuple[str, str, frozenset[str]]]:
    """Every scope set the config itself grants as one: ``(path, id, scopes)`` of each API
    key and of each ``scope_map`` entry (one provider scope grants all it maps to)."""
    out = [(f"auth.api_keys[{k}]", key.id, frozenset(key.scopes))
           for k, key in enumerate(cfg.auth.api_keys)]  # fmt: skip
    if cfg.auth.oidc is not None:
        # By index: a provider scope may hold a ':' (the path ends at the first one).
        mapped = enumerate(cfg.auth.oidc.scope_map.items())
        out += [(f"{SCOPE_MAP_AT}[{i}]", external[:64], frozenset(scopes))
                for i, (external, scopes) in mapped]  # fmt: skip
    return out


def candidates(cfg: RelayConfig) -> list[Conflict]:
    """Every (credential, aggregate it may ask, entity it may read): population not judged."""
    aggregates, entities = _aggregates(cfg), _entities(cfg)
    out: list[Conflict] = []
    for at, cred_id, scopes in credentials(cfg):
        for a_at, a_ds, agg, a_table in aggregates:
            if not aggregate_access(scopes, a_ds, agg):
                continue
            for e_at, e_ds, ent in entities:
                if read_access(scopes, e_ds, ent):
                    out.append(Conflict(at, cred_id, a_at, f"{a_ds.id}.{agg.id}",
                                        a_table, e_at, f"{e_ds.id}.{ent.name}",
                                        (e_ds.id, ent.table)))  # fmt: skip
    return out


def problem(c: Conflict, why: str) -> str:
    """``path: problem`` for a conflicting credential; ``why`` says how the tables are one."""
    if c.key.startswith(SCOPE_MAP_AT):
        at, who = c.key, f"the provider scope {c.key_id!r} maps to scopes that"
    else:
        at, who = f"{c.key}.scopes", f"key {c.key_id!r}"
    return (
        f"{at}: {who} may ask the aggregate {c.aggregate_name} "
        f"({c.aggregate}) and read the entity {c.entity_name} ({c.entity}), which reads "
        f"{why}: a credential that reads a population's rows counts the cells its "
        "aggregate suppresses, so give aggregates and record reads to different keys "
        "(or provider scopes)"
    )


def problems(cfg: RelayConfig, same: Callable[[TableKey, TableKey], str | None]) -> list[str]:
    """Every conflicting key whose tables ``same`` already judges one population (by
    table, path or file); the rest are left to the content check (``undecided``)."""
    out: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for c in candidates(cfg):
        why = same(c.aggregate_table, c.entity_table)
        if why is not None and (c.key, c.aggregate, c.entity) not in seen:
            seen.add((c.key, c.aggregate, c.entity))
            out.append(problem(c, why))
    return out


def undecided(cfg: RelayConfig, same: Callable[[TableKey, TableKey], str | None]) -> list[Conflict]:
    """The candidate conflicts on two distinct files: judged once their contents load."""
    return [c for c in candidates(cfg) if same(c.aggregate_table, c.entity_table) is None]


def readers(
    cfg: RelayConfig, same: Callable[[TableKey, TableKey], str | None]
) -> dict[tuple[str, str], tuple[tuple[str, str], ...]]:
    """Per aggregate ``(dataset, id)``, the entities ``(dataset, name)`` over its table or
    its file: what a request-time check refuses alongside it, for any credential."""
    out: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
    entities = _entities(cfg)
    for _at, a_ds, agg, a_table in _aggregates(cfg):
        out[(a_ds.id, agg.id)] = tuple(
            (e_ds.id, ent.name)
            for _e_at, e_ds, ent in entities
            if same(a_table, (e_ds.id, ent.table)) is not None
        )
    return out


def conflicting(
    scopes: frozenset[str],
    datasets: Sequence[Dataset],
    over: Sequence[tuple[str, str]],
) -> tuple[str, str] | None:
    """The first entity of ``over`` these scopes may read, or None."""
    by_id = {d.id: d for d in datasets}
    for ds_id, name in over:
        ds = by_id[ds_id]
        entity = next(e for e in ds.entities if e.name == name)
        if read_access(scopes, ds, entity):
            return ds_id, name
    return None
