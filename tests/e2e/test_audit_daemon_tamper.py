"""Tamper matrix against an audit log written by the real daemon, checked by the real CLI.

One module-scoped deployment runs a lifecycle (ingest, promote, refuse, fetch, resolve,
revoke, delete, plenty of reads) with ``audit.rotate_bytes`` at its 64 KiB minimum so the
log spans two rotated files plus the current one, then stops with SIGTERM, which signs a
final checkpoint. Each test copies the files, applies one attack, runs
``assay audit verify ... --json`` and asserts exit 1 and the first break: its kind, the
seq that belongs there, the file and the 1-based line.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from assay.core.audit.chain import HASH_MEMBER, Chain, canonical, encode_line
from assay.core.audit.keys import load_hmac_key
from assay.core.audit.verify import verify_stream
from tests.conftest import SAMPLES, Deployment, init_deployment, run_cli, upload

pytestmark = pytest.mark.e2e

ROTATE_BYTES = 65536  # AuditConfig.rotate_bytes minimum
MAX_FILL_REQUESTS = 800


def artifact(i: int) -> bytes:
    """A distinct, valid safetensors file per ``i``."""
    return st_save({"w": np.full(8, i, dtype=np.int32)})


@dataclass(frozen=True)
class Entry:
    seq: int
    file: int  # index into DaemonLog.names
    line: int  # 1-based
    record: dict[str, Any]


@dataclass
class DaemonLog:
    """The daemon's log files (chain order) and what the tests need to attack them."""

    dep: Deployment
    names: list[str]
    lines: list[list[bytes]]  # per file, without newlines
    entries: list[Entry]
    key: bytes

    @property
    def key_file(self) -> Path:
        return self.dep.dir / "secrets" / "audit-hmac.key"

    @property
    def public_key(self) -> Path:
        return self.dep.dir / "secrets" / "audit-signing.pub"

    @property
    def checkpoints(self) -> Path:
        return self.dep.audit_dir / "checkpoints.jsonl"

    @property
    def head(self) -> int:
        return self.entries[-1].seq

    def entry(self, seq: int) -> Entry:
        e = self.entries[seq - 1]
        assert e.seq == seq
        return e

    def find(self, action: str, file: int, *, nth: int = 0, to_state: str | None = None) -> Entry:
        hits = [
            e
            for e in self.entries
            if e.record["action"] == action
            and e.file == file
            and (to_state is None or e.record["to_state"] == to_state)
        ]
        assert len(hits) > nth, (action, file, nth)
        return hits[nth]

    def copy(self) -> list[list[bytes]]:
        return [list(f) for f in self.lines]


def _load(dep: Deployment) -> DaemonLog:
    paths = [*sorted(dep.audit_dir.glob("audit.0*.jsonl")), dep.audit_dir / "audit.jsonl"]
    names = [p.name for p in paths]
    lines: list[list[bytes]] = []
    entries: list[Entry] = []
    for fi, p in enumerate(paths):
        data = p.read_bytes()
        assert data.endswith(b"\n")
        file_lines = data[:-1].split(b"\n")
        lines.append(file_lines)
        for ln, raw in enumerate(file_lines, 1):
            rec = json.loads(raw)
            entries.append(Entry(rec["seq"], fi, ln, rec))
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    key = load_hmac_key(dep.dir / "secrets" / "audit-hmac.key")
    return DaemonLog(dep, names, lines, entries, key)


def _fill_until_rotated(dep: Deployment, rotated: int) -> None:
    """Cheap reads until the log has ``rotated`` rotated files and a few lines after."""
    with dep.client() as c:
        for _ in range(MAX_FILL_REQUESTS):
            if len(list(dep.audit_dir.glob("audit.0*.jsonl"))) >= rotated:
                break
            assert c.get("/v1/artifacts").status_code == 200
        else:
            raise AssertionError(f"log did not rotate {rotated} times")
        for _ in range(5):
            assert c.get("/v1/status").status_code == 200


