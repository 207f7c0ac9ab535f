"""The ``admin:`` section both daemons share: where the admin listener listens. Pure.

Why a listener of its own: ``/metrics``, the relay's table reload and the posture report
are for operators and their scrapers, not for the callers of the public API, so they
never share the public socket (a public route cannot reach them, and a firewall or a
socket's file mode can keep them private). Off unless the section is given.

The gate (one rule, both transports): every admin route needs a bearer token (or, on
the relay, an API key) holding that route's ``admin:*`` scope, from the daemon's own
credentials. A Unix socket's mode (0600 or 0660) keeps other local users from even
connecting, on top of the token, never instead of it: a socket mode cannot tell a
scraper from a shell running as the daemon's group.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from assay.core.schema import Strict, is_loopback_host

#: The scope each admin route needs (``admin:*``; a token holds the ones it is given).
METRICS_SCOPE = "admin:metrics"
RELOAD_SCOPE = "admin:reload"
POSTURE_SCOPE = "admin:posture"
ADMIN_SCOPES: frozenset[str] = frozenset({METRICS_SCOPE, RELOAD_SCOPE, POSTURE_SCOPE})
#: The resource every admin scope belongs to. Only a locally provisioned credential (the
#: token file, an API key) may hold one: an identity provider's grant never does.
ADMIN_SCOPE_PREFIX = "admin:"


class AdminConfig(Strict):
    """The admin listener: a private TCP bind, a Unix socket, or both."""

    #: ``HOST:PORT``; loopback only unless ``allow_non_loopback``.
    bind: str | None = None
    allow_non_loopback: bool = False
    #: A path (relative to the config's directory) for a Unix stream socket.
    unix_socket: str | None = None
    #: The socket file's mode: owner read/write, the daemon's group at most, never others.
    unix_socket_mode: int = Field(default=0o600, ge=0o600, le=0o660)
    #: Connections at once on this listener (its own table, apart from the public one's).
    max_connections: int = Field(default=16, ge=1, le=1024)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    keep_alive_timeout_seconds: float = Field(default=5.0, gt=0, le=600)
    header_read_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    request_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)

    @field_validator("bind")
    @classmethod
    def _bind_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _host, sep, port = value.rpartition(":")
        if not sep or not _host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("bind must be HOST:PORT")
        return value

    @field_validator("unix_socket_mode")
    @classmethod
    def _mode(cls, value: int) -> int:
        if value not in (0o600, 0o660):
            raise ValueError(f"unix_socket_mode {value:#o}: 0600 or 0660 (nothing for others)")
        return value

    @model_validator(mode="after")
    def _somewhere_private(self) -> AdminConfig:
        if self.bind is None and self.unix_socket is None:
            raise ValueError("give bind, unix_socket or both (omit the section to turn it off)")
        host = self.bind.rpartition(":")[0] if self.bind is not None else None
        if host is not None and not self.allow_non_loopback and not is_loopback_host(host):
            raise ValueError(
                f"bind {self.bind} is not loopback; set admin.allow_non_loopback: true to allow it"
            )
        return self


def conflicts(admin: AdminConfig | None, public_bind: str, public_unix: str | None) -> list[str]:
    """Why the admin listener would share a public one's address (``path: problem``)."""
    if admin is None:
        return []
    problems: list[str] = []
    if admin.bind is not None and admin.bind == public_bind:
        problems.append("admin.bind: the same address as server.bind; admin needs its own")
    if admin.unix_socket is not None and admin.unix_socket == public_unix:
        problems.append("admin.unix_socket: the same path as server.unix_socket")
    return problems


def admin_binds(public_bind: str, admin: AdminConfig | None) -> tuple[str, ...]:
    """Every TCP address a daemon listens on: the public bind and the admin one, if any
    (what the posture's non-loopback check must see)."""
    if admin is None or admin.bind is None:
        return (public_bind,)
    return (public_bind, admin.bind)
