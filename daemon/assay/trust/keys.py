"""The TUF keys: a root key that only signs root, and the daemon's online key.

Why two: the daemon needs a key online to re-sign the timestamp every few minutes and to
publish every change at once, but it never needs the root key. Kept out of its reach
(under systemd: in /etc/assay/credentials, never passed by LoadCredential=), the root
key can still rotate a compromised online key by signing a new root, which consumers
accept because the root they pinned signs it.

Both are Ed25519, PKCS#8 PEM, mode 0600, written atomically (``assay.core.audit.keys``);
neither is ever printed.
"""

from __future__ import annotations

from pathlib import Path

from securesystemslib.signer import CryptoSigner

from assay.core.audit.keys import generate_signing_key, private_key_from_pem
from assay.core.errors import SecretError
from assay.core.schema import SecretRef
from assay.core.secrets import read_secret

ROOT_KEY_NAME = "tuf-root.key"
ONLINE_KEY_NAME = "tuf-online.key"
#: A PEM Ed25519 private key is about 119 bytes; anything much shorter is not one.
_MIN_PEM_BYTES = 64


def generate(private_path: Path) -> CryptoSigner:
    """A new key pair; the private half at ``private_path`` (0600) and its public half
    beside it as ``.pub`` (0644, for operators: the root carries it anyway)."""
    key = generate_signing_key(private_path, private_path.with_suffix(".pub"))
    return CryptoSigner(key)


def signer_from_pem(data: bytes, *, what: str) -> CryptoSigner:
    try:
        return CryptoSigner(private_key_from_pem(data))
    except SecretError as exc:
        raise SecretError(f"{what}: {exc.detail}") from None


def load_signer(ref: SecretRef, *, base: Path, what: str) -> CryptoSigner:
    """The key a config reference names, read like every secret (``read_secret``: no
    symlink, not readable by group or others, bounded)."""
    return signer_from_pem(read_secret(ref, base=base, min_bytes=_MIN_PEM_BYTES), what=what)


def load_signer_file(path: Path, *, what: str) -> CryptoSigner:
    return load_signer(SecretRef(file=str(path)), base=Path.cwd(), what=what)
