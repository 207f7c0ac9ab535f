"""``assay trust export|status|init|renew-root``: the TUF repository of the trusted set.

``export`` and ``status`` read the published directory the way a consumer does (python-
tuf's client, against the pinned root) and need no token and no daemon. ``init`` and
``renew-root`` are offline and hold the root key: run them where that key lives.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from assay.cli.options import json_option
from assay.cli.output import emit_json
from assay.core.errors import ConfigError

DEFAULT_CONFIG = ".assay/config.yaml"


def register(sub: Any) -> None:
    trust = sub.add_parser("trust", help="the TUF repository of the trusted set")
    tsub = trust.add_subparsers(dest="trust_command", required=True, metavar="ACTION")

    p = tsub.add_parser("export", help="copy the verified repository into DIR (fleet format)")
    p.add_argument(
        "dir",
        type=Path,
        metavar="DIR",
        help="where to write the repository's files (created if missing)",
    )
    _source_args(p)
    p.set_defaults(func=cmd_export)

    p = tsub.add_parser("status", help="verify the published repository; versions, expiries")
    _source_args(p)
    p.set_defaults(func=cmd_status)

    p = tsub.add_parser("init", help="create the root and online keys and 1.root.json")
    p.add_argument(
        "--root-key",
        type=Path,
        required=True,
        metavar="FILE",
        help="the new root key file to create (0600)",
    )
    p.add_argument(
        "--online-key",
        type=Path,
        required=True,
        metavar="FILE",
        help="the new online key file to create (0600)",
    )
    p.add_argument(
        "--root-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="the directory where the N.root.json files live",
    )
    p.add_argument(
        "--expiry-days",
        type=int,
        default=365,
        metavar="N",
        help="days until the root expires (default 365)",
    )
    json_option(p)
    p.set_defaults(func=cmd_init)

    p = tsub.add_parser("renew-root", help="sign root N+1: a new expiry, or a new online key")
    p.add_argument(
        "--root-key",
        type=Path,
        required=True,
        metavar="FILE",
        help="the root key that signs the new root",
    )
    p.add_argument(
        "--root-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="the directory where the N.root.json files live",
    )
    p.add_argument(
        "--expiry-days",
        type=int,
        default=365,
        metavar="N",
        help="days until the new root expires (default 365)",
    )
    p.add_argument(
        "--new-online-key", type=Path, metavar="FILE", help="generate this online key and use it"
    )
    json_option(p)
    p.set_defaults(func=cmd_renew_root)


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"the registry config, for its paths (default {DEFAULT_CONFIG})",
    )
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="DIR",
        help="the published directory to read (overrides the config's)",
    )
    p.add_argument(
        "--root", type=Path, metavar="FILE", help="the pinned root (default ROOT_DIR/1.root.json)"
    )
    json_option(p)


#: A root metadata file is a few kilobytes (python-tuf allows 512,000 bytes).
MAX_ROOT_BYTES = 1024 * 1024


def _source(args: argparse.Namespace) -> tuple[Path, bytes]:
    """The published dir and the pinned root: from the options, else from the config."""
    source, root = args.source, args.root
    if source is None or root is None:
        from assay.registry.config import load_config
        from assay.trust.setup import resolve

        loaded = load_config(Path(args.config))
        section = loaded.config.trust
        if section is None:
            raise ConfigError(f"{args.config} has no trust: section", path="trust")
        source = source or resolve(loaded.base, section.publish_dir)
        root = root or resolve(loaded.base, section.root_dir) / "1.root.json"
    from assay.cli.paths import read_input

    # A regular file, bounded: a FIFO or device named as --root is refused, not waited on.
    return source, read_input(root, max_bytes=MAX_ROOT_BYTES, what="pinned root")


def cmd_export(args: argparse.Namespace) -> int:
    from assay.trust.export import export

    source, root = _source(args)
    out = export(source, args.dir, root)
    if args.json:
        emit_json(out)
    else:
        versions = (out["timestamp_version"], out["snapshot_version"], out["targets_version"])
        print("exported timestamp v{}, snapshot v{}, targets v{}".format(*versions),
              f"to {out['dir']}")  # fmt: skip
        print("serve it with any static server; on each consumer host pin the root:")
        print(f"  1.root.json (sha256 {out['pinned_root_sha256']}), e.g. in")
        print("  tuf.ngclient.Updater(metadata_dir, URL, bootstrap=<its bytes>)")
        print("re-export at least every trust.refresh_interval_seconds: the timestamp expires")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from assay.consumer.tuf import TrustCheck

    source, root = _source(args)
    with tempfile.TemporaryDirectory(prefix="assay-trust-status-") as cache:
        check = TrustCheck(source, root, cache)
        out = {"dir": str(source), **check.status()}
        check.close()
    if args.json:
        emit_json(out)
    else:
        if not out["ok"]:
            print(f"{source}: NOT VALID: {out.get('error')}")
        else:
            print(f"{source}: valid ({out['source']}) until {out['expires']}")
            for role, info in out["versions"].items():
                print(f"  {role:<9} v{info['version']:<6} expires {info['expires']}")
    return 0 if out["ok"] else 1


def cmd_init(args: argparse.Namespace) -> int:
    from assay.trust.bootstrap import init_trust

    out = init_trust(args.root_key, args.online_key, args.root_dir, expiry_days=args.expiry_days)
    _print_root(args, out, "created")
    return 0


def cmd_renew_root(args: argparse.Namespace) -> int:
    from assay.trust.bootstrap import renew_root

    out = renew_root(args.root_key, args.root_dir, expiry_days=args.expiry_days,
                     new_online_key=args.new_online_key)  # fmt: skip
    _print_root(args, out, "signed")
    if not args.json:
        print("restart the daemon to publish it" + (
            f"; point trust.online_key at {args.new_online_key} first"
            if args.new_online_key else ""))  # fmt: skip
    return 0


def _print_root(args: argparse.Namespace, out: dict[str, Any], verb: str) -> None:
    if args.json:
        emit_json(out)
    else:
        print(f"{verb} root v{out['version']} ({out['root']}, expires {out['expires']}, "
              f"sha256 {out['sha256']})")  # fmt: skip
