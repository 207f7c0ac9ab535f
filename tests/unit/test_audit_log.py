"""``AuditLog`` on real files: group commit, flock across processes, torn tails and
recovery, symlinks, modes, rotation, Merkle state on reopen, I/O failures, keys."""

from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from assay.cli.main import main
from assay.core.audit import files
from assay.core.audit.keys import (
    generate_keypair,
    hmac_key_from_bytes,
    load_private_key,
    load_public_key,
)
from assay.core.audit.log import AuditLog
from assay.core.errors import (
    AuditNeedsRecovery,
    AuditWriteFailed,
    BadRequest,
    ChainBroken,
    SecretError,
)
from tests.unit.audit_util import (
    KEY,
    OTHER_KEY,
    SIGNING,
    fields,
    open_log,
    read_files,
    verify_bytes,
    write_log,
)


def _verify_dir(d: Path) -> None:
    report = verify_bytes(read_files(d))
    assert report.ok, report.breaks[:3]


# -- group commit and durability ----------------------------------------------------------


def test_one_fsync_per_batch(tmp_path: Path) -> None:
    synced: list[int] = []
    with open_log(tmp_path, fsync=synced.append) as log:
        records = log.append_batch([fields(i) for i in range(10)])
        assert [r["seq"] for r in records] == list(range(1, 11))
        assert len(synced) == 1 and log.stats.fsyncs == 1 and log.stats.batches == 1
        last = log.append(fields(10))
        assert len(synced) == 2 and log.head_seq == 11
        assert (
            log.head_hash == last["record_hash"] and last["prev_hash"] == records[-1]["record_hash"]
        )
    _verify_dir(tmp_path)


def test_malformed_fields_fail_before_any_io(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.append(fields(0))
        size = (tmp_path / files.CURRENT).stat().st_size
        with pytest.raises(BadRequest):
            log.append_batch([fields(1), {**fields(2), "decision": "perhaps"}])
        assert (tmp_path / files.CURRENT).stat().st_size == size and log.head_seq == 1


def test_write_failure_is_rolled_back(tmp_path: Path) -> None:
    fail = {"on": True}

    def half_write(fd: int, data: bytes | memoryview) -> int:
        if fail["on"]:
            os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)

    with open_log(tmp_path, write=half_write) as log:
        fail["on"] = False
        log.append(fields(0))
        size = (tmp_path / files.CURRENT).stat().st_size
        fail["on"] = True
        with pytest.raises(AuditWriteFailed):
            log.append_batch([fields(1), fields(2)])
        assert (tmp_path / files.CURRENT).stat().st_size == size  # no torn tail left
        fail["on"] = False
        assert log.append(fields(1))["seq"] == 2
    _verify_dir(tmp_path)


def test_fsync_failure_poisons_the_instance(tmp_path: Path) -> None:
    def broken_fsync(_fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with open_log(tmp_path, fsync=broken_fsync) as log:
        with pytest.raises(AuditWriteFailed):
            log.append(fields(0))
        assert log.poisoned is not None and not log.writable()
        with pytest.raises(AuditWriteFailed, match="refuses writes"):
            log.append(fields(1))
    with open_log(tmp_path) as log:  # a restart reopens; the record may or may not be there
        assert log.head_seq in (0, 1)


# -- concurrency ----------------------------------------------------------------------------


def test_two_instances_share_one_chain(tmp_path: Path) -> None:
    with open_log(tmp_path, rotate_bytes=1500) as a, open_log(tmp_path, rotate_bytes=1500) as b:
        for i in range(12):
            (a if i % 3 else b).append_batch([fields(i)] * (i % 2 + 1))
        a.append(fields(99))
        b.append(fields(100))
        assert b.head_seq == a.head_seq + 1
        assert a.merkle_root != b.merkle_root  # a has not seen b's last record yet
        a.append(fields(101))
        assert a.head_seq == b.head_seq + 1
    assert len(files.segment_paths(tmp_path)) > 2
    _verify_dir(tmp_path)
    with open_log(tmp_path) as c:
        assert c.head_seq == 21


def _worker(directory: str, who: int, count: int) -> None:
    with AuditLog(directory, KEY, rotate_bytes=20_000, fsync=lambda _fd: None) as log:
        i = 0
        while i < count:
            k = min(1 + (i % 4), count - i)
            log.append_batch([fields(who * 10_000 + i + j) for j in range(k)])
            i += k


def test_flock_serialises_two_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), who, 150)) for who in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    _verify_dir(tmp_path)
    records = [json.loads(x) for _n, d in read_files(tmp_path) for x in d.splitlines()]
    assert [r["seq"] for r in records] == list(range(1, 301))
    assert {r["request_id"][4] for r in records} == {"1", "2"}  # both processes wrote


# -- torn tails and recovery ----------------------------------------------------------------