@pytest.fixture(scope="module")
def daemon_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonLog]:
    dep = init_deployment(tmp_path_factory.mktemp("tamper"), max_bytes=1024 * 1024)
    dep.edit_config(
        "  write_policy: fail_closed\n",
        f"  write_policy: fail_closed\n  rotate_bytes: {ROTATE_BYTES}\n",
    )
    dep.start()
    try:
        with dep.client() as c:
            # File 1: ingest, promote, fetch, resolve, a policy refusal.
            a = upload(c, artifact(1), name="m/a").json()["artifact"]["digest"]
            assert c.post(f"/v1/artifacts/{a}/promote").status_code == 200
            assert c.get(f"/v1/artifacts/{a}/content").status_code == 200
            assert c.get("/v1/trusted/m/a").status_code == 200
            bare = upload(c, artifact(2), name="m/bare", meta=()).json()["artifact"]["digest"]
            assert c.post(f"/v1/artifacts/{bare}/promote").status_code == 422
            _fill_until_rotated(dep, 1)
            # File 2: ingest, promote, revoke, a GGUF.
            b = upload(c, artifact(3), name="m/b").json()["artifact"]["digest"]
            assert c.post(f"/v1/artifacts/{b}/promote").status_code == 200
            r = c.post(f"/v1/artifacts/{b}/revoke", json={"reason": "compromised key"})
            assert r.status_code == 200
            assert upload(c, (SAMPLES / "sample.gguf").read_bytes(), name="m/g").status_code == 201
            _fill_until_rotated(dep, 2)
            # Current file: ingest, promote, revoke, delete, reads.
            d = upload(c, artifact(4), name="m/d").json()["artifact"]["digest"]
            assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
            e = upload(c, artifact(5), name="m/e").json()["artifact"]["digest"]
            assert c.post(f"/v1/artifacts/{e}/revoke", json={"reason": "withdrawn"}).is_success
            f = upload(c, artifact(6), name="m/f").json()["artifact"]["digest"]
            assert c.request("DELETE", f"/v1/artifacts/{f}", json={"reason": "dup"}).is_success
            for _ in range(4):
                assert c.get(f"/v1/artifacts/{d}").status_code == 200
        assert dep.stop(signal.SIGTERM) == 0
        log = _load(dep)
        assert len(log.names) == 3 and log.names[:2] == ["audit.000001.jsonl", "audit.000002.jsonl"]
        # SIGTERM signed a final checkpoint covering the whole log.
        last_cp = json.loads(log.checkpoints.read_text().splitlines()[-1])
        assert last_cp["size"] == log.head
        assert last_cp["head_hash"] == log.entries[-1].record["record_hash"]
        yield log
    finally:
        dep.stop()


# -- helpers --------------------------------------------------------------------------------


def write_copy(log: DaemonLog, dest: Path, files: list[list[bytes]]) -> list[Path]:
    dest.mkdir()
    out = []
    for name, file_lines in zip(log.names, files, strict=True):
        p = dest / name
        p.write_bytes(b"".join(line + b"\n" for line in file_lines))
        out.append(p)
    return out


def verify(
    log: DaemonLog, logs: list[Path], *, checkpoint: bool = True
) -> tuple[int, dict[str, Any]]:
    args = ["audit", "verify", *map(str, logs), "--key-file", str(log.key_file), "--json"]
    if checkpoint:
        args += ["--checkpoint", str(log.checkpoints), "--public-key", str(log.public_key)]
    proc = run_cli(*args)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def first_break(report: dict[str, Any]) -> tuple[str, int | None, str, int | None]:
    assert report["ok"] is False and report["breaks"], report
    b = report["breaks"][0]
    return b["kind"], b["seq"], b["file"], b["line"]


def reseal(key: bytes, record: dict[str, Any]) -> bytes:
    """What an insider holding the HMAC key writes: a record with a valid MAC."""
    body = {k: v for k, v in record.items() if k != "record_hash"}
    digest = Chain(key).mac(canonical(body))
    return encode_line({**body, "record_hash": digest})[:-1]


