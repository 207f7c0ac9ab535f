"""Live-table disclosure attack (review 13): a bearer token both aggregates and reads live.

A live table keeps no rows, so the relay cannot tell whether it is an aggregate's
population; for an API key that may ask civil's aggregate and read housing's live
households the startup fails closed (``tests/relay/pg/test_pg_live.py``). A bearer token
(token file, or OIDC, whose scopes the config never sees) with the very same scopes is
checked only at request time, and only against tables of the aggregate's own spelling:
it gets the aggregate *and* every live row (the same rows, the same registry), so the
suppressed cells are one count away (cases_by_status groups the households the live
table serves row by row). The safe answer is the API key's: refused.
"""

from __future__ import annotations

from pathlib import Path

from assay.core import tokenfile
from tests.relay.conftest import build_env, start
from tests.relay.pg.conftest import dsn_file, example_tables, pg, to_postgres  # noqa: F401
from tests.relay.pg.pgserver import PgServer

AGG = "/v1/datasets/civil/aggregates/cases_by_status"  # over civil's households
LIVE = "/v1/datasets/housing/entities/household/records?limit=5"


async def test_bearer_token_that_aggregates_and_reads_a_live_table_is_refused_the_aggregate(
    tmp_path: Path,
    pg: PgServer,  # noqa: F811
    example_tables: None,  # noqa: F811
) -> None:
    env = build_env(tmp_path, people=100)
    to_postgres(env, "households", dsn_file(env, pg.dsn("relay_ro")), dataset=1, mode="live")
    token_file = env.dir / "secrets" / "tokens.json"
    scopes = ["civil:metadata", "civil:aggregate", "case:metadata", "case:aggregate",
              "housing:metadata", "housing:read"]  # fmt: skip
    both, _ = tokenfile.create(token_file, "both", scopes)
    env.doc["auth"]["token_file"] = {"file": str(token_file)}
    env.write()
    parts, _audit = start(env)  # API keys with these scopes would stop this startup
    try:
        async with parts.app.test_app() as app:
            client = app.test_client()
            headers = {"Authorization": f"Bearer {both}"}
            live = await client.get(LIVE, headers=headers)
            assert live.status_code == 200, await live.get_json()
            r = await client.get(AGG, headers=headers)
            body = await r.get_json()
            assert r.status_code == 403, body
            assert body["code"] == "auth.scope_conflict", body
    finally:
        parts.close()
