#!/usr/bin/env python3
"""Consumer socket benchmark: trusted bytes through a handed-out fd, against ``cat``.

    .venv/bin/python benchmarks/bench_consumer.py [--size-mib 1024] [--rounds 5]
        [--opens 300] [--http-rounds 3] [--concurrent 50] [--rss-artifacts 4] [--keep]

1. ``assay init`` makes a throwaway deployment (its consumer socket under state/, the
   running user mapped by uid); ``assay serve`` runs it with the default fail_closed
   audit, so every open awaits its own fsynced record. A valid safetensors file of
   ``--size-mib`` (one U8 tensor) is uploaded with ``assay add`` and promoted.
2. Read: rounds interleave ``cat STORE_FILE >/dev/null`` (the object in the store, read
   by path: the baseline) and ``open_trusted`` + ``cat /proc/self/fd/N >/dev/null`` (the
   same bytes through the fd the socket handed out, the open included). The page cache
   is warm for both. Printed: MB/s each, medians, and the ratio fd/cat (goal >= 0.95).
3. Time to the fd for an unchanged object: ``--opens`` sequential ``open_trusted`` calls
   (connect, request, audit record, fstat against the fingerprint, SCM_RIGHTS), p50/p95/
   p99 (goal: p50 < 5 ms), beside the HTTP path for the same artifact: a
   ``GET /v1/artifacts/{digest}/content`` read to its end (what a runtime needs before it
   can load), and ``assay fetch`` (the copy it leaves, verified).
4. RSS: ``--rss-artifacts`` more artifacts of the same size; the daemon's peak RSS is
   reset (``/proc/PID/clear_refs``), then ``--concurrent`` threads each open one of them
   at once and hold the fd; ``VmHWM`` after, against ``VmRSS`` before. Done twice: with
   every object unchanged (no read at all), and after a chmod of each object (a ctime
   change: each is re-hashed once, from the fd that is then sent).

Figures, not assertions: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

from assay.consumer import open_trusted  # noqa: E402

MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "assay", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"assay {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def make_safetensors(path: Path, size: int, salt: int) -> None:
    """A valid safetensors file: one U8 tensor of ``size`` bytes, ``salt`` in its head."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
    raw = header.encode() + b" " * (-len(header) % 8)
    block = os.urandom(64 * MiB)
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        f.write(salt.to_bytes(8, "little"))
        left = size - 8
        while left > 0:
            f.write(block[: min(left, len(block))])
            left -= min(left, len(block))


