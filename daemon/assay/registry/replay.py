"""Startup replay, decided record by record (pure): which records can change the registry,
what each one changes given the row as it stands, and how far the replay mark may move.

Why pure: replay is the one place where the audit log writes the database, so what it
may do is decided here over values, and ``reconcile.py`` only reads records and applies
the changes this module names. Reads never reach the database: only the actions in
``MUTATION_ACTIONS`` are considered, whatever else the log holds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from assay.registry.model import Artifact

#: The actions whose records the registry writes before it changes a row (``base.py``).
STATE_ACTIONS = frozenset({"artifact.promote", "artifact.revoke", "artifact.delete"})
#: Integrity changes: "failed" is recorded as a deny (serving blocked), so these count
#: by action, not by decision.
INTEGRITY_ACTIONS: Mapping[str, str] = {
    "artifact.integrity_failed": "failed",
    "artifact.integrity_restored": "ok",
}
MUTATION_ACTIONS = frozenset(
    {"artifact.ingest", "artifact.approve", *STATE_ACTIONS, *INTEGRITY_ACTIONS}
)
VOID_ACTION = "audit.void"


def is_mutation(rec: Mapping[str, Any]) -> bool:
    """Could replaying ``rec`` change a row? False for every read, allowed or not."""
    action = rec.get("action")
    # Step RP-1 (action): only the registry's own mutation actions; reads such as
    # artifact.resolve, artifact.fetch, artifact.verify or http.request never qualify.
    if action not in MUTATION_ACTIONS:
        return False
    # Step RP-2 (shape): a sealed record with a seq and a digest target.
    if not isinstance(rec.get("seq"), int) or not isinstance(rec.get("target"), str):
        return False
    # Step RP-3 (decision): an allowed change, or an integrity change (recorded as deny).
    return action in INTEGRITY_ACTIONS or rec.get("decision") == "allow"


def voided_seq(rec: Mapping[str, Any]) -> int | None:
    """The seq an ``audit.void`` record cancels (its change failed while running)."""
    if rec.get("action") != VOID_ACTION:
        return None
    extra = rec.get("extra")
    seq = extra.get("voids_seq") if isinstance(extra, Mapping) else None
    return seq if isinstance(seq, int) else None


# -- the changes replay can make -----------------------------------------------------------


@dataclass(frozen=True)
class Insert:
    artifact: Artifact


@dataclass(frozen=True)
class SetState:
    """A transition; a promote also stores the promoter's approval and signatures."""

    to_state: str
    action: str
    principal: str | None
    reasons: tuple[str, ...]
    approval: tuple[str, tuple[tuple[str, str], ...]] | None
    remove_bytes: bool


@dataclass(frozen=True)
class Approve:
    principal: str
    signatures: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SetIntegrity:
    integrity: str
    principal: str | None


Change = Insert | SetState | Approve | SetIntegrity


def change_for(
    rec: Mapping[str, Any], current: Artifact | None, object_present: Callable[[str], bool]
) -> Change | None:
    """What applying mutation record ``rec`` to the row ``current`` changes, if anything.

    Idempotent by construction: a change the row already reflects yields None, so a
    record applied before the crash is never applied twice.
    """
    action, digest = str(rec["action"]), str(rec["target"])
    # Step RC-1 (ingest): a first registration, only if the row does not exist.
    if action == "artifact.ingest":
        if current is not None or rec.get("from_state") is not None or not rec.get("to_state"):
            return None
        return Insert(_ingested(rec, digest, object_present(digest)))
    if current is None:
        return None
    # Step RC-2 (transition): only from the state the record left.
    if action in STATE_ACTIONS:
        if current.state != rec.get("from_state"):
            return None
        principal = rec.get("principal")
        approval = None
        if action == "artifact.promote" and isinstance(principal, str) and principal:
            approval = (principal, signatures_of(rec))
        to_state = str(rec["to_state"])
        return SetState(
            to_state=to_state,
            action=action.removeprefix("artifact."),
            principal=principal if isinstance(principal, str) else None,
            reasons=tuple(str(r) for r in rec.get("reasons", [])),
            approval=approval,
            remove_bytes=to_state == "deleted",
        )
    # Step RC-3 (approval): once per principal.
    if action == "artifact.approve":
        principal = rec.get("principal")
        if not isinstance(principal, str) or principal in current.approvers:
            return None
        return Approve(principal, signatures_of(rec))
    # Step RC-4 (integrity): only if the row says otherwise.
    target = INTEGRITY_ACTIONS.get(action)
    if target is not None and current.integrity != target:
        principal = rec.get("principal")
        return SetIntegrity(target, principal if isinstance(principal, str) else None)
    return None


def _ingested(rec: Mapping[str, Any], digest: str, present: bool) -> Artifact:
    extra = rec.get("extra", {})
    return Artifact(
        digest=digest,
        name=str(extra["name"]),
        size=int(extra["size"]),
        format=str(extra["format"]),
        format_details=json.loads(extra.get("format_details", "{}")),
        metadata=json.loads(extra.get("metadata", "{}")),
        state=str(rec["to_state"]),
        integrity="ok" if present else "failed",
        created_at=str(rec["ts"]),
        updated_at=str(rec["ts"]),
        uploaded_by=str(rec.get("principal") or ""),
        state_changed_at=str(rec["ts"]),
    )


def signatures_of(rec: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Publisher signatures an approval carried (``extra.signatures``, public data)."""
    raw = rec.get("extra", {}).get("signatures")
    if not isinstance(raw, str):
        return ()
    return tuple((str(k), str(v)) for k, v in json.loads(raw))


# -- the mark ------------------------------------------------------------------------------


class InFlight:
    """Mutations whose record may be durable while their row change is not settled yet.

    The replay mark is the seq up to which every mutation record is settled (applied, or
    voided, or never written), so startup need not read the log before it. A mutation is
    opened before its record is appended, at a lower bound of its seq (the head then,
    plus one), learns its real seq once durable, and closes once its row change commits
    or its void is durable. ``safe_mark(head)`` is then below every open mutation.

    Why a lower bound: the record's seq is assigned in the writer's thread, after the
    mutation opened; any seq it gets is above the head read when it opened.
    """

    def __init__(self) -> None:
        self._open: dict[int, int] = {}
        self._next = 0

    def open(self, head_seq: int) -> int:
        self._next += 1
        self._open[self._next] = head_seq + 1
        return self._next

    def recorded(self, token: int, seq: int) -> None:
        self._open[token] = seq

    def close(self, token: int) -> None:
        self._open.pop(token, None)

    def safe_mark(self, head_seq: int) -> int:
        """Read ``head_seq`` first, then call: every mutation at or below the answer is
        settled."""
        lowest = min(self._open.values(), default=head_seq + 1)
        return min(head_seq, lowest - 1)

    def __len__(self) -> int:
        return len(self._open)
