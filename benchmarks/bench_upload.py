"""Upload throughput, CPU and memory of ``POST /v1/artifacts``, against same-run baselines.

For each size (default 1 GiB and 4 GiB) a fresh daemon is started; rounds interleave:
  dd if=FILE of=OUT bs=1M conv=fsync    -> the disk's write limit (wall MB/s)
  openssl dgst -sha256 FILE             -> the hashing limit (CPU s/GiB)
  curl upload of FILE to the daemon     -> wall MB/s and daemon CPU s/GiB (/proc/PID/stat)
  the same upload, chunked              -> the same figures for hypercorn's body path
and the daemon's peak RSS (VmHWM) is read at the end. A plain upload (Content-Length)
takes the direct transport, which reads the socket into the write blocks; a chunked one
falls through to hypercorn and h11, shown for comparison. Every round changes the file's last
tensor byte, so each upload is a new digest doing the full ingest (hash, write, fsync,
inspect, rename). Prints figures and ratios; asserts nothing.

    .venv/bin/python benchmarks/bench_upload.py [--sizes-gib 1 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
TICKS = os.sysconf("SC_CLK_TCK")


def make_safetensors(path: Path, size: int) -> None:
    """A valid safetensors file with one U8 tensor filling ``size`` bytes of data."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}})
    header += " " * (-len(header) % 8)
    block = os.urandom(1024 * 1024)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode())
        for _ in range(size // len(block)):
            f.write(block)
        f.write(block[: size % len(block)])


def bump_last_byte(path: Path, round_no: int) -> None:
    with path.open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(bytes([round_no % 256]))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def drop_page_cache_of(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_dd(src: Path, out: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["dd", f"if={src}", f"of={out}", "bs=1M", "conv=fsync"], check=True,
                   capture_output=True)  # fmt: skip
    wall = time.perf_counter() - t
    out.unlink()
    return wall


def openssl_cpu(src: Path) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["openssl", "dgst", "-sha256", str(src)], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def start_daemon(work: Path, max_bytes: int) -> tuple[subprocess.Popen[bytes], str, str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assay = [sys.executable, "-m", "assay"]
    init = [*assay, "init", "--dir", str(work / "d"), "--bind", f"127.0.0.1:{port}", "--json"]
    out = subprocess.run(init, check=True, capture_output=True)
    token = json.loads(out.stdout)["admin_token"]
    cfg = work / "d" / "config.yaml"
    cfg.write_text(cfg.read_text().replace(
        "  sweep_interval_seconds: 3600\n",
        f"  sweep_interval_seconds: 0\n  max_artifact_bytes: {max_bytes}\n"))  # fmt: skip
    proc = subprocess.Popen([*assay, "serve", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        r = subprocess.run(["curl", "-fsS", f"{url}/readyz"], capture_output=True)
        if r.returncode == 0:
            return proc, url, token
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("daemon did not become ready")


def upload(url: str, token: str, src: Path, n: int, *, chunked: bool = False) -> float:
    framing = ["-H", "Transfer-Encoding: chunked"] if chunked else []
    t = time.perf_counter()
    r = subprocess.run(
        ["curl", "-fsS", "-X", "POST", "-T", str(src), "-H", "Expect:", *framing,
         "-H", f"Authorization: Bearer {token}",
         f"{url}/v1/artifacts?name=bench/{n}&meta=source=bench&meta=license=none"],
        capture_output=True,
    )  # fmt: skip
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"upload failed: {r.stderr.decode()} {r.stdout.decode()}")
    return wall


def bench_size(size_gib: float, rounds: int, work: Path, chunked: bool) -> dict[str, float]:
    size = int(size_gib * GIB)
    src = work / "model.safetensors"
    make_safetensors(src, size)
    total = src.stat().st_size
    proc, url, token = start_daemon(work, size * 2)
    dd_walls, up_walls, up_cpu, ssl_cpu, ch_cpu = [], [], [], [], []
    try:
        for n in range(rounds):
            bump_last_byte(src, 2 * n)
            dd_walls.append(time_dd(src, work / "dd.out"))
            ssl_cpu.append(openssl_cpu(src))
            c0 = cpu_seconds(proc.pid)
            up_walls.append(upload(url, token, src, n))
            up_cpu.append(cpu_seconds(proc.pid) - c0)
            if chunked:
                bump_last_byte(src, 2 * n + 1)
                c0 = cpu_seconds(proc.pid)
                upload(url, token, src, n, chunked=True)
                ch_cpu.append(cpu_seconds(proc.pid) - c0)
        hwm = vm_hwm_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work / "d", ignore_errors=True)
        src.unlink()
    gib = total / GIB
    med = sorted
    dd_mbs = total / 1e6 / med(dd_walls)[len(dd_walls) // 2]
    up_mbs = total / 1e6 / med(up_walls)[len(up_walls) // 2]
    cpu_per_gib = med(up_cpu)[len(up_cpu) // 2] / gib
    ssl_per_gib = med(ssl_cpu)[len(ssl_cpu) // 2] / gib
    ch_per_gib = med(ch_cpu)[len(ch_cpu) // 2] / gib if ch_cpu else float("nan")
    return {"size_gib": size_gib, "upload_mb_s": up_mbs, "dd_mb_s": dd_mbs,
            "wall_ratio": up_mbs / dd_mbs, "daemon_cpu_s_per_gib": cpu_per_gib,
            "openssl_cpu_s_per_gib": ssl_per_gib, "cpu_multiple": cpu_per_gib / ssl_per_gib,
            "chunked_cpu_multiple": ch_per_gib / ssl_per_gib, "peak_rss_mb": hwm}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-gib", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", default="/var/tmp")
    parser.add_argument("--no-chunked", dest="chunked", action="store_false",
                        help="skip the chunked (hypercorn body path) comparison")  # fmt: skip
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="assay-bench-") as tmp:
        for size in args.sizes_gib:
            results.append(bench_size(size, args.rounds, Path(tmp), args.chunked))
    print(f"{'size':>6} {'upload MB/s':>12} {'dd MB/s':>9} {'ratio':>6} {'daemon CPU s/GiB':>17} "
          f"{'openssl s/GiB':>14} {'multiple':>9} {'peak RSS MB':>12} "
          f"{'chunked multiple':>17}")  # fmt: skip
    for r in results:
        print(f"{r['size_gib']:>5.1f}G {r['upload_mb_s']:>12.0f} {r['dd_mb_s']:>9.0f} "
              f"{r['wall_ratio']:>6.2f} {r['daemon_cpu_s_per_gib']:>17.2f} "
              f"{r['openssl_cpu_s_per_gib']:>14.2f} {r['cpu_multiple']:>8.2f}x "
              f"{r['peak_rss_mb']:>12.1f} {r['chunked_cpu_multiple']:>16.2f}x")  # fmt: skip
    print("goals: ratio >= 0.8, multiple <= 2x, peak RSS < 150 MB and flat across sizes")
    print("chunked multiple: the same upload with Transfer-Encoding: chunked (hypercorn path)")


if __name__ == "__main__":
    main()
