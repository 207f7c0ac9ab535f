"""Printing for the CLI: JSON when asked, short tables otherwise, progress on a TTY.

Times: JSON keeps what the daemon or the record holds (epoch seconds stay numbers);
human output shows every epoch time as an ISO 8601 date in UTC (``iso_time``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def iso_time(epoch: Any) -> str:
    """``2025-01-01T00:00:00Z`` for epoch seconds; anything else as it is."""
    from datetime import UTC, datetime

    if isinstance(epoch, bool) or not isinstance(epoch, int | float):
        return str(epoch)
    try:
        moment = datetime.fromtimestamp(epoch, UTC)
    except (OverflowError, OSError, ValueError):
        return str(epoch)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    for row in (headers, *rows):
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=False)).rstrip())


def progress_bar(label: str) -> Callable[[int, int], None] | None:
    """A throttled progress bar on stderr, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return None
    last = [0.0]

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.1:
            return
        last[0] = now
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{label} [{bar:<30}] {frac:6.1%} {done / 2**20:,.1f} MiB")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return update
