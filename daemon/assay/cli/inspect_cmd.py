"""``assay inspect FILE``: the daemon's own format inspector, offline."""

from __future__ import annotations

import argparse
import os
import stat
from typing import Any

from assay.cli.errors import InputUnreadable
from assay.cli.options import json_option
from assay.cli.output import emit_json


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="judge a file's format by content, as the daemon would (offline)",
        description="Run the daemon's content inspector on FILE: exit 0 if it is an "
        "accepted safetensors or GGUF file, 1 if it is refused (the reason is printed).",
    )
    p.add_argument("file", metavar="FILE", help="the file to judge (its name plays no part)")
    json_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from assay.formats.errors import FormatRefused
    from assay.formats.inspect import inspect_file

    try:
        fd = os.open(args.file, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not block
    except OSError as exc:
        raise InputUnreadable(f"cannot read {args.file}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputUnreadable(f"cannot read {args.file}: not a regular file")
        size = info.st_size

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
