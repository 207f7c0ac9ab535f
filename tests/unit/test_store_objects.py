"""``ObjectStore.open_object``: one helper decides whether an object path holds bytes.

Each thing that can sit at an object path instead of one regular file is planted for
real (a symlink to the right bytes, a FIFO with no writer, a directory, a socket, a
device node, a second hard link) and must be refused by name, without following,
blocking on or reading it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from assay.registry.store import PROBLEMS, ObjectStore, UnusableObject, describe

DATA = b"the right bytes" * 100
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    s = ObjectStore(tmp_path / "store")
    s.open()
    return s


@pytest.fixture
def unix_sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


def test_a_regular_file_with_one_name_opens_and_hashes(store: ObjectStore) -> None:
    store.path_for(DIGEST).write_bytes(DATA)
    store.path_for(DIGEST).chmod(0o444)  # as the store makes them
    assert store.rehash(DIGEST) == (DIGEST, len(DATA))
    assert store.exists(DIGEST)


@pytest.mark.parametrize("mode", [0o644, 0o664, 0o666, 0o400, 0o555, 0o1444])
def test_attack_an_object_with_intact_bytes_but_another_mode_is_unusable(
    store: ObjectStore, mode: int
) -> None:
    """Every reader opens through ``open_object``: a mode other than 0444 (a write bit
    makes /proc/self/fd/N reopenable for writing) is a problem, never bytes."""
    store.path_for(DIGEST).write_bytes(DATA)
    store.path_for(DIGEST).chmod(mode)
    assert store.rehash(DIGEST) == ("loosened", 0)


def plant(kind: str, path: Path, elsewhere: Path, held: list[socket.socket]) -> None:
    if kind == "symlink":
        elsewhere.write_bytes(DATA)
        path.symlink_to(elsewhere)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        held.append(s)
        cwd = os.getcwd()
        os.chdir(path.parent)  # the full path is longer than sun_path holds
        try:
            s.bind(path.name)
        finally:
            os.chdir(cwd)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod of a device needs root")
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null's numbers
    elif kind == "linked":
        path.write_bytes(DATA)
        os.link(path, elsewhere)
    else:
        raise AssertionError(kind)


KINDS = ["symlink", "fifo", "directory", "socket", "device", "linked"]


@pytest.mark.parametrize("kind", KINDS)
def test_anything_but_one_regular_file_is_refused_by_name(
    store: ObjectStore, tmp_path: Path, kind: str, unix_sockets: list[socket.socket]
) -> None:
    path = store.path_for(DIGEST)
    plant(kind, path, tmp_path / "elsewhere", unix_sockets)
    with pytest.raises(UnusableObject) as caught:
        os.close(store.open_object(DIGEST))
    assert caught.value.problem == kind
    assert store.rehash(DIGEST) == (kind, 0)
    assert not store.exists(DIGEST)
    assert describe(kind) == PROBLEMS[kind]


def test_a_missing_object_is_missing(store: ObjectStore) -> None:
    assert store.rehash(DIGEST) == ("missing", 0)
    assert describe("missing") == "stored bytes are missing"
    assert describe(DIGEST) == f"stored bytes hash to {DIGEST}"


@pytest.mark.parametrize("kind", ["directory", "fifo", "symlink"])
def test_remove_never_raises_for_what_it_cannot_remove(
    store: ObjectStore, tmp_path: Path, kind: str, unix_sockets: list[socket.socket]
) -> None:
    path = store.path_for(DIGEST)
    plant(kind, path, tmp_path / "elsewhere", unix_sockets)
    store.remove(DIGEST)  # a directory stays for an operator; the rest are unlinked
    assert path.exists() == (kind == "directory")


def test_an_ingest_replaces_whatever_squats_on_its_path(store: ObjectStore) -> None:
    path = store.path_for(DIGEST)
    path.symlink_to("/dev/zero")
    ingest = store.begin(1 << 20)
    ingest.write(DATA)
    assert ingest.commit(DIGEST) == (DIGEST, True)
    assert store.rehash(DIGEST) == (DIGEST, len(DATA))
