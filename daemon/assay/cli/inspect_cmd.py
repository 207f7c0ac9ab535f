"""``assay inspect FILE``: the daemon's own format inspector, offline."""

from __future__ import annotations

import argparse
import os
from typing import Any

from assay.cli.output import emit_json
from assay.core.errors import BadRequest
from assay.formats.errors import FormatRefused
from assay.formats.inspect import inspect_file


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="judge a file's format by content (offline)")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        fd = os.open(args.file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise BadRequest(
            f"cannot read {args.file}: {exc.strerror or exc}", code="input.unreadable"
        ) from None
    try:
        size = os.fstat(fd).st_size

        def read_at(offset: int, length: int) -> bytes:
            return os.pread(fd, length, offset)

        try:
            result = inspect_file(read_at, size)
        except FormatRefused as exc:
            if args.json:
                emit_json(
                    {
                        "file": args.file,
                        "accepted": False,
                        "reason": exc.reason,
                        "detail": exc.detail,
                    }
                )
            else:
                print(f"refused: {exc.reason}: {exc.detail}")
            return 1
    finally:
        os.close(fd)
    if args.json:
        emit_json(
            {
                "file": args.file,
                "accepted": True,
                "format": result.format,
                "size": result.size,
                "details": result.details,
            }
        )
    else:
        print(f"accepted: {result.format} ({result.size} bytes)")
    return 0
