"""The registry daemon's config file and its promotion policies.

One YAML file, validated strictly: an unknown key names its dotted path, and the
cross-reference ``registry.policy`` must name a file in ``registry.policies_dir``.
Relative paths are resolved against the config file's directory. The config file, the
policies directory and every policy are read only if their modes make them trustworthy
(``assay.core.trusted_files``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from assay.core import admin_config
from assay.core.admin_config import AdminConfig
from assay.core.errors import ConfigError
from assay.core.posture.config import DeploymentSection
from assay.core.schema import AuditConfig, AuthConfig, ServerConfig, Strict, validate
from assay.core.strict_yaml import MAX_CONFIG_BYTES, load_yaml
from assay.core.trusted_files import TrustedDir, read_trusted
from assay.registry.consumers import ConsumerSection
from assay.registry.policy import Policy
from assay.trust.config import TrustSection

GiB = 1024**3


class RegistrySection(Strict):
    store_dir: str = "state/store"
    db_path: str = "state/registry.db"
    max_artifact_bytes: int = Field(default=16 * GiB, ge=1)
    policies_dir: str = "policies"
    policy: str = Field(default="default", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    sweep_interval_seconds: float = Field(default=3600.0, ge=0)
    #: Size of each of the two page-aligned blocks an upload is read into (rounded up to
    #: whole pages): the memory one upload holds, and the unit of each O_DIRECT write.
    upload_buffer_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    #: The longest an upload body may stall, with no byte arriving, before it is refused
    #: (``request.incomplete``) and its connection closed.
    upload_stall_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    #: Read ``Content-Length`` upload bodies straight off the socket (``registry.direct``);
    #: false serves every upload through hypercorn, at about twice the CPU per GiB.
    direct_upload: bool = True
    max_metadata_entries: int = Field(default=64, ge=0, le=1024)
    max_name_chars: int = Field(default=200, ge=1, le=1024)


class LoggingSection(Strict):
    journald: bool | None = None  # None: use journald when systemd-python and the journal exist
    level: str = Field(default="info", pattern=r"^(debug|info|warning|error)$")


class WatchdogSection(Strict):
    #: A test-only fault switch (hangs the event loop on request); refused unless this is true.
    allow_fault_injection: bool = False


class RegistryConfig(Strict):
    server: ServerConfig = ServerConfig()
    auth: AuthConfig
    audit: AuditConfig
    registry: RegistrySection = RegistrySection()
    logging: LoggingSection = LoggingSection()
    watchdog: WatchdogSection = WatchdogSection()
    consumer: ConsumerSection = ConsumerSection()
    #: The TUF repository of the trusted set (``docs/trust.md``); absent = not published.
    trust: TrustSection | None = None
    #: The deployment profile, evidence and waivers (``docs/posture.md``); absent = local.
    deployment: DeploymentSection = DeploymentSection()
    #: The admin listener (``/metrics``); absent = off (``assay.core.admin``).
    admin: AdminConfig | None = None

    @model_validator(mode="after")
    def _admin_apart(self) -> RegistryConfig:
        problems = admin_config.conflicts(self.admin, self.server.bind, self.server.unix_socket)
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass(frozen=True)
class LoadedConfig:
    """The validated config plus where it came from and the active policy."""

    config: RegistryConfig
    base: Path
    source: Path
    policy: Policy
    policies: dict[str, Policy]

    def path(self, value: str) -> Path:
        p = Path(value)
        return p if p.is_absolute() else self.base / p


def load_policies(directory: Path) -> dict[str, Policy]:
    """Every ``*.yaml`` under ``directory``, keyed by the policy's ``name``.

    The directory and each file must pass ``assay.core.trusted_files`` (no symlinks,
    not writable by group or others, owned by root or this daemon's user).
    """
    if not directory.is_dir() and not directory.is_symlink():
        raise ConfigError(
            f"registry.policies_dir: {directory} is not a directory", path="registry.policies_dir"
        )
    policies: dict[str, Policy] = {}
    with TrustedDir(directory) as trusted:
        for name in trusted.names(".yaml"):
            file = directory / name
            data = trusted.read(name, max_bytes=MAX_CONFIG_BYTES)
            policy = validate(Policy, load_yaml(data, source=str(file)), source=str(file))
            if policy.name in policies:
                raise ConfigError(f"{file}: duplicate policy name {policy.name!r}", path="name")
            policies[policy.name] = policy
    return policies


def parse_config(text: str | bytes, *, source: Path) -> RegistryConfig:
    return validate(RegistryConfig, load_yaml(text, source=str(source)), source=str(source))


def load_config(path: Path) -> LoadedConfig:
    text = read_trusted(path, max_bytes=MAX_CONFIG_BYTES)
    config = parse_config(text, source=path)
    base = path.resolve().parent
    loaded_dir = Path(config.registry.policies_dir)
    policies = load_policies(loaded_dir if loaded_dir.is_absolute() else base / loaded_dir)
    # Cross-reference: the active policy must exist.
    if config.registry.policy not in policies:
        known = ", ".join(sorted(policies)) or "none"
        raise ConfigError(
            f"{path}: registry.policy: no policy named {config.registry.policy!r} (known: {known})",
            path="registry.policy",
        )
    return LoadedConfig(config, base, path, policies[config.registry.policy], policies)
