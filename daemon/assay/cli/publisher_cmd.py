"""``assay publisher keygen|sign``: the publisher's side of signed promotions (offline).

Why in the CLI: a policy can require a publisher's Ed25519 signature over an artifact's
digest, and the message format (``assay.registry.policy.signed_message``) is assay's own.
These two commands make a key pair with the policy entry to paste, and sign a digest in
the form ``assay promote --signature`` takes, so no one has to reimplement the message.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

from assay.cli.errors import UsageError
from assay.cli.options import json_option, text_arg
from assay.cli.output import emit_json
from assay.cli.paths import output_dir, output_file, read_input

KEY_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
MAX_KEY_FILE = 64 * 1024


def register(sub: Any) -> None:
    pub = sub.add_parser("publisher", help="publisher keys and digest signatures (offline)")
    psub = pub.add_subparsers(dest="publisher_command", required=True, metavar="ACTION")
    p = psub.add_parser("keygen", help="create a publisher key pair; print its policy entry")
    p.add_argument(
        "--id",
        required=True,
        metavar="ID",
        type=text_arg,
        help="the key id the policy will list (1-64 of [A-Za-z0-9._-])",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory for ID.key (0600) and ID.pub; created if missing",
    )
    json_option(p)
    p.set_defaults(func=cmd_keygen)
    p = psub.add_parser("sign", help="sign a digest for `assay promote --signature`")
    p.add_argument(
        "digest",
        metavar="DIGEST",
        type=text_arg,
        help="the artifact's full sha256:<hex> (a signature covers all of it)",
    )
    p.add_argument(
        "--id",
        required=True,
        metavar="ID",
        type=text_arg,
        help="the key id the policy lists for this key",
    )
    p.add_argument(
        "--key-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="the publisher's private key (from `assay publisher keygen`)",
    )
    json_option(p)
    p.set_defaults(func=cmd_sign)


def _key_id(value: str) -> str:
    if not 1 <= len(value) <= 64 or not set(value) <= KEY_ID_CHARS:
        raise UsageError("--id must be 1-64 of [A-Za-z0-9._-]", code="request.bad_key_id")
    return value


def cmd_keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from assay.core.audit.keys import generate_signing_key

    key_id = _key_id(args.id)
    output_dir(args.out, what="--out")
    key_path = output_file(args.out / f"{key_id}.key", what="--out")
    key = generate_signing_key(key_path, args.out / f"{key_id}.pub")
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    entry = {"id": key_id, "public_key": base64.b64encode(raw).decode()}
    if args.json:
        emit_json({"policy_key": entry, "private_key_file": str(key_path)})
    else:
        print(f"private key: {key_path} (0600; keep it off this host)")
        print("add to the policy's publisher_signature.keys:")
        print(f"  - {{id: {entry['id']}, public_key: {entry['public_key']}}}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from assay.core.audit.keys import private_key_from_pem
    from assay.core.errors import BadRequest
    from assay.registry.digests import parse_digest
    from assay.registry.policy import signed_message

    key_id = _key_id(args.id)
    try:
        digest = parse_digest(args.digest)
    except BadRequest as exc:
        raise UsageError(f"{exc.detail} (sign the full sha256:<64 hex>)",
                         code=exc.code) from None  # fmt: skip
    data = read_input(args.key_file, max_bytes=MAX_KEY_FILE, what="--key-file")
    signature = base64.b64encode(private_key_from_pem(data).sign(signed_message(digest)))
    value = f"{key_id}:{signature.decode()}"
    if args.json:
        emit_json({"digest": digest, "key_id": key_id, "signature": signature.decode(),
                   "argument": value})  # fmt: skip
    else:
        print(value)
    return 0
