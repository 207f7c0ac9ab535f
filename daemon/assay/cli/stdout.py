"""The command line's stdout, whose write errors are typed like any other output's.

Why: ``assay list > /dev/full`` or ``assay list | head -1`` fails inside ``print()``,
with an ``OSError`` that says nothing of stdout (it was reported as ``storage.full``
"an operation failed", or, with ``--json``, as a traceback, because the problem itself
could not be printed to stdout either). Here stdout is rewrapped so that a failed write
or flush raises ``cli.output_unwritable`` naming stdout (exit 2); fd 1 is then pointed
at ``/dev/null``, so neither the error report nor the interpreter's last flush tries the
broken output again, and ``broken()`` tells ``main()`` to report on stderr instead.
Only the process's real stdout is rewrapped (a test's captured one is left alone).
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from assay.cli.errors import OutputUnwritable

_state = {"broken": False}


def broken() -> bool:
    """True once a write to stdout has failed in this process."""
    return _state["broken"]


def failed(exc: OSError) -> OutputUnwritable:
    """The error for a failed write to stdout (text or ``sys.stdout.buffer``); fd 1 is
    pointed at ``/dev/null`` from here on."""
    _state["broken"] = True
    try:
        devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.dup2(devnull, 1)
        finally:
            os.close(devnull)
    except OSError:
        pass  # nothing better to do: the report goes to stderr regardless
    return OutputUnwritable(f"cannot write to stdout: {exc.strerror or exc}")


class _Guarded(io.TextIOWrapper):
    def write(self, s: str) -> int:
        try:
            return super().write(s)
        except OSError as exc:
            raise failed(exc) from None

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            raise failed(exc) from None


def guard() -> None:
    """Rewrap the real stdout (errors escaped, not raised, for undecodable argv bytes)."""
    out: Any = sys.stdout
    if out is None or out is not sys.__stdout__ or not isinstance(out, io.TextIOWrapper):
        if isinstance(out, io.TextIOWrapper):
            out.reconfigure(errors="backslashreplace")
        return
    line_buffering = out.line_buffering
    encoding = out.encoding
    buffer = out.detach()
    guarded = _Guarded(
        buffer, encoding=encoding, errors="backslashreplace", line_buffering=line_buffering
    )
    # __stdout__ too: the detached original must not be the one the interpreter keeps.
    sys.stdout = sys.__stdout__ = guarded  # type: ignore[misc]
