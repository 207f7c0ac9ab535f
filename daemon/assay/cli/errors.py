"""The command line's own errors, in the core's families, and their exit codes.

Why here: these are mistakes only a command line makes (a usage slip, a path that cannot
be read or written, a daemon that cannot be reached, a digest prefix that names two
artifacts). Each has a stable ``code`` like every other problem, so ``--json`` prints it
the same way, and ``exit_code_for`` is the one table from error family to exit code
(README lists both). Pure: no I/O.
"""

from __future__ import annotations

from assay.core.errors import (
    AssayError,
    AuthError,
    ConfigError,
    Conflict,
    IntegrityError,
    NotFound,
    RejectedInput,
    ScopeDenied,
    SecretError,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_SERVER = 6
EXIT_UNREACHABLE = 7
EXIT_INTERRUPTED = 130

#: Every exit code a command may return (tests assert nothing else ever comes back).
EXIT_CODES: frozenset[int] = frozenset(
    {
        EXIT_OK,
        EXIT_FAILED,
        EXIT_USAGE,
        EXIT_AUTH,
        EXIT_NOT_FOUND,
        EXIT_CONFLICT,
        EXIT_SERVER,
        EXIT_UNREACHABLE,
    }
)


class UsageError(RejectedInput):
    """The command line itself is wrong: an unknown flag, a missing argument, a value
    that does not parse (``--state bogus``, ``--url notaurl``)."""

    code = "cli.usage"
    status = 400
    title = "Usage error"


class InputUnreadable(UsageError):
    """A file the command was told to read is missing, a directory, or unreadable."""

    code = "cli.input_unreadable"
    title = "Input unreadable"


class OutputUnwritable(UsageError):
    """A path the command was told to write to cannot take a file: its directory is
    missing, it is a directory, or it may not be written."""

    code = "cli.output_unwritable"
    title = "Output unwritable"


class DigestAmbiguous(UsageError):
    """A digest prefix matches more than one artifact (``reasons`` lists them)."""

    code = "cli.digest_ambiguous"
    title = "Ambiguous digest prefix"


class ServerBindFailed(ConfigError):
    """``serve`` could not listen on its address: in use, not on this host, or not
    permitted. Choose another with ``--bind`` or ``server.bind``."""

    code = "server.bind_failed"
    status = 500
    title = "Cannot listen on the address"


class Unreachable(AssayError):
    """The daemon could not be reached at all (refused, timed out, reset)."""

    code = "cli.unreachable"
    status = 503
    title = "Daemon unreachable"


class NameConflict(Conflict):
    """``add`` of bytes that are already stored under another name: a digest carries
    exactly one name, so the stored name is kept and the new one is not recorded."""

    code = "artifact.name_conflict"
    title = "Stored under another name"


class InternalError(AssayError):
    """An exception assay did not expect: reported in one line, traceback with --debug."""

    code = "internal.error"
    status = 500
    title = "Internal error"


def exit_code_for(err: AssayError) -> int:
    """The documented exit code of an error family (README, "Exit codes")."""
    if isinstance(err, Unreachable):
        return EXIT_UNREACHABLE
    if isinstance(err, ConfigError | SecretError | UsageError):
        return EXIT_USAGE  # a missing or weak secret is a configuration problem
    if isinstance(err, AuthError | ScopeDenied):
        return EXIT_AUTH
    if isinstance(err, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(err, Conflict) or err.code == "artifact.not_trusted":
        return EXIT_CONFLICT  # e.g. fetching an artifact that is not trusted
    if isinstance(err, RejectedInput | IntegrityError):
        return EXIT_FAILED
    return EXIT_SERVER
