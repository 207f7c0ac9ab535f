"""Logging to journald with structured fields, or plain stderr when it is absent.

Each event kind has a fixed MESSAGE_ID so ``journalctl MESSAGE_ID=...`` finds every
promotion (say) across restarts. Secrets never reach a log line: callers pass ids and
digests only.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

#: Stable MESSAGE_IDs (UUIDs without dashes, as journald expects).
MESSAGE_IDS: dict[str, str] = {
    "ingest": "5b0a3c7e1f9d4e52a8f0d4c6b7e2a901",
    "promote": "9e4f1c2b7a6d4f3e8b5c0a1d2e3f4a5b",
    "revoke": "1c7d9e8f6a5b4c3d2e1f0a9b8c7d6e5f",
    "delete": "2d8e0f9a7b6c5d4e3f2a1b0c9d8e7f6a",
    "integrity_failed": "e1a2b3c4d5e6f708192a3b4c5d6e7f80",
    "integrity_restored": "6c0f2e8a4b1d4d7e9a3c5b7d9f1e3a5c",
    "approve": "8b2d4f6a1c3e4a5b9d7f0e2c4a6b8d0f",
    "checkpoint": "7f6e5d4c3b2a19087f6e5d4c3b2a1908",
    "sweep": "3a4b5c6d7e8f90a1b2c3d4e5f6a7b8c9",
    "startup": "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e",
    "shutdown": "4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b",
    "posture": "a3d5f7b9c1e34a6b8d0f2a4c6e8b0d2f",
    "posture_finding": "c4e6a8b0d2f44b7c9e1a3c5e7a9b1d3f",
}

log = logging.getLogger("assay")


def journald_available() -> bool:
    if not os.path.exists("/run/systemd/journal/socket"):
        return False
    try:
        from systemd import journal  # noqa: F401
    except ImportError:
        return False
    return True


def setup(level: str = "info", journald: bool | None = None) -> bool:
    """Configure the ``assay`` logger; returns True when logging to journald."""
    use_journal = journald_available() if journald is None else journald and journald_available()
    root = logging.getLogger("assay")
    root.handlers.clear()
    root.setLevel(level.upper())
    root.propagate = False
    if use_journal:
        from systemd import journal

        root.addHandler(journal.JournalHandler(SYSLOG_IDENTIFIER="assay"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    return use_journal


def event(
    kind: str, message: str, *, priority: int = logging.INFO, stacklevel: int = 1, **fields: Any
) -> None:
    """Log one structured event; fields become ASSAY_* journal fields.

    journald's CODE_FILE, CODE_LINE and CODE_FUNC come from the LogRecord's pathname,
    lineno and funcName (systemd-python's JournalHandler copies them), which logging takes
    from the frame that called ``log.log``: this function, unless told otherwise. So the
    record is attributed ``stacklevel`` frames up from here, as logging's own parameter
    means it: 1 is whoever called ``event``; a wrapper that forwards its caller's event
    passes its own ``stacklevel + 1``.
    """
    extra: dict[str, Any] = {"MESSAGE_ID": MESSAGE_IDS.get(kind, MESSAGE_IDS["startup"])}
    for key, value in fields.items():
        if value is not None:
            extra[f"ASSAY_{key.upper()}"] = str(value)
    # +1: the frame of this function itself, which logging would otherwise name.
    log.log(priority, message, extra=extra, stacklevel=stacklevel + 1)
