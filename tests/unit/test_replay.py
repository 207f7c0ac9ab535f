"""Startup replay reads past reads and applies only mutations; its mark advances.

These count operations on a real SQLite database (a counting subclass, not a mock); they
never time anything. The restart benchmark (benchmarks/bench_restart.py) has the curves.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.registry import policy as policy_mod
from assay.registry.db import RegistryDB
from assay.registry.model import Artifact
from assay.registry.reconcile import reconcile
from assay.registry.replay import MUTATION_ACTIONS, InFlight, is_mutation
from assay.registry.service import Registry
from assay.registry.store import ObjectStore

DIGESTS = [f"sha256:{i:064x}" for i in range(1, 6)]
#: Read actions the web edge writes, and actions of other components sharing the chain.
READ_ACTIONS = ["artifact.resolve", "artifact.fetch", "artifact.verify", "artifact.sweep",
                "http.request", "token.create", "relay.query", "audit.recover"]  # fmt: skip


class CountingDB(RegistryDB):
    """The real database, counting the calls replay makes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.calls: Counter[str] = Counter()

    def get(self, digest: str) -> Artifact | None:
        self.calls["get"] += 1
        return super().get(digest)

    def load_all(self) -> dict[str, Artifact]:
        self.calls["load_all"] += 1
        return super().load_all()

    def applied_seqs(self, seqs: list[int]) -> set[int]:
        self.calls["applied_seqs"] += 1
        return super().applied_seqs(seqs)

    def insert(self, art: Artifact, seq: int | None) -> None:
        self.calls["write"] += 1
        super().insert(art, seq)

    def set_state(self, art: Artifact, to_state: str, **kw: Any) -> Artifact:
        self.calls["write"] += 1
        return super().set_state(art, to_state, **kw)


