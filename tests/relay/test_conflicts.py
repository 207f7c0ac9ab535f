"""No credential both aggregates a population and reads its rows (assay.relay.conflicts).

A key that holds an aggregate's scope and read access to an entity over the same rows
counts what the aggregate suppresses. Attacked by every way a config can grant both:
one key with both dataset scopes, an entity's own access, another dataset over the same
file or a copy of it, a reload that makes a readable table the aggregate's population,
and a bearer token from the token file (not declared in the config).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from assay.cli import relay_cmd
from assay.core import tokenfile
from assay.core.errors import ConfigError
from assay.relay.settings import load_config
from tests.relay.conftest import GEN, RelayEnv, build_env, start
from tests.relay.test_outside_review import add_key

AGG = "/v1/datasets/civil/aggregates/people_by_municipality"


def _refused(env: RelayEnv, *, static: bool) -> str:
    with pytest.raises(ConfigError) as info:
        relay_cmd.check_config(env.config_path, static=static)
    return info.value.detail


@pytest.mark.parametrize(
    "scopes",
    [
        ["civil:read", "civil:aggregate"],  # the example's resident and person views
        ["civil:metadata", "civil:read", "civil:aggregate", "housing:read"],
        # cases_by_status groups households; household (no own access) reads them.
        ["civil:read", "civil:aggregate", "case:aggregate"],
    ],
)
def test_a_key_that_may_aggregate_and_read_one_table_does_not_load(
    tmp_path: Path, scopes: list[str]
) -> None:
    env = build_env(tmp_path, people=100)
    add_key(env, "both", scopes)
    detail = _refused(env, static=True)  # check-config --static already sees it
    assert "key 'both'" in detail and "aggregates and record reads" in detail
    with pytest.raises(ConfigError):
        start(env)


def test_a_key_reading_another_dataset_over_the_same_file_does_not_load(tmp_path: Path) -> None:
    """``register`` reads people.parquet through a symlink in a dataset of its own, with
    scopes of its own: still the rows civil's aggregate groups."""
    env = build_env(tmp_path, people=100)
    (env.dir / "alias.parquet").symlink_to(env.data / "people.parquet")
    _reader_dataset(env, env.dir / "alias.parquet")
    add_key(env, "both", ["civil:aggregate", "register:read"])
    assert "the same file as the aggregate's table civil.people" in _refused(env, static=True)


def test_a_key_reading_a_copy_is_refused_once_the_sources_load(tmp_path: Path) -> None:
    """The same rows as CSV under another path: the file system cannot tell, the contents
    can (the same identifiers; the population check of assay.relay.population)."""
    env = build_env(tmp_path, people=100)
    shutil.copyfile(env.data / "people.csv", env.dir / "copy.csv")
    _reader_dataset(env, env.dir / "copy.csv")
    add_key(env, "both", ["civil:aggregate", "register:read"])
    load_config(env.config_path)  # nothing to see statically
    detail = _refused(env, static=False)
    assert "key 'both'" in detail and "register.people, which is the same records" in detail


async def test_a_reload_that_makes_a_readable_table_the_population_is_refused(
    tmp_path: Path,
) -> None:
    env = build_env(tmp_path, people=150)
    GEN.write(env.dir / "other", 150, 99)
    register = env.dir / "register.parquet"
    shutil.copyfile(env.dir / "other" / "people.parquet", register)
    _reader_dataset(env, register)
    add_key(env, "both", ["civil:aggregate", "register:read"])
    parts, _audit = start(env)  # other people: the key may have both
    state = next(t for t in parts.store.tables() if t.dataset == "register")
    served = parts.store.get("register", "people").digest
    rows = pq.read_table(env.data / "people.parquet").slice(0, 120)  # a subset of civil's
    pq.write_table(rows, register.with_suffix(".new"))
    register.with_suffix(".new").replace(register)
    assert await parts.store.reload(state) is False
    assert parts.store.get("register", "people").digest == served
    assert state.last_error is not None and "key 'both'" in state.last_error
    parts.close()


