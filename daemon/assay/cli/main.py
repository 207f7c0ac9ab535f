"""``assay``: the command line. Errors are translated here, once, into exit codes.

Every error ends in one line on stderr, ``assay: error [CODE]: DETAIL`` (with ``--json``:
the RFC 9457 problem as JSON on stdout, ``{"error": {...}, "exit_code": N}``), and the
exit code of its family (``assay.cli.errors.exit_code_for``, listed in README). A usage
mistake is a problem too (``cli.usage``). An exception nothing expected is
``internal.error`` (exit 6), in one line as well; ``--debug`` (or ``ASSAY_DEBUG=1``)
prints its traceback on stderr, and a daemon logging to the journal logs it there.

Start-up: only argparse and the command modules' registrations are imported before a
command runs; each command imports what it needs (pydantic, cryptography, trio,
pyarrow, http.client) when it runs (``benchmarks/bench_cli.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from assay import __version__
from assay.cli import (
    admin,
    artifacts,
    audit_cmd,
    consumer_cmd,
    doctor_cmd,
    inspect_cmd,
    publisher_cmd,
    relay_cmd,
    stdout,
    trust_cmd,
)
from assay.cli.errors import (
    EXIT_AUTH,
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_SERVER,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    InternalError,
    UsageError,
    exit_code_for,
)
from assay.core.errors import AssayError

__all__ = [
    "EXIT_AUTH",
    "EXIT_CONFLICT",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_SERVER",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "build_parser",
    "exit_code_for",
    "main",
]

DEBUG_ENV = "ASSAY_DEBUG"

SUMMARY = "a local trust registry for AI model artifacts, a read relay, and their audit log"
DESCRIPTION = (
    "assay keeps a local trust registry for AI model artifacts (safetensors and GGUF, "
    "judged by content; quarantined until a policy-gated promotion), runs a relay that "
    "serves scoped, minimized reads of tabular datasets, and verifies the tamper-evident "
    "audit log both write."
)
EPILOG = """\
environment:
  ASSAY_URL         the daemon's URL when --url is not given (default http://127.0.0.1:8470)
  ASSAY_TOKEN_FILE  a file holding the bearer token, when --token-file is not given
  ASSAY_TOKEN       the bearer token itself, when neither names a file
  ASSAY_DEBUG=1     print the traceback of an unexpected error (as --debug does)
  ASSAY_CONSUMER_SOCKET  the consumer socket of `open` and `exec` (default
                    /run/assay-consumer.sock)

exit codes:
  0 success              1 check failed or input refused   2 usage, config or path error
  3 auth or scope denied 4 not found                        5 state conflict
  6 server, storage, audit or internal failure              7 daemon unreachable
  130 interrupted (Ctrl-C)

