"""Digest syntax: the only way a client names stored bytes.

Why strict: a digest becomes a path under ``objects/sha256/``; accepting anything but
``sha256:`` + 64 lowercase hex characters would open the door to path traversal.
Pure.
"""

from __future__ import annotations

import re

from assay.core.errors import BadRequest

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def parse_digest(value: str) -> str:
    """Return the canonical ``sha256:<hex>`` form or raise ``BadRequest``."""
    candidate = value.strip()
    if re.fullmatch(r"[0-9a-f]{64}", candidate):
        candidate = "sha256:" + candidate
    if not _DIGEST.fullmatch(candidate):
        raise BadRequest(f"not a sha256 digest: {value[:80]!r}", code="request.bad_digest")
    return candidate


def hex_of(digest: str) -> str:
    return parse_digest(digest).removeprefix("sha256:")
