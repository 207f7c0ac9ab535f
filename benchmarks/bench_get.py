#!/usr/bin/env python3
"""HTTP benchmark: authenticated, audited ``GET /v1/artifacts/{digest}`` vs a bare route.

    .venv/bin/python benchmarks/bench_get.py [--rounds 3] [--seconds 10]
        [--connections 50] [--threads 2] [--profile PREFIX] [--keep]

1. ``assay init`` makes a throwaway deployment in a temp dir; ``assay serve`` runs it
   (fail_closed audit, the default: every GET awaits its own fsynced audit record).
   One sample artifact is uploaded, and its metadata is the benchmarked resource.
2. ``benchmarks/bare_app.py`` serves a bare quart-trio JSON route on the same hypercorn
   config (the daemon's ``hypercorn_config``), in its own process.
3. wrk (Debian's ``wrk``) hits both, interleaved A, B, A, B, ... with the same
   Authorization header, ``--connections`` connections and ``--threads`` threads.
   Printed: requests/s per round, the median of each, and the ratio of the medians
   (goal: >= 0.6). Any non-2xx response or socket error is reported, and the audit
   log's head seq must have grown by one record per served request.
4. ``--profile PREFIX``: one extra daemon round under ``py-spy record --gil`` (only
   samples that hold the GIL: where the CPU-bound process spends its time; blocking
   mode, since ``--nonblocking`` tore about half the stacks here) writes PREFIX.txt
   (collapsed stacks; open it in speedscope or flamegraph.pl) and prints the functions
   with the most samples, own and inclusive. Not counted in the figures.

Figures, not assertions: nothing here fails on a slow machine. Needs wrk
(``apt-get install -y wrk``) and, for --profile, py-spy (``.venv/bin/pip install py-spy``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SAMPLE = ROOT / "artifacts" / "sample.safetensors"


@dataclass
class WrkResult:
    rps: float
    requests: int
    non_2xx: int
    socket_errors: str
    latency_p50: str
    latency_p99: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode}) before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {url}")


def http_json(url: str, token: str, data: bytes | None = None) -> dict[str, object]:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        out: dict[str, object] = json.load(resp)
        return out


def run_wrk(url: str, token: str, args: argparse.Namespace, seconds: float) -> WrkResult:
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {token}",
        url,
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors:\s+(.*)", out)
    p50 = re.search(r"\s50%\s+(\S+)", out)
    p99 = re.search(r"\s99%\s+(\S+)", out)
    return WrkResult(
        rps=rps,
        requests=requests,
        non_2xx=int(non.group(1)) if non else 0,
        socket_errors=sock.group(1).strip() if sock else "",
        latency_p50=p50.group(1) if p50 else "?",
        latency_p99=p99.group(1) if p99 else "?",
    )


def audit_head(base: str) -> int:
    with urllib.request.urlopen(f"{base}/readyz", timeout=5) as resp:
        return int(json.load(resp)["checks"]["audit"]["seq"])


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def summarise_profile(collapsed: Path, top: int = 15) -> None:
    """Own and inclusive sample counts per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if frames:
            own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    if not total:
        print("  (no samples)")
        return
    print(f"  {total} samples (non-idle). Top by own samples:")
    for name, n in own.most_common(top):
        print(f"    {100 * n / total:5.1f}%  {name}")
    print("  Top by inclusive samples (frames in >= 90% of samples, the roots, omitted):")
    shown = 0
    for name, n in incl.most_common():
        if n >= 0.9 * total:
            continue
        print(f"    {100 * n / total:5.1f}%  {name}")
        shown += 1
        if shown >= top:
            break


