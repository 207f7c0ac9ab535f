#!/usr/bin/env python3
"""Trust checks: ``assay.consumer.is_trusted`` from the TUF metadata vs HTTP, same run.

    .venv/bin/python benchmarks/bench_trust.py [--rounds 3] [--seconds 5] [--connections 8]

1. ``assay init`` makes a throwaway deployment in a temp dir; ``assay serve`` runs it
   (fail_closed audit: every GET awaits its own fsynced audit record). Four artifacts are
   uploaded and promoted; the daemon publishes its TUF repository in the deployment's
   ``run/trust``.
2. Rounds interleave, each ``--seconds`` long:
     * consumer: one thread calls ``TrustCheck.is_trusted(name, digest)`` (a stat of
       ``timestamp.json`` per call, no TTL: every publish is seen at the next check);
     * HTTP, one connection: ``GET /v1/trusted/{name}`` with a bearer token over one
       keep-alive connection (``http.client``), comparing the digest it answers;
     * HTTP, ``--connections`` connections: as many threads, each with its own
       keep-alive connection (the daemon's aggregate, the fairest figure for HTTP).
   Printed: checks/s per round, medians, and the ratios consumer / HTTP (goal >= 100x
   against the better HTTP figure).
3. Revocation visible at the next check: for each artifact, revoke over HTTP, then call
   ``is_trusted`` once: it must answer False. The first check after each publish pays a
   full ngclient verification; its median time is printed.

Figures, not assertions: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "daemon"))
sys.path.insert(0, str(ROOT))

from tests.formats_factory import valid_st  # noqa: E402

from assay.consumer.tuf import TrustCheck  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, token: str, method: str, path: str, body: bytes | None = None) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status >= 300:
        raise SystemExit(f"{method} {path}: {resp.status} {data[:300]!r}")
    out: dict = json.loads(data)
    return out


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited early ({proc.returncode})")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("daemon did not become ready")


def consumer_round(check: TrustCheck, pairs: list[tuple[str, str]], seconds: float) -> float:
    n = 0
    end = time.perf_counter() + seconds
    while True:
        for name, digest in pairs:
            if not check.is_trusted(name, digest):
                raise SystemExit(f"{name} not trusted during the benchmark")
        n += len(pairs)
        if time.perf_counter() >= end:
            break
    return n / seconds


def http_worker(port: int, token: str, pairs: list[tuple[str, str]], end: float,
                counts: list[int], slot: int) -> None:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    n = 0
    while time.perf_counter() < end:
        for name, digest in pairs:
            conn.request("GET", f"/v1/trusted/{name}", headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or json.loads(body)["digest"] != digest:
                raise SystemExit(f"GET /v1/trusted/{name}: {resp.status}")
            n += 1
    conn.close()
    counts[slot] = n


def http_round(port: int, token: str, pairs: list[tuple[str, str]], seconds: float,
               connections: int) -> float:  # fmt: skip
    counts = [0] * connections
    end = time.perf_counter() + seconds
    threads = [
        threading.Thread(target=http_worker, args=(port, token, pairs, end, counts, i))
        for i in range(connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)
    return sum(counts) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--keep", action="store_true", help="keep the temp deployment")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="assay-bench-trust-"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'daemon'}:{ROOT}", "PYTHONUNBUFFERED": "1"}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("LISTEN_FDS", None)
    cli = [sys.executable, "-m", "assay"]
    init = subprocess.run([*cli, "init", "--dir", str(tmp / "dep"), "--bind",
                           f"127.0.0.1:{port}", "--json"],
                          check=True, capture_output=True, text=True, env=env)  # fmt: skip
    info = json.loads(init.stdout)
    token = info["admin_token"]
    with (tmp / "daemon.log").open("wb") as log:
        daemon = subprocess.Popen([*cli, "serve", "--config", info["config"]], stdout=log,
                                  stderr=subprocess.STDOUT, env=env)  # fmt: skip
    try:
        wait_ready(port, daemon)
        pairs: list[tuple[str, str]] = []
        for i in range(4):
            data = valid_st({"w": ("F32", [4 + i])}, fill=i + 1)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            headers = {"Authorization": f"Bearer {token}",
                       "Content-Type": "application/octet-stream"}  # fmt: skip
            conn.request("POST", f"/v1/artifacts?name=bench/{i}&meta=source=a&meta=license=b",
                         body=data, headers=headers)  # fmt: skip
            resp = conn.getresponse()
            digest = json.loads(resp.read())["artifact"]["digest"]
            conn.close()
            request(port, token, "POST", f"/v1/artifacts/{digest}/promote", b"{}")
            pairs.append((f"bench/{i}", digest))
        root = Path(info["trust_root"]).read_bytes()
        check = TrustCheck(tmp / "dep" / "run" / "trust", root, tmp / "consumer-cache")
        print(f"{os.cpu_count()} CPUs; daemon pid {daemon.pid}; {len(pairs)} trusted artifacts;"
              f" {args.rounds} interleaved rounds of {args.seconds:g} s")  # fmt: skip
        consumer_round(check, pairs, 1.0)  # warm: first verification, imports
        http_round(port, token, pairs, 1.0, 1)
        rates: dict[str, list[float]] = {"consumer": [], "http_1": [], "http_n": []}
        for r in range(1, args.rounds + 1):
            rates["consumer"].append(consumer_round(check, pairs, args.seconds))
            rates["http_1"].append(http_round(port, token, pairs, args.seconds, 1))
            rates["http_n"].append(http_round(port, token, pairs, args.seconds, args.connections))
            print(f"  round {r}: consumer {rates['consumer'][-1]:>11,.0f}/s   "
                  f"HTTP 1 conn {rates['http_1'][-1]:>8,.0f}/s   "
                  f"HTTP {args.connections} conns {rates['http_n'][-1]:>8,.0f}/s")  # fmt: skip
        med = {k: statistics.median(v) for k, v in rates.items()}
        best_http = max(med["http_1"], med["http_n"])
        print(f"median: consumer {med['consumer']:,.0f}/s, HTTP {med['http_1']:,.0f}/s "
              f"(1 conn), {med['http_n']:,.0f}/s ({args.connections} conns)")  # fmt: skip
        print(f"ratio consumer / HTTP 1 conn: {med['consumer'] / med['http_1']:,.0f}x")
        print(f"ratio consumer / HTTP {args.connections} conns: "
              f"{med['consumer'] / med['http_n']:,.0f}x")  # fmt: skip
        print(f"ratio consumer / best HTTP: {med['consumer'] / best_http:,.0f}x (goal >= 100x)")

        # 3. Revocation at the next check, and what that first check costs.
        first_checks: list[float] = []
        stale = 0
        for name, digest in pairs:
            request(port, token, "POST", f"/v1/artifacts/{digest}/revoke",
                    json.dumps({"reason": "bench"}).encode())  # fmt: skip
            t0 = time.perf_counter()
            if check.is_trusted(name, digest):
                stale += 1
            first_checks.append(time.perf_counter() - t0)
        print(f"revocations seen at the next check: {len(pairs) - stale}/{len(pairs)}; "
              f"that check (a full ngclient verification) took a median "
              f"{statistics.median(first_checks) * 1000:.1f} ms")  # fmt: skip
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if not args.keep:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")


if __name__ == "__main__":
    main()
