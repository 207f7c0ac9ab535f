"""The registry's ``on_trusted_change`` hook: awaited after the change is committed and in
memory, before the operation returns, and not cancelled with its caller.

Real registry service and SQLite database, the fake audit log of the replay tests.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.lowlevel
import trio.testing

from assay.core.tokens import Principal
from assay.registry import policy as policy_mod
from assay.registry.model import Artifact
from assay.registry.service import Registry
from assay.registry.states import Action
from assay.registry.store import ObjectStore
from assay.trust.errors import TrustPublishFailed
from tests.unit.test_replay_mark import FakeLog, FlakyDB

ADMIN = Principal("admin", frozenset({"artifacts:revoke", "artifacts:delete"}))


def make(tmp: Path, states: tuple[str, ...]) -> tuple[Registry, FlakyDB]:
    log = FakeLog()
    db = FlakyDB(tmp / "r.db")
    reg = Registry(store=ObjectStore(tmp / "store"), db=db, policy=policy_mod.Policy(name="t"),
                   audit_append=log.append, max_artifact_bytes=1024,
                   audit_head=lambda: log.head)  # fmt: skip
    reg.open_blocking()
    for i, state in enumerate(states):
        art = Artifact(digest=digest(i), name=f"m/{i}", size=1, format="gguf",
                       format_details={}, metadata={}, state=state, integrity="ok",
                       created_at="2026-01-01T00:00:00.000Z", updated_at="2026-01-01T00:00:00.000Z",
                       uploaded_by="u", state_changed_at="2026-01-01T00:00:00.000Z")  # fmt: skip
        db.insert(art, None)
        reg.artifacts[art.digest] = art
    return reg, db


def digest(i: int) -> str:
    return f"sha256:{i + 1:064x}"


async def test_revoke_answers_only_after_the_hook_saw_the_committed_revocation(
    tmp_path: Path,
) -> None:
    reg, db = make(tmp_path, ("trusted",))
    release = trio.Event()
    seen: list[tuple[str, str, str]] = []

    called = trio.Event()

    async def hook(changed: str) -> None:
        seen.append((changed, reg.artifacts[changed].state, db.load_all()[changed].state))
        called.set()
        await release.wait()

    reg.on_trusted_change = hook
    answered: list[str] = []

    async def revoke() -> None:
        out = await reg.transition(ADMIN, digest(0), Action.REVOKE, route="r", request_id="q",
                                   reason="bad")  # fmt: skip
        answered.append(out.artifact.state)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(revoke)
        try:
            with trio.fail_after(30):
                await called.wait()
            await trio.testing.wait_all_tasks_blocked()
            # The hook runs with the revocation committed and in memory; no answer yet.
            assert seen == [(digest(0), "revoked", "revoked")]
            assert answered == []
        finally:
            release.set()
    assert answered == ["revoked"]


async def test_a_caller_that_hangs_up_does_not_cancel_the_publish(tmp_path: Path) -> None:
    reg, _db = make(tmp_path, ("trusted",))
    release = trio.Event()
    finished: list[str] = []

    called = trio.Event()

    async def hook(changed: str) -> None:
        called.set()
        await release.wait()
        await trio.lowlevel.checkpoint()  # a checkpoint after the wait: a cancel would land here
        finished.append(changed)

    reg.on_trusted_change = hook
    async with trio.open_nursery() as nursery:
        caller = trio.CancelScope()

        async def revoke() -> None:
            with caller:
                await reg.transition(ADMIN, digest(0), Action.REVOKE, route="r",
                                     request_id="q", reason="bad")  # fmt: skip

        nursery.start_soon(revoke)
        try:
            with trio.fail_after(30):
                await called.wait()
            caller.cancel()  # the client hangs up while the publish is under way
            await trio.testing.wait_all_tasks_blocked()
        finally:
            release.set()
    assert finished == [digest(0)]


async def test_the_hook_runs_for_changes_of_trusted_artifacts_only(tmp_path: Path) -> None:
    reg, _db = make(tmp_path, ("trusted", "quarantined", "trusted"))
    calls: list[str] = []

    async def hook(changed: str) -> None:
        calls.append(changed)

    reg.on_trusted_change = hook
    await reg.transition(ADMIN, digest(1), Action.REVOKE, route="r", request_id="q",
                         reason="never trusted")  # fmt: skip
    assert calls == []
    await reg.transition(ADMIN, digest(0), Action.DELETE, route="r", request_id="q")
    await reg.transition(ADMIN, digest(2), Action.REVOKE, route="r", request_id="q",
                         reason="bad")  # fmt: skip
    assert calls == [digest(0), digest(2)]


async def test_a_publish_failure_carries_the_changes_record(tmp_path: Path) -> None:
    """The revocation stands (it is recorded and applied); the answer says what failed,
    and its record is the change's own, so the request has exactly one."""
    reg, db = make(tmp_path, ("trusted",))

    async def hook(_changed: str) -> None:
        raise TrustPublishFailed("injected")

    reg.on_trusted_change = hook
    try:
        await reg.transition(ADMIN, digest(0), Action.REVOKE, route="r", request_id="q",
                             reason="bad")  # fmt: skip
    except TrustPublishFailed as err:
        assert err.written_record is not None
        assert err.written_record["action"] == "artifact.revoke"
    else:
        raise AssertionError("the failure was swallowed")
    assert db.load_all()[digest(0)].state == "revoked"
