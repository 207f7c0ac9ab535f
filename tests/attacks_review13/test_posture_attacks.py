"""Posture attacks (review 13): doctor must see every secret the relay reads.

A Postgres source's DSN is a secret (it holds the database password) read through a
``SecretRef`` like the audit key; the doctor that claims to check "whether the secrets
really are what they claim" and their file modes must look at it too.
"""

from __future__ import annotations

from pathlib import Path

from assay.core.posture import Profile
from assay.relay.config import parse_config as parse_relay
from assay.relay.posture import relay_posture, relay_target
from tests.relay.conftest import build_env
from tests.relay.pg.conftest import dsn_file, to_postgres

DSN = "host=127.0.0.1 port=5432 dbname=r user=u password=hunter2-s3cr3t sslmode=require"


def _env_with_pg_dsn(tmp: Path, mode: int) -> tuple[Path, Path]:
    env = build_env(tmp, people=20)
    dsn = dsn_file(env, DSN)
    to_postgres(env, "people", dsn)
    env.write()
    dsn.chmod(mode)
    return env.dir, env.config_path


def test_world_writable_postgres_dsn_file_is_found_by_doctor(tmp_path: Path) -> None:
    base, config = _env_with_pg_dsn(tmp_path, 0o666)
    cfg = parse_relay(config.read_bytes(), source=str(config))
    roles = [s.role for s in relay_target(cfg, base=base, source=config).secrets]
    assert any("postgres.dsn" in r for r in roles), roles
    ev = relay_posture(cfg, base=base, source=config, profile=Profile.PRODUCTION)
    hits = [h for r in ev.results if r.finding.id == "POS-MODE-SECRET" for h in r.hits]
    assert any("pg.dsn" in str(h) for h in hits), hits
