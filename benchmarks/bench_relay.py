#!/usr/bin/env python3
"""Relay benchmark: key lookups, a filtered page and a suppressed aggregate, vs Datasette.

On a generated 1,000,000-row synthetic people table (Parquet for the relay, the same rows
in SQLite for Datasette), both servers run as their own processes on loopback, one after
the other, under the same load generator: N concurrent keep-alive clients (default 20).
The relay runs with auth (API key) and its audit log on (every request fsynced, group
commit). Datasette runs immutable (``-i``), without auth, which is its fast path.

    .venv/bin/python benchmarks/bench_relay.py [--rows 1000000] [--clients 20]

Prints p50/p99 latency and requests/s per case, and the relay/Datasette ratio on key
lookups. Figures, not assertions: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "daemon"))
DATASETTE_VENV = Path("/tmp/datasette-venv")


def _gen() -> Any:
    spec = importlib.util.spec_from_file_location(
        "gen", ROOT / "relay" / "example" / "generate_dataset.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- data --------------------------------------------------------------------------------


def prepare_data(out: Path, rows: int, seed: int) -> tuple[Path, Path, list[str]]:
    import pyarrow.parquet as pq

    parquet, db = out / f"people-{rows}.parquet", out / f"people-{rows}.db"
    if not parquet.exists() or not db.exists():
        t0 = time.monotonic()
        people, _ = _gen().generate(rows, seed)
        people = people.drop_columns(["case_note"])
        pq.write_table(people, parquet)
        if db.exists():
            db.unlink()
        con = sqlite3.connect(db)
        cols = people.column_names
        con.execute(f"create table people ({', '.join(cols)}, primary key (person_id))")
        values = [people.column(c).to_pylist() for c in cols]
        for i, c in enumerate(cols):
            if c in ("birth_date", "enrolled_on", "updated_at"):
                values[i] = [v.isoformat() if v is not None else None for v in values[i]]
        con.executemany(
            f"insert into people values ({', '.join('?' * len(cols))})",
            zip(*values, strict=True),
        )
        con.commit()
        con.close()
        print(f"generated {rows:,} rows in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    ids = pq.read_table(parquet, columns=["person_id"]).column(0).to_pylist()
    return parquet, db, ids


CONFIG = """
server: {{bind: "127.0.0.1:{port}", max_source_bytes: 4294967296}}
catalog: {{title: bench}}
auth:
  api_keys:
    - id: bench
      fingerprint: {{file: {dir}/bench.fp}}
      commitment: "{commitment}"
      scopes: [bench:metadata, bench:read]
    # Aggregates go to another key: none may both aggregate and read one population.
    - id: bench_stats
      fingerprint: {{file: {dir}/bench_stats.fp}}
      commitment: "{stats_commitment}"
      scopes: [bench:metadata, bench:aggregate]
audit: {{dir: {dir}/audit, hmac_key: {{file: {dir}/audit.key}}, log_id: relay-bench}}
logging: {{level: warning}}
datasets:
  - id: bench
    title: bench
    owner: bench
    sensitivity: personal
    access_rights: restricted
    update_frequency: daily
    access: {{metadata_scope: "bench:metadata", read_scope: "bench:read",
              aggregate_scope: "bench:aggregate"}}
    tables:
      - id: people
        source: {{path: {parquet}}}
        primary_key: person_id
        refresh: {{mode: manual}}
        schema:
          - {{name: person_id, type: string, nullable: false}}
          - {{name: national_id, type: string}}
          - {{name: household_id, type: string}}
          - {{name: given_name, type: string}}
          - {{name: birth_date, type: date}}
          - {{name: sex, type: string}}
          - {{name: municipality, type: string}}
          - {{name: enrolled, type: boolean}}
          - {{name: enrolled_on, type: date}}
          - {{name: monthly_income, type: number}}
          - {{name: updated_at, type: timestamp}}
    entities:
      - name: person
        table: people
        fields:
          - {{name: id, from: person_id}}
          - {{name: national_id, sensitive: true}}
          - {{name: municipality}}
          - {{name: sex}}
          - {{name: enrolled}}
          - {{name: monthly_income}}
        allowed_filters:
          - {{field: id, ops: [eq]}}
          - {{field: municipality, ops: [eq, in]}}
          - {{field: enrolled, ops: [eq]}}
        default_limit: 50
        max_limit: 100
    aggregates:
      - id: by_municipality
        source_entity: person
        dimensions: [municipality, sex]
        indicators:
          - {{id: people, function: count}}
          - {{id: mean_income, function: avg, field: monthly_income}}
        allowed_filters: [{{field: municipality, ops: [eq, in]}}]
        disclosure_control: {{min_group_size: 100, suppression: omit}}
"""


def write_relay_config(out: Path, parquet: Path, port: int) -> tuple[Path, str, str]:
    """The config, the reader's key and the statistician's key."""
    from assay.relay import apikeys

    d = out / "relay"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True, mode=0o700)
    made, stats = apikeys.new_key("bench"), apikeys.new_key("bench_stats")
    for name, data in (("bench.fp", made["fingerprint"]), ("bench_stats.fp", stats["fingerprint"]),
                       ("audit.key", secrets.token_hex(32))):  # fmt: skip
        (d / name).write_text(data)
        (d / name).chmod(0o600)
    cfg = d / "relay.yaml"
    cfg.write_text(CONFIG.format(port=port, dir=d, parquet=parquet, commitment=made["commitment"],
                                 stats_commitment=stats["commitment"]))  # fmt: skip
    return cfg, made["key"], stats["key"]


# --- servers -----------------------------------------------------------------------------


def serve_relay(config: str) -> None:
    """Child mode: run ``assay relay serve``'s daemon on this config."""
    import trio

    from assay.core import logsetup
    from assay.relay import daemon
    from assay.relay.settings import load_config

    loaded = load_config(Path(config))
    logsetup.setup("warning")
    trio.run(daemon.run, loaded)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def ensure_datasette() -> Path | None:
    exe = DATASETTE_VENV / "bin" / "datasette"
    if exe.exists():
        return exe
    print("installing datasette into /tmp/datasette-venv ...", file=sys.stderr)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(DATASETTE_VENV)], check=True)
        subprocess.run(
            [str(DATASETTE_VENV / "bin" / "pip"), "install", "-q", "datasette"], check=True
        )
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"datasette unavailable: {exc}", file=sys.stderr)
        return None
    return exe if exe.exists() else None


