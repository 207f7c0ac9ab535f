"""Options several commands share, each with one sentence of help, and their checks.

Why argparse ``type=`` checks here: a value that cannot be right (``--url notaurl``,
``--state bogus``) is a usage error, found while parsing, before any file is opened or
any request is sent; argparse reports it through ``Parser.error`` (``assay.cli.main``),
so it has a stable code and ``--json`` prints it like any other problem.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from assay.cli.errors import UsageError

#: The states an artifact can be in (``assay.registry.states.State``; a test keeps the
#: two in step without importing the registry at start-up).
STATES = ("quarantined", "trusted", "revoked", "deleted")


def text_arg(value: str) -> str:
    """A value that is text, not a path: the argument's bytes must be UTF-8.

    Python hands a command line's bytes over as ``str``, undecodable bytes as lone
    surrogates (``\\xff`` -> ``\\udcff``), which is right for a path (``open()`` gives the
    bytes back) and wrong for a name, a reason or a scope, which are sent to the daemon
    or written to a file as UTF-8: refused here, as a value that does not parse
    (``cli.usage``), not later as an ``internal.error``. Paths never take this type.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        shown = value.encode("utf-8", "surrogateescape")[:60]
        raise argparse.ArgumentTypeError(f"not UTF-8 text: {shown!r}") from None
    return value


def text_path_arg(value: str) -> Path:
    """A path that is also written as text (into a config or an env file, or handed to a
    library that takes only ``str`` paths, as pyarrow does): its bytes must be UTF-8."""
    return Path(text_arg(value))


def id_arg(value: str) -> str:
    """A token or key id, as the token file and the audit log keep it (``ID_PATTERN``:
    the same check ``tokenfile.create`` makes, made while parsing so it exits 2)."""
    from assay.core.tokens import ID_PATTERN

    if not ID_PATTERN.fullmatch(text_arg(value)):
        raise argparse.ArgumentTypeError(
            f"not an id: {value[:80]!r} (use 1-64 of [A-Za-z0-9._-], starting with a "
            "letter or digit)"
        )
    return value


def registry_scope_arg(value: str) -> str:
    """A scope a registry token may hold: one the registry or its admin listener checks
    (``assay.registry.scopes.KNOWN``). An unknown one (``admin``, ``artifact:read``)
    would be stored and then never grant anything: refused, with the list."""
    from assay.registry.scopes import KNOWN

    if text_arg(value) not in KNOWN:
        raise argparse.ArgumentTypeError(
            f"unknown scope {value[:80]!r}; the registry's scopes are: {', '.join(sorted(KNOWN))}"
        )
    return value


def url_arg(value: str) -> str:
    from assay.cli.client import check_url

    try:
        return check_url(value)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.detail) from None


def bind_arg(value: str) -> str:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) or ``fd://N``; the config's own rules (loopback
    unless ``allow_non_loopback``) are applied again when the config is loaded."""
    text_arg(value)
    if value.startswith("fd://"):
        if value[5:].isdigit():
            return value
        raise argparse.ArgumentTypeError("fd:// needs a file descriptor number")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"not HOST:PORT or fd://N: {value[:100]!r}")
    return value


def init_bind(value: str, *, source: str = "--bind") -> str:
    """A bind ``init`` may write into a new config: one the config it writes accepts.

    Why here, before anything is created: ``init`` writes a loopback-only config (no
    ``server.allow_non_loopback``), so a non-loopback address made a config the daemon,
    and init's own last step, refused, leaving a half deployment that the retry refused
    as existing. One rule decides: the config's (``assay.core.schema``).
    """
    try:
        checked = bind_arg(value)  # argparse saw --bind, but not a default from the env
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{source}: {exc}") from None
    if checked.startswith("fd://"):
        return checked
    from assay.core.schema import is_loopback_host

    if not is_loopback_host(checked.rpartition(":")[0]):
        raise UsageError(
            f"{source} {checked[:100]} is not loopback: init writes a loopback-only config; "
            "create it with a loopback address, then set server.bind and "
            "server.allow_non_loopback: true in it"
        )
    return checked


def json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json",
        action="store_true",
        help="print the result, or the error as an RFC 9457 problem, as JSON on stdout",
    )


def daemon_options(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """``--url`` and ``--token-file`` (and ``--json``) for commands that ask the daemon."""
    p.add_argument(
        "--url",
        type=url_arg,
        metavar="URL",
        help="the daemon, as http://HOST:PORT (else $ASSAY_URL, else http://127.0.0.1:8470)",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the bearer token from FILE (else $ASSAY_TOKEN_FILE names the file, "
        "else the token itself is taken from $ASSAY_TOKEN)",
    )
    if json_flag:
        json_option(p)


def digest_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "digest",
        metavar="DIGEST",
        type=text_arg,
        help=f"the artifact to {what}: sha256:<64 hex>, the 64 hex alone, or a unique "
        "prefix of at least 4 hex digits, such as the 12 that `assay list` shows",
    )
