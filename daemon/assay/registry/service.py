"""The registry: state changes (promote, approve, revoke, delete) over ingest and integrity.

Ordering rule for every mutation (so a crash never leaves a change without its record):
  1. decide with the pure core (transition table, policy) on the cached state;
  2. append the audit record and wait until it is durable;
  3. apply the change in one SQLite transaction that also stores the record's ``seq``;
  4. update the in-memory view the read path serves from.
A crash between 2 and 3 is repaired at startup by ``reconcile``, which re-applies every
mutation record that no database change carries yet (see ``reconcile.py``).
Blocking work runs in ``trio.to_thread``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import trio

from assay.core.tokens import Principal
from assay.formats.errors import FormatRefused
from assay.formats.inspect import inspect_file
from assay.registry import policy as policy_mod
from assay.registry.base import Outcome, now, record_fields
from assay.registry.digests import parse_digest
from assay.registry.errors import PolicyRefused, StoredBytesCorrupt
from assay.registry.ingest import IngestOps
from assay.registry.integrity import IntegrityOps
from assay.registry.model import Artifact
from assay.registry.states import Action, State, next_state
from assay.registry.store import UnusableObject, describe, hash_fd

#: The scope an approver's token must still hold for its approval to count.
PROMOTE_SCOPE = "artifacts:promote"

__all__ = ["Outcome", "Registry", "now"]


class Registry(IngestOps, IntegrityOps):
    """Every registry operation; the groups live in ``ingest.py`` and ``integrity.py``."""

    async def transition(
        self,
        principal: Principal,
        digest: str,
        action: Action,
        *,
        route: str,
        request_id: str,
        reason: str = "",
        signatures: tuple[tuple[str, str], ...] = (),
        status: int = 200,
    ) -> Outcome:
        """Apply ``action``; ``status`` is what the caller answers for the change, kept in
        its record (a compatibility route may answer a promote with 201)."""
        digest = parse_digest(digest)
        async with self._lock(digest):
            art = self.get(digest)
            to_state = next_state(State(art.state), action)
            if action is Action.PROMOTE:
                return await self._promote(principal, art, route, request_id, signatures, status)
            reasons = [reason] if reason else []
            async with self._mutation(
                record_fields(
                    principal,
                    f"artifact.{action.value}",
                    route,
                    request_id,
                    digest,
                    art.state,
                    to_state.value,
                    status,
                    reasons=reasons,
                )
            ) as mutation:
                record = mutation.record
                updated = await self._commit(
                    mutation,
                    self.db.set_state,
                    art,
                    to_state.value,
                    action=action.value,
                    principal=principal.id,
                    reasons=reasons,
                    ts=now(),
                    seq=record["seq"],
                )
                self.artifacts[digest] = updated
            if to_state is State.DELETED:
                await trio.to_thread.run_sync(self.store.remove, digest)
            self._events(
                action.value,
                {
                    "digest": digest,
                    "state": to_state.value,
                    "principal": principal.id,
                    "seq": record["seq"],
                },
            )
            if art.state == State.TRUSTED:
                await self._trusted_changed(digest, record)
            return Outcome(updated, record)

    async def _promote(
        self,
        principal: Principal,
        art: Artifact,
        route: str,
        request_id: str,
        signatures: tuple[tuple[str, str], ...],
        status: int = 200,
    ) -> Outcome:
        # Steps PRO-1 and PRO-2 read one checked fd (``open_object``), so the bytes that
        # are hashed are the bytes that are inspected.
        actual, size, fmt = await trio.to_thread.run_sync(self._rehash_and_inspect, art.digest)
        if actual != art.digest or fmt is None:
            raise await self._corrupt_on_promote(art, actual, principal, route, request_id)
        # Signatures sent with this request count now but are stored only with the
        # approval, after its record is durable: a refused or unrecorded request keeps none.
        stored_sigs = dict(await self._db(self.db.signatures, art.digest)) | dict(signatures)
        # Step PRO-3 (standing): an approval on record counts only while the token that
        # gave it may still approve (not revoked, removed, re-created or stripped of the
        # promote scope). The caller was authenticated and scope-checked just now.
        void: Mapping[str, str] = {}
        if art.approvers - {principal.id} and self.approver_standing is not None:
            given = await self._db(self.db.approvals, art.digest)
            earlier = {who: ts for who, ts in given.items() if who != principal.id}
            void = await trio.to_thread.run_sync(self.approver_standing, earlier, PROMOTE_SCOPE)
        # Step PRO-4 (policy): every rule is evaluated; the caller's approval counts.
        facts = policy_mod.Facts(
            digest=art.digest,
            format=fmt,
            size=size,
            metadata=art.metadata,
            approvers=art.approvers | {principal.id},
            signatures=tuple(sorted(stored_sigs.items())),
            not_counted=tuple(sorted(void.items())),
        )
        decision = policy_mod.evaluate(self.policy, facts)
        if decision.awaiting_approvals:
            # Step PRO-5 (two-person rule): record this approval; the state does not move.
            async with self._mutation(
                record_fields(
                    principal,
                    "artifact.approve",
                    route,
                    request_id,
                    art.digest,
                    art.state,
                    art.state,
                    202,
                    reasons=list(decision.failed),
                    extra={"policy": self.policy.name, **_signature_extra(signatures)},
                )
            ) as mutation:
                record = mutation.record
                updated = await self._commit(
                    mutation, self.db.add_approval, art, principal.id, now(), record["seq"],
                    signatures,
                )  # fmt: skip
                self.artifacts[art.digest] = updated
            self._events(
                "approve",
                {
                    "digest": art.digest,
                    "state": art.state,
                    "principal": principal.id,
                    "seq": record["seq"],
                },
            )
            return Outcome(updated, record, decision=decision)
        if not decision.allowed:
            raise PolicyRefused(
                f"policy {self.policy.name!r} refused promotion: " + "; ".join(decision.failed),
                reasons=list(decision.failed),
                policy=self.policy.name,
            )
        async with self._mutation(
            record_fields(
                principal,
                "artifact.promote",
                route,
                request_id,
                art.digest,
                art.state,
                State.TRUSTED.value,
                status,
                reasons=list(decision.passed),
                extra={
                    "policy": self.policy.name,
                    "approvers": ",".join(sorted(facts.approvers - set(void))),
                    **({"not_counted": ",".join(sorted(void))} if void else {}),
                    **_signature_extra(signatures),
                },
            )
        ) as mutation:
            record = mutation.record
            updated = await self._commit(
                mutation, self.db.promote, art, principal.id, now(), record["seq"],
                signatures, list(decision.passed),
            )  # fmt: skip
            self.artifacts[art.digest] = updated
        self._events(
            "promote",
            {
                "digest": art.digest,
                "state": "trusted",
                "principal": principal.id,
                "seq": record["seq"],
            },
        )
        await self._trusted_changed(art.digest, record)
        return Outcome(updated, record, decision=decision)

    def _rehash_and_inspect(self, digest: str) -> tuple[str, int, str | None]:
        """(actual, size, format); format is None unless the bytes hash to ``digest``."""
        try:
            fd = self.store.open_object(digest)
        except UnusableObject as exc:
            return exc.problem, 0, None
        try:
            # Step PRO-1 (re-hash): the stored bytes still hash to the digest.
            actual, size = hash_fd(fd)
            if actual != digest:
                return actual, size, None
            # Step PRO-2 (re-inspect): the format is judged again from content.
            try:
                inspection = inspect_file(lambda off, length: os.pread(fd, length, off), size)
            except FormatRefused as exc:
                return actual, size, f"refused:{exc.reason}"
            return actual, size, inspection.format
        finally:
            os.close(fd)

    async def _corrupt_on_promote(
        self, art: Artifact, actual: str, principal: Principal, route: str, request_id: str
    ) -> StoredBytesCorrupt:
        """The error for a promote that found the stored bytes unusable; the discovery is
        this request's one record (status and code as answered)."""
        err = StoredBytesCorrupt(f"{art.digest}: {describe(actual)}")
        if art.integrity == "ok":
            _updated, record = await self._integrity_changed(
                art, "failed", actual, principal, route, request_id,
                status=err.status, error_code=err.code,
            )  # fmt: skip
            err.written_record = record
        return err


def _signature_extra(signatures: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Publisher signatures sent with an approval, so replay can restore them (public data)."""
    return {"signatures": json.dumps(sorted(signatures))} if signatures else {}
