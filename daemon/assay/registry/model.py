"""The registry's value types: an artifact row, and the in-memory table reads serve from.

Pure (no I/O): the database adapter (``db.py``) builds these, the service keeps the
current view in an ``ArtifactTable``, and listing pages through it by a stable order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class StatLike(Protocol):
    """What ``os.stat_result`` offers that a fingerprint compares (pure: no ``os``)."""

    @property
    def st_dev(self) -> int: ...
    @property
    def st_ino(self) -> int: ...
    @property
    def st_size(self) -> int: ...
    @property
    def st_mtime_ns(self) -> int: ...
    @property
    def st_ctime_ns(self) -> int: ...


@dataclass(frozen=True)
class Fingerprint:
    """Which file a full hash vouched for, as ``fstat`` saw it then: ``(dev, inode, size,
    mtime_ns, ctime_ns)``, and when (``verified_at``, not compared).

    Why these five: a write changes mtime and ctime, a rename or a copy over the name
    changes the inode, ``utime`` can set mtime back but sets ctime to now, and no call
    from user space sets ctime back. So a file whose fingerprint still matches has not
    been changed since the hash, short of root or the daemon's own user resetting the
    clock or the disk (THREAT_MODEL.md, residual risks).
    """

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    verified_at: str = field(default="", compare=False)

    @classmethod
    def of(cls, st: StatLike, verified_at: str) -> Fingerprint:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, verified_at)

    def matches(self, st: StatLike) -> bool:
        """Step FP-1: every field equal, or the file may have changed since its hash."""
        return self.dev == st.st_dev and not self.file_changed(st)

    def file_changed(self, st: StatLike) -> bool:
        """Step FP-2: the inode, size, mtime or ctime differ: the file itself changed or
        was replaced. Only the device number differing is a remount (some file systems
        number their devices anew at each mount), not a change of the file."""
        return (self.ino, self.size, self.mtime_ns, self.ctime_ns) != (
            st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
        )  # fmt: skip


@dataclass(frozen=True)
class Artifact:
    digest: str
    name: str
    size: int
    format: str
    format_details: dict[str, Any]
    metadata: dict[str, str]
    state: str
    integrity: str
    created_at: str
    updated_at: str
    uploaded_by: str
    state_changed_at: str
    last_verified_at: str | None = None
    approvers: frozenset[str] = field(default_factory=frozenset)
    #: The file the last full hash vouched for (None: never recorded, e.g. replayed).
    fingerprint: Fingerprint | None = None

    def public(self) -> dict[str, Any]:
        """The JSON shape clients see."""
        return {
            "digest": self.digest,
            "name": self.name,
            "size": self.size,
            "format": self.format,
            "format_details": self.format_details,
            "metadata": self.metadata,
            "state": self.state,
            "integrity": self.integrity,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "state_changed_at": self.state_changed_at,
            "uploaded_by": self.uploaded_by,
            "last_verified_at": self.last_verified_at,
            "approvals": sorted(self.approvers),
        }


class ArtifactTable(Mapping[str, Artifact]):
    """Digest -> artifact, plus the listing order: the order rows became visible.

    Why visibility order and not ``created_at``: an upload's ``created_at`` is set before
    its record and row are written, and concurrent uploads commit in another order, so a
    walk by ``created_at`` could page past an upload that becomes visible behind its
    cursor and never show it. Rows are never removed (soft delete keeps metadata), so
    the order only grows, at the end; the database keeps it too (``rowid``), and a
    restart loads rows in that order.

    Digest prefixes: rows are also bucketed by the first ``PREFIX_BUCKET`` hex digits of
    their digest, in listing order, so a prefix of at least that many digits is answered
    from one bucket (about n / 65536 rows), not a walk of the whole table.
    """

    def __init__(self, rows: Mapping[str, Artifact] | None = None) -> None:
        self._rows: dict[str, Artifact] = dict(rows or {})
        self._order: list[str] = list(self._rows)
        self._index: dict[str, int] = {d: i for i, d in enumerate(self._order)}
        self._buckets: dict[str, list[str]] = {}
        for digest in self._order:
            self._buckets.setdefault(_bucket(digest), []).append(digest)

    def __getitem__(self, digest: str) -> Artifact:
        return self._rows[digest]

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __setitem__(self, digest: str, art: Artifact) -> None:
        if digest not in self._index:
            self._index[digest] = len(self._order)
            self._order.append(digest)
            self._buckets.setdefault(_bucket(digest), []).append(digest)
        self._rows[digest] = art

    def page(
        self,
        *,
        after: str | None,
        limit: int,
        keep: Callable[[Artifact], bool],
        digest_prefix: str | None = None,
    ) -> tuple[list[Artifact], str | None]:
        """Up to ``limit`` rows that ``keep`` accepts, in listing order, after the row
        with digest ``after``; and the cursor for the next page (None at the end).

        ``digest_prefix`` (``sha256:`` and at least ``PREFIX_BUCKET`` hex digits) keeps
        only the rows whose digest starts with it."""
        start = 0 if after is None else self._index[after] + 1
        rows: Iterator[str]
        if digest_prefix is None:
            rows = (self._order[i] for i in range(start, len(self._order)))
        else:
            assert len(digest_prefix) >= len(_SCHEME) + PREFIX_BUCKET, digest_prefix
            bucket = self._buckets.get(_bucket(digest_prefix), [])  # in listing order
            rows = (d for d in bucket if d.startswith(digest_prefix) and self._index[d] >= start)
        out: list[Artifact] = []
        for digest in rows:
            art = self._rows[digest]
            if keep(art):
                if len(out) == limit:
                    return out, out[-1].digest
                out.append(art)
        return out, None


#: Hex digits a digest prefix must have (and that bucket the table): git's minimum.
PREFIX_BUCKET = 4
_SCHEME = "sha256:"


def _bucket(digest: str) -> str:
    return digest[len(_SCHEME) : len(_SCHEME) + PREFIX_BUCKET]