See README.md and `man assay` (each command has its own page, e.g. `man assay-add`)."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are typed (``cli.usage``), so ``main()`` reports them like
    every other error: one line, or a JSON problem with ``--json``, and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="assay",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"assay {__version__}",
        help="print the version and exit",
    )  # fmt: skip
    parser.add_argument(
        "--debug", action="store_true",
        help="on an unexpected error, print its traceback on stderr (also ASSAY_DEBUG=1)",
    )  # fmt: skip
    parser.add_argument(
        "--json", action="store_true", dest="global_json",
        help="as the command's own --json: `assay --json list` is `assay list --json`",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    admin.register(sub)
    artifacts.register(sub)
    inspect_cmd.register(sub)
    audit_cmd.register(sub)
    publisher_cmd.register(sub)
    relay_cmd.register(sub)
    consumer_cmd.register(sub)
    trust_cmd.register(sub)
    doctor_cmd.register(sub)
    return parser


def _wants_json(argv: Sequence[str]) -> bool:
    """``--json`` anywhere before ``--``: known even when parsing fails."""
    for arg in argv:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def _leaves(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    pending = [exc]
    for _ in range(10_000):  # bounded: groups nest a few levels deep
        if not pending:
            break
        e = pending.pop()
        if isinstance(e, BaseExceptionGroup):
            pending.extend(reversed(e.exceptions))
        else:
            out.append(e)
    return out


def _socket_unreachable(leaves: list[BaseException]) -> AssayError | None:
    """``cli.unreachable`` for the consumer socket's ``SocketUnreachable`` (a plain
    exception: ``open_trusted`` is a library API). Looked up in ``sys.modules``, not
    imported: if ``assay.consumer.fd`` was never loaded, nothing raised its exception,
    and the error path of every other command stays free of it."""
    fd = sys.modules.get("assay.consumer.fd")
    socket_unreachable = getattr(fd, "SocketUnreachable", None)
    if socket_unreachable is None:
        return None
    for leaf in leaves:
        if isinstance(leaf, socket_unreachable):
            from assay.cli.errors import Unreachable

            return Unreachable(f"cannot reach the daemon's consumer socket: {leaf}")
    return None


def translate(exc: BaseException) -> AssayError | None:
    """The typed error to report for ``exc``; None for an interrupt (Ctrl-C).

    A group (trio's nurseries wrap what their tasks raise) is reported by the first typed
    error in it; an ``OSError`` that no command typed where it happened is a storage
    problem named by its reason; anything else is ``internal.error``.
    """
    from assay.core.errors import storage_error

    leaves = _leaves(exc)
    if any(isinstance(e, KeyboardInterrupt) for e in leaves):
        return None
    for leaf in leaves:
        if isinstance(leaf, AssayError):
            return leaf
    unreachable = _socket_unreachable(leaves)
    if unreachable is not None:
        return unreachable
    first = leaves[0] if leaves else exc
    if isinstance(first, OSError):
        where = f" {first.filename}" if first.filename else ""
        return storage_error(first, f"an operation on{where}" if where else "an operation")
    return InternalError(
        f"unexpected {type(first).__name__}: {str(first)[:300]} (run `assay --debug ...` or "
        f"set {DEBUG_ENV}=1 for the traceback)"
    )


def printable(text: str) -> str:
    """``text`` for a terminal: control and format characters (an escape sequence in a
    detail the daemon sent, a bidi override in a path) are shown escaped, not obeyed."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def report(err: AssayError, *, as_json: bool) -> int:
    """Print ``err`` (JSON on stdout with ``--json``, else one line on stderr, which is
    also where it goes when stdout cannot take it) and return its exit code."""
    code = exit_code_for(err)
    if as_json and not stdout.broken():
        try:
            print(json.dumps({"error": err.problem(), "exit_code": code}, sort_keys=True))
            sys.stdout.flush()
            return code
        except AssayError:
            pass  # stdout is broken: say it on stderr instead
    print(f"assay: error [{printable(err.code)}]: {printable(err.detail)}", file=sys.stderr)
    for reason in err.reasons:
        print(f"  - {printable(str(reason))}", file=sys.stderr)
    return code


def _log_traceback(exc: BaseException, *, debug: bool) -> None:
    """Where an unexpected error's traceback goes: stderr with --debug; else the journal,
    if this process logs there (a daemon under systemd); else nowhere."""
    import logging
    import traceback

    if debug:
        traceback.print_exception(exc, file=sys.stderr)
        return
    log = logging.getLogger("assay")
    if any(type(h).__name__ == "JournalHandler" for h in log.handlers):
        log.error("unexpected error", exc_info=exc)


def _tolerant_output() -> None:
    """A path given as bytes that are not UTF-8 (kept by Python as lone surrogates) is
    printed with those bytes escaped (``\\udcff``), never an ``UnicodeEncodeError`` on
    stdout or stderr after the work was done; a failed write to stdout is typed
    (``assay.cli.stdout``)."""
    import io

    stdout.guard()
    if isinstance(sys.stderr, io.TextIOWrapper):
        sys.stderr.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(args_list)
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    _tolerant_output()
    try:
        args = build_parser().parse_args(args_list)
        if args.global_json and hasattr(args, "json"):
            args.json = True
        as_json = bool(getattr(args, "json", False) or args.global_json)
        debug = debug or bool(getattr(args, "debug", False))
        code: int = args.func(args)
        sys.stdout.flush()  # a write error is the command's, reported like one
        return code
    except SystemExit:
        try:
            sys.stdout.flush()  # --help and --version: their output may fail too
        except AssayError as failed:
            return report(failed, as_json=False)
        raise
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BaseException as exc:
        err = translate(exc)
        if err is None:
            return EXIT_INTERRUPTED
        if isinstance(err, InternalError) or debug:
            _log_traceback(exc, debug=debug)
        return report(err, as_json=as_json)


if __name__ == "__main__":
    sys.exit(main())
