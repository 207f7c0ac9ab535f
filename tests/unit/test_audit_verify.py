"""Tamper matrix on real logs written by ``AuditLog``: every change detected *and* located."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from assay.cli.main import main
from assay.core.audit import files
from assay.core.audit.chain import canonical
from assay.core.audit.checkpoint import Checkpoint, sign_checkpoint
from assay.core.audit.keys import private_pem, public_pem
from assay.core.audit.verify import VerifyReport
from tests.unit.audit_util import (
    KEY,
    OTHER_KEY,
    SIGNING,
    TS,
    forge_line,
    lines_of,
    open_log,
    read_files,
    record_at,
    verify_bytes,
    write_log,
)

N = 30
Files = list[tuple[str, bytes]]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Files, Checkpoint]:
    """30 records over 3 rotated files plus the current one, and a checkpoint of all."""
    d = tmp_path_factory.mktemp("log")
    write_log(d, N, rotate_bytes=6000, signing_key=SIGNING, checkpoint_every=N)
    with open_log(d, signing_key=SIGNING) as log:
        cp = log.latest_checkpoint
    assert cp is not None and cp.size == N
    contents = read_files(d)
    assert len(contents) >= 3
    return contents, cp


def locate(contents: Files, seq: int) -> tuple[int, int]:
    """(file index, 0-based line index) of record ``seq``."""
    for fi, (_name, data) in enumerate(contents):
        for li, line in enumerate(lines_of(data)):
            if json.loads(line)["seq"] == seq:
                return fi, li
    raise AssertionError(seq)


def edit(contents: Files, fi: int, new: bytes) -> Files:
    out = list(contents)
    out[fi] = (out[fi][0], new)
    return out


def replace_line(contents: Files, seq: int, new: list[bytes]) -> tuple[Files, str, int]:
    fi, li = locate(contents, seq)
    lines = lines_of(contents[fi][1])
    lines[li : li + 1] = new
    return edit(contents, fi, b"".join(x + b"\n" for x in lines)), contents[fi][0], li + 1


def relayout(rec: dict[str, Any]) -> bytes:
    """The writer's line layout for ``rec`` keeping its (now stale) record_hash."""
    body = {k: v for k, v in rec.items() if k != "record_hash"}
    return canonical(body)[:-1] + b',"record_hash":"' + str(rec["record_hash"]).encode() + b'"}'


def first(report: VerifyReport) -> tuple[str, int | None, str, int | None]:
    assert not report.ok, "tampering went undetected"
    b = report.breaks[0]
    return b.kind, b.seq, b.file, b.line


def test_clean_log_verifies_with_and_without_checkpoint(base: tuple[Files, Checkpoint]) -> None:
    contents, cp = base
    report = verify_bytes(contents)
    assert report.ok and report.records == N and report.head_seq == N
    assert report.head_hash == cp.head_hash
    report = verify_bytes(contents, checkpoint=cp)
    assert report.ok and report.checkpoints_checked == 1


def test_every_single_byte_change_of_a_record_is_located(base: tuple[Files, Checkpoint]) -> None:
    contents, _cp = base
    fi, li = locate(contents, 14)
    name, data = contents[fi]
    start = sum(len(x) + 1 for x in lines_of(data)[:li])
    line_len = len(lines_of(data)[li])
    for pos in range(start, start + line_len):
        mutated = bytearray(data)
        mutated[pos] ^= 0x01
        kind, seq, where, line = first(verify_bytes(edit(contents, fi, bytes(mutated))))
        assert (seq, where, line) == (14, name, li + 1), (pos - start, kind)


def test_deleted_record(base: tuple[Files, Checkpoint]) -> None:
    contents, cp = base
    tampered, name, line = replace_line(contents, 12, [])
    assert first(verify_bytes(tampered)) == ("seq_gap", 12, name, line)
    assert first(verify_bytes(tampered, checkpoint=cp)) == ("seq_gap", 12, name, line)


def test_reordered_records(base: tuple[Files, Checkpoint]) -> None:
    contents, _cp = base
    fi, li = locate(contents, 17)
    lines = lines_of(contents[fi][1])
    lines[li], lines[li + 1] = lines[li + 1], lines[li]
    tampered = edit(contents, fi, b"".join(x + b"\n" for x in lines))
    assert first(verify_bytes(tampered)) == ("seq_gap", 17, contents[fi][0], li + 1)