def replace_once(line: bytes, old: bytes, new: bytes) -> bytes:
    assert line.count(old) >= 1, (old, line)
    return line.replace(old, new, 1)


# -- the clean log ----------------------------------------------------------------------------


def test_clean_daemon_log_verifies_with_key_and_checkpoint(
    daemon_log: DaemonLog, tmp_path: Path
) -> None:
    paths = write_copy(daemon_log, tmp_path / "copy", daemon_log.copy())
    code, report = verify(daemon_log, paths)
    assert code == 0, report["breaks"]
    assert report["ok"] and report["authenticated"] and report["breaks_total"] == 0
    assert report["records"] == report["head_seq"] == daemon_log.head
    assert report["checkpoints_checked"] >= 1
    actions = {e.record["action"] for e in daemon_log.entries}
    assert {"artifact.ingest", "artifact.promote", "artifact.revoke", "artifact.delete"} <= actions
    assert {"artifact.fetch", "artifact.resolve", "http.request", "token.create"} <= actions
    # The live directory itself verifies too.
    code, _ = verify(daemon_log, [daemon_log.dep.audit_dir])
    assert code == 0


# -- one attack per test ----------------------------------------------------------------------


def test_one_byte_changed_in_a_promote_record_is_located(
    daemon_log: DaemonLog, tmp_path: Path
) -> None:
    target = daemon_log.find("artifact.promote", 0)
    files = daemon_log.copy()
    # Rewrite the promoted digest's last hex digit: still valid JSON, same schema.
    line = files[0][target.line - 1]
    digest = target.record["target"].encode()
    forged_digest = digest[:-1] + (b"0" if digest[-1:] != b"0" else b"1")
    files[0][target.line - 1] = replace_once(line, digest, forged_digest)
    paths = write_copy(daemon_log, tmp_path / "c", files)
    code, report = verify(daemon_log, paths)
    assert code == 1
    assert first_break(report) == ("self_mismatch", target.seq, str(paths[0]), target.line)


def test_every_single_byte_flip_of_a_daemon_record_is_located(daemon_log: DaemonLog) -> None:
    """In-process over the same real files: no byte of the revoke record is unguarded."""
    target = daemon_log.find("artifact.revoke", 1)
    line = daemon_log.lines[1][target.line - 1]
    for offset in range(len(line)):
        files = daemon_log.copy()
        flipped = bytearray(line)
        flipped[offset] ^= 0x01
        files[1][target.line - 1] = bytes(flipped)
        inputs = [
            (name, [b"".join(x + b"\n" for x in f)])
            for name, f in zip(daemon_log.names, files, strict=True)
        ]
        report = verify_stream(inputs, daemon_log.key)
        assert not report.ok, offset
        b = report.breaks[0]
        assert b.kind in ("self_mismatch", "malformed_line"), (offset, b)
        assert (b.seq, b.file, b.line) == (target.seq, daemon_log.names[1], target.line), (
            offset,
            b,
        )


def test_deleted_ingest_record_is_a_seq_gap_at_its_line(
    daemon_log: DaemonLog, tmp_path: Path
) -> None:
    target = daemon_log.find("artifact.ingest", 1)
    files = daemon_log.copy()
    del files[1][target.line - 1]
    paths = write_copy(daemon_log, tmp_path / "c", files)
    code, report = verify(daemon_log, paths)
    assert code == 1
    assert first_break(report) == ("seq_gap", target.seq, str(paths[1]), target.line)


def test_promote_swapped_with_the_next_record_is_a_seq_gap(
    daemon_log: DaemonLog, tmp_path: Path
) -> None:
    target = daemon_log.find("artifact.promote", 1)
    files = daemon_log.copy()
    i = target.line - 1
    files[1][i], files[1][i + 1] = files[1][i + 1], files[1][i]
    paths = write_copy(daemon_log, tmp_path / "c", files)
    code, report = verify(daemon_log, paths)
    assert code == 1
    assert first_break(report) == ("seq_gap", target.seq, str(paths[1]), target.line)


