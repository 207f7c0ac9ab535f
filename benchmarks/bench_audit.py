#!/usr/bin/env python3
"""Audit benchmark: durable appends/s with group commit, and verification records/s.

    .venv/bin/python benchmarks/bench_audit.py [--writers 50] [--seconds 5]
                                                [--records 300000] [--dir DIR]

1. Durable appends. Baseline: ``AuditLog.append`` one record at a time, so one real
   fsync per record (what a log without group commit does). Then ``AuditWriter`` with N
   concurrent trio tasks each appending in a loop; every append returns only once its
   batch is fsynced. Both on the same file system, in the same run; printed as a ratio.
2. Verification. A log of ``--records`` realistic records (rotated at 64 MiB) verified
   by ``verify_stream`` (HMAC chain, schema, order), then again against a checkpoint
   (adds the Merkle tree), then by the ``assay audit verify`` CLI end to end. Baseline:
   SHA-256 of the same bytes with hashlib and with ``sha256sum`` (I/O + hashing only).

Figures, not assertions: nothing here fails on a slow machine. Best of 3 for the
verification timings (other work on the host adds noise).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "daemon"))

import trio  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from assay.core.audit import files  # noqa: E402
from assay.core.audit.keys import private_pem, public_pem  # noqa: E402
from assay.core.audit.log import AuditLog  # noqa: E402
from assay.core.audit.schema import make_fields  # noqa: E402
from assay.core.audit.verify import verify_stream  # noqa: E402
from assay.core.audit.writer import AuditWriter  # noqa: E402

KEY = os.urandom(32).hex().encode()


def record(i: int) -> dict[str, Any]:
    """A typical registry mutation record (about 600 bytes on disk)."""
    return make_fields(
        "artifact.promote", auth_mode="token", principal=f"ci-{i % 7}",
        request_id=f"{i:016x}", route="POST /v1/artifacts/<digest>/promote",
        target=f"sha256:{i:064x}", from_state="quarantined", to_state="trusted",
        reasons=["policy default: all checks passed"], status=200,
        extra={"approvals": 2, "format": "safetensors"},
    )  # fmt: skip


# -- 1. durable appends --------------------------------------------------------------------


def baseline_appends(directory: Path, seconds: float) -> tuple[float, int]:
    with AuditLog(directory, KEY) as log:
        n = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            log.append(record(n))
            n += 1
        elapsed = time.perf_counter() - start
        return n / elapsed, log.stats.fsyncs


async def group_appends(directory: Path, writers: int, seconds: float) -> tuple[float, int, int]:
    writer = AuditWriter(AuditLog(directory, KEY), checkpoint_every_seconds=None)
    done = 0
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        start = trio.current_time()
        deadline = start + seconds

        async def worker(w: int) -> None:
            nonlocal done
            i = 0
            while trio.current_time() < deadline:
                await writer.append(record(w * 1_000_000 + i))
                i += 1
                done += 1

        async with trio.open_nursery() as inner:
            for w in range(writers):
                inner.start_soon(worker, w)
        elapsed = trio.current_time() - start
        stats = writer.log.stats
        fsyncs, batches = stats.fsyncs, stats.batches
        await writer.close()
    return done / elapsed, fsyncs, batches


# -- 2. verification -----------------------------------------------------------------------


def build_log(directory: Path, n: int, signing: Ed25519PrivateKey) -> None:
    with AuditLog(directory, KEY, signing_key=signing, checkpoint_every=10**9,
                  fsync=lambda _fd: None) as log:  # fmt: skip
        batch = 1000
        for start in range(0, n, batch):
            log.append_batch([record(i) for i in range(start, min(n, start + batch))])
        log.checkpoint_now()


def best_of(runs: int, fn: Any) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--writers", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory (default: $TMPDIR)")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=args.dir))
    try:
        fs = subprocess.run(["df", "-T", str(scratch)], capture_output=True, text=True).stdout
        print(f"scratch: {scratch} ({fs.splitlines()[-1].split()[1] if fs else '?'}), "
              f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")  # fmt: skip

        base_rate, base_fsyncs = baseline_appends(scratch / "baseline", args.seconds)
        print(f"baseline  1 fsync per record : {base_rate:10,.0f} durable appends/s "
              f"({base_fsyncs} fsyncs)")  # fmt: skip
        rate, fsyncs, batches = trio.run(group_appends, scratch / "group", args.writers,
                                         args.seconds)  # fmt: skip
        per_batch = rate * args.seconds / max(batches, 1)
        print(f"group commit, {args.writers} trio writers: {rate:10,.0f} durable appends/s "
              f"({fsyncs} fsyncs, {per_batch:.1f} records/batch)")  # fmt: skip
        print(f"  ratio group/baseline: {rate / base_rate:.1f}x")

        signing = Ed25519PrivateKey.generate()
        log_dir = scratch / "verify"
        build_log(log_dir, args.records, signing)
        paths = files.segment_paths(log_dir)
        size = sum(p.stat().st_size for p in paths)
        latest = files.read_latest_checkpoint(log_dir)
        assert latest is not None
        cp = latest[0]
        print(f"log: {args.records:,} records, {size / 2**20:,.0f} MiB in {len(paths)} file(s)")

        def verify(checkpoint: Any = None) -> None:
            report = verify_stream([(str(p), files.file_chunks(p)) for p in paths], KEY,
                                   checkpoint, [signing.public_key()])  # fmt: skip
            assert report.ok, report.breaks[:3]

        def sha() -> None:
            for p in paths:
                h = hashlib.sha256()
                for chunk in files.file_chunks(p):
                    h.update(chunk)

        n = args.records
        t_verify = best_of(3, verify)
        t_cp = best_of(3, lambda: verify(cp))
        t_sha = best_of(3, sha)
        print(f"verify_stream (HMAC chain)        : {n / t_verify:10,.0f} records/s")
        print(f"verify_stream + checkpoint/Merkle : {n / t_cp:10,.0f} records/s")
        slower = t_verify / t_sha
        print(f"baseline hashlib.sha256 same bytes: {n / t_sha:10,.0f} records/s "
              f"(verify is {slower:.0f}x slower: it parses and checks every record)")  # fmt: skip
        if shutil.which("sha256sum"):
            t_sum = best_of(3, lambda: subprocess.run(["sha256sum", *map(str, paths)],
                                                      check=True, capture_output=True))  # fmt: skip
            print(f"baseline sha256sum same bytes     : {n / t_sum:10,.0f} records/s")

        key_file = scratch / "hmac.key"
        key_file.write_bytes(KEY)
        key_file.chmod(0o600)
        pub = scratch / "signing.pub"
        pub.write_bytes(public_pem(signing.public_key()))
        (scratch / "signing.key").write_bytes(private_pem(signing))
        cmd = [sys.executable, "-m", "assay", "audit", "verify", str(log_dir), "--key-file",
               str(key_file), "--checkpoint", str(log_dir / files.CHECKPOINTS),
               "--public-key", str(pub)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT / "daemon")}
        t_cli = best_of(3, lambda: subprocess.run(cmd, check=True, capture_output=True, env=env))
        print(f"`assay audit verify` CLI end to end: {n / t_cli:10,.0f} records/s "
              f"({t_cli:.2f} s incl. interpreter start)")  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
