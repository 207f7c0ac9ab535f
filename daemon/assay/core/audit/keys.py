"""Audit keys: the Ed25519 signing pair (checkpoints, receipts) and the chain HMAC key.

Two keys on purpose. The HMAC key authenticates every record cheaply but must stay on
the host that writes the log; the Ed25519 private key signs checkpoints and receipts whose
public half can be handed to anyone who should verify without being able to forge.

Files: the private key is PKCS#8 PEM, mode 0600; the public key SubjectPublicKeyInfo PEM,
mode 0644. Both are written atomically (temp file in the same directory, fsync, rename,
directory fsync), so a crash never leaves half a key. Reads refuse symlinks.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from assay.core.atomic import atomic_write
from assay.core.errors import BadRequest, SecretError
from assay.core.schema import SecretRef
from assay.core.secrets import MIN_SECRET_BYTES, read_secret

PRIVATE_NAME: Final = "audit-signing.key"
PUBLIC_NAME: Final = "audit-signing.pub"
MIN_HMAC_KEY_BYTES: Final = MIN_SECRET_BYTES
_MAX_KEY_FILE: Final = 64 * 1024


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def generate_signing_key(
    private_path: Path, public_path: Path, *, overwrite: bool = False
) -> Ed25519PrivateKey:
    """Create a fresh Ed25519 pair at the given paths; refuses to replace a key silently."""
    if not overwrite:
        for p in (private_path, public_path):
            if os.path.lexists(p):
                raise SecretError(f"{p} already exists; refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    atomic_write(private_path, private_pem(key), mode=0o600)
    atomic_write(public_path, public_pem(key.public_key()), mode=0o644)
    return key


def generate_keypair(out_dir: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """``audit-signing.key`` and ``audit-signing.pub`` in ``out_dir`` (created 0700)."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    priv, pub = out_dir / PRIVATE_NAME, out_dir / PUBLIC_NAME
    generate_signing_key(priv, pub, overwrite=overwrite)
    return priv, pub


def private_key_from_pem(data: bytes) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(data.strip() + b"\n", password=None)
    except (ValueError, TypeError):
        raise SecretError("signing key is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SecretError("signing key is not an Ed25519 key")
    return key


def public_key_from_pem(data: bytes) -> Ed25519PublicKey:
    try:
        key = load_pem_public_key(data.strip() + b"\n")
    except (ValueError, TypeError):
        raise BadRequest(
            "public key is not a PEM public key", code="audit.bad_public_key"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise BadRequest("public key is not an Ed25519 key", code="audit.bad_public_key")
    return key


def _read_nofollow(path: Path, *, private: bool) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"{path} is not a regular file")
        if private and info.st_mode & 0o077:
            raise SecretError(f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                              "a private key must not be readable by group or others")  # fmt: skip
        return os.read(fd, _MAX_KEY_FILE)
    finally:
        os.close(fd)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        return private_key_from_pem(_read_nofollow(path, private=True))
    except OSError as exc:
        raise SecretError(f"signing key {path} unreadable: {exc.strerror}") from None


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        return public_key_from_pem(_read_nofollow(path, private=False))
    except OSError as exc:
        raise BadRequest(f"public key {path} unreadable: {exc.strerror}",
                         code="audit.bad_public_key") from None  # fmt: skip


def key_id_of(public_path: Path) -> str:
    """The ``key_id`` checkpoints and receipts name for the public key in ``public_path``."""
    from assay.core.audit.checkpoint import key_id

    return key_id(load_public_key(public_path))


def hmac_key_from_bytes(data: bytes) -> bytes:
    """The chain key as given; ``SecretError`` if shorter than 32 bytes (guessable)."""
    if len(data) < MIN_HMAC_KEY_BYTES:
        raise SecretError(f"audit HMAC key is {len(data)} bytes; at least "
                          f"{MIN_HMAC_KEY_BYTES} are needed")  # fmt: skip
    return bytes(data)


def load_hmac_key(path: Path) -> bytes:
    """Read the HMAC key file exactly as the daemon does (same stripping, same checks)."""
    return hmac_key_from_bytes(read_secret(SecretRef(file=str(path)), base=Path.cwd()))
