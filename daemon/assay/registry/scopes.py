"""The scopes a registry token can usefully hold, in one place.

Why a list: a token file accepts any ``resource:action`` (``assay.core.tokens``), so a
typo (``artifact:read``, ``admin``) would be stored and never grant anything. ``assay
token create`` refuses a scope outside this list and prints it; a test keeps it equal
to the scopes the registry's routes and its admin listener declare (``@requires``).
No imports beyond the admin listener's constants: the CLI loads it to parse ``--scope``.
"""

from __future__ import annotations

#: The registry's own routes: artifacts and the audit log.
ARTIFACT_SCOPES: tuple[str, ...] = (
    "artifacts:read",
    "artifacts:write",
    "artifacts:promote",
    "artifacts:revoke",
    "artifacts:delete",
    "artifacts:verify",
    "audit:read",
)
#: The admin listener's (``assay.core.admin_config.ADMIN_SCOPES``, kept equal by a test:
#: importing that module here would load pydantic to parse a command line).
ADMIN_SCOPES: tuple[str, ...] = ("admin:metrics", "admin:posture", "admin:reload")
KNOWN: frozenset[str] = frozenset(ARTIFACT_SCOPES + ADMIN_SCOPES)
