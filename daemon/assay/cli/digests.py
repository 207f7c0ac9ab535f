"""Digests as people type them: the full ``sha256:<hex>``, the hex alone, or a unique
prefix, resolved through the daemon as git resolves an abbreviated object name.

Rules (README, "Digests"): at least ``MIN_PREFIX`` hex digits (case does not matter);
a prefix that matches no artifact is ``artifact.not_found`` (exit 4), one that matches
several is ``cli.digest_ambiguous`` (exit 2, every match listed), and only a prefix that
matches exactly one artifact, whatever its state, names it. A full digest is used as
given, with no request. The prefix is resolved by listing (``GET
/v1/artifacts?digest_prefix=``, scope ``artifacts:read``) right before the command's own
request, which then names the full digest: an artifact that arrives in between with the
same prefix cannot be the one acted on.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from assay.cli.errors import DigestAmbiguous, UsageError
from assay.core.errors import NotFound

if TYPE_CHECKING:
    from assay.cli.client import Client

MIN_PREFIX = 4
#: Matches listed in an ambiguity error; more are counted, not named.
SHOW_MATCHES = 10
_HEX = re.compile(r"[0-9a-f]{4,64}")


def normalize(value: str) -> tuple[str, bool]:
    """``(hex, complete)`` for a digest or prefix as typed; a usage error otherwise."""
    candidate = value.strip().lower().removeprefix("sha256:")
    if not _HEX.fullmatch(candidate):
        raise UsageError(
            f"not a digest or a prefix of one: {value[:80]!r} (use sha256:<hex>, "
            f"at least {MIN_PREFIX} hex digits)",
            code="request.bad_digest",
        )
    return candidate, len(candidate) == 64


def resolve(client: Client, value: str) -> str:
    """The full ``sha256:<hex>`` that ``value`` names (see the module docstring)."""
    hexpart, complete = normalize(value)
    if complete:
        return "sha256:" + hexpart
    out, _ = client.request(
        "GET", "/v1/artifacts", query={"digest_prefix": hexpart, "limit": str(SHOW_MATCHES + 1)}
    )
    found = out.get("artifacts", [])
    if not found:
        raise NotFound(f"no artifact's digest starts with {hexpart}", code="artifact.not_found")
    if len(found) == 1:
        return str(found[0]["digest"])
    more = " or more" if out.get("next_cursor") else ""
    raise DigestAmbiguous(
        f"digest prefix {hexpart} matches {len(found)}{more} artifacts; give more digits",
        reasons=[f"{a['digest']} {a['name']} ({a['state']})" for a in found[:SHOW_MATCHES]],
    )
