"""``assay relay ...``: serve, check a config, mint API keys and signing keys, verify answers.

Every command works offline on local files except ``serve``. Keys are printed once: the
raw API key goes to the client, its fingerprint to a secret store, its commitment into
the config. ``verify-answer`` needs only the answer and the relay's public key.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from assay.cli.output import emit_json
from assay.core.atomic import atomic_write
from assay.core.errors import ConfigError
from assay.core.tokens import check_id


def register(sub: Any) -> None:
    relay = sub.add_parser("relay", help="the read relay: serve, check config, keys, answers")
    rsub = relay.add_subparsers(dest="relay_command", required=True, metavar="COMMAND")

    p = rsub.add_parser("serve", help="run the relay in the foreground (default 127.0.0.1:8480)")
    p.add_argument("--config", required=True)
    p.set_defaults(func=cmd_serve)

    p = rsub.add_parser("check-config", help="validate a relay config, its secrets and sources")
    p.add_argument("path")
    p.add_argument("--static", action="store_true", help="only the YAML and cross-references")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check_config)

    p = rsub.add_parser("generate-api-key", help="print a new API key, fingerprint, commitment")
    p.add_argument("--id", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate_api_key)

    p = rsub.add_parser("generate-signing-key", help="write an Ed25519 answer-signing key")
    p.add_argument("--out", required=True, help="private key file (0600); PUBLIC goes to OUT.pub")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate_signing_key)

    p = rsub.add_parser("verify-answer", help="verify a signed answer (compact JWS) offline")
    p.add_argument("jws", help="the JWS itself, a file holding it, or - for stdin")
    p.add_argument("--public-key", required=True, help="PEM or hex Ed25519 public key file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify_answer)


def cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from assay.core import logsetup
    from assay.relay import daemon
    from assay.relay.settings import load_config

    loaded = load_config(Path(args.config))
    logsetup.setup(loaded.config.logging.level, loaded.config.logging.journald)
    trio.run(daemon.run, loaded)
    return 0


def check_config(path: Path, *, static: bool) -> dict[str, Any]:
    """What ``check-config`` reports; raises the first typed error it meets."""
    from assay.relay.settings import load_config, load_secrets, table_states
    from assay.relay.snapshot import SnapshotStore

    loaded = load_config(path)
    cfg = loaded.config
    out: dict[str, Any] = {
        "config": str(path),
        "bind": cfg.server.bind,
        "datasets": [d.id for d in cfg.datasets],
        "auth_mode": cfg.auth.mode,
        "api_keys": [k.id for k in cfg.auth.api_keys],
        "checked": ["schema", "references"],
    }
    if static:
        return out
    if cfg.auth.oidc is not None:
        from assay.relay.oidc import discover

        out["oidc_jwks_url"] = discover(cfg.auth.oidc)  # a discovery failure is its error
        out["checked"].append("oidc_discovery")
    secrets = load_secrets(loaded)
    out["checked"] += ["secrets", "api_key_commitments"]
    out["answer_signing"] = secrets.signing_key is not None
    store = SnapshotStore(table_states(loaded))
    store.load_all_blocking()
    out["checked"].append("sources")
    out["tables"] = {
        t.where: {"rows": t.snapshot.rows, "digest": t.snapshot.digest}
        for t in store.tables()
        if t.snapshot is not None
    }
    return out


def cmd_check_config(args: argparse.Namespace) -> int:
    out = check_config(Path(args.path), static=args.static)
    if args.json:
        emit_json(out)
    else:
        print(f"{out['config']}: ok ({', '.join(out['checked'])})")
        for name, info in out.get("tables", {}).items():
            print(f"  {name}: {info['rows']} rows, {info['digest']}")
    return 0


def cmd_generate_api_key(args: argparse.Namespace) -> int:
    from assay.relay import apikeys

    made = apikeys.new_key(check_id(args.id))
    if args.json:
        emit_json(made)
        return 0
    env = "RELAY_KEY_" + "".join(c if c.isalnum() else "_" for c in args.id.upper()) + "_FP"
    print("raw key (give to the client only; shown once):")
    print(f"  {made['key']}")
    print("fingerprint (keep in a secret store or environment variable):")
    print(f"  {made['fingerprint']}")
    print("config (paste under auth.api_keys):")
    print(f"  - id: {made['id']}")
    print(f"    fingerprint: {{env: {env}}}")
    print(f'    commitment: "{made["commitment"]}"')
    print("    scopes: [DATASET:metadata, DATASET:read]")
    return 0


def cmd_generate_signing_key(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from assay.relay import jws

    out = Path(args.out)
    if out.exists():
        raise ConfigError(f"{out} exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    atomic_write(out, jws.private_pem(key), mode=0o600)
    pub = out.with_name(out.name + ".pub")
    atomic_write(pub, jws.public_pem(key), mode=0o644)
    if args.json:
        emit_json({"private_key": str(out), "public_key": str(pub)})
    else:
        print(f"wrote {out} (0600) and {pub}")
    return 0


def _read_jws(value: str) -> str:
    """The JWS from stdin (``-``), from a file of that name, or the argument itself."""
    if value == "-":
        return sys.stdin.read(8 * 1024 * 1024 + 1)
    try:
        is_file = len(value) < 4096 and Path(value).is_file()
    except OSError:
        is_file = False
    if not is_file:
        return value
    try:
        return Path(value).read_text()[: 8 * 1024 * 1024 + 1]
    except OSError as exc:
        raise ConfigError(f"cannot read answer {value}: {exc.strerror}") from None


def cmd_verify_answer(args: argparse.Namespace) -> int:
    from assay.relay import jws

    try:
        key = jws.load_public_key(Path(args.public_key).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read public key {args.public_key}: {exc.strerror}") from None
    claims = jws.verify(_read_jws(args.jws), key, now=time.time())
    if args.json:
        emit_json({"valid": True, "claims": claims})
    else:
        print(
            f"valid answer from {claims['iss']} for dataset {claims['dataset']} "
            f"(snapshot {claims['snapshot']}), expires at {claims['exp']}"
        )
        print(json.dumps(claims["query"], sort_keys=True))
    return 0
