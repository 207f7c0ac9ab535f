"""Files the command line is told to read or write, checked where they are named.

Why one module: a path given on the command line that cannot be used is an ordinary
mistake (a typo, a directory, a missing parent), and it gets the same typed error
wherever it happens: ``cli.input_unreadable`` or ``cli.output_unwritable`` (exit 2), a
message naming the path and the reason, never an ``OSError`` traceback. A full disk is
still ``storage.full``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from assay.cli.errors import InputUnreadable, OutputUnwritable
from assay.core.errors import FULL_ERRNOS, storage_error


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def read_input(path: Path, *, max_bytes: int, what: str = "") -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``)."""
    label = f"{what} {path}" if what else str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputUnreadable(f"cannot read {label}: {_reason(exc)}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputUnreadable(f"cannot read {label}: not a regular file")
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1024 * 1024, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise InputUnreadable(f"cannot read {label}: {_reason(exc)}") from None
    finally:
        os.close(fd)
    if total > max_bytes:
        raise InputUnreadable(f"cannot read {label}: larger than {max_bytes} bytes")
    return b"".join(chunks)


def output_file(path: Path, *, what: str = "") -> Path:
    """``path`` if a file can be created there: not a directory, its directory exists."""
    label = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise OutputUnwritable(f"cannot write {label}: it is a directory (name a file in it)")
    if not path.parent.is_dir():
        raise OutputUnwritable(f"cannot write {label}: directory {path.parent} does not exist")
    return path


def output_dir(path: Path, *, what: str = "", mode: int = 0o700) -> Path:
    """``path`` as a directory, created (with its parents) if missing."""
    label = f"{what} {path}" if what else str(path)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except FileExistsError:
        raise OutputUnwritable(f"cannot write into {label}: it is not a directory") from None
    except OSError as exc:
        raise written(exc, label) from None
    return path


def written(exc: OSError, label: str) -> Exception:
    """The typed error for an ``OSError`` while writing the output ``label``."""
    if exc.errno in FULL_ERRNOS:
        return storage_error(exc, f"writing {label}")
    if exc.errno == errno.ENOTDIR:
        return OutputUnwritable(f"cannot write {label}: a part of its path is not a directory")
    return OutputUnwritable(f"cannot write {label}: {_reason(exc)}")


def write_output(path: Path, data: bytes, *, mode: int, what: str = "") -> None:
    """``atomic_write`` of an output the command line named, with typed errors."""
    from assay.core.atomic import atomic_write

    output_file(path, what=what)
    try:
        atomic_write(path, data, mode=mode)
    except OSError as exc:
        raise written(exc, f"{what} {path}" if what else str(path)) from None
