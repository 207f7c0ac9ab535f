"""Files trusted only as far as their modes say: the config file, the policies, secrets.

THREAT_MODEL.md trust boundary 3. These files are not secret, but whoever can change
them decides what the daemon trusts (a policy of ``approvals_required: 1`` undoes the
two-person rule). So the rules secrets follow apply, minus secrecy, to the file and to
the directory that holds it:

1. not a symlink (``O_NOFOLLOW`` on the last component; a symlinked *directory* of
   policies counts), and the right type (``fstat``: a regular file, or a directory);
2. not writable by group or others;
3. owned by root or by the user the daemon runs as: any other owner can ``chmod`` it.
   Under systemd's ``DynamicUser=``/``PrivateUsers=`` the packaged ``/etc/assay`` files
   are root's (0644, directories 0755) and pass; a file of any other user shows as
   ``nobody`` there and is refused;
4. every directory on the way to it, from ``/`` down to the one that holds it (as
   sshd's ``StrictModes`` and sudo check): owned likewise and not writable by group or
   others, unless sticky (then no one else can rename what is in it, as in ``/tmp``),
   since a writable directory *anywhere* on the path lets its writer rename the rest of
   the path away and put their own in its place, whatever the file's own mode. A symlink
   on the way is followed, and the directory holding it is checked too (whoever can
   write there can repoint it); the directories of its target are checked as well.

Every refusal is ``UnsafeFile`` (``config.file_unsafe``), one line naming the path, so
startup fails closed with the reason. Files are read through the fd that was checked.
Secrets (``assay.core.secrets``, ``assay.core.tokenfile``) keep their own, stricter
mode rule (no group or other access at all) and take steps 3 and 4 from here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from assay.core.errors import UnsafeFile

_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _owners() -> frozenset[int]:
    return frozenset({0, os.geteuid()})


def _check(info: os.stat_result, path: Path, *, directory: bool) -> None:
    """Steps 1 (type), 2 (mode) and 3 (owner) for what ``info`` describes."""
    want = "directory" if directory else "regular file"
    is_right = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    if not is_right:
        raise UnsafeFile(f"{path}: not a {want}", file=str(path))
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise UnsafeFile(
            f"{path}: mode {mode:04o} lets group or others write it (chmod go-w {path})",
            file=str(path),
        )
    check_owner(info, path)


#: As the kernel's limit on symlinks followed in one lookup (``ELOOP``).
MAX_SYMLINKS = 40


def _unreadable(path: Path, exc: OSError) -> UnsafeFile:
    return UnsafeFile(f"{path}: unreadable: {exc.strerror}", file=str(path))


def directories_to(path: Path) -> list[Path]:
    """Every directory a lookup of ``path`` passes through, ``/`` first: those the kernel
    looks a name up in while resolving ``path.parent`` (symlinks followed, each one's
    holding directory included), then ``path.parent`` itself, resolved.

    Resolved by hand, one component at a time, because ``realpath`` drops the
    directories that held the symlinks it followed, and ``abspath`` resolves ``..``
    lexically where the kernel follows it from wherever a symlink led.
    """
    start = path if path.is_absolute() else Path.cwd() / path
    pending = list(reversed(start.parent.parts[1:]))
    current = Path("/")
    seen = [current]
    links = 0
    while pending:
        name = pending.pop()
        if name == "..":
            current = current.parent  # ``current`` is resolved: its parent is real
            continue
        if name in ("", "."):
            continue
        candidate = current / name
        try:
            info = os.lstat(candidate)
        except OSError as exc:
            raise _unreadable(candidate, exc) from None
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise UnsafeFile(f"{path}: more than {MAX_SYMLINKS} symlinks on its path",
                                 file=str(path))  # fmt: skip
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path("/")
                pending.extend(reversed(target.parts[1:]))
            else:
                pending.extend(reversed(target.parts))
            continue
        current = candidate
        if current not in seen:
            seen.append(current)
    # After a ``..`` the directory the walk ends in may be one seen before: it goes last.
    return [d for d in seen if d != current] + [current]


def check_ancestors(path: Path) -> None:
    """Step 4: no directory on the way to ``path`` can be used to replace it."""
    for directory in directories_to(path):
        try:
            info = os.stat(directory)
        except OSError as exc:
            raise _unreadable(directory, exc) from None
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeFile(f"{directory}: not a directory", file=str(directory))
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o022 and not mode & stat.S_ISVTX:
            raise UnsafeFile(
                f"{directory}: mode {mode:04o} lets group or others replace {path} "
                f"(chmod go-w {directory}, or +t)",
                file=str(directory),
            )
        if info.st_uid not in _owners():
            raise UnsafeFile(
                f"{directory}: owned by uid {info.st_uid}, not root or this daemon's uid "
                f"{os.geteuid()}, so its owner can replace {path}",
                file=str(directory),
            )


def check_owner(info: os.stat_result, path: Path) -> None:
    """Step 3 alone, for files whose mode their own loader checks (secrets)."""
    if info.st_uid not in _owners():
        raise UnsafeFile(
            f"{path}: owned by uid {info.st_uid}, not root or this daemon's uid "
            f"{os.geteuid()} (chown it)",
            file=str(path),
        )


def _open(path: Path, *, dir_fd: int | None = None, directory: bool = False) -> int:
    flags = _NOFOLLOW | (os.O_DIRECTORY if directory else 0)
    name: str | Path = path.name if dir_fd is not None else path
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as exc:
        if os.path.islink(path):
            raise UnsafeFile(
                f"{path}: is a symlink; a trusted file must be the file itself", file=str(path)
            ) from None
        raise _unreadable(path, exc) from None


def _read(fd: int, path: Path, max_bytes: int) -> bytes:
    _check(os.fstat(fd), path, directory=False)
    chunks: list[bytes] = []
    total = 0
    while total <= max_bytes and (chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total))):
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)  # the caller bounds it (more than max_bytes is refused there)


def read_trusted(path: Path, *, max_bytes: int) -> bytes:
    """The bytes of a trusted file, read through the fd that passed the checks."""
    check_ancestors(path)
    fd = _open(path)
    try:
        return _read(fd, path, max_bytes)
    finally:
        os.close(fd)


class TrustedDir:
    """A trusted directory, held open: its files are opened relative to the checked fd,
    so a rename or symlink swap of the directory after the check changes nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        check_ancestors(path)
        self._fd = _open(path, directory=True)
        try:
            _check(os.fstat(self._fd), path, directory=True)
        except BaseException:
            os.close(self._fd)
            raise

    def __enter__(self) -> TrustedDir:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)

    def names(self, suffix: str) -> list[str]:
        """Entries ending in ``suffix``, sorted; hidden files (editor swaps) are skipped."""
        return sorted(n for n in os.listdir(self._fd) if n.endswith(suffix) and n[0] != ".")

    def read(self, name: str, *, max_bytes: int) -> bytes:
        path = self.path / name
        fd = _open(path, dir_fd=self._fd)
        try:
            return _read(fd, path, max_bytes)
        finally:
            os.close(fd)
