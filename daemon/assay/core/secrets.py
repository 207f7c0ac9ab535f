"""Reading secrets named by config: files, environment variables, systemd credentials.

Fail closed: a missing, unreadable, world-readable or weak secret stops startup with a
message that says which secret and why, and never prints the secret itself. A secret
file is trusted as far as whoever can replace it: it must be owned by root or the
daemon's user, and no directory on its path may let anyone else rename it away
(``assay.core.trusted_files.check_ancestors``: a 0600 key in a 0777 directory, or under
one, is anyone's key).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from assay.core.errors import SecretError, UnsafeFile
from assay.core.schema import SecretRef
from assay.core.trusted_files import check_ancestors, check_owner

MIN_SECRET_BYTES = 32
MAX_SECRET_BYTES = 64 * 1024


def resolve_path(ref: SecretRef, *, base: Path) -> Path | None:
    """The file a reference points at (None for env refs). Relative paths use ``base``."""
    if ref.file is not None:
        path = Path(ref.file)
        return path if path.is_absolute() else base / path
    if ref.credential is not None:
        creds = os.environ.get("CREDENTIALS_DIRECTORY")
        if not creds:
            raise SecretError(
                f"{ref.describe()}: $CREDENTIALS_DIRECTORY is not set (LoadCredential= missing?)"
            )
        if "/" in ref.credential or ref.credential in {".", ".."}:
            raise SecretError(f"{ref.describe()}: credential names may not contain '/'")
        return Path(creds) / ref.credential
    return None


@contextmanager
def unsafe_as_secret_error(what: str) -> Iterator[None]:
    """A path rule broken by a secret is the secret's error (``config.secret_invalid``)."""
    try:
        yield
    except UnsafeFile as exc:
        raise SecretError(f"{what}: {exc.detail}") from None


def read_secret(ref: SecretRef, *, base: Path, min_bytes: int = MIN_SECRET_BYTES) -> bytes:
    """Load a secret's bytes; refuse weak, oversized or group/world-readable files."""
    path = resolve_path(ref, base=base)
    if path is None:
        assert ref.env is not None
        value = os.environ.get(ref.env)
        if value is None:
            raise SecretError(f"secret {ref.describe()} is not set")
        data = value.encode()
    else:
        with unsafe_as_secret_error(f"secret {ref.describe()}"):
            check_ancestors(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise SecretError(f"secret {ref.describe()} unreadable: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SecretError(f"secret {ref.describe()} is not a regular file")
            with unsafe_as_secret_error(f"secret {ref.describe()}"):
                check_owner(info, path)
            if info.st_mode & 0o077 and ref.credential is None:
                raise SecretError(
                    f"secret {ref.describe()} has mode {stat.S_IMODE(info.st_mode):04o}; "
                    "it must not be readable by group or others (chmod 600)"
                )
            if info.st_size > MAX_SECRET_BYTES:
                raise SecretError(
                    f"secret {ref.describe()} is larger than {MAX_SECRET_BYTES} bytes"
                )
            data = os.read(fd, MAX_SECRET_BYTES + 1)
        finally:
            os.close(fd)
    data = data.strip()
    if len(data) < min_bytes:
        raise SecretError(
            f"secret {ref.describe()} is too weak: {len(data)} bytes, at least {min_bytes} needed"
        )
    return data
