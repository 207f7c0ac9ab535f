"""Objects are 0444 in 0700 directories, and fingerprints describe the file hashed.

A consumer reopens its fd through ``/proc/self/fd/N``, which checks the object's mode,
so objects must be readable by all; nobody but the daemon's user may reach or change
them through the store's directories, so those are 0700.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from assay.registry import store as store_mod
from assay.registry.db import RegistryDB
from assay.registry.model import Fingerprint
from assay.registry.store import ObjectStore, hash_stable

DATA = b"weights " * 4096
DIGEST = "sha256:" + hashlib.sha256(DATA).hexdigest()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_committed_object_is_read_only_to_all_in_private_directories(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "s")
    store.open()
    ingest = store.begin(1 << 20)
    ingest.write(DATA)
    assert ingest.commit(DIGEST) == (DIGEST, True)
    path = store.path_for(DIGEST)
    assert mode(path) == 0o444
    for d in (store.root, store.root / "objects", store.objects, store.tmp_dir):
        assert mode(d) == 0o700, d
    # The fingerprint is of the inode as committed: final mode, final name.
    assert ingest.committed_stat is not None
    assert Fingerprint.of(ingest.committed_stat, "t").matches(os.stat(path))


def test_a_store_loosened_by_hand_is_tightened_at_the_next_start(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "s")
    store.open()
    path = store.path_for(DIGEST)
    path.write_bytes(DATA)
    path.chmod(0o666)
    outside = tmp_path / "not-ours"
    outside.write_bytes(b"x")
    outside.chmod(0o640)
    (store.objects / ("ab" * 32)).symlink_to(outside)  # planted: must not be followed
    for d in (store.root, store.objects, store.tmp_dir):
        d.chmod(0o777)
    ObjectStore(tmp_path / "s").open()
    assert mode(path) == 0o444
    assert mode(outside) == 0o640  # the link's target is not the store's to change
    for d in (store.root, store.objects, store.tmp_dir):
        assert mode(d) == 0o700


def test_a_database_from_before_fingerprints_gains_the_columns_and_loads(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "r.db")
    old.executescript(
        "CREATE TABLE artifacts (digest TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT "
        "NULL, format TEXT NOT NULL, format_details TEXT NOT NULL, metadata TEXT NOT NULL, "
        "state TEXT NOT NULL, integrity TEXT NOT NULL DEFAULT 'ok', created_at TEXT NOT NULL, "
        "updated_at TEXT NOT NULL, uploaded_by TEXT NOT NULL, last_verified_at TEXT, "
        "state_changed_at TEXT NOT NULL);"
        f"INSERT INTO artifacts VALUES ('{DIGEST}', 'm/a', 1, 'gguf', '{{}}', '{{}}', "
        "'trusted', 'ok', 't', 't', 'u', NULL, 't');"
    )
    old.commit()
    old.close()
    db = RegistryDB(tmp_path / "r.db")
    db.open()
    try:
        art = db.load_all()[DIGEST]
        assert art.state == "trusted" and art.fingerprint is None
        fp = Fingerprint(1, 2, 3, 4, 5, "when")
        assert db.set_fingerprint(art, fp).fingerprint == fp
        got = db.get(DIGEST)
        assert got is not None and got.fingerprint == fp and got.fingerprint.verified_at == "when"
    finally:
        db.close()
    again = RegistryDB(tmp_path / "r.db")  # opening twice adds nothing twice
    again.open()
    again.close()


def test_a_hash_of_a_file_that_changes_while_read_vouches_for_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    real = store_mod.hash_fd

    def hash_then_write(fd: int) -> tuple[str, int]:
        out = real(fd)
        with path.open("r+b") as f:  # a writer lands while the hash runs
            f.write(b"W")
        return out

    monkeypatch.setattr(store_mod, "hash_fd", hash_then_write)
    fd = os.open(path, os.O_RDONLY)
    try:
        actual, size, hashed = hash_stable(fd)
        assert (actual, size) == (DIGEST, len(DATA)) and hashed is None
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # put back for the next reader
    finally:
        os.close(fd)


def test_a_stable_hash_vouches_for_the_file_and_rewinds_the_fd(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 100, os.SEEK_SET)  # a hash reads the whole file, from its start
        actual, size, hashed = hash_stable(fd)
        assert (actual, size) == (DIGEST, len(DATA))
        assert hashed is not None and Fingerprint.of(hashed, "t").matches(os.stat(path))
        assert os.read(fd, 8) == DATA[:8]
    finally:
        os.close(fd)