def profile_round(
    pid: int, url: str, token: str, args: argparse.Namespace, prefix: Path
) -> WrkResult:
    spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy missing: .venv/bin/pip install py-spy")
    duration = int(args.seconds) + 2
    out = prefix.with_suffix(".txt")
    cmd = [spy, "record", "--gil", "-p", str(pid), "-d", str(duration), "-r", "200"]
    cmd += ["-f", "raw", "-o", str(out)]
    spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    result = run_wrk(url, token, args, args.seconds)
    spy_proc.wait()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--profile", type=Path, help="also profile the daemon to PREFIX.txt")
    ap.add_argument("--keep", action="store_true", help="keep the temp deployment")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk missing: apt-get install -y wrk")

    tmp = Path(tempfile.mkdtemp(prefix="assay-bench-get-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        port, bare_port = free_port(), free_port()
        init = subprocess.run(
            [str(VENV_BIN / "assay"), "init", "--dir", str(tmp / "dep"),
             "--bind", f"127.0.0.1:{port}", "--json"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        info = json.loads(init.stdout)
        token, config = info["admin_token"], info["config"]
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("LISTEN_FDS", None)
        with (tmp / "daemon.log").open("wb") as dlog:
            daemon = subprocess.Popen(
                [str(VENV_BIN / "assay"), "serve", "--config", config],
                stdout=dlog, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        procs.append(daemon)
        wait_http(f"{base}/healthz", daemon)
        up = http_json(
            f"{base}/v1/artifacts?name=bench&meta=source=a&meta=license=b",
            token,
            SAMPLE.read_bytes(),
        )
        digest = up["artifact"]["digest"]  # type: ignore[index]
        assay_url = f"{base}/v1/artifacts/{digest}"
        http_json(assay_url, token)  # the route answers 200 with this token

        bare = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "bare_app.py"),
             "--config", config, "--port", str(bare_port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        procs.append(bare)
        bare_url = f"http://127.0.0.1:{bare_port}/v1/artifacts/{digest}"
        wait_http(bare_url, bare)

        print(
            f"wrk -t{args.threads} -c{args.connections} -d{args.seconds:g}s, "
            f"{args.rounds} interleaved rounds each; {os.cpu_count()} CPUs; "
            f"assay pid {daemon.pid}, bare pid {bare.pid}"
        )
        for url in (assay_url, bare_url):  # warm both (imports, caches, JIT-less but still)
            run_wrk(url, token, args, args.warmup)

        rates: dict[str, list[float]] = {"assay": [], "bare": []}
        served = 0
        seq0 = audit_head(base)
        for r in range(1, args.rounds + 1):
            for name, url in (("assay", assay_url), ("bare", bare_url)):
                res = run_wrk(url, token, args, args.seconds)
                rates[name].append(res.rps)
                if name == "assay":
                    served += res.requests
                flags = ""
                if res.non_2xx:
                    flags += f"  NON-2XX: {res.non_2xx}"
                if res.socket_errors:
                    flags += f"  socket errors: {res.socket_errors}"
                print(
                    f"  round {r} {name:5s} {res.rps:9.1f} req/s  "
                    f"p50 {res.latency_p50:>8s}  p99 {res.latency_p99:>8s}{flags}"
                )
        records = audit_head(base) - seq0
        a, b = statistics.median(rates["assay"]), statistics.median(rates["bare"])
        print(f"assay (auth + scope + fsynced audit): {a:9.1f} req/s (median)")
        print(f"bare quart-trio JSON route:           {b:9.1f} req/s (median)")
        per_round = ", ".join(
            f"{x / y:.3f}" for x, y in zip(rates["assay"], rates["bare"], strict=True)
        )
        print(f"ratio: {a / b:.3f}  (goal >= 0.6; per round: {per_round})")
        print(
            f"audit records written during the measured rounds: {records} "
            f"for {served} completed assay requests (wrk counts only completed ones)"
        )

        if args.profile is not None:
            args.profile.parent.mkdir(parents=True, exist_ok=True)
            res = profile_round(daemon.pid, assay_url, token, args, args.profile)
            print(f"profile round (not counted): {res.rps:.1f} req/s under py-spy")
            print(f"  collapsed stacks: {args.profile.with_suffix('.txt')}")
            summarise_profile(args.profile.with_suffix(".txt"))
    finally:
        for p in procs:
            stop(p)
        if args.keep:
            print(f"deployment kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
