#!/usr/bin/env python3
"""Restart and listing cost against artifacts (N) and audit records (M).

    .venv/bin/python benchmarks/bench_restart.py [--artifacts 1000 5000 10000]
        [--records 0 100000 1000000] [--unreconciled 0 1000 10000] [--dir DIR]

Each deployment is made by ``assay init`` in a temp dir and filled offline by
``tests/fill.py`` through the daemon's own modules (objects, rows carrying their records'
seqs, HMAC-chained records of the shapes the web edge writes; M ordinary authenticated
reads). Then the real daemon (``python -m assay serve``) is started and measured:

1. restart: wall time from exec to the first 200 from ``/readyz``, and VmRSS then, for
   every (N, M) with the replay mark at the head (a clean shutdown). Baseline: the same
   on an empty deployment in the same run; printed as ratios.
2. crash restart: N = the largest, no reads, K promote records whose database change
   never happened (a kill -9 between record and commit, K times): restart time against K.
3. first start after an offline fill with the mark at 0: what reading M records costs
   (HMAC-verifying each), for the rare case that the daemon did not write them itself.
4. listing: ``GET /v1/artifacts`` (one page of 100) median of 20, and ``assay list
   --json`` following every page, against ``GET /healthz`` in the same run.
5. sweep: ``POST /v1/sweep`` against hashing the same files in this process (hashlib,
   warm cache): the overhead beyond hashing, per artifact.

Figures, not assertions: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "daemon")]

import httpx  # noqa: E402
from tests.fill import fill  # noqa: E402

POLL = 0.01


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Dep:
    def __init__(self, base: Path, name: str) -> None:
        self.dir = base / name
        self.port = free_port()
        out = subprocess.run(
            [sys.executable, "-m", "assay", "init", "--dir", str(self.dir), "--bind",
             f"127.0.0.1:{self.port}", "--json"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        self.token = json.loads(out.stdout)["admin_token"]
        self.config = self.dir / "config.yaml"
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> tuple[float, int]:
        """Seconds from exec to ready, and VmRSS (KiB) then."""
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assay", "serve", "--config", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=(self.dir / "daemon.log").open("ab"),
        )  # fmt: skip
        for _ in range(int(3600 / POLL)):
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited: {(self.dir / 'daemon.log').read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(POLL)
        ready = time.monotonic() - t0
        return ready, rss_kib(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=120)
            self.proc = None

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=600)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def median_ms(c: httpx.Client, path: str, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = c.get(path)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
    return statistics.median(times) * 1000


def listing(dep: Dep) -> dict[str, float]:
    with dep.client() as c:
        page = median_ms(c, "/v1/artifacts")
        health = median_ms(c, "/healthz")
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "assay", "list", "--json"],
        env={**os.environ, "ASSAY_URL": dep.url, "ASSAY_TOKEN": dep.token},
        capture_output=True, check=True,
    )  # fmt: skip
    cli = time.perf_counter() - t0
    count = json.loads(out.stdout)["count"]
    return {"page_ms": page, "healthz_ms": health, "cli_all_s": cli, "listed": count}


def sweep(dep: Dep) -> dict[str, float]:
    objects = sorted((dep.dir / "state" / "store" / "objects" / "sha256").iterdir())
    t0 = time.perf_counter()
    for p in objects:
        hashlib.sha256(p.read_bytes()).hexdigest()
    hashing = time.perf_counter() - t0
    with dep.client() as c:
        t0 = time.perf_counter()
        r = c.post("/v1/sweep")
        swept = time.perf_counter() - t0
        assert r.status_code == 200, r.text
    n = max(1, len(objects))
    return {
        "sweep_s": swept,
        "hash_s": hashing,
        "overhead_ms_per_artifact": (swept - hashing) / n * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--artifacts", type=int, nargs="+", default=[1000, 5000, 10000])
    ap.add_argument("--records", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    ap.add_argument("--unreconciled", type=int, nargs="+", default=[0, 1000, 10_000])
    ap.add_argument("--dir", type=Path, help="where to build deployments (default a temp dir)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="assay-restart-", dir=args.dir))
    try:
        run(base, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run(base: Path, args: argparse.Namespace) -> None:
    empty = Dep(base, "empty")
    empty.start()
    empty.stop()
    t_empty, rss_empty = empty.start()  # a restart, like every figure below
    empty.stop()
    print(f"baseline: empty deployment restarts to ready in {t_empty:.2f} s, "
          f"VmRSS {rss_empty / 1024:.0f} MiB\n")  # fmt: skip
    print("1. restart with the mark at the head (clean shutdown), and listing and sweep")
    print(f"{'N':>6} {'M':>8} | {'ready s':>7} {'x empty':>7} | {'RSS MiB':>7} {'x empty':>7} | "
          f"{'page ms':>7} {'x /healthz':>10} {'list all s':>10} | {'sweep s':>7} "
          f"{'x hashing':>9} {'ms/artifact':>11}")  # fmt: skip
    for n in args.artifacts:
        for m in args.records:
            dep = Dep(base, f"n{n}-m{m}")
            fill(dep.config, artifacts=n, reads=m)
            dep.start()  # reads nothing: the fill left the mark at the head
            dep.stop()
            ready, rss = dep.start()
            lst = listing(dep)
            sw = sweep(dep)
            dep.stop()
            print(f"{n:>6} {m:>8} | {ready:>7.2f} {ready / t_empty:>7.2f} | "
                  f"{rss / 1024:>7.0f} {rss / rss_empty:>7.2f} | {lst['page_ms']:>7.1f} "
                  f"{lst['page_ms'] / lst['healthz_ms']:>10.1f} {lst['cli_all_s']:>10.2f} | "
                  f"{sw['sweep_s']:>7.2f} {sw['sweep_s'] / max(sw['hash_s'], 1e-9):>9.1f} "
                  f"{sw['overhead_ms_per_artifact']:>11.3f}", flush=True)  # fmt: skip
            shutil.rmtree(dep.dir, ignore_errors=True)
    n = max(args.artifacts)
    print(f"\n2. crash restart: N={n}, K unreconciled mutations (record durable, row not)")
    print(f"{'K':>6} | {'ready s':>7} {'x empty':>7} | {'RSS MiB':>7}")
    for k in args.unreconciled:
        dep = Dep(base, f"k{k}")
        fill(dep.config, artifacts=n, reads=0, trusted=False, unreconciled=k)
        ready, rss = dep.start()
        with dep.client() as c:
            applied = c.get("/v1/status").json()["replay"]["applied"]
        dep.stop()
        assert applied == min(k, n), applied
        print(f"{k:>6} | {ready:>7.2f} {ready / t_empty:>7.2f} | {rss / 1024:>7.0f}", flush=True)
        shutil.rmtree(dep.dir, ignore_errors=True)
    print("\n3. first start after an offline fill of M reads, mark at 0 (every record read)")
    print(f"{'M':>8} | {'ready s':>7} {'x empty':>7} | {'RSS MiB':>7}")
    for m in args.records:
        dep = Dep(base, f"first-m{m}")
        fill(dep.config, artifacts=100, reads=m, mark_reconciled=False)
        ready, rss = dep.start()
        dep.stop()
        print(f"{m:>8} | {ready:>7.2f} {ready / t_empty:>7.2f} | {rss / 1024:>7.0f}", flush=True)
        shutil.rmtree(dep.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