def test_inserted_forged_record(base: tuple[Files, Checkpoint]) -> None:
    contents, _cp = base
    fi, li = locate(contents, 8)
    prev = record_at(contents[fi][1], li)
    forged = {**prev, "seq": 9, "prev_hash": prev["record_hash"], "principal": "mallory"}
    line9 = lines_of(contents[fi][1])[li + 1]
    tampered, name, line = replace_line(contents, 9, [forge_line(forged, OTHER_KEY), line9])
    assert first(verify_bytes(tampered)) == ("self_mismatch", 9, name, line)


def test_flipped_prev_hash_byte(base: tuple[Files, Checkpoint]) -> None:
    contents, _cp = base
    fi, li = locate(contents, 21)
    line = lines_of(contents[fi][1])[li]
    pos = line.index(b'"prev_hash":"') + len(b'"prev_hash":"') + 5
    flipped = line[:pos] + (b"0" if line[pos : pos + 1] != b"0" else b"1") + line[pos + 1 :]
    tampered, name, lineno = replace_line(contents, 21, [flipped])
    assert first(verify_bytes(tampered)) == ("self_mismatch", 21, name, lineno)


def test_truncated_tail_needs_the_checkpoint(base: tuple[Files, Checkpoint]) -> None:
    contents, cp = base
    fi, li = locate(contents, 28)
    lines = lines_of(contents[fi][1])[:li]
    tampered = edit(contents, fi, b"".join(x + b"\n" for x in lines))[: fi + 1]
    assert verify_bytes(tampered).ok  # a clean cut is invisible to the chain alone
    report = verify_bytes(tampered, checkpoint=cp)
    assert first(report) == ("truncated", 28, contents[fi][0], li + 1)


def test_torn_last_line_is_truncated(base: tuple[Files, Checkpoint]) -> None:
    contents, _cp = base
    name, data = contents[-1]
    torn = edit(contents, len(contents) - 1, data[:-40])
    assert first(verify_bytes(torn)) == ("truncated", N, name, len(lines_of(data)))


def test_swapped_rotated_files(base: tuple[Files, Checkpoint]) -> None:
    contents, _cp = base
    (n1, d1), (n2, d2) = contents[0], contents[1]
    swapped = [(n1, d2), (n2, d1), *contents[2:]]
    assert first(verify_bytes(swapped)) == ("seq_gap", 1, n1, 1)


def test_bom_is_malformed_and_resynchronised(base: tuple[Files, Checkpoint]) -> None:
    contents, _cp = base
    name, data = contents[0]
    report = verify_bytes(edit(contents, 0, b"\xef\xbb\xbf" + data))
    assert first(report) == ("malformed_line", 1, name, 1)
    assert "byte order mark" in report.breaks[0].detail and report.breaks_total == 1
    # The chain resynchronises, but the checkpoint's Merkle root covers the exact bytes.
    report = verify_bytes(edit(contents, 0, b"\xef\xbb\xbf" + data), checkpoint=base[1])
    assert [b.kind for b in report.breaks] == ["malformed_line", "checkpoint_mismatch"]
    assert "Merkle root" in report.breaks[1].detail


def test_invalid_utf8(base: tuple[Files, Checkpoint]) -> None:
    contents, _cp = base
    fi, li = locate(contents, 5)
    line = lines_of(contents[fi][1])[li]
    pos = line.index(b"user-") + 2
    tampered, name, lineno = replace_line(contents, 5, [line[:pos] + b"\xff" + line[pos + 1 :]])
    report = verify_bytes(tampered)
    assert first(report) == ("malformed_line", 5, name, lineno)
    assert report.breaks[0].detail == "invalid UTF-8" and report.breaks_total == 1
    # A whole inserted line of garbage: one break, the chain around it still links.
    inserted, name, lineno = replace_line(contents, 5, [line, b"\xc3\x28\xa0\xa1"])
    report = verify_bytes(inserted)
    assert first(report) == ("malformed_line", 6, name, lineno + 1)
    assert report.breaks_total == 1


