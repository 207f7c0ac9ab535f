"""Typed errors in families, each with a stable ``code`` and an HTTP status hint.

Why families: callers catch by meaning (``RejectedInput``, ``IntegrityError``,
``StorageError``) while operators and clients match on the stable ``code`` string, which
never changes once released. The HTTP error handler and the CLI's ``main()`` are the only
two places that translate these into responses or exit codes.

This module is pure: it imports nothing from trio, Quart, the file system or the network.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any, ClassVar


class AssayError(Exception):
    """Base of every error assay raises on purpose.

    ``code`` is stable and documented; ``status`` is the HTTP status hint; ``title`` is the
    RFC 9457 short summary that does not change between occurrences.
    """

    code: ClassVar[str] = "internal.error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        reasons: list[str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        #: Every failed rule or check, for the problem body and the audit record.
        self.reasons: list[str] = list(reasons or [])
        if code is not None:
            # A per-instance code refines the family's default (e.g. a specific reason).
            self.code = code  # type: ignore[misc]
        self.extra: dict[str, Any] = extra
        #: Set when the request's one audit record was already written by the code that
        #: raised (e.g. an integrity failure found mid-request), so the edge adds none.
        self.written_record: Mapping[str, Any] | None = None

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 problem object (without ``instance``, which the edge adds)."""
        body: dict[str, Any] = {
            "type": f"urn:assay:problem:{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if self.reasons:
            body["reasons"] = list(self.reasons)
        for key, value in self.extra.items():
            if key not in body:
                body[key] = value
        return body


# --- RejectedInput: the caller sent something we will not accept -----------------------


class RejectedInput(AssayError):
    code = "request.invalid"
    status = 400
    title = "Rejected input"


class BadRequest(RejectedInput):
    code = "request.invalid"
    status = 400
    title = "Bad request"


class PayloadTooLarge(RejectedInput):
    code = "request.too_large"
    status = 413
    title = "Payload too large"


class ConfigError(RejectedInput):
    """Invalid configuration. ``path`` names the offending key, e.g. ``registry.policy``."""

    code = "config.invalid"
    status = 500
    title = "Invalid configuration"


class UnsafeFile(ConfigError):
    """A trusted file (config, policy) or its directory is a symlink, writable by group
    or others, or owned by someone else: startup stops, naming the path."""

    code = "config.file_unsafe"
    title = "Unsafe file"


class PostureRefused(ConfigError):
    """The deployment's profile gates a standing finding at ``startup_fail``: the daemon
    stops before it listens, naming each finding id (docs/posture.md)."""

    code = "config.posture_refused"
    title = "Deployment posture refused"


# --- Auth --------------------------------------------------------------------------------


class AuthError(AssayError):
    code = "auth.invalid_credential"
    status = 401
    title = "Authentication failed"


class MissingCredential(AuthError):
    code = "auth.missing_credential"
    title = "Missing credential"


class InvalidCredential(AuthError):
    code = "auth.invalid_credential"
    title = "Invalid credential"


class TokenRejected(AuthError):
    """A bearer JWT that did not verify. The per-instance ``code`` names the check that
    refused it (``auth.token_expired``, ``auth.issuer_mismatch``...): audit pipelines tell
    a bad token from a policy denial by the code alone. ``subject`` is who the token
    names once its signature verified (for the audit record), else None: an unverified
    claim is never recorded as an identity."""

    code = "auth.invalid_credential"
    title = "Token rejected"

    def __init__(self, detail: str, *, code: str, subject: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.subject = subject


class JwksUnavailable(AuthError):
    """The identity provider's keys could not be fetched, so no token can be verified
    now (fail closed). 503: the same token may verify once the provider is back."""

    code = "auth.jwks_unavailable"
    status = 503
    title = "Identity provider keys unavailable"


#: The stable codes of a refused bearer JWT (docs/relay.md "Authentication: OIDC").
TOKEN_CODES: frozenset[str] = frozenset(
    {
        "auth.invalid_credential",
        "auth.token_expired",
        "auth.token_not_yet_valid",
        "auth.token_signature_invalid",
        "auth.issuer_mismatch",
        "auth.audience_mismatch",
        "auth.kid_unknown",
        "auth.algorithm_not_allowed",
        "auth.client_not_allowed",
        "auth.jwks_unavailable",
    }
)


class ScopeDenied(AssayError):
    code = "auth.scope_denied"
    status = 403
    title = "Scope denied"


# --- Lookup and state --------------------------------------------------------------------


class NotFound(AssayError):
    code = "resource.not_found"
    status = 404
    title = "Not found"


class Conflict(AssayError):
    """The request conflicts with the current state of what it names."""

    code = "state.conflict"
    status = 409
    title = "Conflict"


# --- IntegrityError: bytes or records are not what they claim -----------------------------


class IntegrityError(AssayError):
    code = "integrity.failed"
    status = 409
    title = "Integrity check failed"


class ChainBroken(IntegrityError):
    code = "audit.chain_broken"
    status = 500
    title = "Audit chain broken"


# --- StorageError: we could not persist or read our own state -----------------------------


class StorageError(AssayError):
    code = "storage.failed"
    status = 500
    title = "Storage failure"


class StorageFull(StorageError):
    """No room left (the disk or the quota is full). RFC 4918's 507: the request may
    succeed once space is freed, and a smaller one may succeed now."""

    code = "storage.full"
    status = 507
    title = "Insufficient storage"


#: errno values that mean the disk, or the user's quota, has no room.
FULL_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_error(exc: OSError, doing: str) -> StorageError:
    """The typed error for an ``OSError`` while ``doing`` something to our own state.

    The one place ENOSPC and EDQUOT become ``storage.full`` (507); every other failure
    is ``storage.failed``. The message names the operation and the OS reason, never a
    traceback.
    """
    reason = exc.strerror or str(exc)
    if exc.errno in FULL_ERRNOS:
        return StorageFull(f"{doing} failed: {reason}")
    return StorageError(f"{doing} failed: {reason}")


class AuditWriteFailed(StorageError):
    code = "audit.write_failed"
    status = 503
    title = "Audit record could not be written"


class AuditNeedsRecovery(StorageError):
    code = "audit.needs_recovery"
    status = 503
    title = "Audit log needs recovery"


class SecretError(StorageError):
    """A secret is missing, unreadable or too weak: startup must stop."""

    code = "config.secret_invalid"
    status = 500
    title = "Secret unusable"


# --- Capacity: the daemon cannot take this connection now ---------------------------------


class ServerBusy(AssayError):
    """Every connection slot (``server.max_connections``) holds a request in progress.

    Answered before any byte of the request is read, so no principal or route is known.
    """

    code = "server.busy"
    status = 503
    title = "Server busy"
