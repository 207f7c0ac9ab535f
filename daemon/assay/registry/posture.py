"""What posture looks at for the registry: its binds, files, secrets and unit.

Each secret is listed with the kind its config claims, so the probe can check that the
file really holds one (docs/posture.md); a new secret in the config is one line here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from pathlib import Path

from assay.core.admin_config import admin_binds
from assay.core.posture.assess import posture, resolve
from assay.core.posture.evaluate import Evaluation
from assay.core.posture.model import Profile
from assay.core.posture.probe import SecretSpec, Target
from assay.registry.config import RegistryConfig

UNIT = "assay.service"


def registry_target(
    cfg: RegistryConfig, *, base: Path, source: Path, unit_files: tuple[Path, ...] = ()
) -> Target:
    policies = resolve(base, cfg.registry.policies_dir)
    config_paths = [("config", source), ("config directory", source.resolve().parent),
                    ("registry.policies_dir", policies)]  # fmt: skip
    with contextlib.suppress(OSError):  # unreadable: the daemon's own loader says so
        config_paths += [(f"policy {p.name}", p) for p in sorted(policies.glob("*.yaml"))]
    state = [
        ("registry.store_dir", resolve(base, cfg.registry.store_dir)),
        ("registry.db_path", resolve(base, cfg.registry.db_path)),
        ("audit.dir", resolve(base, cfg.audit.dir)),
    ]
    secrets = [
        SecretSpec("audit.hmac_key", cfg.audit.hmac_key, "hmac"),
        SecretSpec("auth.token_file", cfg.auth.token_file, "token_file"),
    ]
    if cfg.audit.signing_key is not None:
        secrets.append(SecretSpec("audit.signing_key", cfg.audit.signing_key, "ed25519"))
    if cfg.trust is not None and cfg.trust.enabled:
        state.append(("trust.state_dir", resolve(base, cfg.trust.state_dir)))
        secrets.append(SecretSpec("trust.online_key", cfg.trust.online_key, "ed25519"))
    return Target(
        daemon="registry", base=base, binds=admin_binds(cfg.server.bind, cfg.admin),
        config_paths=tuple(config_paths), state_paths=tuple(state), secrets=tuple(secrets),
        audit=cfg.audit, unit_names=(UNIT,), unit_files=unit_files,
        fault_injection=cfg.watchdog.allow_fault_injection,
    )  # fmt: skip


def registry_posture(
    cfg: RegistryConfig, *, base: Path, source: Path, thorough: bool = True,
    now: dt.datetime | None = None, profile: Profile | None = None,
    unit_files: tuple[Path, ...] = (),
) -> Evaluation:  # fmt: skip
    target = registry_target(cfg, base=base, source=source, unit_files=unit_files)
    return posture(target, cfg.deployment, now=now, profile=profile, thorough=thorough)