class Daemon:
    def __init__(self, work: Path, max_bytes: int) -> None:
        self.port = free_port()
        out = json.loads(cli("init", "--dir", str(work / "d"), "--bind",
                             f"127.0.0.1:{self.port}", "--json"))  # fmt: skip
        self.dir = work / "d"
        self.token = out["admin_token"]
        self.socket = self.dir / "state" / "consumer.sock"
        config = self.dir / "config.yaml"
        config.write_text(config.read_text().replace(
            "  sweep_interval_seconds: 3600\n",
            f"  sweep_interval_seconds: 0\n  max_artifact_bytes: {max_bytes}\n"))  # fmt: skip
        self.log = (work / "daemon.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "assay", "serve", "--config",
                                      str(config)], stdout=self.log, stderr=self.log)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(300):
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise SystemExit("daemon exited early") from None
                time.sleep(0.1)
        raise SystemExit("daemon did not become ready")

    @property
    def env(self) -> dict[str, str]:
        return {"ASSAY_URL": self.url, "ASSAY_TOKEN": self.token}

    def add_trusted(self, path: Path, name: str) -> str:
        out = json.loads(cli("add", str(path), "--name", name, "--meta", "source=bench",
                             "--meta", "license=mit", "--json", env=self.env))  # fmt: skip
        digest = str(out["artifact"]["digest"])
        cli("promote", digest, env=self.env)
        return digest

    def object_path(self, digest: str) -> Path:
        return self.dir / "state" / "store" / "objects" / "sha256" / digest[7:]

    def status(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def reset_peak(self) -> None:
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def cat_path(path: Path) -> None:
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", str(path)], stdout=null, check=True)


def cat_fd(socket_path: Path, target: str) -> None:
    with open_trusted(target, socket_path=socket_path) as f, open(os.devnull, "wb") as null:
        subprocess.run(["cat", f.path], stdout=null, check=True, pass_fds=(f.fd,))


def http_fetch(daemon: Daemon, digest: str) -> None:
    req = urllib.request.Request(f"{daemon.url}/v1/artifacts/{digest}/content",
                                 headers={"Authorization": f"Bearer {daemon.token}"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=600) as r:
        while r.read(MiB):
            pass


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def concurrent_opens(daemon: Daemon, digests: list[str], n: int) -> tuple[int, int, float]:
    """(VmRSS before, VmHWM after, seconds) for ``n`` handoffs at once, fds held."""
    before = daemon.status("VmRSS")
    daemon.reset_peak()
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            with open_trusted(digests[i % len(digests)], socket_path=daemon.socket,
                              timeout=600) as f:  # fmt: skip
                os.pread(f.fd, MiB, 0)
                barrier.wait(timeout=600)  # every fd is out at once
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.perf_counter() - start
    if errors:
        raise SystemExit(f"{len(errors)} opens failed: {errors[0]!r}")
    return before, daemon.status("VmHWM"), took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--opens", type=int, default=300)
    ap.add_argument("--http-rounds", type=int, default=3)
    ap.add_argument("--concurrent", type=int, default=50)
    ap.add_argument("--rss-artifacts", type=int, default=4)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    size = args.size_mib * MiB
    work = Path(tempfile.mkdtemp(prefix="assay-bench-consumer-", dir="/var/tmp"))
    daemon = Daemon(work, max_bytes=size + MiB)
    try:
        src = work / "model.safetensors"
        make_safetensors(src, size, 0)
        digest = daemon.add_trusted(src, "bench/model")
        src.unlink()
        store_file = daemon.object_path(digest)
        cat_path(store_file)  # warm the page cache
        print(f"artifact {digest} ({args.size_mib} MiB), store file {store_file}")

        # -- 2. read throughput ------------------------------------------------------------
        cat_s, fd_s = [], []
        for r in range(args.rounds):
            cat_s.append(timed(lambda: cat_path(store_file)))
            fd_s.append(timed(lambda: cat_fd(daemon.socket, "bench/model")))
            print(f"round {r + 1}: cat {size / cat_s[-1] / 1e6:8.0f} MB/s   "
                  f"fd {size / fd_s[-1] / 1e6:8.0f} MB/s")  # fmt: skip
        cat_med, fd_med = statistics.median(cat_s), statistics.median(fd_s)
        print(f"read: cat {size / cat_med / 1e6:.0f} MB/s, consumer fd "
              f"{size / fd_med / 1e6:.0f} MB/s, ratio fd/cat {cat_med / fd_med:.3f} "
              "(goal >= 0.95)")  # fmt: skip

        # -- 3. time to the fd ------------------------------------------------------------
        lat = []
        for _ in range(args.opens):
            start = time.perf_counter()
            with open_trusted("bench/model", socket_path=daemon.socket):
                lat.append(time.perf_counter() - start)
        p50, p95, p99 = (percentile(lat, q) * 1e3 for q in (0.5, 0.95, 0.99))
        print(f"time to fd ({args.opens} opens): p50 {p50:.2f} ms, p95 {p95:.2f} ms, "
              f"p99 {p99:.2f} ms (goal p50 < 5 ms)")  # fmt: skip
        http = [timed(lambda: http_fetch(daemon, digest)) for _ in range(args.http_rounds)]
        out = work / "fetched.safetensors"
        fetch = []
        for _ in range(args.http_rounds):
            fetch.append(timed(lambda: cli("fetch", digest, "-o", str(out), env=daemon.env)))
            out.unlink()
        print(f"HTTP GET content to its end: median {statistics.median(http) * 1e3:.0f} ms; "
              f"assay fetch (copy, verified): median {statistics.median(fetch) * 1e3:.0f} ms; "
              f"time-to-fd p50 is {statistics.median(http) * 1e3 / p50:.0f}x shorter than "
              "the GET")  # fmt: skip

        # -- 4. peak RSS under concurrent handoffs ------------------------------------------
        digests = []
        for i in range(args.rss_artifacts):
            extra = work / f"m{i}.safetensors"
            make_safetensors(extra, size, i + 1)
            digests.append(daemon.add_trusted(extra, f"bench/rss{i}"))
            extra.unlink()
        before, peak, took = concurrent_opens(daemon, digests, args.concurrent)
        print(f"{args.concurrent} concurrent handoffs of {args.rss_artifacts} x "
              f"{args.size_mib} MiB, unchanged: VmRSS before {before / MiB:.1f} MB, peak "
              f"{peak / MiB:.1f} MB (+{(peak - before) / MiB:.1f} MB), {took:.2f} s")  # fmt: skip
        for d in digests:
            daemon.object_path(d).chmod(0o444)  # moves ctime: each is re-hashed once
        before, peak, took = concurrent_opens(daemon, digests, args.concurrent)
        print(f"{args.concurrent} concurrent handoffs, each object touched (re-hashed once "
              f"from the fd): VmRSS before {before / MiB:.1f} MB, peak {peak / MiB:.1f} MB "
              f"(+{(peak - before) / MiB:.1f} MB), {took:.2f} s")  # fmt: skip
    finally:
        daemon.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
