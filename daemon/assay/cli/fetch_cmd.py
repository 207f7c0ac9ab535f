"""``assay fetch``: a trusted artifact's bytes into a file, whole and verified, or nothing.

Why its own module: the output is a path an operator names, often in a shared directory
(``/tmp``), often as root. Three things must hold whatever is already there:

1. Only a regular file is ever replaced (``assay.cli.paths.output_file``): ``-o
   /dev/null``, ``/dev/full``, a FIFO, a socket or a symlink is refused untouched, never
   swapped for a regular file by the final rename.
2. The temp file is new: a random name beside the target, created ``O_CREAT | O_EXCL |
   O_NOFOLLOW`` and mode 0600, so a planted ``.NAME.part`` (a symlink to a victim, a file
   someone else can read) is never opened, truncated or written through.
3. Durable or nothing: written, flushed and fsynced (a full disk is ``storage.full``, any
   other write error ``cli.output_unwritable``), hashed from the very descriptor it was
   written through, renamed over the target, the directory fsynced. On every failure
   the temp file is removed and the target is as it was.

``-o -`` writes to stdout instead, after the same check: the bytes go first to an
anonymous temp file (``O_TMPFILE`` in ``$TMPDIR``), so what reaches stdout was verified.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from assay.cli.digests import resolve
from assay.cli.errors import UsageError
from assay.cli.output import emit_json
from assay.cli.paths import output_file, show, written

if TYPE_CHECKING:
    from assay.cli.client import Client

#: ``-o`` naming stdout.
STDOUT = "-"
CHUNK = 1024 * 1024


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download, check the digest, then put the bytes in place: never a partial file."""
    from assay.cli.client import Client

    to_stdout = args.output == STDOUT
    if to_stdout and args.json:
        raise UsageError("-o - writes the artifact to stdout, which --json needs too")
    out_path = None if to_stdout else output_file(Path(args.output), what="-o")
    client = Client.from_args(args.url, args.token_file)
    expected = resolve(client, args.digest)
    if out_path is None:
        _to_stdout(client, expected)
        print(f"fetched {expected} -> stdout (verified)", file=sys.stderr)
        return 0
    _to_file(client, expected, out_path)
    if args.json:
        emit_json({"digest": expected, "path": str(out_path), "verified": True})
    else:
        print(f"fetched {expected} -> {out_path} (verified)")
    return 0


def _download_verified(client: Client, expected: str, f: BinaryIO, label: str) -> None:
    """Stream into ``f``, flush and fsync it, then hash it back through the same fd."""
    from assay.cli.artifacts import sha256_fd
    from assay.registry.errors import DigestMismatch

    try:
        for _ in client.download(expected, f):
            pass
        f.flush()
        os.fsync(f.fileno())
    except OSError as exc:  # the download's own failures are typed already
        raise written(exc, label) from None
    actual = sha256_fd(f.fileno())
    if actual != expected:
        raise DigestMismatch(f"downloaded bytes hash to {actual}, expected {expected}")


def _to_file(client: Client, expected: str, out_path: Path) -> None:
    from assay.core.atomic import fsync_dir

    label = f"-o {show(out_path)}"
    directory = out_path.parent
    # 2. A name nobody can predict, created here or not at all: never an existing file.
    tmp = directory / f".{out_path.name}.{secrets.token_hex(8)}.part"
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise written(exc, label) from None
    placed = False
    try:
        with os.fdopen(fd, "w+b") as f:
            # 3. Written, flushed, fsynced and hashed back through this very fd.
            _download_verified(client, expected, f, label)
            # The umask's mode, as a file the user created would have (the temp was
            # 0600 while it held unverified bytes).
            umask = os.umask(0o022)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)
        # 1. Checked again just before the rename: still absent or a regular file.
        output_file(out_path, what="-o")
        try:  # 3. Renamed over the target, the directory fsynced.
            os.replace(tmp, out_path)
            placed = True
            fsync_dir(directory)
        except OSError as exc:
            raise written(exc, label) from None
    except OSError as exc:  # close() of the temp file (a late write error)
        raise written(exc, label) from None
    finally:
        if not placed:
            tmp.unlink(missing_ok=True)


def _to_stdout(client: Client, expected: str) -> None:
    from assay.cli import stdout

    try:
        spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, on every path
    except OSError as exc:
        raise written(exc, f"a temp file in {tempfile.gettempdir()}") from None
    with spool:
        _download_verified(client, expected, spool, f"a temp file in {tempfile.gettempdir()}")
        out = sys.stdout.buffer
        try:
            sys.stdout.flush()
            offset = 0
            while chunk := os.pread(spool.fileno(), CHUNK, offset):
                out.write(chunk)
                offset += len(chunk)
            out.flush()
        except OSError as exc:
            raise stdout.failed(exc) from None