def test_dropped_field(base: tuple[Files, Checkpoint]) -> None:
    contents, _cp = base
    fi, li = locate(contents, 23)
    rec = record_at(contents[fi][1], li)
    del rec["purpose"]  # without the key: the stored record_hash is kept as it was
    tampered, name, lineno = replace_line(contents, 23, [relayout(rec)])
    report = verify_bytes(tampered)
    assert first(report) == ("malformed_line", 23, name, lineno)
    assert "missing field(s) purpose" in report.breaks[0].detail and report.breaks_total == 1


def test_bad_enum_value_even_with_a_valid_mac(base: tuple[Files, Checkpoint]) -> None:
    contents, _cp = base
    fi, li = locate(contents, 3)
    lines = [x for _n, d in contents[:fi] for x in lines_of(d)] + lines_of(contents[fi][1])
    # Sealed with the real key and re-chained: only the schema check can catch it.
    rewritten = _rechain(lines, len(lines) - len(lines_of(contents[fi][1])) + li,
                         {"auth_mode": "root"})  # fmt: skip
    merged = [("audit.jsonl", b"".join(x + b"\n" for x in rewritten))]
    report = verify_bytes(merged)
    assert first(report) == ("malformed_line", 3, "audit.jsonl", 3)
    assert "auth_mode" in report.breaks[0].detail and report.breaks_total == 1


def _rechain(lines: list[bytes], start: int, change: dict[str, Any]) -> list[bytes]:
    """What a thief of the HMAC key can do: edit one record and re-seal all after it."""
    out = list(lines[:start])
    prev = json.loads(out[-1])["record_hash"] if out else "0" * 64
    for i, raw in enumerate(lines[start:]):
        rec = json.loads(raw)
        if i == 0:
            rec.update(change)
        rec["prev_hash"] = prev
        new = forge_line(rec)
        prev = json.loads(new)["record_hash"]
        out.append(new)
    return out


def test_rewrite_by_hmac_key_holder_is_caught_by_the_checkpoint(
    base: tuple[Files, Checkpoint],
) -> None:
    contents, cp = base
    lines = [x for _n, d in contents for x in lines_of(d)]
    rewritten = _rechain(lines, 9, {"to_state": "revoked"})
    merged = [("audit.jsonl", b"".join(x + b"\n" for x in rewritten))]
    assert verify_bytes(merged).ok  # the chain alone cannot tell
    report = verify_bytes(merged, checkpoint=cp)
    assert first(report) == ("checkpoint_mismatch", N, "audit.jsonl", N)


def test_rollback_then_new_history_is_caught_by_the_checkpoint(
    base: tuple[Files, Checkpoint],
) -> None:
    contents, cp = base
    lines = [x for _n, d in contents for x in lines_of(d)][:20]
    extra = []
    prev = json.loads(lines[-1])
    for seq in range(21, 36):
        rec = {**prev, "seq": seq, "prev_hash": prev["record_hash"], "target": "rolled"}
        line = forge_line(rec)
        extra.append(line)
        prev = json.loads(line)
    merged = [("audit.jsonl", b"".join(x + b"\n" for x in lines + extra))]
    assert verify_bytes(merged).ok
    assert first(verify_bytes(merged, checkpoint=cp)) == (
        "checkpoint_mismatch",
        N,
        "audit.jsonl",
        N,
    )


def test_checkpoint_signature_problems(base: tuple[Files, Checkpoint]) -> None:
    contents, cp = base
    forged = Checkpoint(**{**cp.to_dict(), "size": 3})
    report = verify_bytes(contents, checkpoint=forged)
    assert first(report) == ("bad_signature", 3, "<checkpoint>", None)
    stranger = Ed25519PrivateKey.generate()
    other = sign_checkpoint(stranger, log_id="assay", size=N, head_hash=cp.head_hash,
                            merkle_root=cp.merkle_root, ts=TS)  # fmt: skip
    assert first(verify_bytes(contents, checkpoint=other))[0] == "unknown_key"
    assert first(verify_bytes(contents, checkpoint=cp, public_keys=()))[0] == "unknown_key"
    # Several checkpoints at once, e.g. all of checkpoints.jsonl; each size is compared.
    two = sign_checkpoint(SIGNING, log_id="assay", size=2, head_hash="f" * 64,
                          merkle_root=cp.merkle_root, ts=TS)  # fmt: skip
    report = verify_bytes(contents, checkpoint=[cp, two])
    assert first(report)[:2] == ("checkpoint_mismatch", 2) and report.checkpoints_checked == 2


