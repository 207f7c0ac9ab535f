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

from assay.cli.options import bind_arg, id_arg, json_option, text_path_arg
from assay.cli.output import emit_json, iso_time
from assay.cli.paths import output_file, read_input, write_output

#: A compact JWS answer is read up to this size; a larger one is refused when parsed.
MAX_JWS = 8 * 1024 * 1024


def register(sub: Any) -> None:
    from assay.cli import relay_init

    relay = sub.add_parser("relay", help="the read relay: serve, check config, keys, answers")
    rsub = relay.add_subparsers(dest="relay_command", required=True, metavar="COMMAND")

    p = rsub.add_parser(
        "init",
        help="create a working example relay over synthetic data in DIR",
        description="Create a complete example relay in DIR (missing or empty): synthetic "
        "data, audit and signing keys, two API keys (commitments in the config, "
        "fingerprints in secrets/, raw keys in DIR/relay.env), then check it.",
    )
    p.add_argument("dir", type=text_path_arg, metavar="DIR",
                   help="where to create it (a missing or empty directory)")  # fmt: skip
    p.add_argument("--bind", type=bind_arg, default=None, metavar="HOST:PORT",
                   help="the address the config names (default $ASSAY_RELAY_BIND, else "
                   f"{relay_init.DEFAULT_BIND})")  # fmt: skip
    p.add_argument(
        "--people",
        type=int,
        default=100_000,
        metavar="N",
        help="how many synthetic people to generate (default 100000)",
    )
    json_option(p)
    p.set_defaults(func=cmd_init)

    p = rsub.add_parser("serve", help="run the relay in the foreground (default 127.0.0.1:8480)")
    p.add_argument("--config", required=True, metavar="FILE", help="the relay config file")
    p.add_argument("--bind", type=bind_arg, metavar="HOST:PORT",
                   help="listen here instead of the config's server.bind (a non-loopback "
                   "address still needs server.allow_non_loopback)")  # fmt: skip
    p.set_defaults(func=cmd_serve)

    p = rsub.add_parser("check-config", help="validate a relay config, its secrets and sources")
    p.add_argument("path", metavar="FILE", help="the relay config file")
    p.add_argument("--static", action="store_true",
                   help="check only the YAML and its cross-references: read no secret or "
                   "source")  # fmt: skip
    json_option(p)
    p.set_defaults(func=cmd_check_config)

    p = rsub.add_parser("generate-api-key", help="print a new API key, fingerprint, commitment")
    p.add_argument(
        "--id",
        required=True,
        metavar="ID",
        type=id_arg,
        help="the key's id, as auth.api_keys[].id (the audit's principal)",
    )
    json_option(p)
    p.set_defaults(func=cmd_generate_api_key)

    p = rsub.add_parser("generate-signing-key", help="write an Ed25519 answer-signing key")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="the private key file to create (0600); the public key goes to "
                   "FILE.pub")  # fmt: skip
    json_option(p)
    p.set_defaults(func=cmd_generate_signing_key)

    p = rsub.add_parser("verify-answer", help="verify a signed answer (compact JWS) offline")
    p.add_argument("jws", metavar="JWS", help="the JWS itself, a file holding it, or - for stdin")
    p.add_argument(
        "--public-key",
        required=True,
        metavar="FILE",
        help="the relay's Ed25519 public key, PEM or hex",
    )
    json_option(p)
    p.set_defaults(func=cmd_verify_answer)


def cmd_init(args: argparse.Namespace) -> int:
    from assay.cli import relay_init

    if args.people < 10 or args.people > 10_000_000:
        from assay.cli.errors import UsageError

        raise UsageError("--people must be between 10 and 10000000")
    out = relay_init.init_relay(args.dir, bind=args.bind or relay_init.default_bind(),
                                people=args.people)  # fmt: skip
    if args.json:
        emit_json(out)
    else:
        relay_init.print_init(out)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from assay.cli.servers import run_server, with_bind
    from assay.core import logsetup
    from assay.relay import daemon
    from assay.relay.settings import load_config

    loaded = with_bind(load_config(Path(args.config)), args.bind)
    logsetup.setup(loaded.config.logging.level, loaded.config.logging.journald)
    return run_server(daemon.run, loaded)


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
    store = SnapshotStore(table_states(loaded, secrets.pg))
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
    from assay.core.tokens import check_id
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

    out = output_file(Path(args.out), what="--out", new=True)
    pub = output_file(out.with_name(out.name + ".pub") if out.name else out, what="--out")
    key = Ed25519PrivateKey.generate()
    write_output(out, jws.private_pem(key), mode=0o600, what="--out")
    write_output(pub, jws.public_pem(key), mode=0o644, what="--out")
    if args.json:
        emit_json({"private_key": str(out), "public_key": str(pub)})
    else:
        print(f"wrote {out} (0600) and {pub}")
    return 0


def _read_jws(value: str) -> str:
    """The JWS from stdin (``-``), from a file of that name, or the argument itself."""
    if value == "-":
        return sys.stdin.read(MAX_JWS + 1)
    try:
        is_file = len(value) < 4096 and Path(value).is_file()
    except (OSError, ValueError):
        is_file = False
    if not is_file:
        return value
    data = read_input(Path(value), max_bytes=MAX_JWS, what="answer")
    return data.decode("utf-8", errors="replace")


def cmd_verify_answer(args: argparse.Namespace) -> int:
    from assay.relay import jws

    key = jws.load_public_key(read_input(Path(args.public_key), max_bytes=64 * 1024,
                                         what="--public-key"))  # fmt: skip
    claims = jws.verify(_read_jws(args.jws), key, now=time.time())
    if args.json:
        emit_json({"valid": True, "claims": claims})
    else:
        print(
            f"valid answer from {claims['iss']} for dataset {claims['dataset']} "
            f"(snapshot {claims['snapshot']}), signed {iso_time(claims.get('iat'))}, "
            f"expires {iso_time(claims['exp'])}"
        )
        print(json.dumps(claims["query"], sort_keys=True))
    return 0
