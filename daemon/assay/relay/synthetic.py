"""Generate the relay's synthetic example registry: people and households, never real data.

Every name, id and date is drawn from a seeded PRNG over small made-up vocabularies, so the
same seed always gives byte-identical files. Municipality sizes are skewed on purpose, with
a few tiny ones, so the example aggregate shows small-cell suppression.

    python relay/example/generate_dataset.py [OUT_DIR] [--people N] [--seed S]

Writes people.csv, people.parquet, households.csv and households.parquet into OUT_DIR
(default relay/example/data/, which git ignores). Part of the package (not only of the
checkout) so that ``assay relay init`` can make the example wherever assay is installed.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

GIVEN = ["Ada", "Bo", "Cyd", "Dara", "Eli", "Fen", "Gus", "Hal", "Ivo", "Jun", "Kai", "Lou"]
STATUS = ["active", "active", "active", "suspended", "closed"]
#: 36 ordinary municipalities plus 4 tiny ones (a handful of households each).
MUNICIPALITIES = [f"M{i:02d}" for i in range(1, 37)]
TINY = ["T01", "T02", "T03", "T04"]
EPOCH = date(1930, 1, 1)
UPDATED = datetime(2025, 1, 1, tzinfo=UTC)


def _municipality(rng: random.Random) -> str:
    if rng.random() < 0.0004:
        return rng.choice(TINY)
    # Zipf-like skew: M01 is large, M36 small.
    weights = [1.0 / (i + 1) for i in range(len(MUNICIPALITIES))]
    return rng.choices(MUNICIPALITIES, weights)[0]


def generate(people: int, seed: int) -> tuple[pa.Table, pa.Table]:
    rng = random.Random(seed)  # noqa: S311 - seeded on purpose: same seed, same synthetic data
    hh_ids: list[str] = []
    hh_muni: list[str] = []
    hh_size: list[int] = []
    hh_status: list[str] = []
    hh_head: list[str] = []
    hh_updated: list[datetime] = []
    p_cols: dict[str, list[object]] = {
        k: []
        for k in (
            "person_id", "national_id", "household_id", "given_name", "birth_date", "sex",
            "municipality", "enrolled", "enrolled_on", "monthly_income", "updated_at",
            "case_note",
        )
    }  # fmt: skip
    n = 0
    h = 0
    while n < people:
        h += 1
        hid = f"H{h:07d}"
        muni = _municipality(rng)
        size = min(people - n, rng.choice([1, 1, 2, 2, 3, 3, 4, 5, 6]))
        members = []
        for _ in range(size):
            n += 1
            pid = f"P{n:08d}"
            members.append(pid)
            enrolled = rng.random() < 0.6
            p_cols["person_id"].append(pid)
            p_cols["national_id"].append(f"SYN-{rng.randrange(10**9):09d}-{n % 97:02d}")
            p_cols["household_id"].append(hid)
            p_cols["given_name"].append(rng.choice(GIVEN))
            p_cols["birth_date"].append(EPOCH + timedelta(days=rng.randrange(0, 34000)))
            p_cols["sex"].append(rng.choice("FFMMX" if rng.random() < 0.02 else "FM"))
            p_cols["municipality"].append(muni)
            p_cols["enrolled"].append(enrolled)
            p_cols["enrolled_on"].append(
                date(2015, 1, 1) + timedelta(days=rng.randrange(0, 3650)) if enrolled else None
            )
            p_cols["monthly_income"].append(
                round(rng.lognormvariate(7.0, 0.6), 2) if rng.random() < 0.9 else None
            )
            p_cols["updated_at"].append(UPDATED + timedelta(seconds=rng.randrange(0, 10**7)))
            p_cols["case_note"].append(f"synthetic note {rng.randrange(10**6)}")
        hh_ids.append(hid)
        hh_muni.append(muni)
        hh_size.append(size)
        hh_status.append(rng.choice(STATUS))
        hh_head.append(members[0])
        hh_updated.append(UPDATED + timedelta(seconds=rng.randrange(0, 10**7)))
    ts = pa.timestamp("us", tz="UTC")
    people_table = pa.table(
        {
            "person_id": pa.array(p_cols["person_id"], pa.string()),
            "national_id": pa.array(p_cols["national_id"], pa.string()),
            "household_id": pa.array(p_cols["household_id"], pa.string()),
            "given_name": pa.array(p_cols["given_name"], pa.string()),
            "birth_date": pa.array(p_cols["birth_date"], pa.date32()),
            "sex": pa.array(p_cols["sex"], pa.string()),
            "municipality": pa.array(p_cols["municipality"], pa.string()),
            "enrolled": pa.array(p_cols["enrolled"], pa.bool_()),
            "enrolled_on": pa.array(p_cols["enrolled_on"], pa.date32()),
            "monthly_income": pa.array(p_cols["monthly_income"], pa.float64()),
            "updated_at": pa.array(p_cols["updated_at"], ts),
            "case_note": pa.array(p_cols["case_note"], pa.string()),
        }
    )
    households = pa.table(
        {
            "household_id": pa.array(hh_ids, pa.string()),
            "municipality": pa.array(hh_muni, pa.string()),
            "size": pa.array(hh_size, pa.int64()),
            "status": pa.array(hh_status, pa.string()),
            "head_person_id": pa.array(hh_head, pa.string()),
            "updated_at": pa.array(hh_updated, ts),
        }
    )
    return people_table, households


def write(out: Path, people: int, seed: int) -> dict[str, Path]:
    return write_tables(out, *generate(people, seed))


def write_tables(out: Path, people_table: pa.Table, households: pa.Table) -> dict[str, Path]:
    """Each table as Parquet and as CSV in ``out`` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, table in (("people", people_table), ("households", households)):
        paths[f"{name}.parquet"] = out / f"{name}.parquet"
        pq.write_table(table, paths[f"{name}.parquet"])
        paths[f"{name}.csv"] = out / f"{name}.csv"
        pacsv.write_csv(
            table, paths[f"{name}.csv"], write_options=pacsv.WriteOptions(quoting_style="needed")
        )
    return paths


#: The example's defaults: 100,000 people from this seed.
DEFAULT_PEOPLE = 100_000
DEFAULT_SEED = 20_240_601


def main(argv: Sequence[str] | None = None, *, default_out: Path | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(default_out or Path("data")))
    parser.add_argument("--people", type=int, default=DEFAULT_PEOPLE)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    for path in write(Path(args.out), args.people, args.seed).values():
        print(path)
