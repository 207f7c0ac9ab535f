"""The registry's errors: artifact states, policy, trust and stored-bytes integrity.

Each subclasses a core family (so the HTTP edge and the CLI translate it with the rest)
and carries the stable ``artifact.*`` code the API documents. The core itself stays free
of registry concepts; it is shared with the relay. Pure.
"""

from __future__ import annotations

from assay.core.errors import AssayError, Conflict, IntegrityError, RejectedInput


class StateConflict(Conflict):
    """An illegal transition, e.g. promoting a revoked artifact."""

    code = "artifact.state_conflict"
    title = "State conflict"


class PolicyRefused(RejectedInput):
    code = "artifact.policy_refused"
    status = 422
    title = "Promotion refused by policy"


class NotTrusted(AssayError):
    """Runtime consumption asked for an artifact that is not ``trusted``."""

    code = "artifact.not_trusted"
    status = 403
    title = "Artifact not trusted"


class DigestMismatch(IntegrityError):
    code = "artifact.digest_mismatch"
    status = 422
    title = "Digest mismatch"


class StoredBytesCorrupt(IntegrityError):
    """Bytes on disk no longer hash to their address; serving is blocked."""

    code = "artifact.integrity_failed"
    status = 409
    title = "Stored bytes failed integrity check"


class FormatNotAllowed(RejectedInput):
    """A compatibility request names a file of a format assay never accepts (by its
    extension, before any byte is read): AMR's schema answers this with 403."""

    code = "artifact.format_not_allowed"
    status = 403
    title = "Format not allowed"