def registry(tmp: Path) -> Registry:
    async def no_append(fields: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("replay must not append")

    reg = Registry(store=ObjectStore(tmp / "store"), db=CountingDB(tmp / "r.db"),
                   policy=policy_mod.Policy(name="t"), audit_append=no_append,
                   max_artifact_bytes=1024)  # fmt: skip
    reg.open_blocking()
    return reg


def ingest(seq: int, digest: str) -> dict[str, Any]:
    return {"seq": seq, "ts": "2026-01-01T00:00:00.000Z", "action": "artifact.ingest",
            "decision": "allow", "target": digest, "from_state": None,
            "to_state": "quarantined", "principal": "up",
            "extra": {"name": "m/x", "size": 8, "format": "safetensors",
                      "metadata": json.dumps({}), "format_details": json.dumps({})}}  # fmt: skip


def read(seq: int, action: str, decision: str, target: str | None) -> dict[str, Any]:
    return {"seq": seq, "ts": "2026-01-01T00:00:00.000Z", "action": action,
            "decision": decision, "target": target, "from_state": None, "to_state": None,
            "principal": "reader", "extra": {}}  # fmt: skip


def source(records: list[dict[str, Any]]) -> Any:
    def records_after(seq: int, anchor: Any = None) -> Iterator[dict[str, Any]]:
        return (r for r in records if r["seq"] > seq)

    return records_after


reads = st.lists(
    st.tuples(
        st.sampled_from(READ_ACTIONS),
        st.sampled_from(["allow", "deny", "error"]),
        st.sampled_from([*DIGESTS, None, "m/name"]),
    ),
    max_size=60,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(before=reads, after=reads, ingested=st.integers(0, len(DIGESTS)))
def test_read_records_are_never_replayed_and_the_mark_advances(
    tmp_path_factory: Any, before: list[Any], after: list[Any], ingested: int
) -> None:
    import trio

    tmp = tmp_path_factory.mktemp("replay")
    reg = registry(tmp)
    db = reg.db
    assert isinstance(db, CountingDB)
    records: list[dict[str, Any]] = []
    for action, decision, target in before:
        records.append(read(len(records) + 1, action, decision, target))
    for digest in DIGESTS[:ingested]:
        records.append(ingest(len(records) + 1, digest))
    for action, decision, target in after:
        records.append(read(len(records) + 1, action, decision, target))
    mutations = sum(is_mutation(r) for r in records)
    assert mutations == ingested  # no read action is a mutation, whatever its decision
    db.calls.clear()

    report = trio.run(lambda: reconcile(reg, source(records)))

    # One row read per unreconciled mutation, none per read; one write per mutation.
    assert db.calls["get"] == ingested
    assert db.calls["write"] == ingested
    assert db.calls["load_all"] == (1 if ingested else 0)
    assert report.scanned == len(records) and report.applied == ingested
    assert db.reconciled_through()[0] == len(records) == reg.replay_mark
    assert set(reg.artifacts) == set(DIGESTS[:ingested])

    # The mark advanced durably: the next start reads nothing and touches no row.
    db.calls.clear()
    again = trio.run(lambda: reconcile(reg, source(records)))
    assert again.scanned == 0 and again.applied == 0
    assert db.calls["get"] == db.calls["write"] == db.calls["applied_seqs"] == 0


def test_mutations_already_committed_cost_one_batched_lookup_and_no_row_reads(
    tmp_path: Path,
) -> None:
    """A crash restart with the mark lagging: the records' changes are in the database
    already, so replay checks their seqs in one query and reads no row."""
    import trio

    reg = registry(tmp_path)
    db = reg.db
    assert isinstance(db, CountingDB)
    records = [ingest(i + 1, d) for i, d in enumerate(DIGESTS)]
    trio.run(lambda: reconcile(reg, source(records)))
    db.set_reconciled_through(0)  # as if the mark had not been saved before the crash
    db.calls.clear()
    report = trio.run(lambda: reconcile(reg, source(records)))
    assert report.mutations == len(DIGESTS) and report.applied == 0
    assert db.calls["applied_seqs"] == 1 and db.calls["get"] == 0 and db.calls["write"] == 0


def test_every_mutation_action_is_replayable_and_nothing_else() -> None:
    for action in MUTATION_ACTIONS:
        assert is_mutation({"seq": 1, "action": action, "decision": "allow", "target": "x"})
    for action in READ_ACTIONS:
        for decision in ("allow", "deny", "error"):
            assert not is_mutation({"seq": 1, "action": action, "decision": decision,
                                    "target": DIGESTS[0]})  # fmt: skip
    # An integrity failure is recorded as a deny and still counts.
    assert is_mutation({"seq": 1, "action": "artifact.integrity_failed", "decision": "deny",
                        "target": DIGESTS[0]})  # fmt: skip
    # A denied state change changed nothing.
    assert not is_mutation({"seq": 1, "action": "artifact.promote", "decision": "deny",
                            "target": DIGESTS[0]})  # fmt: skip


# -- the in-run mark -----------------------------------------------------------------------

ops = st.lists(st.tuples(st.sampled_from(["open", "record", "close", "other"]),
                         st.integers(0, 20)), max_size=200)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(ops)
def test_the_mark_never_passes_an_unsettled_mutation(steps: list[tuple[str, int]]) -> None:
    """Any interleaving of mutations opening, getting their seq, and settling, with other
    records (reads) raising the head meanwhile: the mark stays below every mutation that
    is open, never exceeds the head, and reaches the head once none is open."""
    flight = InFlight()
    head = 0
    opened: dict[int, int | None] = {}  # token -> seq once recorded
    saved = 0
    for op, pick in steps:
        if op == "open":
            opened[flight.open(head)] = None
        elif op == "other":
            head += 1
        elif opened:
            token = sorted(opened)[pick % len(opened)]
            if op == "record" and opened[token] is None:
                head += 1 + pick % 3  # its batch may carry other records too
                # No mark saved so far can cover a mutation that gets its seq now.
                assert head > saved
                opened[token] = head
                flight.recorded(token, head)
            elif op == "close":
                del opened[token]
                flight.close(token)
        mark = flight.safe_mark(head)
        assert mark <= head
        for seq in opened.values():
            assert seq is None or mark < seq
        if not opened:
            assert mark == head
        saved = max(saved, mark)  # the daemon only ever saves a higher mark
    assert len(flight) == len(opened)


def test_bytes_a_killed_delete_left_behind_are_removed_at_start(tmp_path: Path) -> None:
    """kill -9 between a delete's commit and the removal of its bytes: the row says
    deleted, so the next start removes what is still at the object path."""
    import trio

    reg = registry(tmp_path)
    records = [ingest(1, DIGESTS[0]), ingest(2, DIGESTS[1])]
    trio.run(lambda: reconcile(reg, source(records)))
    for digest in DIGESTS[:2]:
        reg.store.path_for(digest).write_bytes(b"left")
    art = reg.db.get(DIGESTS[0])
    assert art is not None
    reg.db.set_state(art, "deleted", action="delete", principal="a", reasons=[], ts="t", seq=3)
    reg.artifacts[art.digest] = reg.db.get(DIGESTS[0])  # type: ignore[assignment]
    trio.run(lambda: reconcile(reg, source(records)))
    assert not reg.store.path_for(DIGESTS[0]).exists()
    assert reg.store.path_for(DIGESTS[1]).exists()  # not deleted: kept