def test_blank_and_oversized_lines(base: tuple[Files, Checkpoint]) -> None:
    contents, _cp = base
    fi, li = locate(contents, 6)
    line = lines_of(contents[fi][1])[li]
    blank, name, lineno = replace_line(contents, 6, [line, b""])
    report = verify_bytes(blank)
    assert first(report) == ("malformed_line", None, name, lineno + 1)
    assert report.breaks_total == 1
    huge, name, lineno = replace_line(contents, 6, [line, b"{" + b"x" * (2 * 1024 * 1024)])
    for chunk in (None, 65536, 1_000_003):
        report = verify_bytes(huge, chunk=chunk)
        assert first(report) == ("malformed_line", 7, name, lineno + 1), chunk
        assert "longer than" in report.breaks[0].detail and report.breaks_total == 1


def test_chunking_never_changes_the_result(base: tuple[Files, Checkpoint]) -> None:
    contents, cp = base
    tampered, _n, _l = replace_line(contents, 12, [])
    tampered = edit(tampered, 0, b"\xef\xbb\xbf" + tampered[0][1] + b"\n")
    whole = verify_bytes(tampered, checkpoint=cp)
    for chunk in (1, 7, 4096):
        assert verify_bytes(tampered, checkpoint=cp, chunk=chunk).breaks == whole.breaks


def test_without_the_key_order_and_layout_are_still_checked(
    base: tuple[Files, Checkpoint],
) -> None:
    contents, cp = base
    report = verify_bytes(contents, key=None, checkpoint=cp)
    assert report.ok and not report.authenticated
    fi, li = locate(contents, 4)
    line = lines_of(contents[fi][1])[li]
    spaced, name, lineno = replace_line(contents, 4, [line.replace(b'","', b'", "', 1)])
    assert first(verify_bytes(spaced, key=None)) == ("malformed_line", 4, name, lineno)
    assert first(verify_bytes(contents, key=OTHER_KEY))[0] == "self_mismatch"


# -- CLI --------------------------------------------------------------------------------


@pytest.fixture
def deployed(tmp_path: Path) -> Path:
    (tmp_path / "hmac.key").write_bytes(KEY.hex().encode())
    (tmp_path / "hmac.key").chmod(0o600)
    (tmp_path / "signing.key").write_bytes(private_pem(SIGNING))
    (tmp_path / "signing.key").chmod(0o600)
    (tmp_path / "signing.pub").write_bytes(public_pem(SIGNING.public_key()))
    return tmp_path


def _cli_log(tmp: Path, n: int = 12) -> Path:
    from assay.core.audit.log import AuditLog

    d = tmp / "audit"
    with AuditLog(d, KEY.hex().encode(), signing_key=SIGNING, rotate_bytes=3000,
                  checkpoint_every=5) as log:  # fmt: skip
        from tests.unit.audit_util import fields

        for i in range(n):
            log.append(fields(i))
    return d


def test_cli_verify_exit_codes(deployed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = _cli_log(deployed)
    key, pub = str(deployed / "hmac.key"), str(deployed / "signing.pub")
    cps = str(d / files.CHECKPOINTS)
    assert main(["audit", "verify", str(d), "--key-file", key, "--checkpoint", cps,
                 "--public-key", pub]) == 0  # fmt: skip
    assert "intact: 12 records" in capsys.readouterr().out

    paths = files.segment_paths(d)
    lines = paths[0].read_bytes().split(b"\n")
    paths[0].write_bytes(b"\n".join(lines[:1] + lines[2:]))
    assert main(["audit", "verify", *map(str, paths), "--key-file", key, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["breaks"][0]["kind"] == "seq_gap"
    assert out["breaks"][0]["seq"] == 2 and out["breaks"][0]["line"] == 2

    assert main(["audit", "verify", str(d), "--key-file", str(deployed / "missing")]) == 2
    assert main(["audit", "verify", str(deployed / "nope.jsonl")]) == 2
    assert main(["audit", "verify", str(d), "--checkpoint", cps]) == 2  # no --public-key
    weak = deployed / "weak.key"
    weak.write_bytes(b"short")
    weak.chmod(0o600)
    assert main(["audit", "verify", str(d), "--key-file", str(weak)]) == 2
    capsys.readouterr()
