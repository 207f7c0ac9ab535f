"""``assay audit ...``, ``assay receipt verify`` and ``assay keys generate`` (all offline).

``audit verify`` exits 0 when the log is intact, 1 with every break listed by seq and
file:line, 2 on a usage or I/O problem (a missing or unreadable file: the check could
not run, which is not the same as a broken log). The other commands raise typed errors
and let ``assay.cli.main`` map them to exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from assay.cli.errors import InputUnreadable
from assay.cli.options import json_option, text_arg
from assay.cli.output import emit_json
from assay.cli.paths import input_dir, show
from assay.core.errors import AssayError, ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from assay.core.audit.checkpoint import Checkpoint
    from assay.core.audit.verify import VerifyReport

#: Breaks printed in text mode (``--json`` lists up to ``--max-breaks``).
SHOW_BREAKS = 50


class AuditInputError(ConfigError):
    """A CLI input (log file, key, checkpoint) is missing or unusable: exit code 2.

    Defined here until it moves to ``assay.core.errors``.
    """

    code = "audit.input_invalid"
    title = "Audit command input unusable"


def _public_key_option(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--public-key", type=Path, action="append", default=None if required else [],
                   required=required, metavar="FILE",
                   help="a trusted Ed25519 public key (PEM); repeat the flag for each "
                   "rotated key")  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = sub.add_parser("audit", help="verify, prove and recover the audit log (offline)")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")

    p = asub.add_parser("verify", help="verify log files; exit 0 intact, 1 broken, 2 error")
    p.add_argument("logs", nargs="+", metavar="LOG",
                   help="log files in order, or audit directories (read as a consistent "
                   "snapshot of a live log)")  # fmt: skip
    p.add_argument("--key-file", type=Path, metavar="FILE",
                   help="the log's HMAC key (without it the chain is checked but not "
                   "authenticated)")  # fmt: skip
    p.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="a file of signed checkpoints (JSON lines) the log must extend",
    )
    _public_key_option(p, required=False)
    p.add_argument(
        "--max-breaks",
        type=int,
        default=1000,
        metavar="N",
        help="keep at most N breaks in the report (all are counted; default 1000)",
    )
    json_option(p)
    p.set_defaults(func=cmd_verify)

    p = asub.add_parser("recover", help="move a torn tail aside and record the recovery")
    p.add_argument("dir", type=Path, metavar="DIR", help="the audit log directory")
    p.add_argument(
        "--key-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="the log's HMAC key (the recovery record is chained with it)",
    )
    p.add_argument(
        "--signing-key",
        type=Path,
        metavar="FILE",
        help="sign a checkpoint after recovering with this Ed25519 private key",
    )
    p.add_argument(
        "--log-id",
        default="assay",
        metavar="ID",
        type=text_arg,
        help="the log's id, as in audit.log_id (default assay)",
    )
    json_option(p)
    p.set_defaults(func=cmd_recover)

    p = asub.add_parser("prove", help="inclusion proof of record SEQ against the latest checkpoint")
    p.add_argument("seq", type=int, metavar="SEQ", help="the record's sequence number")
    p.add_argument("--dir", type=Path, required=True, metavar="DIR", help="the audit log directory")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the proof object only (save it for `assay audit verify-proof`)",
    )
    p.set_defaults(func=cmd_prove)

    p = asub.add_parser("verify-proof", help="check an inclusion proof with a public key")
    p.add_argument("proof", metavar="PROOF", help="proof JSON file, or - for stdin")
    _public_key_option(p, required=True)
    json_option(p)
    p.set_defaults(func=cmd_verify_proof)

    receipt = sub.add_parser("receipt", help="verify a signed mutation receipt (offline)")
    rsub = receipt.add_subparsers(dest="receipt_command", required=True, metavar="ACTION")
    p = rsub.add_parser("verify", help="check a receipt's signature (and that the log has it)")
    p.add_argument("receipt", metavar="RECEIPT",
                   help="the Assay-Receipt header value, its JSON, a file holding either, "
                   "or - for stdin")  # fmt: skip
    _public_key_option(p, required=True)
    p.add_argument(
        "--log",
        type=Path,
        metavar="DIR",
        help="also check that this audit log directory holds the record",
    )
    json_option(p)
    p.set_defaults(func=cmd_receipt_verify)

    keys = sub.add_parser("keys", help="audit signing keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    p = ksub.add_parser("generate", help="create audit-signing.key (0600) and .pub (0644)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory for the key pair; created if missing",
    )
    p.add_argument("--force", action="store_true", help="replace existing key files")
    json_option(p)
    p.set_defaults(func=cmd_keys_generate)


# -- inputs --------------------------------------------------------------------------------


def _log_inputs(stack: contextlib.ExitStack, args: list[str]) -> list[tuple[str, Iterator[bytes]]]:
    """``(name, chunks)`` per log file; a directory is a consistent snapshot of a live log."""
    from assay.core.audit import files

    out: list[tuple[str, Iterator[bytes]]] = []
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            snap = stack.enter_context(files.snapshot(path))
            if not snap:
                raise AuditInputError(f"{path} holds no audit log files")
            out.extend((str(p), files.chunks(fd, 0, size)) for p, fd, size in snap)
        elif path.is_file():
            out.append((str(path), files.file_chunks(path)))
        else:
            raise InputUnreadable(f"cannot read {path}: no such log file or directory")
    return out


def _public_keys(paths: list[Path]) -> list[Ed25519PublicKey]:
    from assay.core.audit.keys import load_public_key

    try:
        return [load_public_key(p) for p in paths]
    except AssayError as exc:
        raise AuditInputError(exc.detail) from None


def _hmac_key(path: Path | None) -> bytes | None:
    from assay.core.audit.keys import load_hmac_key

    if path is None:
        return None
    try:
        return load_hmac_key(path)
    except AssayError as exc:
        raise AuditInputError(exc.detail) from None


#: Signed checkpoints are a few hundred bytes each: a million of them fit.
MAX_CHECKPOINT_BYTES = 512 * 1024 * 1024


def _checkpoints(path: Path) -> list[Checkpoint]:
    from assay.cli.paths import read_input
    from assay.core.audit.checkpoint import parse_checkpoint

    # A regular file, bounded: a FIFO or device is refused, not waited on.
    lines = read_input(path, max_bytes=MAX_CHECKPOINT_BYTES, what="checkpoint file").splitlines()
    cps: list[Checkpoint] = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                cps.append(parse_checkpoint(line))
            except AssayError as exc:  # e.g. a line torn by a crash mid-append
                print(f"assay: skipping {path}:{n}: {exc.detail}", file=sys.stderr)
    if not cps:
        raise AuditInputError(f"{path} holds no checkpoint")
    return cps


def _text_arg(value: str) -> str:
    """A literal argument, ``-`` for stdin, or the contents of the file it names."""
    if value == "-":
        return sys.stdin.read()
    path = Path(value)
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a header value longer than a file name may be
        is_file = False
    if is_file:
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputUnreadable(f"cannot read {path}: {exc}") from None
    return value


# -- commands ------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    from assay.core.audit.verify import verify_stream

    key = _hmac_key(args.key_file)
    cps = _checkpoints(args.checkpoint) if args.checkpoint else []
    if cps and not args.public_key:
        raise AuditInputError("--checkpoint needs --public-key to authenticate it")
    public = _public_keys(args.public_key)
    try:
        with contextlib.ExitStack() as stack:
            inputs = _log_inputs(stack, args.logs)
            report = verify_stream(inputs, key, cps, public, max_breaks=args.max_breaks)
    except OSError as exc:
        raise InputUnreadable(f"reading the log failed: {exc.strerror or exc}") from None
    if args.json:
        emit_json(report.to_dict())
    else:
        auth = "authenticated" if report.authenticated else "NOT authenticated (no --key-file)"
        state = "intact" if report.ok else f"BROKEN: {report.breaks_total} break(s)"
        print(f"audit log {state}: {report.records} records in {len(report.files)} file(s), "
              f"head seq {report.head_seq}, {auth}, "
              f"{report.checkpoints_checked} checkpoint(s) checked")  # fmt: skip
        shown = report.breaks[:SHOW_BREAKS]
        for b in shown:
            print(f"  {b}")
        if report.breaks_total > len(shown):
            print(f"  ... and {report.breaks_total - len(shown)} more (--json lists them)")
        hint = key_hint(report)
        if hint:
            print(f"  hint: {hint}")
    return 0 if report.ok else 1


def key_hint(report: VerifyReport) -> str | None:
    """A hint that the key, not the log, is wrong: only when *every* record fails its
    HMAC and nothing else is wrong. One edited record among others is a break in the
    log, and says nothing about the key."""
    if not report.authenticated or report.records == 0:
        return None
    if report.breaks_total != report.records:
        return None  # some records authenticate, or there are other breaks too
    if not all(b.kind == "self_mismatch" for b in report.breaks):
        return None
    if report.records == 1:
        return ("is --key-file the log's key? (the log's only record fails its HMAC: "
                "either the key is wrong or the record was altered)")  # fmt: skip
    return "every record fails its HMAC; is --key-file the log's key?"


def cmd_recover(args: argparse.Namespace) -> int:
    from assay.core.audit import files
    from assay.core.audit.keys import load_private_key
    from assay.core.audit.log import AuditLog

    key = _hmac_key(args.key_file)
    assert key is not None
    signing = load_private_key(args.signing_key) if args.signing_key else None
    if not files.is_log_dir(input_dir(args.dir, what="DIR")):
        raise AuditInputError(f"{show(args.dir)} is not an audit log directory")
    record = AuditLog.recover(args.dir, key, log_id=args.log_id, signing_key=signing)
    if args.json:
        emit_json({"recovered": record is not None, "record": record})
    elif record is None:
        print("nothing to recover: the log ends cleanly")
    else:
        extra: dict[str, Any] = record["extra"]
        print(f"recovered: {extra['torn_bytes']} torn byte(s) moved to {extra['torn_file']} "
              f"(sha256 {extra['torn_sha256']}); recorded as seq {record['seq']}")  # fmt: skip
    return 0


def cmd_prove(args: argparse.Namespace) -> int:
    from assay.core.audit import files
    from assay.core.audit.reader import prove

    if not files.is_log_dir(input_dir(args.dir, what="--dir")):
        raise AuditInputError(f"{show(args.dir)} is not an audit log directory")
    proof = prove(args.dir, args.seq)
    if args.json:
        emit_json(proof.to_dict())
    else:
        print(f"record {proof.seq} is included in checkpoint size {proof.size} "
              f"(root {proof.checkpoint.merkle_root}, {len(proof.path)} path hashes)")  # fmt: skip
        print("use --json to save the proof for `assay audit verify-proof`")
    return 0


def cmd_verify_proof(args: argparse.Namespace) -> int:
    from assay.core.audit.checkpoint import parse_proof, verify_proof

    proof = parse_proof(_text_arg(args.proof))
    record = verify_proof(proof, _public_keys(args.public_key))
    if args.json:
        emit_json({"ok": True, "seq": proof.seq, "checkpoint_size": proof.size, "record": record})
    else:
        print(
            f"proof ok: record {proof.seq} ({record.get('action')}) is in the log "
            f"under checkpoint size {proof.size} signed by {proof.checkpoint.key_id}"
        )
    return 0


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    from assay.core.audit.receipt import verify_receipt

    receipt = verify_receipt(_text_arg(args.receipt), _public_keys(args.public_key))
    in_log = None
    if args.log is not None:
        in_log = _receipt_in_log(args.log, receipt.seq, receipt.record_hash)
    if args.json:
        emit_json({"ok": True, "receipt": receipt.to_dict(), "in_log": in_log})
    else:
        present = " and present in the log" if in_log else ""
        print(
            f"receipt ok: seq {receipt.seq} {receipt.action} {receipt.target or ''} "
            f"signed by {receipt.key_id}{present}"
        )
    return 0


def _receipt_in_log(directory: Path, seq: int, record_hash: str) -> bool:
    """Find line ``seq`` and compare its hash; ``ChainBroken`` if missing or different."""
    import json

    from assay.core.audit import files
    from assay.core.errors import ChainBroken

    if not files.is_log_dir(input_dir(directory, what="--log")):
        raise AuditInputError(f"{show(directory)} is not an audit log directory")
    needle = f'"seq":{seq},'.encode()
    with files.snapshot(directory) as snap:
        found = [line for _p, fd, size in snap for _e, line in files.lines(fd, 0, size)
                 if needle in line]  # fmt: skip
    for line in found:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("seq") == seq:
            if rec.get("record_hash") != record_hash:
                raise ChainBroken(f"log record {seq} differs from the receipt: history "
                                  "was rewritten", code="audit.receipt_mismatch")  # fmt: skip
            return True
    raise ChainBroken(f"log has no record {seq}: it was truncated or rolled back",
                      code="audit.receipt_mismatch")  # fmt: skip


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from assay.cli.paths import output_dir, written
    from assay.core.audit.keys import generate_keypair, key_id_of

    output_dir(args.out, what="--out")
    try:
        priv, pub = generate_keypair(args.out, overwrite=args.force)
    except OSError as exc:
        raise written(exc, f"--out {args.out}") from None
    kid = key_id_of(pub)
    if args.json:
        emit_json({"private_key": str(priv), "public_key": str(pub), "key_id": kid})
    else:
        print(f"wrote {priv} (0600) and {pub} (0644); key_id {kid}")
    return 0
