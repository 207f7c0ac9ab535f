"""Review 13b: doctor checks the DSN file, not the files the DSN makes libpq read.

A DSN names files of its own: ``sslrootcert`` (the trust anchor ``verify-full``
checks the server against), ``passfile`` (the password), ``sslkey``/``sslcert``. libpq
checks the modes of none but ``sslkey`` (and only warns for ``passfile``): a
world-writable ``sslrootcert`` lets any local user swap in their own CA and read the
relay's database traffic in the clear of a "verify-full" connection. Doctor, which
claims to check the modes of every secret the relay reads, reports nothing about it.
"""

from __future__ import annotations

from pathlib import Path

from assay.core.posture import Profile
from assay.relay.config import parse_config as parse_relay
from assay.relay.posture import relay_posture
from tests.relay.conftest import build_env
from tests.relay.pg.conftest import dsn_file, to_postgres


def test_world_writable_sslrootcert_named_by_the_dsn_is_found_by_doctor(tmp_path: Path) -> None:
    env = build_env(tmp_path, people=20)
    ca = env.dir / "secrets" / "root.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    ca.chmod(0o666)
    dsn = dsn_file(env, f"host=db.example.org user=u sslmode=verify-full sslrootcert={ca}")
    to_postgres(env, "people", dsn)
    env.write()
    cfg = parse_relay(env.config_path.read_bytes(), source=str(env.config_path))
    ev = relay_posture(cfg, base=env.dir, source=env.config_path, profile=Profile.PRODUCTION)
    hits = [str(h) for r in ev.results for h in r.hits]
    assert any("root.crt" in h for h in hits), [r.finding.id for r in ev.results]
