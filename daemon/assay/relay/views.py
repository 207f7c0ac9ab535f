"""Entities as requests see them: precomputed views, and the names a request resolved.

Why its own module: the routes (``app``) and the operations (``service``) share these
shapes, and what a view allows (which fields, which filters, whether ``/records/{id}``
answers) is decided once, at startup, from the config alone. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from assay.core.errors import NotFound
from assay.relay.config import Aggregate, Dataset, Entity, Table
from assay.relay.planner import FieldSpec


@dataclass(frozen=True)
class EntityView:
    """An entity with its lookups precomputed once at startup."""

    dataset: Dataset
    entity: Entity
    table: Table
    fields: tuple[FieldSpec, ...]
    allowed: dict[str, frozenset[str]]
    #: The exposed field that reads the primary key; None when the entity hides it.
    key: FieldSpec | None

    @property
    def by_name(self) -> dict[str, FieldSpec]:
        return {f.name: f for f in self.fields}

    @property
    def lookup(self) -> bool:
        """``/records/{id}`` is answered only where the key is exposed and ``eq``-filterable:
        a lookup is then exactly the records query ``key=id`` (with the required filters),
        so it can reveal nothing that query could not."""
        return self.key is not None and "eq" in self.allowed.get(self.key.name, frozenset())


def entity_view(ds: Dataset, entity: Entity) -> EntityView:
    table = next(t for t in ds.tables if t.id == entity.table)
    types = {c.name: c.type for c in table.columns}
    fields = tuple(FieldSpec(f.name, f.column, types[f.column], f.sensitive) for f in entity.fields)
    allowed: dict[str, frozenset[str]] = {f.field: frozenset(f.ops) for f in entity.allowed_filters}
    key = next((f for f in fields if f.column == table.primary_key), None)
    return EntityView(ds, entity, table, fields, allowed, key)


@dataclass(frozen=True)
class Target:
    """A request's names, resolved for its credential before any handler runs."""

    dataset: Dataset
    view: EntityView | None = None
    aggregate: Aggregate | None = None


def lookup_refused() -> NotFound:
    return NotFound("this entity does not answer lookups by id", code="entity.lookup_not_allowed")
