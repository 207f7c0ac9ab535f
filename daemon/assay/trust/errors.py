"""Errors of the TUF repository the daemon publishes. Pure."""

from __future__ import annotations

from assay.core.errors import ConfigError, StorageError


class TrustPublishFailed(StorageError):
    """A change of the trusted set could neither be published nor withdrawn.

    The change itself is recorded and applied; what failed is telling consumers. The
    metadata they can read may still vouch for the old set until its timestamp expires,
    so the answer says so instead of pretending success (``docs/trust.md``).
    """

    code = "trust.publish_failed"
    status = 503
    title = "Trusted set not published"


class TrustConfigError(ConfigError):
    """The root metadata, the online key or the directories do not fit together."""

    code = "trust.config_invalid"
