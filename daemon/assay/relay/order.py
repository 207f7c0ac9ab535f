"""A keyed row order for entities that expose no key, so row positions link no views. Pure.

Why: two entities over one table, both answered in source order, line up row by row. An
identified view (``person``: id, national id, municipality) and an anonymous one
(``resident``: municipality, income) filtered alike would give the i-th person and the
i-th resident as the same human, and the anonymous view's whole point, that no answer
links an identifier to its values, would be gone through sort order alone.

So an entity whose primary key is not one of its fields is answered in a secret order:
row ``i``'s position is given by 8 bytes of a SHAKE-256 stream keyed by the relay's key,
the dataset, the entity and the snapshot digest (a keyed XOF is a pseudorandom function:
without the key the order says nothing about source positions). It is fixed for one
snapshot (so cursors page it consistently), independent between entities (two anonymous
views do not line up either) and new with every snapshot. An entity that exposes its key
keeps source order: its rows carry their identity anyway.
"""

from __future__ import annotations

import hashlib
import hmac

import pyarrow as pa
import pyarrow.compute as pc

_DOMAIN = b"assay.relay.row-order.v1\x00"


def order_key(master: bytes, dataset: str, entity: str, snapshot: str) -> bytes:
    msg = _DOMAIN + b"\x00".join(s.encode() for s in (dataset, entity, snapshot))
    return hmac.new(master, msg, hashlib.sha256).digest()


def permutation(key: bytes, rows: int) -> pa.Array:
    """Row indices in keyed order: ``take`` them to get the table as this entity sees it."""
    stream = hashlib.shake_256(_DOMAIN + key).digest(8 * rows) if rows else b""
    tags = pa.Array.from_buffers(pa.uint64(), rows, [None, pa.py_buffer(stream)])
    return pc.sort_indices(tags)


def reorder(table: pa.Table, columns: list[str], key: bytes) -> pa.Table:
    """Only ``columns`` (the entity's), in keyed order: the copy holds no other column."""
    return table.select(columns).take(permutation(key, table.num_rows))
