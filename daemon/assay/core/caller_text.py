"""What the audit, the response and signed answers may copy of a caller's own text.

Why one module for both daemons: ``X-Request-Id`` and ``X-Purpose`` are copied into the
audit record (and the request id into the ``X-Request-Id`` answer header and the relay's
signed claims). A control character there (C0, DEL, C1 such as ``\\x9b`` CSI once
obs-text is decoded as Latin-1), a bidi override or a line separator drives the terminal
of whoever prints the log, or reorders what an auditor reads. The registry and the relay
once decided this differently; now both take the rule from here (THREAT_MODEL T14, T16):

1. an ``X-Request-Id`` is kept only if it is 1 to ``MAX_REQUEST_ID_CHARS`` visible ASCII
   characters (``!`` to ``~``); anything else is replaced by a fresh id by the edge
   (``assay.core.web.request_id_of``), never refused, so every request still has one;
2. an ``X-Purpose`` is kept only if it is at most ``MAX_PURPOSE_CHARS`` characters, every
   one printable (``printable``); anything else is recorded as absent and marked
   (``extra.purpose_invalid``), never copied. The relay also refuses a bad one on record
   reads (``request.purpose_invalid``), where the purpose is part of the access rule.

Pure: no I/O (``assay.purity``).
"""

from __future__ import annotations

import re
import unicodedata

MAX_PURPOSE_CHARS = 200
MAX_REQUEST_ID_CHARS = 64

#: Unicode categories a caller's text may not hold: controls (C0, DEL, C1: CSI, NEL),
#: format characters (bidi overrides and isolates, zero-width joiners), surrogates,
#: private use, unassigned code points, and line and paragraph separators. Each either
#: drives a terminal or reorders what an auditor reads; spaces (Zs) are ordinary text.
UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})

_REQUEST_ID = re.compile(rf"[!-~]{{1,{MAX_REQUEST_ID_CHARS}}}")


def printable(text: str) -> bool:
    """Whether ``text`` holds only characters that display as themselves, in order."""
    if text.isprintable():  # the fast path: printable ASCII and most text
        return True
    return not any(unicodedata.category(c) in UNPRINTABLE for c in text)


def request_id_valid(value: str) -> bool:
    """Step 1: 1 to ``MAX_REQUEST_ID_CHARS`` visible ASCII characters."""
    return _REQUEST_ID.fullmatch(value) is not None


def purpose_valid(value: str) -> bool:
    """Step 2: at most ``MAX_PURPOSE_CHARS``, every one printable."""
    return len(value) <= MAX_PURPOSE_CHARS and printable(value)


def purpose_of(value: str | None) -> tuple[str | None, bool]:
    """Step 2 for a header value: what the record keeps, and whether one was dropped.

    An absent or empty header is ``(None, False)``; a bad one ``(None, True)``.
    """
    if not value:
        return None, False
    if not purpose_valid(value):
        return None, True
    return value, False
