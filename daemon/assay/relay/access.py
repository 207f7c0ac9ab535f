"""Who may know of, and use, which dataset, entity and aggregate: one decision, pure.

Why one module: a caller must learn nothing about names it may not know of. Every
dataset route resolves its names here, before any handler runs, in two steps:

1. *Knowing.* A dataset is known to a credential that holds any of its three scopes; an
   entity with ``access`` of its own is known only to one that also holds any of the
   entity's; an aggregate is known when its source entity is. A name that is not known
   answers exactly like a name that does not exist: one 404 ``resource.not_found`` with
   one fixed detail, whichever part of the path it is, so dataset, entity and aggregate
   ids cannot be probed (nothing in it echoes the name).
2. *Using.* A known name is then checked against the route's scopes: the dataset's
   ``<kind>_scope`` and, where the entity has ``access``, the entity's too (per-entity
   access narrows the dataset's, it never widens it). A missing one is a 403 that names
   the scope: it tells the caller nothing it could not already know.
"""

from __future__ import annotations

from assay.core.errors import NotFound
from assay.relay.config import Access, Dataset, Entity

KINDS = ("metadata", "read", "aggregate")


def _all(access: Access | None) -> frozenset[str]:
    if access is None:
        return frozenset()
    return frozenset({access.metadata_scope, access.read_scope, access.aggregate_scope})


def knows_dataset(scopes: frozenset[str], ds: Dataset) -> bool:
    return bool(scopes & _all(ds.access))


def knows_entity(scopes: frozenset[str], ds: Dataset, entity: Entity) -> bool:
    return knows_dataset(scopes, ds) and (
        entity.access is None or bool(scopes & _all(entity.access))
    )


def lists_entity(scopes: frozenset[str], entity: Entity) -> bool:
    """Shown in a dataset's metadata: no own access, or its own metadata scope is held."""
    return entity.access is None or entity.access.metadata_scope in scopes


def required(kind: str, ds: Dataset, entity: Entity | None) -> tuple[str, ...]:
    """Every scope a route of ``kind`` needs: the dataset's, then the entity's if it has one."""
    assert kind in KINDS
    out = [getattr(ds.access, f"{kind}_scope")]
    if entity is not None and entity.access is not None:
        out.append(getattr(entity.access, f"{kind}_scope"))
    return tuple(out)


def hidden() -> NotFound:
    """The one answer for a name that does not exist or that this credential may not know."""
    return NotFound("nothing by that name is visible to this credential", code="resource.not_found")
