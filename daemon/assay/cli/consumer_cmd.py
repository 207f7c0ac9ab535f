"""``assay open`` and ``assay exec``: trusted bytes for scripts and runtimes, no copy.

Both ask the consumer socket (``--socket``, else ``$ASSAY_CONSUMER_SOCKET``, else
``/run/assay-consumer.sock``). The daemon knows the caller by its uid and groups; a
bearer token (``--token-file``) is sent only when asked for.

``assay exec --model M=demo/tiny -- CMD ARG... {M}`` receives a read-only fd per model,
makes only those fds inheritable, replaces each ``{M}`` in the arguments with the fd's
``/proc/self/fd/N`` path (the same fd number in the program that replaces this process)
and execs CMD: the runtime opens the verified object itself, never a copy.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import TYPE_CHECKING, Any

from assay.cli.errors import UsageError
from assay.cli.options import json_option, text_arg
from assay.core.errors import RejectedInput

if TYPE_CHECKING:
    from assay.consumer.fd import TrustedFile

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
MAX_MODELS = 16


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--socket",
        metavar="PATH",
        help="the consumer socket (else $ASSAY_CONSUMER_SOCKET, else /run/assay-consumer.sock)",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="also send the bearer token in FILE (default none: the daemon knows you by "
        "your uid and groups)",
    )


def register(sub: Any) -> None:
    p = sub.add_parser("open", help="open a trusted artifact through the consumer socket")
    p.add_argument(
        "target",
        metavar="NAME_OR_DIGEST",
        type=text_arg,
        help="a trusted artifact's name (its current trusted version) or its sha256: digest",
    )
    json_option(p)
    _common(p)
    p.set_defaults(func=cmd_open)

    p = sub.add_parser(
        "exec",
        help="run CMD with trusted artifacts as inherited fds: {M} -> /proc/self/fd/N",
        description="Open each --model through the consumer socket, replace every {KEY} in "
        "CMD's arguments with the fd's path /proc/self/fd/N, and exec CMD with only those "
        "fds inherited: e.g. assay exec --model M=demo/tiny -- llama-cli -m {M}",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="KEY=NAME_OR_DIGEST",
        type=text_arg,
        required=True,
        help=f"a trusted artifact to open and the {{KEY}} that names its fd in CMD; repeat "
        f"for more (at most {MAX_MODELS})",
    )
    _common(p)
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ARG...",
        help="the program to exec and its arguments, after --",
    )
    p.set_defaults(func=cmd_exec)


def _token(args: argparse.Namespace) -> str | None:
    if not args.token_file:
        return None
    from assay.cli.client import read_token_file

    return read_token_file(args.token_file)


def locator(f: TrustedFile, socket_path: str | None) -> dict[str, Any]:
    """What scripts need to know about the object they may open (the fd itself closes
    when ``assay open`` exits: hold one with ``assay exec`` or ``open_trusted``)."""
    from assay.consumer.fd import resolve_socket

    return {"digest": f.digest, "size": f.size, "name": f.name, "format": f.format,
            "verified_at": f.verified_at, "socket": resolve_socket(socket_path)}  # fmt: skip


def cmd_open(args: argparse.Namespace) -> int:
    from assay.cli.output import emit_json
    from assay.consumer.fd import open_trusted

    with open_trusted(args.target, socket_path=args.socket, token=_token(args)) as f:
        out = locator(f, args.socket)
    if args.json:
        emit_json(out)
    else:
        print(f"{out['name']} {out['digest']} ({out['format']}, {out['size']} bytes, "
              f"verified {out['verified_at']})")  # fmt: skip
    return 0


def parse_models(items: list[str]) -> list[tuple[str, str]]:
    """``KEY=NAME_OR_DIGEST`` pairs, keys unique, at most ``MAX_MODELS``."""
    if len(items) > MAX_MODELS:
        raise UsageError(f"at most {MAX_MODELS} --model", code="cli.bad_model")
    out: list[tuple[str, str]] = []
    for item in items:
        key, sep, target = item.partition("=")
        if not sep or not _KEY.fullmatch(key) or not target:
            raise UsageError(f"--model {item[:80]!r} is not KEY=NAME_OR_DIGEST "
                             "(KEY: a letter or _, then letters, digits, _)",
                             code="cli.bad_model")  # fmt: skip
        if any(k == key for k, _ in out):
            raise UsageError(f"--model {key} given twice", code="cli.bad_model")
        out.append((key, target))
    return out


def substitute(argv: list[str], paths: dict[str, str]) -> list[str]:
    """Every ``{KEY}`` of a declared model replaced by its path; other text untouched."""
    pattern = re.compile("|".join(re.escape("{" + k + "}") for k in paths))
    return [pattern.sub(lambda m: paths[m.group(0)[1:-1]], arg) for arg in argv]


def cmd_exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("give the command to run after --", code="cli.no_command")
    models = parse_models(args.model)
    token = _token(args)
    from assay.consumer.fd import open_trusted

    opened: list[TrustedFile] = []
    try:
        for _key, target in models:
            opened.append(open_trusted(target, socket_path=args.socket, token=token))
        paths = {key: f.path for (key, _t), f in zip(models, opened, strict=True)}
        argv = substitute(command, paths)
        # Only these fds survive the exec; every other fd this process holds is CLOEXEC.
        for f in opened:
            os.set_inheritable(f.fd, True)
        try:
            os.execvp(argv[0], argv)  # noqa: S606 - the caller's own command, by design
        except OSError as exc:
            raise RejectedInput(f"cannot run {argv[0]!r}: {exc.strerror}",
                             code="cli.exec_failed") from None  # fmt: skip
    finally:
        for f in opened:
            f.close()
    return 0  # pragma: no cover - execvp does not return
