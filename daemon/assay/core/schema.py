"""Strict config models: an unknown key is an error that names its full path.

Why pydantic: it already does strict, typed validation with error locations, so we only
turn its locations into dotted paths (``registry.policy.formatz``) and never hand-write
a validator for shapes. Pure: takes parsed values, raises ``ConfigError``.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from assay.core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every config block: unknown keys are refused, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _dotted(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif parts:
            parts.append(f".{item}")
        else:
            parts.append(str(item))
    return "".join(parts)


def validate(model: type[M], data: Any, *, source: str = "<config>") -> M:
    """Validate ``data`` into ``model``; every problem is reported by its dotted path."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems: list[str] = []
        paths: list[str] = []
        for err in exc.errors():
            # pydantic reports tagged-union branches and our own validators in the loc.
            loc = tuple(
                p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))
            )
            path = _dotted(loc) or "<root>"
            paths.append(path)
            kind = err["type"]
            msg = "unknown key" if kind == "extra_forbidden" else err["msg"]
            problems.append(f"{path}: {msg}")
        raise ConfigError(f"{source}: " + "; ".join(problems), path=paths[0], paths=paths) from None


class SecretRef(Strict):
    """Where a secret lives. Secrets never sit in the YAML itself.

    Exactly one of: ``file`` (a path), ``env`` (an environment variable name) or
    ``credential`` (a name under systemd's ``$CREDENTIALS_DIRECTORY``).
    """

    file: str | None = None
    env: str | None = None
    credential: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SecretRef:
        given = [k for k in ("file", "env", "credential") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of file, env or credential")
        return self

    def describe(self) -> str:
        if self.file is not None:
            return f"file {self.file}"
        if self.env is not None:
            return f"environment variable {self.env}"
        return f"credential {self.credential}"


class ServerConfig(Strict):
    """Where the HTTP server listens and how much it accepts from a client."""

    bind: str = "127.0.0.1:8470"
    allow_non_loopback: bool = False
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    max_json_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    #: Connections served at once, TCP and Unix socket together. At the cap a new one
    #: displaces the connection idle longest (no request in progress); when every one
    #: is in a request, the new one gets a fast 503 ``server.busy`` and is closed.
    max_connections: int = Field(default=256, ge=1, le=65536)
    #: Idle close: a connection with no request in progress and no byte of the next one
    #: is closed after this (before its first request too).
    keep_alive_timeout_seconds: float = Field(default=5.0, gt=0, le=600)
    #: From the first byte of a request head to its end; more bytes do not extend it.
    header_read_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    #: Within a request, the longest the daemon waits on the client with no byte moving
    #: (for request-body bytes, or for the client to take response bytes). A transfer
    #: that keeps moving is never cut, however long; server-side work is not a wait.
    request_timeout_seconds: float = Field(default=60.0, gt=0, le=86_400)
    shutdown_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    unix_socket: str | None = None

    @field_validator("bind")
    @classmethod
    def _bind_shape(cls, value: str) -> str:
        if value.startswith("fd://"):
            if not value[5:].isdigit():
                raise ValueError("fd:// needs a file descriptor number")
            return value
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("bind must be HOST:PORT or fd://N")
        return value

    @model_validator(mode="after")
    def _loopback_unless_allowed(self) -> ServerConfig:
        if self.bind.startswith("fd://") or self.allow_non_loopback:
            return self
        if not is_loopback_host(self.bind.rpartition(":")[0]):
            raise ValueError(
                f"bind {self.bind} is not loopback; set server.allow_non_loopback: true to allow it"
            )
        return self


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthConfig(Strict):
    """Bearer tokens live only as fingerprints in ``token_file`` (mode 0600)."""

    token_file: SecretRef


WritePolicy = Literal["fail_closed", "availability_first"]


class AuditConfig(Strict):
    """The HMAC-chained audit log shared by every component."""

    dir: str
    hmac_key: SecretRef
    signing_key: SecretRef | None = None
    write_policy: WritePolicy = "fail_closed"
    rotate_bytes: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    checkpoint_every_records: int = Field(default=1000, ge=1, le=10_000_000)
    checkpoint_every_seconds: float = Field(default=60.0, gt=0, le=86_400)
    log_id: str = Field(default="assay", pattern=r"^[A-Za-z0-9._-]{1,64}$")
