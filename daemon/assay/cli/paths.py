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

#: Longest path a message quotes whole; longer ones are shortened in the middle.
SHOW_PATH = 200


def show(path: Path | str) -> str:
    """A path as a message names it: whole if short, else its ends around an ellipsis."""
    text = str(path)
    return text if len(text) <= SHOW_PATH else f"{text[:120]}...{text[-60:]}"


def _label(path: Path | str, what: str) -> str:
    return f"{what} {show(path)}" if what else show(path)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)[:200]


def input_dir(path: Path, *, what: str = "") -> Path:
    """``path`` if it names a directory; ``cli.input_unreadable`` otherwise."""
    try:
        mode = _mode(path)
    except (OSError, ValueError) as exc:
        raise InputUnreadable(f"cannot read {_label(path, what)}: {_reason(exc)}") from None
    if mode is None:
        raise InputUnreadable(f"cannot read {_label(path, what)}: no such directory")
    if not stat.S_ISDIR(mode):
        raise InputUnreadable(f"cannot read {_label(path, what)}: not a directory")
    return path


def read_input(path: Path, *, max_bytes: int, what: str = "") -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``)."""
    label = _label(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
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


def _mode(path: Path) -> int | None:
    """``st_mode`` of what ``path`` names, None if nothing does; an ``OSError`` other than
    "not there" (a name too long, a loop) is the caller's to type."""
    try:
        return os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None


def _lmode(path: Path) -> int | None:
    """``st_mode`` of ``path`` itself (a symlink is not followed), None if absent."""
    try:
        return os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def output_file(path: Path, *, what: str = "", new: bool = False) -> Path:
    """``path`` if a file can be created there: not a directory, its directory exists
    (and, with ``new``, nothing is there yet: a key is never overwritten).

    An output is written beside the target and renamed over it, so only a regular file
    may already be there: a FIFO, a device (``/dev/null``, ``/dev/full``), a socket or a
    symlink would be *replaced* by a regular file, not written through, and a write
    meant for a device would "succeed" into a new file. Those are refused, untouched.
    """
    label = _label(path, what)
    try:
        mode, parent = _lmode(path), _mode(path.parent)
    except (OSError, ValueError) as exc:
        raise OutputUnwritable(f"cannot write {label}: {_reason(exc)}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputUnwritable(f"cannot write {label}: it is a directory (name a file in it)")
    if new and mode is not None:
        raise OutputUnwritable(f"cannot write {label}: it exists, and is not overwritten")
    if mode is not None and not stat.S_ISREG(mode):
        raise OutputUnwritable(
            f"cannot write {label}: it is {_kind(mode)}; only a regular file is replaced"
        )
    if parent is None:
        raise OutputUnwritable(
            f"cannot write {label}: directory {show(path.parent)} does not exist"
        )
    if not stat.S_ISDIR(parent):
        raise OutputUnwritable(f"cannot write {label}: {show(path.parent)} is not a directory")
    return path


def output_dir(path: Path, *, what: str = "", mode: int = 0o700) -> Path:
    """``path`` as a directory, created (with its parents) if missing."""
    label = _label(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except ValueError as exc:
        raise OutputUnwritable(f"cannot write into {label}: {exc}") from None
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
        raise written(exc, _label(path, what)) from None
