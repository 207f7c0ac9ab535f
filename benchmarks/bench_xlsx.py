#!/usr/bin/env python3
"""XLSX readers on one generated sheet, as ratios against reading the same rows as CSV.

    .venv/bin/python benchmarks/bench_xlsx.py [--rows 100000] [--rounds 3]

1. Generates ``--rows`` synthetic rows of eight columns (integer key, text, category,
   date, number, integer, boolean, zoned timestamp as text) and writes them once as CSV
   and once as XLSX (openpyxl, write-only mode; shared strings off, as openpyxl writes).
2. Rounds interleave, each reader in a fresh child process (its peak RSS is its own):
     * baseline: the relay's CSV decode (pyarrow with the declared types) of the CSV;
     * calamine: ``python_calamine`` ``to_python()`` of the sheet (raw cells, no typing);
     * openpyxl: read-only ``iter_rows(values_only=True)`` (raw cells, no typing);
     * relay: ``assay.relay.xlsxsource.decode_xlsx`` (openpyxl's worksheet parser, cell
       kinds checked, typed into Arrow and conformed: what a load really costs).
   Printed: median seconds, the ratio to the CSV baseline, peak RSS.

Figures, not assertions: nothing here fails on a slow machine.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "daemon"), str(ROOT)]

HEADER = ["id", "name", "muni", "born", "score", "size", "ok", "seen"]
TYPES = ["integer", "string", "string", "date", "number", "integer", "boolean", "timestamp"]


def _rows(n: int) -> list[list[object]]:
    rnd = random.Random(13)
    munis = [f"M{i:02d}" for i in range(40)]
    out: list[list[object]] = []
    for i in range(n):
        out.append(
            [
                i + 1,
                f"Person {rnd.randrange(10**6):06d}",
                rnd.choice(munis),
                dt.date(1930, 1, 1) + dt.timedelta(days=rnd.randrange(30_000)),
                round(rnd.uniform(0, 5000), 2),
                rnd.randrange(1, 9),
                rnd.random() < 0.5,
                f"2026-0{rnd.randrange(1, 10)}-1{rnd.randrange(10)}T0{rnd.randrange(10)}:00:00Z",
            ]
        )
    return out


def _write(tmp: Path, n: int) -> None:
    import openpyxl

    rows = _rows(n)
    with (tmp / "t.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(HEADER)
        for r in rows:
            w.writerow([str(v).lower() if isinstance(v, bool) else v for v in r])
    wb = openpyxl.Workbook(write_only=True)
    ws = wb.create_sheet("Data")
    ws.append(HEADER)
    for r in rows:
        ws.append(r)
    wb.save(tmp / "t.xlsx")
    _share_strings(tmp / "t.xlsx")


_INLINE = re.compile(
    rb'<c r="([A-Z]+[0-9]+)"( s="[0-9]+")? t="inlineStr"><is><t>([^<]*)</t></is></c>'
)
SST = "application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"


def _share_strings(path: Path) -> None:
    """Rewrite openpyxl's inline strings as a shared-string table, as Excel writes them
    (openpyxl reads inline strings far slower; a workbook from Excel has none)."""
    with zipfile.ZipFile(path) as z:
        contents = {n: z.read(n) for n in z.namelist()}
    table: dict[bytes, int] = {}

    def shared(m: re.Match[bytes]) -> bytes:
        idx = table.setdefault(m[3], len(table))
        return b'<c r="' + m[1] + b'"' + (m[2] or b"") + b' t="s"><v>%d</v></c>' % idx

    sheet = "xl/worksheets/sheet1.xml"
    contents[sheet] = _INLINE.sub(shared, contents[sheet])
    items = b"".join(b"<si><t>" + t + b"</t></si>" for t in table)
    contents["xl/sharedStrings.xml"] = (
        b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        b'count="%d" uniqueCount="%d">' % (len(table), len(table)) + items + b"</sst>"
    )
    override = f'<Override PartName="/xl/sharedStrings.xml" ContentType="{SST}" />'
    contents["[Content_Types].xml"] = contents["[Content_Types].xml"].replace(
        b"</Types>", override.encode() + b"</Types>"
    )
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in contents.items():
            z.writestr(name, body)


def _spec(fmt: str) -> Any:
    from assay.relay.config import Table

    source: dict[str, object] = {"path": f"t.{fmt}"}
    if fmt == "xlsx":
        source["xlsx"] = {"sheet": "Data"}
    return Table.model_validate(
        {
            "id": "t",
            "source": source,
            "primary_key": "id",
            "schema": [{"name": n, "type": t} for n, t in zip(HEADER, TYPES, strict=True)],
        }
    )


def _child(reader: str, tmp: Path) -> None:
    """One read, timed in this process; prints seconds, rows and peak RSS as JSON."""
    import io

    import openpyxl
    import python_calamine

    from assay.relay.decode import decode
    from assay.relay.xlsxsource import decode_xlsx

    data = (tmp / ("t.csv" if reader == "baseline" else "t.xlsx")).read_bytes()
    spec = _spec("csv" if reader == "baseline" else "xlsx")
    start = time.perf_counter()  # imports and the file read are outside the timing
    if reader == "baseline":
        rows = decode(data, spec, where="b.t").num_rows
    elif reader == "calamine":
        book = python_calamine.CalamineWorkbook.from_filelike(io.BytesIO(data))
        rows = len(book.get_sheet_by_name("Data").to_python()) - 1
    elif reader.startswith("openpyxl"):
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=False)
        rows = sum(1 for _ in wb["Data"].iter_rows(min_row=2, values_only=True))
        wb.close()
    else:
        rows = decode_xlsx(data, spec, where="b.t", max_bytes=1 << 30).num_rows
    seconds = time.perf_counter() - start
    # VmHWM is this process image's own peak (ru_maxrss would carry the parent's over exec).
    status = Path("/proc/self/status").read_text()
    rss = int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) / 1024
    print(json.dumps({"seconds": seconds, "rows": rows, "rss_mb": rss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]))
        return
    readers = ["baseline", "calamine", "openpyxl", "relay", "relay-stdlib-xml"]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        _write(tmp, args.rows)
        sizes = {p.name: p.stat().st_size for p in tmp.iterdir()}
        print(f"{args.rows} rows; files: {sizes}")
        results: dict[str, list[dict[str, float]]] = {r: [] for r in readers}
        for rnd in range(args.rounds):
            for reader in readers:
                env = dict(os.environ)
                if reader == "relay-stdlib-xml":  # openpyxl without defusedxml
                    env["OPENPYXL_DEFUSEDXML"] = "False"
                out = subprocess.run(
                    [sys.executable, __file__, "--child", reader, str(tmp)],
                    check=True, capture_output=True, text=True, env=env,
                ).stdout  # fmt: skip
                got = json.loads(out)
                assert got["rows"] == args.rows, (reader, got)
                results[reader].append(got)
                print(f"round {rnd + 1} {reader:9s} {got['seconds']:.3f} s")
        base = statistics.median(r["seconds"] for r in results["baseline"])
        print("\n| reader | median s | / CSV baseline | peak RSS MB |\n|---|---:|---:|---:|")
        for reader in readers:
            med = statistics.median(r["seconds"] for r in results[reader])
            rss = statistics.median(r["rss_mb"] for r in results[reader])
            print(f"| {reader} | {med:.3f} | {med / base:.1f}x | {rss:.0f} |")


if __name__ == "__main__":
    main()
