"""Review 13b: a bearer credential reads a Postgres table's rows and aggregates them.

The fix for review 13 treats any *live* table as every aggregate's population, because
a bearer token (token file, OIDC) is checked only at request time, where no rows are
compared. The same holds for a *snapshot* Postgres table read through the same DSN
secret: ``table: households`` and ``query: SELECT * FROM households`` are two
spellings of one relation on one server over one DSN file, so ``same_file`` calls them
distinct and ``population_readers`` does not list the reader. An API key with these
scopes is caught by the content check at load; a bearer token is not.
Pure: no database is contacted (``load_config`` and ``population_readers`` only).
"""

from __future__ import annotations

from pathlib import Path

from assay.relay.settings import load_config, population_readers
from tests.relay.conftest import build_env
from tests.relay.pg.conftest import dsn_file, to_postgres

DSN = "host=db.example.org dbname=r user=u password=x sslmode=verify-full"


def test_query_spelling_of_the_aggregated_pg_relation_is_a_reader_for_bearer_tokens(
    tmp_path: Path,
) -> None:
    env = build_env(tmp_path, people=20)
    dsn = dsn_file(env, DSN)
    # civil.households (aggregated by cases_by_status) and housing.households: one
    # relation on one server through one DSN file, two spellings.
    to_postgres(env, "households", dsn, dataset=0)
    spec = to_postgres(env, "households", dsn, dataset=1)
    spec["source"]["postgres"].pop("table")
    spec["source"]["postgres"]["query"] = "SELECT * FROM households"
    env.write()
    loaded = load_config(env.config_path)
    readers = population_readers(loaded)
    over = readers[("civil", "cases_by_status")]
    assert ("housing", "household") in over, over