async def test_a_token_that_may_read_the_aggregated_table_is_refused_the_aggregate(
    tmp_path: Path,
) -> None:
    """Tokens are not in the config: the relay starts, and refuses the aggregate to the
    token at request time; records it may still read, and a token without the read
    scope still gets the aggregate."""
    env = build_env(tmp_path, people=100)
    token_file = env.dir / "secrets" / "tokens.json"
    both, _ = tokenfile.create(token_file, "both", ["civil:read", "civil:aggregate"])
    stats, _ = tokenfile.create(token_file, "stats", ["civil:aggregate"])
    env.doc["auth"]["token_file"] = {"file": str(token_file)}
    env.write()
    parts, audit = start(env)
    async with parts.app.test_app() as app:
        client = app.test_client()
        r = await client.get(AGG, headers={"Authorization": f"Bearer {both}"})
        body = await r.get_json()
        assert r.status_code == 403 and body["code"] == "auth.scope_conflict", body
        assert "groups" not in body
        assert audit.records[-1]["error_code"] == "auth.scope_conflict"
        r = await client.get(
            "/v1/datasets/civil/entities/household/records/H0000001",
            headers={"Authorization": f"Bearer {both}"},
        )
        assert r.status_code == 200
        r = await client.get(AGG, headers={"Authorization": f"Bearer {stats}"})
        assert r.status_code == 200
    parts.close()


def _reader_dataset(env: RelayEnv, path: Path) -> None:
    """A dataset ``register`` with one readable entity over ``path`` and no aggregate."""
    civil = env.doc["datasets"][0]
    register = copy.deepcopy(civil)
    register.update(id="register", title="Register", aggregates=[])
    register["access"] = {"metadata_scope": "register:metadata", "read_scope": "register:read",
                          "aggregate_scope": "register:aggregate"}  # fmt: skip
    (people,) = [copy.deepcopy(t) for t in civil["tables"] if t["id"] == "people"]
    people["source"] = {"path": str(path)}
    register["tables"] = [people]
    register["entities"] = [e for e in copy.deepcopy(civil["entities"]) if e["name"] == "person"]
    env.doc["datasets"].append(register)
    env.write()


def _oidc(env: RelayEnv, scope_map: dict[str, list[str]]) -> None:
    """``auth.mode: oidc`` with ``scope_map``; a static load never contacts the issuer."""
    env.doc["auth"] = {"mode": "oidc", "oidc": {
        "issuer": "https://idp.example", "audiences": ["assay-relay"],
        "jwks_url": "https://idp.example/jwks", "allowed_algorithms": ["RS256"],
        "scope_map": scope_map}}  # fmt: skip
    env.write()


@pytest.mark.parametrize(
    "mapped",
    [
        ["civil:read", "civil:aggregate"],
        ["civil:metadata", "civil:read", "civil:aggregate", "housing:read"],
        ["civil:read", "civil:aggregate", "case:aggregate"],
    ],
)
def test_a_provider_scope_mapped_to_aggregate_and_read_one_table_does_not_load(
    tmp_path: Path, mapped: list[str]
) -> None:
    """A ``scope_map`` entry is a credential the config declares: one provider role that
    grants both accesses over one population is refused like an API key that holds them."""
    env = build_env(tmp_path, people=100)
    _oidc(env, {"role:statistician": mapped, "role:reader": ["civil:read"]})
    with pytest.raises(ConfigError) as info:
        load_config(env.config_path)
    detail = info.value.detail
    assert "the provider scope 'role:statistician'" in detail, detail
    assert "aggregates and record reads" in detail and "role:reader" not in detail, detail
    assert info.value.extra["path"] == "auth.oidc.scope_map[0]", info.value.extra


def test_provider_scopes_that_each_grant_one_access_load_and_are_judged_per_request(
    tmp_path: Path,
) -> None:
    """Two roles, one per access: the config cannot know a token holds both, so it loads;
    the request-time check (``Relay.refuse_conflict``) refuses such a token the aggregate
    (``tests/relay/test_oidc_e2e.py``, the ``reporting`` client)."""
    env = build_env(tmp_path, people=100)
    _oidc(env, {"role:stats": ["civil:aggregate"], "role:reader": ["civil:read"]})
    load_config(env.config_path)
