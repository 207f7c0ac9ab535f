"""Validation of client-supplied names and metadata.

Why strict: names and metadata end up in logs, JSON, journald fields and CLI output; a
name like ``../../etc/passwd`` or one carrying control characters must be refused before
it is stored anywhere. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from assay.core.errors import BadRequest

_NAME_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_META_KEY = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MAX_META_VALUE_CHARS = 1024


def check_name(name: str, *, max_chars: int = 200) -> str:
    """A name is ``/``-separated segments of ``[A-Za-z0-9._+-]``, none ``.`` or ``..``."""
    if not name or len(name) > max_chars:
        raise BadRequest(f"name must be 1-{max_chars} characters", code="request.bad_name")
    for segment in name.split("/"):
        if segment in {".", ".."} or not _NAME_SEGMENT.match(segment):
            raise BadRequest(
                f"invalid name {name[:80]!r}: segments are [A-Za-z0-9._+-], not '.' or '..'",
                code="request.bad_name",
            )
    return name


def check_metadata(pairs: Iterable[str], *, max_entries: int) -> dict[str, str]:
    """Parse ``key=value`` pairs; refuse duplicates, odd keys and control characters."""
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BadRequest(
                f"metadata {pair[:80]!r} is not key=value", code="request.bad_metadata"
            )
        if not _META_KEY.match(key):
            raise BadRequest(
                f"metadata key {key[:80]!r} must match [a-z0-9][a-z0-9_.-]{{0,63}}",
                code="request.bad_metadata",
            )
        if len(value) > MAX_META_VALUE_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise BadRequest(
                f"metadata {key!r}: value too long or has control characters",
                code="request.bad_metadata",
            )
        if key in metadata:
            raise BadRequest(f"metadata key {key!r} given twice", code="request.bad_metadata")
        metadata[key] = value
        if len(metadata) > max_entries:
            raise BadRequest(
                f"more than {max_entries} metadata entries", code="request.bad_metadata"
            )
    return metadata
