"""Schemathesis hooks for assay's documents (loaded with ``SCHEMATHESIS_HOOKS``).

Two rules JSON Schema cannot spell are named as ``format``s in the documents; here they
generate values by the daemon's own rules, so a schema-valid value is one it accepts:
``assay-text`` (``apidoc.TEXT_FORMAT``), one line with no character of a refused
Unicode category (``validate.REFUSED_CATEGORIES``), and ``assay-meta``
(``api.META_FORMAT``), ``key=value`` with such a value. A third cannot be a format of
one item: a metadata key is given once (a repeated key is a 400 ``request.bad_metadata``,
as the parameter's description says), so ``filter_query`` keeps only queries that name
each key once.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import strategies as st

from assay.core.apidoc import TEXT_FORMAT
from assay.registry.api import META_FORMAT, META_KEY
from assay.registry.validate import MAX_META_VALUE_CHARS, REFUSED_CATEGORIES

TEXT = st.characters(exclude_categories=sorted(REFUSED_CATEGORIES))  # type: ignore[arg-type]

schemathesis.openapi.format(TEXT_FORMAT, st.text(TEXT))
schemathesis.openapi.format(
    META_FORMAT,
    st.builds(
        lambda k, v: f"{k}={v}",
        st.from_regex(META_KEY, fullmatch=True),
        st.text(TEXT, max_size=MAX_META_VALUE_CHARS),
    ),
)


@schemathesis.hook
def filter_query(ctx: Any, query: Any) -> bool:
    """Queries whose ``meta`` keys are distinct: the rule no JSON Schema of a string says."""
    if not isinstance(query, dict) or "meta" not in query:
        return True
    metas = query["meta"] if isinstance(query["meta"], list) else [query["meta"]]
    keys = [str(m).partition("=")[0] for m in metas]
    return len(keys) == len(set(keys))