def test_torn_tail_needs_recovery_then_recovers(tmp_path: Path) -> None:
    write_log(tmp_path, 5)
    torn = b'{"action":"artifact.promote","auth_mo'
    with (tmp_path / files.CURRENT).open("ab") as f:
        f.write(torn)
    with pytest.raises(AuditNeedsRecovery, match="torn write"):
        open_log(tmp_path)
    record = AuditLog.recover(tmp_path, KEY, fsync=lambda _fd: None)
    assert record is not None and record["action"] == "audit.recover" and record["seq"] == 6
    extra = record["extra"]
    assert extra["torn_bytes"] == len(torn)
    assert extra["torn_sha256"] == hashlib.sha256(torn).hexdigest()
    evidence = tmp_path / extra["torn_file"]
    assert evidence.read_bytes() == torn and stat.S_IMODE(evidence.stat().st_mode) == 0o600
    _verify_dir(tmp_path)
    assert AuditLog.recover(tmp_path, KEY) is None  # nothing left to do
    with open_log(tmp_path) as log:
        assert log.head_seq == 6


def test_unparseable_last_line_needs_recovery(tmp_path: Path) -> None:
    write_log(tmp_path, 3)
    with (tmp_path / files.CURRENT).open("ab") as f:
        f.write(b"\x00\x01garbage\n")
    with pytest.raises(AuditNeedsRecovery, match="unparseable"):
        open_log(tmp_path)
    record = AuditLog.recover(tmp_path, KEY)
    assert record is not None and record["extra"]["torn_bytes"] == len(b"\x00\x01garbage\n")
    _verify_dir(tmp_path)


