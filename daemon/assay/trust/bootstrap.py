"""Offline: create the TUF keys and the root consumers pin, and renew or rotate it later.

Run by ``assay init``, ``assay trust init`` (which ``assay-system init`` calls) and
``assay trust renew-root``. The root key signs here and nowhere else: the daemon never
loads it. Blocking (files).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Root

from assay.core.atomic import atomic_write
from assay.core.errors import ConfigError
from assay.trust import metadata
from assay.trust.keys import generate, load_signer_file
from assay.trust.repository import read_root_chain

DEFAULT_ROOT_EXPIRY_DAYS = 365


def init_trust(root_key: Path, online_key: Path, root_dir: Path, *,
               expiry_days: int = DEFAULT_ROOT_EXPIRY_DAYS) -> dict[str, Any]:  # fmt: skip
    """Two new keys (0600) and ``root_dir/1.root.json`` (0644) signed by the root key."""
    for path in (root_key, online_key, root_dir / "1.root.json"):
        if os.path.lexists(path):
            raise ConfigError(f"{path} already exists; refusing to replace trust keys or root")
    _make_dirs(root_dir)
    root_signer = generate(root_key)
    online_signer = generate(online_key)
    root = metadata.new_root(root_signer.public_key, online_signer.public_key, version=1,
                             expires=_expiry(expiry_days))  # fmt: skip
    return _write_root(root_dir, root, [root_signer])


def renew_root(root_key: Path, root_dir: Path, *, expiry_days: int = DEFAULT_ROOT_EXPIRY_DAYS,
               new_online_key: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """``N+1.root.json``: the same keys with a new expiry, or, with ``new_online_key``, a
    freshly generated online key in place of the old one (its file is created 0600)."""
    chain = metadata.check_root_chain(read_root_chain(root_dir))
    current = chain.latest
    signer = load_signer_file(root_key, what="root key")
    if signer.public_key.keyid not in current.roles[Root.type].keyids:
        raise ConfigError(f"{root_key} is not a key of root v{current.version}")
    root = Root.from_dict(current.to_dict())
    root.version = current.version + 1
    root.expires = _expiry(expiry_days)
    if new_online_key is not None:
        if os.path.lexists(new_online_key):
            raise ConfigError(f"{new_online_key} already exists; refusing to replace a key")
        online = generate(new_online_key).public_key
        for role in metadata.ONLINE_ROLES:
            for keyid in list(root.roles[role].keyids):
                root.revoke_key(keyid, role)
            root.add_key(online, role)
    return _write_root(root_dir, root, [signer])


def _write_root(root_dir: Path, root: Root, signers: list[CryptoSigner]) -> dict[str, Any]:
    data = metadata.sign(root, signers[0])
    path = root_dir / f"{root.version}.root.json"
    # The new chain must be one a client accepts before anything relies on it.
    metadata.check_root_chain([*read_root_chain(root_dir)[: root.version - 1], data])
    atomic_write(path, data, mode=0o644)
    return {
        "root": str(path),
        "version": root.version,
        "expires": root.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sha256": metadata.sha256_hex(data),
    }


def _make_dirs(root_dir: Path) -> None:
    """The root dir and its parent 0755: public metadata the daemon's modes checks pass."""
    for d in (root_dir.parent, root_dir):
        d.mkdir(parents=True, exist_ok=True, mode=0o755)
        d.chmod(0o755)


def _expiry(days: int) -> datetime:
    if not 1 <= days <= 3650:
        raise ConfigError("root expiry must be 1..3650 days")
    return datetime.now(UTC) + timedelta(days=days)
