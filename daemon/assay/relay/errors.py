"""The relay's few extra error statuses, subclassing the core families.

Why classes here: the core's families carry the HTTP status as a class attribute, and
the relay needs statuses no core family has (406 for an answer that cannot be signed,
414 for a query string over its bound, 429 for a spent row budget, 503 when spent budgets
cannot be recorded). Everything else uses a core class with a ``code``. Pure.
"""

from __future__ import annotations

from assay.core.errors import ConfigError, Conflict, RejectedInput, StorageError


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


class BudgetExhausted(RejectedInput):
    """The credential spent this entity's row budget for the current window."""

    code = "relay.row_budget_exhausted"
    status = 429
    title = "Row budget exhausted"


class BudgetUnavailable(StorageError):
    """Spent rows could not be recorded durably, so no rows are released (fail closed)."""

    code = "relay.row_budget_unavailable"
    status = 503
    title = "Row budget unavailable"


class SourceUnavailable(StorageError):
    """A database source cannot be reached or answered; a snapshot keeps serving, a live
    read is refused (fail closed, never a partial answer)."""

    code = "relay.source_unavailable"
    status = 503
    title = "Source unavailable"


class SourceTimeout(SourceUnavailable):
    """The database cancelled a statement at the source's ``query_timeout``."""

    code = "relay.source_timeout"
    status = 504
    title = "Source timeout"


class DsnRefused(ConfigError):
    """A Postgres connection string does not meet the policy (TLS to a TCP host)."""

    code = "config.dsn_refused"


class ReloadFailed(Conflict):
    """An operator's table reload could not load the source; the old snapshot serves on."""

    code = "relay.reload_failed"
    status = 409
    title = "Table reload failed"