# --- load --------------------------------------------------------------------------------


def run_load(
    base: str, paths: list[str], clients: int, headers: dict[str, str]
) -> dict[str, float]:
    """``clients`` keep-alive connections share ``paths``; latency per request, wall rps."""
    import httpx
    import trio

    latencies: list[float] = []
    errors = 0

    async def client(share: list[str]) -> None:
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as c:
            for path in share:
                t0 = time.perf_counter()
                r = await c.get(path)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors += 1

    async def main() -> float:
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(clients):
                nursery.start_soon(client, paths[i::clients])
        return time.perf_counter() - t0

    wall = trio.run(main)
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "rps": len(latencies) / wall,
    }


def report(name: str, r: dict[str, float]) -> None:
    print(
        f"{name:<34} {int(r['requests']):>6} req  p50 {r['p50_ms']:7.2f} ms  "
        f"p99 {r['p99_ms']:7.2f} ms  {r['rps']:8.0f} req/s  errors {int(r['errors'])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--lookups", type=int, default=6000)
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--aggregates", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="/tmp/assay-bench-relay")
    parser.add_argument("--no-datasette", action="store_true")
    parser.add_argument("--serve-relay", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_relay:
        serve_relay(args.serve_relay)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parquet, db, ids = prepare_data(out, args.rows, args.seed)
    rng = random.Random(args.seed)
    lookup_ids = [rng.choice(ids) for _ in range(args.lookups)]
    munis = [f"M{i:02d}" for i in range(1, 37)]
    results: dict[str, dict[str, float]] = {}

    port = free_port()
    config, key, stats_key = write_relay_config(out, parquet, port)
    relay = subprocess.Popen(
        [sys.executable, __file__, "--serve-relay", str(config)],
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT / "daemon")},
    )
    base = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {key}"}
    stats_auth = {"Authorization": f"Bearer {stats_key}"}
    try:
        wait_ready(base + "/readyz", relay)
        record = "/v1/datasets/bench/entities/person/records/"
        run_load(base, [record + i for i in lookup_ids[:500]], args.clients, auth)  # warm-up
        results["relay: key lookup"] = run_load(
            base,
            [record + i for i in lookup_ids],
            args.clients,
            auth,
        )
        results["relay: filtered page (50 rows)"] = run_load(
            base,
            [
                f"/v1/datasets/bench/entities/person/records?municipality={rng.choice(munis)}"
                "&limit=50"
                for _ in range(args.pages)
            ],
            args.clients,
            auth,
        )
        results["relay: grouped aggregate (k=100)"] = run_load(
            base,
            ["/v1/datasets/bench/aggregates/by_municipality"] * args.aggregates,
            args.clients,
            stats_auth,
        )
        sample = json.loads(
            __import__("httpx")
            .get(base + "/v1/datasets/bench/aggregates/by_municipality", headers=stats_auth)
            .text
        )
        print(
            f"aggregate: {len(sample['groups'])} groups published, "
            f"{sample['suppressed_groups']} suppressed",
            file=sys.stderr,
        )
    finally:
        stop(relay)
    audit_files = sorted((out / "relay" / "audit").glob("*"))
    print(f"relay audit files: {[p.name for p in audit_files]}", file=sys.stderr)

    exe = None if args.no_datasette else ensure_datasette()
    if exe is not None:
        dport = free_port()
        ds = subprocess.Popen(
            [str(exe), "serve", "-i", str(db), "-p", str(dport), "--setting",
             "sql_time_limit_ms", "20000", "--setting", "default_page_size", "50"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        dbase = f"http://127.0.0.1:{dport}"
        name = db.stem
        try:
            wait_ready(f"{dbase}/-/versions.json", ds)
            run_load(dbase, [f"/{name}/people/{i}.json" for i in lookup_ids[:500]],
                     args.clients, {})  # fmt: skip  # warm-up
            results["datasette: key lookup"] = run_load(
                dbase, [f"/{name}/people/{i}.json" for i in lookup_ids], args.clients, {}
            )
            results["datasette: filtered page (50 rows)"] = run_load(
                dbase,
                [
                    f"/{name}/people.json?municipality__exact={rng.choice(munis)}&_size=50"
                    for _ in range(args.pages)
                ],
                args.clients,
                {},
            )
            sql = (
                "select municipality, sex, count(*) as people, avg(monthly_income) as mean_income"
                " from people group by municipality, sex having count(*) >= 10"
            )
            results["datasette: grouped aggregate"] = run_load(
                dbase,
                [f"/{name}.json?sql=" + __import__("urllib.parse").parse.quote(sql)]
                * args.aggregates,
                args.clients,
                {},
            )
        finally:
            stop(ds)

    print(f"\n{args.rows:,} rows, {args.clients} concurrent clients, loopback")
    for label, r in results.items():
        report(label, r)
    if "datasette: key lookup" in results:
        ratio = results["relay: key lookup"]["rps"] / results["datasette: key lookup"]["rps"]
        print(f"\nkey lookup throughput, relay / datasette: {ratio:.2f}x")


if __name__ == "__main__":
    main()
