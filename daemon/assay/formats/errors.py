"""The format inspectors' one error: content that is not an accepted model format.

Why here and not in the core: the core is shared with the relay and knows nothing of
artifacts; this family member is the inspectors' own. Pure.
"""

from __future__ import annotations

from assay.core.errors import RejectedInput


class FormatRefused(RejectedInput):
    """The content is not an accepted model format.

    ``reason`` is a stable, machine-readable reason code such as ``pickle``, ``zip``,
    ``gzip``, ``7z``, ``empty``, ``polyglot`` or ``safetensors.header_too_large``.
    """

    code = "artifact.format_refused"
    status = 422
    title = "Artifact format refused"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail, reason=reason)
        self.reason = reason
