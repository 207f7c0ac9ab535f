"""The ingest pump: body sources fill page-aligned blocks that reach the disk intact.

Real store, real files, fake body sources (no server): each test pins one way a body
can arrive (in odd pieces, short, long, broken) and checks the stored bytes and digest
or the typed refusal, and that a failed upload leaves no temp file behind.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import trio

from assay.core.errors import BadRequest, PayloadTooLarge, StorageError
from assay.registry.body import AsgiBody, fill
from assay.registry.db import RegistryDB
from assay.registry.policy import Policy
from assay.registry.service import Registry
from assay.registry.store import ALIGN, ObjectStore

BLOCK = 64 * 1024


class PieceBody:
    """Hands out ``data`` in pieces of the given sizes (cycled), then fails if told to."""

    def __init__(self, data: bytes, sizes: list[int], fail_after: int | None = None) -> None:
        self.data = memoryview(data)
        self.sizes = sizes
        self.calls = 0
        self.fail_after = fail_after

    async def readinto(self, view: memoryview) -> int:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise BadRequest("client disconnected mid-upload", code="request.incomplete")
        size = min(len(view), len(self.data), self.sizes[self.calls % len(self.sizes)])
        self.calls += 1
        view[:size] = self.data[:size]
        self.data = self.data[size:]
        await trio.lowlevel.checkpoint()
        return size


def make_registry(tmp_path: Path, *, max_bytes: int = 10 * 1024 * 1024) -> Registry:
    registry = Registry(
        store=ObjectStore(tmp_path / "store"),
        db=RegistryDB(tmp_path / "registry.db"),
        policy=Policy(name="test"),
        audit_append=lambda fields: fields,
        max_artifact_bytes=max_bytes,
        block_bytes=BLOCK,
    )
    registry.open_blocking()
    return registry


async def pump(registry: Registry, body: Any) -> tuple[str, bytes]:
    ingest = registry.store.begin(registry.max_artifact_bytes)
    try:
        await registry._pump(ingest, body)
        digest, _new = ingest.commit(None)
    except BaseException:
        ingest.abort()
        raise
    return digest, registry.store.path_for(digest).read_bytes()


@pytest.mark.parametrize(
    ("length", "sizes"),
    [
        (3 * BLOCK, [BLOCK]),  # whole blocks only: every write goes straight to disk
        (3 * BLOCK + 1, [7, 4096, 65535]),  # ragged pieces and an unaligned tail
        (BLOCK - 1, [1000]),  # less than one block
        (1, [1]),
        (5 * ALIGN, [ALIGN]),  # short last block, but whole pages
    ],
)
async def test_bytes_arrive_intact_however_the_body_is_cut(
    tmp_path: Path, length: int, sizes: list[int]
) -> None:
    data = os.urandom(length)
    digest, stored = await pump(make_registry(tmp_path), PieceBody(data, sizes))
    assert stored == data
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()


async def test_body_over_the_cap_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    registry = make_registry(tmp_path, max_bytes=2 * BLOCK)
    with pytest.raises(PayloadTooLarge):
        await pump(registry, PieceBody(b"\1" * (2 * BLOCK + 1), [BLOCK]))
    assert list(registry.store.tmp_dir.iterdir()) == []
    assert list(registry.store.objects.iterdir()) == []


async def test_client_vanishing_raises_the_typed_error_not_a_group(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    with pytest.raises(BadRequest) as info:
        await pump(registry, PieceBody(b"\2" * (4 * BLOCK), [BLOCK // 3], fail_after=5))
    assert info.value.code == "request.incomplete"
    assert list(registry.store.tmp_dir.iterdir()) == []


async def test_a_failing_disk_write_is_a_storage_error(tmp_path: Path) -> None:
    registry = make_registry(tmp_path)
    ingest = registry.store.begin(registry.max_artifact_bytes)
    assert ingest._fd is not None
    os.close(ingest._fd)  # every later write fails with EBADF, as a dead disk would
    ingest._fd = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(StorageError) as info:
        await registry._pump(ingest, PieceBody(b"\3" * (2 * BLOCK), [BLOCK]))
    assert info.value.code == "storage.failed"
    ingest.abort()


async def test_asgi_messages_are_copied_once_into_the_caller_view() -> None:
    messages: list[MutableMapping[str, Any]] = [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"defgh", "more_body": False},
    ]

    async def receive() -> MutableMapping[str, Any]:
        return messages.pop(0)

    buf = bytearray(6)
    body = AsgiBody(receive)
    assert await fill(body, memoryview(buf)) == 6
    assert bytes(buf) == b"abcdef"
    assert await fill(body, memoryview(buf)) == 2
    assert bytes(buf[:2]) == b"gh"
    assert await body.readinto(memoryview(buf)) == 0


async def test_asgi_disconnect_is_an_incomplete_request() -> None:
    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.disconnect"}

    with pytest.raises(BadRequest) as info:
        await AsgiBody(receive).readinto(memoryview(bytearray(4)))
    assert info.value.code == "request.incomplete"