def test_cli_recover(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "audit"
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(KEY.hex().encode() + b"\n")
    key_file.chmod(0o600)
    with AuditLog(d, KEY.hex().encode(), fsync=lambda _fd: None) as log:
        log.append(fields(0))
    with (d / files.CURRENT).open("ab") as f:
        f.write(b'{"torn')
    assert main(["audit", "recover", str(d), "--key-file", str(key_file)]) == 0
    assert "recorded as seq 2" in capsys.readouterr().out
    assert main(["audit", "recover", str(d), "--key-file", str(key_file)]) == 0
    assert "nothing to recover" in capsys.readouterr().out
    assert main(["audit", "verify", str(d), "--key-file", str(key_file)]) == 0


def test_wrong_key_or_forged_head_refuses_to_open(tmp_path: Path) -> None:
    write_log(tmp_path, 3)
    with pytest.raises(ChainBroken, match="wrong HMAC key"):
        AuditLog(tmp_path, OTHER_KEY)


def test_another_process_torn_write_is_noticed_on_append(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.append(fields(0))
        with (tmp_path / files.CURRENT).open("ab") as f:
            f.write(b'{"half')
        with pytest.raises(AuditNeedsRecovery):
            log.append(fields(1))


# -- file system safety --------------------------------------------------------------------


@pytest.mark.parametrize("name", [files.CURRENT, files.LOCK])
def test_symlinks_are_refused(tmp_path: Path, name: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"")
    d = tmp_path / "audit"
    d.mkdir()
    (d / name).symlink_to(elsewhere)
    with pytest.raises(AuditWriteFailed, match="cannot open"):
        open_log(d)
    assert elsewhere.read_bytes() == b""


def test_checkpoint_file_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"")
    d = tmp_path / "audit"
    write_log(d, 1)
    with open_log(d, signing_key=SIGNING) as log:
        (d / files.CHECKPOINTS).symlink_to(target)
        with pytest.raises(AuditWriteFailed):
            log.checkpoint_now()
    with pytest.raises(AuditWriteFailed, match="cannot open"):
        open_log(d, signing_key=SIGNING)
    assert target.read_bytes() == b""


def test_file_modes(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_log(tmp_path, 40, rotate_bytes=3000, signing_key=SIGNING, checkpoint_every=10)
    finally:
        os.umask(old)
    audit_files = [*files.segment_paths(tmp_path), tmp_path / files.LOCK,
                   tmp_path / files.CHECKPOINTS, tmp_path / files.LATEST]  # fmt: skip
    for path in audit_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700


def test_existing_loose_mode_is_tightened(tmp_path: Path) -> None:
    write_log(tmp_path, 1)
    (tmp_path / files.CURRENT).chmod(0o644)
    with open_log(tmp_path):
        pass
    assert stat.S_IMODE((tmp_path / files.CURRENT).stat().st_mode) == 0o600


# -- rotation, replay, Merkle state ---------------------------------------------------------


def test_rotation_keeps_one_chain(tmp_path: Path) -> None:
    records = write_log(tmp_path, 50, rotate_bytes=2500, batch=3)
    paths = files.segment_paths(tmp_path)
    assert len(paths) > 5 and paths[-1].name == files.CURRENT
    assert [p.name for p in paths[:2]] == ["audit.000001.jsonl", "audit.000002.jsonl"]
    _verify_dir(tmp_path)
    with open_log(tmp_path) as log:
        assert log.head_seq == 50 and log.head_hash == records[-1]["record_hash"]
        replay = list(log.records_after(17))
        assert [r["seq"] for r in replay] == list(range(18, 51))
        assert replay == records[17:]
        assert list(log.records_after(50)) == []
        assert [r["seq"] for r in log.records_after(0)] == list(range(1, 51))


def test_records_after_refuses_forged_records(tmp_path: Path) -> None:
    write_log(tmp_path, 8, rotate_bytes=2000)
    last_rotated = files.segment_paths(tmp_path)[-2]
    data = last_rotated.read_bytes()
    last_rotated.write_bytes(data.replace(b"user-", b"usex-", 1))
    with open_log(tmp_path) as log, pytest.raises(ChainBroken, match="replay stopped"):
        list(log.records_after(0))


def test_merkle_state_restored_or_rebuilt_on_open(tmp_path: Path) -> None:
    write_log(tmp_path, 25, rotate_bytes=3000, signing_key=SIGNING, checkpoint_every=7)
    with open_log(tmp_path, signing_key=SIGNING) as log:
        restored = log.merkle_root
        cp = log.latest_checkpoint
        assert cp is not None and cp.size == 21
        log.append(fields(99))
        cp2 = log.checkpoint_now()
        assert cp2 is not None and cp2.merkle_root == log.merkle_root
    saved = (tmp_path / files.CHECKPOINTS).read_bytes()
    (tmp_path / files.CHECKPOINTS).unlink()
    with open_log(tmp_path) as log:  # no state: rebuilt by streaming every segment
        assert log.merkle_root == cp2.merkle_root and log.latest_checkpoint is None
    # A state that no longer matches the log (edited by hand) is ignored, not trusted.
    lines = saved.splitlines()
    state = json.loads(lines[-1])
    state["state"]["range"] = ["00" * 32] * len(state["state"]["range"])
    (tmp_path / files.CHECKPOINTS).write_bytes(
        b"\n".join([*lines[:-1], json.dumps(state).encode()])
    )
    with open_log(tmp_path) as log:
        assert log.head_seq == 26
        assert log.merkle_root == cp2.merkle_root != restored  # rebuilt, not the bad state


def test_checkpoint_files_and_torn_checkpoint_line(tmp_path: Path) -> None:
    write_log(tmp_path, 10, signing_key=SIGNING, checkpoint_every=4)
    latest = json.loads((tmp_path / files.LATEST).read_bytes())
    assert latest["size"] == 8 and "state" not in latest
    with (tmp_path / files.CHECKPOINTS).open("ab") as f:
        f.write(b'{"log_id":"assay","si')  # crash while appending a checkpoint
    with open_log(tmp_path, signing_key=SIGNING) as log:
        assert log.latest_checkpoint is not None and log.latest_checkpoint.size == 8
        cp = log.checkpoint_now()
        assert cp is not None and cp.size == 10
        assert log.checkpoint_now() is None  # nothing new
    found = files.read_latest_checkpoint(tmp_path)
    assert found is not None and found[0] == cp
    from assay.cli.main import main as cli

    pub = tmp_path.parent / f"{tmp_path.name}.pub"
    from assay.core.audit.keys import public_pem

    pub.write_bytes(public_pem(SIGNING.public_key()))
    assert cli(["audit", "verify", str(tmp_path), "--checkpoint",
                str(tmp_path / files.CHECKPOINTS), "--public-key", str(pub)]) == 0  # fmt: skip


def test_no_signing_key_means_no_checkpoints(tmp_path: Path) -> None:
    with open_log(tmp_path, checkpoint_every=1) as log:
        log.append(fields(0))
        assert not log.can_checkpoint and log.latest_checkpoint is None
        with pytest.raises(AuditWriteFailed):
            log.checkpoint_now()


# -- keys ----------------------------------------------------------------------------------


def test_keys_generate_load_and_refuse_overwrite(tmp_path: Path) -> None:
    priv, pub = generate_keypair(tmp_path / "k")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    key = load_private_key(priv)
    assert load_public_key(pub).public_bytes_raw() == key.public_key().public_bytes_raw()
    with pytest.raises(SecretError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "k")
    priv.chmod(0o640)
    with pytest.raises(SecretError, match="group or others"):
        load_private_key(priv)
    with pytest.raises(SecretError):
        hmac_key_from_bytes(b"x" * 31)
    assert hmac_key_from_bytes(b"x" * 32) == b"x" * 32


def test_cli_keys_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--out", str(tmp_path / "keys"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["key_id"]) == 16 and Path(out["private_key"]).exists()
    assert main(["keys", "generate", "--out", str(tmp_path / "keys")]) != 0


def test_snapshot_is_a_consistent_cut_of_a_live_log(tmp_path: Path) -> None:
    from assay.core.audit.verify import verify_stream

    with open_log(tmp_path, rotate_bytes=2000) as log:
        for i in range(5):
            log.append(fields(i))
        with files.snapshot(tmp_path) as snap:
            # The live log moves on (and rotates) after the cut; the cut still verifies.
            for i in range(5, 15):
                log.append(fields(i))
            report = verify_stream([(str(p), files.chunks(fd, 0, n)) for p, fd, n in snap], KEY)
        assert report.ok and report.head_seq == 5
        assert log.head_seq == 15 and len(files.segment_paths(tmp_path)) > len(snap)
