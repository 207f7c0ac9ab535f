"""The relay's few extra error statuses, subclassing the core families.

Why classes here: the core's families carry the HTTP status as a class attribute, and
the relay needs two statuses no core family has (406 for an answer that cannot be signed,
414 for a query string over its bound). Everything else uses a core class with a ``code``.
Pure.
"""

from __future__ import annotations

from assay.core.errors import RejectedInput


class NotAcceptable(RejectedInput):
    """The client asked for a representation the relay will not produce (e.g. unsigned)."""

    code = "answer.not_acceptable"
    status = 406
    title = "Not acceptable"


class QueryTooLarge(RejectedInput):
    """The query string is larger than the configured bound; nothing was parsed."""

    code = "request.query_too_large"
    status = 414
    title = "Query string too large"
