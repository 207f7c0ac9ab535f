#!/usr/bin/env python3
"""Start-up time of the ``assay`` command, against an empty interpreter in the same run.

    .venv/bin/python benchmarks/bench_cli.py [--runs 30] [--importtime] [--source DIR]

Each command is run ``--runs`` times as a fresh process, the way a person or a script
runs it, through the console-script entry point (``from assay.cli.main import main``);
the wall time from fork to exit is taken, and its median and minimum are printed next
to the same for ``python -S -c pass`` and ``python -c pass`` (the interpreter alone,
with and without ``site``), as ratios and as milliseconds above ``python -c pass``:

1. ``assay --version`` (parse only);
2. ``assay list`` and ``assay status`` (three requests) against a running daemon (an
   ``assay init`` deployment in a temp dir, one artifact): what a person waits for;
3. the same two against a stub server in this process that answers at once with the
   daemon's own answers, recorded first: the command line's own cost, without the
   daemon's time to answer (each request is authenticated and leaves a durable, fsynced
   audit record before its answer); the daemon's time for one ``GET /v1/artifacts`` on a
   new connection is printed too;
4. ``assay inspect FILE`` (the content inspector, offline) on the sample GGUF.

The goal (issue 11, point 7) is a command that talks to the daemon starting in under
0.15 s: the stub rows are that start. ``--importtime`` also prints the slowest imports
of ``assay list`` (``python -X importtime``); ``--source DIR`` measures another checkout's
``daemon/`` (say, the commit before a change) with this script. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY = "import sys; from assay.cli.main import main; sys.exit(main())"
SAMPLE = ROOT / "artifacts" / "sample.gguf"
GOAL_S = 0.15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


SOURCE = ROOT


def env_for(url: str = "", token: str = "") -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(SOURCE / "daemon")}
    if url:
        env |= {"ASSAY_URL": url, "ASSAY_TOKEN": token}
    return env


def wall(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              check=False)  # fmt: skip
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"{argv} -> {proc.returncode}: {proc.stderr.decode()[-2000:]}")
    return times


class Daemon:
    def __init__(self, base: Path) -> None:
        self.dir = base / "d"
        port = free_port()
        out = subprocess.run(
            [sys.executable, "-m", "assay", "init", "--dir", str(self.dir), "--bind",
             f"127.0.0.1:{port}", "--json"],
            capture_output=True, text=True, check=True, env=env_for(),
        )  # fmt: skip
        self.token = json.loads(out.stdout)["admin_token"]
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "assay", "serve", "--config", str(self.dir / "config.yaml")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env_for(),
        )  # fmt: skip
        for _ in range(3000):
            if self.proc.poll() is not None:
                raise SystemExit("the daemon exited")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.01)
        ok = subprocess.run(
            [sys.executable, "-c", ENTRY, "add", str(SAMPLE), "--name", "bench/sample"],
            env=env_for(self.url, self.token), capture_output=True, check=False,
        )  # fmt: skip
        if ok.returncode != 0:
            raise SystemExit(f"add failed: {ok.stderr.decode()}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


class Stub:
    """The daemon's recorded answers, served at once by a thread of this process."""

    def __init__(self, daemon: Daemon) -> None:
        answers = {}
        for path in ("/v1/artifacts?limit=1000", "/healthz", "/readyz", "/v1/status"):
            answers[path.split("?")[0]] = one_request(daemon, path)[1]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = answers.get(self.path.split("?")[0], b"{}")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def one_request(daemon: Daemon, path: str) -> tuple[float, bytes]:
    """One GET on a new connection, as the command line makes it: seconds and body."""
    host, port = daemon.url.removeprefix("http://").split(":")
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path, headers={"Authorization": f"Bearer {daemon.token}"})
    body = conn.getresponse().read()
    conn.close()
    return time.perf_counter() - t0, body


def importtime(env: dict[str, str], top: int = 15) -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", ENTRY, "list"], env=env,
                          capture_output=True, text=True, check=False)  # fmt: skip
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = (part.strip() for part in line[12:].split("|"))
            if cumulative.isdigit():
                rows.append((int(cumulative), name))
    print(f"\nslowest imports of `assay list` (cumulative, python -X importtime), top {top}:")
    for us, name in sorted(rows, reverse=True)[:top]:
        print(f"  {us / 1000:7.1f} ms  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs per command (default 30)")
    parser.add_argument("--importtime", action="store_true", help="also list slow imports")
    parser.add_argument("--source", type=Path, default=ROOT, help="the checkout to measure")
    args = parser.parse_args()
    global SOURCE
    SOURCE = args.source.resolve()
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        daemon = Daemon(Path(tmp))
        stub = Stub(daemon)
        try:
            talk = env_for(daemon.url, daemon.token)
            fake = env_for(stub.url, daemon.token)
            cases = [
                ("python -S -c pass", [sys.executable, "-S", "-c", "pass"], env_for()),
                ("python -c pass", [sys.executable, "-c", "pass"], env_for()),
                ("assay --version", [sys.executable, "-c", ENTRY, "--version"], env_for()),
                ("assay list (daemon)", [sys.executable, "-c", ENTRY, "list"], talk),
                ("assay status (daemon)", [sys.executable, "-c", ENTRY, "status"], talk),
                ("assay list (stub)", [sys.executable, "-c", ENTRY, "list"], fake),
                ("assay status (stub)", [sys.executable, "-c", ENTRY, "status"], fake),
                ("assay inspect FILE", [sys.executable, "-c", ENTRY, "inspect", str(SAMPLE)],
                 env_for()),
            ]  # fmt: skip
            for _label, argv, env in cases:  # warm the page cache and .pyc files
                wall(argv, env, 2)
            results = {label: wall(argv, env, args.runs) for label, argv, env in cases}
            served = [one_request(daemon, "/v1/artifacts?limit=1000")[0] for _ in range(args.runs)]
            if args.importtime:
                importtime(talk)
        finally:
            stub.stop()
            daemon.stop()
    base = statistics.median(results["python -c pass"])
    print(f"\n{args.runs} runs each, {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"{'command':<24} {'median':>9} {'min':>9} {'x python':>9} {'+ms':>8}")
    for label, times in results.items():
        med = statistics.median(times)
        print(f"{label:<24} {med * 1000:7.1f}ms {min(times) * 1000:7.1f}ms "
              f"{med / base:8.2f}x {(med - base) * 1000:7.1f}")  # fmt: skip
    print(f"the daemon's own time for GET /v1/artifacts on a new connection: median "
          f"{statistics.median(served) * 1000:.1f} ms")  # fmt: skip
    starts = [statistics.median(results[k]) for k in results if "(stub)" in k]
    verdict = "under" if max(starts) < GOAL_S else "OVER"
    print(f"start of a command that talks to the daemon (stub rows): at most "
          f"{max(starts) * 1000:.0f} ms, {verdict} the {GOAL_S * 1000:.0f} ms goal")  # fmt: skip


if __name__ == "__main__":
    main()
