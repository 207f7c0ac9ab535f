"""``assay``: the command line. Errors are translated here, once, into exit codes.

Exit codes (stable, documented in README):
  0 success          1 check failed or input refused (inspect, verify, audit verify)
  2 usage or config  3 authentication or scope denied   4 not found
  5 state conflict   6 server, storage or audit failure   7 daemon unreachable
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

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
    trust_cmd,
)
from assay.cli.client import Unreachable
from assay.consumer.fd import SocketUnreachable
from assay.core.errors import (
    AssayError,
    AuthError,
    ConfigError,
    IntegrityError,
    NotFound,
    RejectedInput,
    ScopeDenied,
    SecretError,
)
from assay.registry.errors import NotTrusted, StateConflict

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_SERVER = 6
EXIT_UNREACHABLE = 7


def exit_code_for(err: AssayError) -> int:
    if isinstance(err, ConfigError | SecretError):
        return EXIT_USAGE  # a missing or weak secret is a configuration problem
    if isinstance(err, AuthError | ScopeDenied):
        return EXIT_AUTH
    if isinstance(err, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(err, StateConflict | NotTrusted):
        return EXIT_CONFLICT  # e.g. fetching an artifact that is not trusted
    if isinstance(err, RejectedInput | IntegrityError):
        return EXIT_FAILED
    return EXIT_SERVER


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="assay", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"assay {__version__}")
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except AssayError as err:
        if getattr(args, "json", False):
            print(json.dumps({"error": err.problem()}, sort_keys=True))
        else:
            print(f"assay: error [{err.code}]: {err.detail}", file=sys.stderr)
            for reason in err.reasons:
                print(f"  - {reason}", file=sys.stderr)
        return exit_code_for(err)
    except (Unreachable, SocketUnreachable) as err:
        print(f"assay: cannot reach the daemon: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
