"""What posture looks at for the relay: its bind, files, secrets and unit.

Each secret is listed with the kind its config claims (an API key's fingerprint must be
a fingerprint, not the raw key), so the probe can check it (docs/posture.md).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from assay.core.admin_config import admin_binds
from assay.core.posture.assess import posture, resolve
from assay.core.posture.evaluate import Evaluation
from assay.core.posture.model import Profile
from assay.core.posture.probe import SecretSpec, Target
from assay.relay.config import RelayConfig

UNIT = "assay-relay.service"


def relay_target(
    cfg: RelayConfig, *, base: Path, source: Path, unit_files: tuple[Path, ...] = ()
) -> Target:
    state = [("audit.dir", resolve(base, cfg.audit.dir))]
    if cfg.row_budgets is not None:
        state.append(("row_budgets.state_dir", resolve(base, cfg.row_budgets.state_dir)))
    secrets = [SecretSpec("audit.hmac_key", cfg.audit.hmac_key, "hmac")]
    if cfg.audit.signing_key is not None:
        secrets.append(SecretSpec("audit.signing_key", cfg.audit.signing_key, "ed25519"))
    if cfg.auth.token_file is not None:
        secrets.append(SecretSpec("auth.token_file", cfg.auth.token_file, "token_file"))
    secrets += [
        SecretSpec(f"auth.api_keys[{i}].fingerprint", key.fingerprint, "fingerprint")
        for i, key in enumerate(cfg.auth.api_keys)
    ]
    secrets += [
        SecretSpec(f"datasets[{i}].tables[{j}].source.postgres.dsn", t.source.postgres.dsn, "dsn")
        for i, ds in enumerate(cfg.datasets)
        for j, t in enumerate(ds.tables)
        if t.source.postgres is not None
    ]
    if cfg.instance.answer_signing is not None:
        secrets.append(
            SecretSpec("instance.answer_signing.key", cfg.instance.answer_signing.key, "ed25519")
        )
    trusted, keys = _dsn_files(cfg, base)
    return Target(
        daemon="relay", base=base, binds=admin_binds(cfg.server.bind, cfg.admin),
        config_paths=(("config", source), ("config directory", source.resolve().parent),
                      *trusted),
        secret_paths=keys,
        state_paths=tuple(state), secrets=tuple(secrets), audit=cfg.audit,
        unit_names=(UNIT,), unit_files=unit_files,
    )  # fmt: skip


#: Files a DSN names for libpq: trust anchors and lists others must not replace, and
#: keys and password files others must not read (libpq itself checks only sslkey).
DSN_TRUSTED_FILES = ("sslrootcert", "sslcert", "sslcrl", "sslcrldir")
DSN_SECRET_FILES = ("sslkey", "passfile")


def _dsn_files(
    cfg: RelayConfig, base: Path
) -> tuple[tuple[tuple[str, Path], ...], tuple[tuple[str, Path], ...]]:
    """The files each Postgres source's DSN names, as (role, path): ones kept like config
    (a world-writable ``sslrootcert`` lets anyone swap the anchor ``verify-full`` checks
    the server against) and ones kept like secrets. A DSN that cannot be read or parsed
    is the relay's startup refusal, and the DSN file's own check here; relative paths are
    taken from the config's directory. Blocking."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    from assay.core.errors import AssayError
    from assay.core.secrets import read_secret

    trusted: list[tuple[str, Path]] = []
    keys: list[tuple[str, Path]] = []
    for i, ds in enumerate(cfg.datasets):
        for j, t in enumerate(ds.tables):
            if t.source.postgres is None:
                continue
            role = f"datasets[{i}].tables[{j}].source.postgres.dsn"
            try:
                dsn = read_secret(t.source.postgres.dsn, base=base, min_bytes=1).decode()
                params = conninfo_to_dict(dsn)
            except (AssayError, OSError, UnicodeDecodeError, psycopg.Error):
                continue  # the DSN file's own finding, and the relay's startup refusal
            for name in DSN_TRUSTED_FILES + DSN_SECRET_FILES:
                value = params.get(name)
                if not isinstance(value, str) or not value or value == "system":
                    continue
                path = Path(value) if Path(value).is_absolute() else base / value
                out = trusted if name in DSN_TRUSTED_FILES else keys
                out.append((f"{role} {name}", path))
    return tuple(trusted), tuple(keys)


def relay_posture(
    cfg: RelayConfig, *, base: Path, source: Path, thorough: bool = True,
    now: dt.datetime | None = None, profile: Profile | None = None,
    unit_files: tuple[Path, ...] = (),
) -> Evaluation:  # fmt: skip
    target = relay_target(cfg, base=base, source=source, unit_files=unit_files)
    return posture(target, cfg.deployment, now=now, profile=profile, thorough=thorough)
