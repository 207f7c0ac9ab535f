"""Write faults inside an ``Ingest``, injected with real file descriptors.

The upload's temp fd is replaced (``dup2``) by ``/dev/full`` (every write fails with
ENOSPC) or by a non-blocking pipe (a write lands partly, then the next one fails): the
partial case is the one that used to leave a memoryview of the mmap alive in the
exception's traceback, so closing the block or the stage raised ``BufferError`` and the
temp file was never removed. Each test keeps the exception (and its traceback) alive
while it closes everything, as the ingest pump does.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from assay.core.errors import StorageError, StorageFull, storage_error
from assay.registry.store import ALIGN, STAGE_BYTES, Ingest, ObjectStore

MiB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    s = ObjectStore(tmp_path / "store")
    s.open()
    return s


def _dev_full() -> int:
    return os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)


def _pipe() -> int:
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETFL, fcntl.fcntl(write, fcntl.F_GETFL) | os.O_NONBLOCK)
    _held.append(read)  # nobody reads: the first write fills the pipe, the next fails
    return write


_held: list[int] = []


@pytest.fixture(autouse=True)
def _close_held() -> Iterator[None]:
    yield
    while _held:
        os.close(_held.pop())


FAULTS: dict[str, Callable[[], int]] = {"enospc": _dev_full, "partial": _pipe}


def _break(ingest: Ingest, fault: str) -> None:
    fd = FAULTS[fault]()
    try:
        assert ingest._fd is not None
        os.dup2(fd, ingest._fd)
    finally:
        os.close(fd)


def _chunk(ingest: Ingest, block: mmap.mmap) -> None:
    ingest.write(b"x" * (STAGE_BYTES + 12345))  # buffered: written; direct: a full stage


def _block(ingest: Ingest, block: mmap.mmap) -> None:
    ingest.write_block(block, len(block))  # whole pages: straight from the block


def _tail(ingest: Ingest, block: mmap.mmap) -> None:
    ingest.write_block(block, len(block) - 100)  # staged, then flushed by the read-back
    ingest.read_at(0, 16)


STEPS: dict[str, Callable[[Ingest, mmap.mmap], None]] = {
    "chunk": _chunk,
    "block": _block,
    "tail": _tail,
}


@pytest.mark.parametrize("step", list(STEPS))
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_write_fault_releases_every_buffer_and_the_temp_file(
    store: ObjectStore, fault: str, step: str
) -> None:
    ingest = store.begin(64 * MiB)
    block = ingest.alloc_block(MiB)
    block.write(b"y" * MiB)
    _break(ingest, fault)
    with pytest.raises(StorageError) as caught:
        STEPS[step](ingest, block)
    # The exception and its traceback are still alive here, as in the pump's failures.
    assert caught.value.__traceback__ is not None
    if fault == "enospc":
        assert isinstance(caught.value, StorageFull) and caught.value.status == 507
        assert caught.value.code == "storage.full"
    block.close()  # used to raise BufferError: a slice of it lived on in the traceback
    ingest.abort()  # used to raise BufferError on the stage before removing the file
    assert list(store.tmp_dir.iterdir()) == []
    ingest.abort()  # idempotent


def test_the_direct_path_was_exercised_where_the_file_system_allows_it(
    store: ObjectStore,
) -> None:
    ingest = store.begin(MiB)
    try:
        if not ingest._direct:
            pytest.skip("this file system refuses O_DIRECT; the staged path is not reached")
        assert ingest._stage is not None and len(ingest._stage) % ALIGN == 0
    finally:
        ingest.abort()


def test_enospc_and_edquot_are_storage_full_and_nothing_else_is() -> None:
    assert isinstance(storage_error(OSError(errno.ENOSPC, "No space left"), "x"), StorageFull)
    assert isinstance(storage_error(OSError(errno.EDQUOT, "Quota exceeded"), "x"), StorageFull)
    for other in (errno.EIO, errno.EROFS, errno.EACCES):
        plain = storage_error(OSError(other, os.strerror(other)), "writing")
        assert type(plain) is StorageError and plain.code == "storage.failed"
        assert plain.detail == f"writing failed: {os.strerror(other)}"
