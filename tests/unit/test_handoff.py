"""Consumer handoffs on the real registry, store and database (no socket): an fd goes
out only for a trusted, intact object, and only as the file its last full hash read.

Each attack changes the object behind the daemon's back the way a writer could: new
bytes of the same size with the mtime put back (``os.utime``), a replacement file moved
over the name, a chmod, a file too large to re-hash on open. The fingerprint's ctime (or
inode) catches each; the re-hash of the very fd that would be sent decides.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from assay.core.tokens import Principal
from assay.registry import policy as policy_mod
from assay.registry.consumers import OpenRequest
from assay.registry.db import RegistryDB
from assay.registry.errors import NotTrusted, StoredBytesCorrupt
from assay.registry.service import Registry
from assay.registry.states import Action
from assay.registry.store import ObjectStore
from tests.conftest import SAMPLES

DATA = (SAMPLES / "sample.safetensors").read_bytes()
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()
ADMIN = Principal("admin", frozenset({"artifacts:promote", "artifacts:revoke"}))
CONSUMER = Principal("svc", frozenset({"artifacts:read"}), auth_mode="peer")


class Log:
    """The audit appender, in memory: every record, in order."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        record = dict(fields, seq=len(self.records) + 1)
        self.records.append(record)
        return record


class Body:
    def __init__(self, data: bytes) -> None:
        self.rest = memoryview(data)

    async def readinto(self, view: memoryview) -> int:
        n = min(len(view), len(self.rest))
        view[:n] = self.rest[:n]
        self.rest = self.rest[n:]
        return n


async def make(tmp_path: Path, log: Log, data: bytes = DATA) -> Registry:
    reg = Registry(store=ObjectStore(tmp_path / "s"), db=RegistryDB(tmp_path / "r.db"),
                   policy=policy_mod.Policy(name="t"), audit_append=log.append,
                   max_artifact_bytes=1 << 30)  # fmt: skip
    reg.open_blocking()
    out = await reg.ingest(ADMIN, name="m/one", metadata={}, declared=None, body=Body(data),
                           route="test", request_id="r")  # fmt: skip
    await reg.transition(ADMIN, out.artifact.digest, Action.PROMOTE, route="t", request_id="r")
    return reg


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Registry, Log]]:
    log = Log()
    reg = await make(tmp_path, log)
    yield reg, log
    reg.db.close()


async def handoff(reg: Registry, target: str = DIGEST) -> Any:
    req = OpenRequest(name=None, digest=target, token=None) if target.startswith("sha256:") \
        else OpenRequest(name=target, digest=None, token=None)  # fmt: skip
    return await reg.open_for_consumer(req, principal=CONSUMER, route="consumer.socket",
                                       request_id="q", extra={"peer_uid": 1})  # fmt: skip


def read_all(fd: int) -> bytes:
    return os.pread(fd, 1 << 20, 0)


def touch(path: Path) -> None:
    """A chmod to the same mode: the bytes stay, ctime moves. On a kernel without
    fine-grained timestamps ctime ticks coarsely, so wait (bounded) for it to move."""
    before = os.stat(path).st_ctime_ns
    for _ in range(200):
        path.chmod(0o444)
        if os.stat(path).st_ctime_ns != before:
            return
        time.sleep(0.005)
    raise AssertionError("ctime never moved")


def rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """What a writer who wants to go unnoticed does: same size, mtime set back."""
    before = os.stat(path)
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.write(data)
    touch(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert after.st_ctime_ns != before.st_ctime_ns  # what no user-space call can undo


async def test_an_unchanged_object_is_handed_out_with_no_read_and_its_verified_time(
    setup: tuple[Registry, Log],
) -> None:
    reg, _log = setup
    fp = reg.artifacts[DIGEST].fingerprint
    assert fp is not None  # recorded by promote's full hash (PRO-1)
    h = await handoff(reg)
    try:
        assert not h.rehashed and h.verified_at == fp.verified_at
        assert read_all(h.fd) == DATA
        assert os.fstat(h.fd).st_ino == fp.ino
    finally:
        os.close(h.fd)


async def test_same_size_and_mtime_restored_is_caught_by_ctime_and_never_handed_out(
    setup: tuple[Registry, Log],
) -> None:
    reg, log = setup
    path = reg.store.path_for(DIGEST)
    evil = bytearray(DATA)
    evil[-1] ^= 0xFF
    rewrite_keeping_size_and_mtime(path, bytes(evil))
    with pytest.raises(StoredBytesCorrupt) as caught:
        await handoff(reg)
    assert reg.artifacts[DIGEST].integrity == "failed"
    failed = log.records[-1]
    assert caught.value.written_record == failed  # this request's one record
    assert failed["action"] == "artifact.integrity_failed"
    assert failed["auth_mode"] == "peer" and failed["principal"] == "svc"
    assert failed["extra"]["peer_uid"] == 1
    # And it stays refused: the next open does not even get to the file.
    with pytest.raises(StoredBytesCorrupt):
        await handoff(reg)


async def test_a_file_moved_over_the_name_is_caught_by_its_inode(
    setup: tuple[Registry, Log], tmp_path: Path
) -> None:
    reg, _log = setup
    path = reg.store.path_for(DIGEST)
    planted = path.with_name("planted")
    evil = bytearray(DATA)
    evil[100] ^= 1
    planted.write_bytes(bytes(evil))
    planted.chmod(0o444)
    os.replace(planted, path)
    with pytest.raises(StoredBytesCorrupt):
        await handoff(reg)


async def test_a_touch_that_leaves_the_bytes_intact_is_rehashed_once_then_served_fast(
    setup: tuple[Registry, Log],
) -> None:
    reg, _log = setup
    path = reg.store.path_for(DIGEST)
    old = reg.artifacts[DIGEST].fingerprint
    touch(path)
    assert old is not None and not old.matches(os.stat(path))
    first = await handoff(reg)
    os.close(first.fd)
    assert first.rehashed
    new = reg.artifacts[DIGEST].fingerprint
    assert new is not None and new.matches(os.stat(path)) and new.verified_at
    assert reg.db.get(DIGEST).fingerprint == new  # durable, not only in memory
    second = await handoff(reg)
    os.close(second.fd)
    assert not second.rehashed and reg.artifacts[DIGEST].integrity == "ok"


async def test_a_changed_object_too_large_to_rehash_is_refused_and_marked_unread(
    setup: tuple[Registry, Log],
) -> None:
    reg, log = setup
    reg.rehash_max_bytes = len(DATA) - 1
    touch(reg.store.path_for(DIGEST))  # ctime moves; the bytes are still right
    with pytest.raises(StoredBytesCorrupt, match="changed since its last full hash"):
        await handoff(reg)
    assert log.records[-1]["reasons"][0].startswith("the stored file changed since")
    # An operator's verify re-hashes it, finds the bytes intact and restores it.
    result, record = await reg.verify(DIGEST)
    assert result["ok"] and record is not None
    assert record["action"] == "artifact.integrity_restored"
    h = await handoff(reg)
    os.close(h.fd)
    assert not h.rehashed  # the restoration recorded the new fingerprint


async def test_a_row_with_no_fingerprint_is_hashed_once_whatever_its_size(
    setup: tuple[Registry, Log],
) -> None:
    reg, _log = setup
    reg.rehash_max_bytes = 0
    reg.artifacts[DIGEST] = reg.db.set_fingerprint(reg.artifacts[DIGEST], None)
    h = await handoff(reg)
    os.close(h.fd)
    assert h.rehashed and reg.artifacts[DIGEST].fingerprint is not None


async def test_a_revoked_name_and_digest_are_refused_on_the_next_open(
    setup: tuple[Registry, Log],
) -> None:
    reg, _log = setup
    held = await handoff(reg, "m/one")
    await reg.transition(ADMIN, DIGEST, Action.REVOKE, route="t", request_id="r", reason="bad")
    with pytest.raises(NotTrusted):
        await handoff(reg)
    with pytest.raises(Exception, match="no trusted artifact named"):
        await handoff(reg, "m/one")
    # Revocation governs new opens: the fd already handed out still reads.
    assert read_all(held.fd) == DATA
    os.close(held.fd)


async def test_a_deleted_object_is_refused_but_a_handed_out_fd_keeps_its_bytes(
    setup: tuple[Registry, Log],
) -> None:
    reg, _log = setup
    held = await handoff(reg)
    await reg.transition(ADMIN, DIGEST, Action.DELETE, route="t", request_id="r")
    assert not reg.store.path_for(DIGEST).exists()
    with pytest.raises(NotTrusted):
        await handoff(reg)
    assert read_all(held.fd) == DATA
    os.close(held.fd)


async def test_a_quarantined_artifact_is_never_handed_out(tmp_path: Path) -> None:
    log = Log()
    reg = Registry(store=ObjectStore(tmp_path / "s"), db=RegistryDB(tmp_path / "r.db"),
                   policy=policy_mod.Policy(name="t"), audit_append=log.append,
                   max_artifact_bytes=1 << 20)  # fmt: skip
    reg.open_blocking()
    await reg.ingest(ADMIN, name="m/q", metadata={}, declared=None, body=Body(DATA),
                     route="t", request_id="r")  # fmt: skip
    with pytest.raises(NotTrusted):
        await handoff(reg)
    with pytest.raises(Exception, match="no trusted artifact named"):
        await handoff(reg, "m/q")
    reg.db.close()


@pytest.mark.parametrize("plant", ["symlink", "missing", "linked"])
async def test_an_object_path_that_is_not_one_file_is_an_integrity_failure(
    setup: tuple[Registry, Log], tmp_path: Path, plant: str
) -> None:
    reg, log = setup
    path = reg.store.path_for(DIGEST)
    if plant == "symlink":  # to the right bytes: following it would pass every check
        (tmp_path / "copy").write_bytes(DATA)
        path.unlink()
        path.symlink_to(tmp_path / "copy")
    elif plant == "missing":
        path.unlink()
    else:
        os.link(path, tmp_path / "second-name")
    with pytest.raises(StoredBytesCorrupt):
        await handoff(reg)
    assert reg.artifacts[DIGEST].integrity == "failed"
    assert log.records[-1]["action"] == "artifact.integrity_failed"


async def test_every_full_hash_records_the_fingerprint_of_the_file_it_read(
    setup: tuple[Registry, Log],
) -> None:
    """Ingest, promote, verify and sweep each leave the fingerprint of the file as it is
    after them; a chmod (ctime) between two of them is seen by the next."""
    reg, _log = setup
    path = reg.store.path_for(DIGEST)
    for step in ("verify", "sweep"):
        touch(path)
        assert not reg.artifacts[DIGEST].fingerprint.matches(os.stat(path))  # type: ignore[union-attr]
        if step == "verify":
            await reg.verify(DIGEST)
        else:
            await reg.sweep()
        for art in (reg.artifacts[DIGEST], reg.db.get(DIGEST)):
            assert art is not None and art.fingerprint is not None
            assert art.fingerprint.matches(os.stat(path)), step


@pytest.mark.parametrize("loosen", [0o644, 0o666, 0o4444, 0o440, "chown"])
async def test_attack_an_object_not_0444_and_ours_is_never_handed_out_even_with_intact_bytes(
    setup: tuple[Registry, Log], loosen: int | str
) -> None:
    """A write bit lets any holder of the fd reopen /proc/self/fd/N for writing; another
    owner could chmod it back and forth. The bytes are intact, yet the handoff refuses
    (never a repair: a writer may already hold a writable fd) and marks the failure."""
    reg, log = setup
    path = reg.store.path_for(DIGEST)
    if loosen == "chown":
        os.chown(path, 54399, 54399)
    else:
        assert isinstance(loosen, int)
        path.chmod(loosen)
    with pytest.raises(StoredBytesCorrupt):
        await handoff(reg)
    assert reg.artifacts[DIGEST].integrity == "failed"
    assert "0444" in log.records[-1]["reasons"][0]
    # Put right (what a restart's tightening does), a verify restores it.
    os.chown(path, os.geteuid(), os.getegid())
    path.chmod(0o444)
    result, _record = await reg.verify(DIGEST)
    assert result["ok"] and reg.artifacts[DIGEST].integrity == "ok"
    fd = (await handoff(reg)).fd
    os.close(fd)