def test_forged_promote_inserted_without_the_key_is_caught(
    daemon_log: DaemonLog, tmp_path: Path
) -> None:
    """An attacker without the HMAC key inserts a well-formed, correctly linked record."""
    after = daemon_log.find("artifact.revoke", 2)
    template = daemon_log.find("artifact.promote", 2).record
    forged = {
        **template,
        "seq": after.seq + 1,
        "prev_hash": after.record["record_hash"],
        "ts": after.record["ts"],
        "target": after.record["target"],  # "un-revoke" the revoked artifact
        "from_state": "revoked",
        "to_state": "trusted",
    }
    wrong_key = b"attacker-guess-" + b"k" * 32
    files = daemon_log.copy()
    files[2].insert(after.line, reseal(wrong_key, forged))
    paths = write_copy(daemon_log, tmp_path / "c", files)
    code, report = verify(daemon_log, paths)
    assert code == 1
    assert first_break(report) == ("self_mismatch", after.seq + 1, str(paths[2]), after.line + 1)


def test_truncated_tail_passes_the_chain_but_not_the_checkpoint(
    daemon_log: DaemonLog, tmp_path: Path
) -> None:
    files = daemon_log.copy()
    cut = 3
    first_missing = daemon_log.entry(daemon_log.head - cut + 1)
    del files[2][-cut:]
    paths = write_copy(daemon_log, tmp_path / "c", files)
    # The HMAC chain alone cannot see a clean cut at a record boundary (documented) ...
    code, report = verify(daemon_log, paths, checkpoint=False)
    assert code == 0 and report["head_seq"] == daemon_log.head - cut
    # ... the signed shutdown checkpoint can, and points at the first missing record.
    code, report = verify(daemon_log, paths)
    assert code == 1
    assert first_missing.file == 2
    assert first_break(report) == (
        "truncated",
        first_missing.seq,
        str(paths[2]),
        first_missing.line,
    )


def test_rotated_files_swapped_in_the_directory_are_caught(
    daemon_log: DaemonLog, tmp_path: Path
) -> None:
    files = daemon_log.copy()
    files[0], files[1] = files[1], files[0]
    paths = write_copy(daemon_log, tmp_path / "c", files)
    # The directory form orders files by name, so the swap is invisible to the caller.
    code, report = verify(daemon_log, [tmp_path / "c"])
    assert code == 1
    assert first_break(report) == ("seq_gap", 1, str(paths[0]), 1)


def test_one_byte_of_prev_hash_flipped_is_caught(daemon_log: DaemonLog, tmp_path: Path) -> None:
    target = daemon_log.find("artifact.revoke", 1)
    prev = target.record["prev_hash"].encode()
    flipped = prev[:10] + (b"a" if prev[10:11] != b"a" else b"b") + prev[11:]
    files = daemon_log.copy()
    files[1][target.line - 1] = replace_once(
        files[1][target.line - 1], b'"prev_hash":"' + prev, b'"prev_hash":"' + flipped
    )
    paths = write_copy(daemon_log, tmp_path / "c", files)
    code, report = verify(daemon_log, paths)
    assert code == 1
    assert first_break(report) == ("self_mismatch", target.seq, str(paths[1]), target.line)


def test_bom_added_to_the_current_file_is_a_malformed_line(
    daemon_log: DaemonLog, tmp_path: Path
) -> None:
    first = next(e for e in daemon_log.entries if e.file == 2)
    files = daemon_log.copy()
    files[2][0] = b"\xef\xbb\xbf" + files[2][0]
    paths = write_copy(daemon_log, tmp_path / "c", files)
    code, report = verify(daemon_log, paths)
    assert code == 1
    assert first_break(report) == ("malformed_line", first.seq, str(paths[2]), 1)
    assert "byte order mark" in report["breaks"][0]["detail"]
    # Resynchronised: no cascade through the chain. The signed Merkle root commits to the
    # exact line bytes, so the checkpoint sees the extra three bytes as well.
    assert [b["kind"] for b in report["breaks"]] == ["malformed_line", "checkpoint_mismatch"]


def test_invalid_utf8_inside_a_fetch_record_is_a_malformed_line(
    daemon_log: DaemonLog, tmp_path: Path
) -> None:
    target = daemon_log.find("artifact.fetch", 0)
    files = daemon_log.copy()
    files[0][target.line - 1] = replace_once(
        files[0][target.line - 1], b'"principal":"admin"', b'"principal":"adm\xc3\x28n"'
    )
    paths = write_copy(daemon_log, tmp_path / "c", files)
    code, report = verify(daemon_log, paths)
    assert code == 1
    assert first_break(report) == ("malformed_line", target.seq, str(paths[0]), target.line)
    assert "UTF-8" in report["breaks"][0]["detail"]


@pytest.mark.parametrize("resealed", [False, True], ids=["plain", "resealed-with-key"])
def test_field_dropped_from_an_ingest_record_is_a_malformed_line(
    daemon_log: DaemonLog, tmp_path: Path, resealed: bool
) -> None:
    target = daemon_log.find("artifact.ingest", 2)
    files = daemon_log.copy()
    if resealed:  # even an insider with the HMAC key cannot make it schema-valid
        rec = {k: v for k, v in target.record.items() if k != "purpose"}
        files[2][target.line - 1] = reseal(daemon_log.key, rec)
    else:
        files[2][target.line - 1] = replace_once(files[2][target.line - 1], b'"purpose":null,', b"")
    paths = write_copy(daemon_log, tmp_path / "c", files)
    code, report = verify(daemon_log, paths)
    assert code == 1
    assert first_break(report) == ("malformed_line", target.seq, str(paths[2]), target.line)
    assert "purpose" in report["breaks"][0]["detail"]


@pytest.mark.parametrize("resealed", [False, True], ids=["plain", "resealed-with-key"])
def test_bad_enum_value_in_a_promote_record_is_a_malformed_line(
    daemon_log: DaemonLog, tmp_path: Path, resealed: bool
) -> None:
    target = daemon_log.find("artifact.promote", 2)
    files = daemon_log.copy()
    if resealed:
        files[2][target.line - 1] = reseal(daemon_log.key, {**target.record, "decision": "maybe"})
    else:
        files[2][target.line - 1] = replace_once(
            files[2][target.line - 1], b'"decision":"allow"', b'"decision":"maybe"'
        )
    paths = write_copy(daemon_log, tmp_path / "c", files)
    code, report = verify(daemon_log, paths)
    assert code == 1
    assert first_break(report) == ("malformed_line", target.seq, str(paths[2]), target.line)


def test_rewrite_by_an_hmac_key_thief_is_caught_only_by_the_checkpoint(
    daemon_log: DaemonLog, tmp_path: Path
) -> None:
    """Turn the last revoke into an allow-nothing read and re-chain every later record."""
    target = daemon_log.find("artifact.revoke", 2)
    files = daemon_log.copy()
    prev = target.record["prev_hash"]
    for e in daemon_log.entries[target.seq - 1 :]:
        rec = dict(e.record)
        if e.seq == target.seq:
            rec.update(action="http.request", from_state=None, to_state=None, reasons=[])
        rec["prev_hash"] = prev
        line = reseal(daemon_log.key, rec)
        prev = line[line.rindex(HASH_MEMBER) + len(HASH_MEMBER) : -2].decode()
        files[e.file][e.line - 1] = line
    paths = write_copy(daemon_log, tmp_path / "c", files)
    code, report = verify(daemon_log, paths, checkpoint=False)
    assert code == 0, report["breaks"]  # the chain is consistent again
    code, report = verify(daemon_log, paths)
    assert code == 1
    kind, seq, _file, _line = first_break(report)
    assert (kind, seq) == ("checkpoint_mismatch", daemon_log.head)
