"""The token file: fingerprints and scopes on disk, mode 0600, changed only offline.

Why offline only: no HTTP route can mint or revoke a token; an admin with file access
runs ``assay token create``. Writers lock ``<file>.lock`` with flock and replace the file
atomically, so the daemon (which re-reads on change) never sees a torn file.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from assay.core.atomic import atomic_write
from assay.core.errors import BadRequest, Conflict, NotFound, SecretError, UnsafeFile
from assay.core.tokens import TokenRecord, check_id, check_scopes, fingerprint, generate_token
from assay.core.trusted_files import check_ancestors, check_owner

FORMAT_VERSION = 1
MAX_TOKEN_FILE_BYTES = 4 * 1024 * 1024


def _parse(data: bytes, source: str) -> list[TokenRecord]:
    try:
        doc: Any = json.loads(data.decode()) if data.strip() else {"version": 1, "tokens": []}
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SecretError(f"token file {source} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("version") != FORMAT_VERSION:
        raise SecretError(f"token file {source}: expected {{'version': 1, 'tokens': [...]}}")
    records: list[TokenRecord] = []
    for i, item in enumerate(doc.get("tokens", [])):
        try:
            fp = str(item["fingerprint"])
            if not fp.startswith("sha256:") or len(fp) != 71:
                raise ValueError("fingerprint must be sha256:<64 hex>")
            records.append(
                TokenRecord(
                    id=check_id(str(item["id"])),
                    fingerprint=fp,
                    scopes=check_scopes(item["scopes"]),
                    created=str(item.get("created", "")),
                    revoked=bool(item.get("revoked", False)),
                    note=str(item.get("note", "")),
                )
            )
        except (KeyError, TypeError, ValueError, BadRequest) as exc:
            raise SecretError(f"token file {source}: tokens[{i}] invalid: {exc}") from None
    return records


def _serialise(records: list[TokenRecord]) -> bytes:
    doc = {
        "version": FORMAT_VERSION,
        "tokens": [
            {
                "id": r.id,
                "fingerprint": r.fingerprint,
                "scopes": sorted(r.scopes),
                "created": r.created,
                "revoked": r.revoked,
                "note": r.note,
            }
            for r in records
        ],
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def load(path: Path) -> list[TokenRecord]:
    """Read the token file; refuse symlinks, oversize files, group/world access, another
    owner, and a path whose directories others could rename it out of (as secrets)."""
    try:
        check_ancestors(path)
    except UnsafeFile as exc:
        raise SecretError(f"token file {path}: {exc.detail}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretError(f"token file {path} unreadable: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SecretError(f"token file {path} is not a regular file")
        try:
            check_owner(info, path)
        except UnsafeFile as exc:
            raise SecretError(f"token file {path}: {exc.detail}") from None
        if info.st_mode & 0o077:
            raise SecretError(
                f"token file {path} has mode {stat.S_IMODE(info.st_mode):04o}; it must be 0600"
            )
        if info.st_size > MAX_TOKEN_FILE_BYTES:
            raise SecretError(f"token file {path} is larger than {MAX_TOKEN_FILE_BYTES} bytes")
        data = os.read(fd, MAX_TOKEN_FILE_BYTES + 1)
    finally:
        os.close(fd)
    return _parse(data, str(path))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def create(path: Path, token_id: str, scopes: list[str], note: str = "") -> tuple[str, TokenRecord]:
    """Add a token; returns the raw token (show it once) and its stored record."""
    check_id(token_id)
    scope_set = check_scopes(scopes)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _locked(path):
        records = load(path) if path.exists() else []
        if any(r.id == token_id for r in records):
            raise Conflict(f"token id {token_id!r} already exists", code="token.exists")
        raw = generate_token()
        record = TokenRecord(
            id=token_id,
            fingerprint=fingerprint(raw),
            scopes=scope_set,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            note=note,
        )
        atomic_write(path, _serialise([*records, record]), mode=0o600)
    return raw, record


def revoke(path: Path, token_id: str) -> TokenRecord:
    """Mark a token revoked (kept for forensics: its id still appears in old audit records)."""
    with _locked(path):
        records = load(path)
        found = [r for r in records if r.id == token_id]
        if not found:
            raise NotFound(f"no token with id {token_id!r}", code="token.not_found")
        updated = [
            TokenRecord(r.id, r.fingerprint, r.scopes, r.created, True, r.note)
            if r.id == token_id
            else r
            for r in records
        ]
        atomic_write(path, _serialise(updated), mode=0o600)
    return next(r for r in updated if r.id == token_id)


def discard(path: Path, token_id: str) -> None:
    """Remove a token that was never usable: only to undo a creation that failed to audit."""
    with _locked(path):
        records = load(path)
        atomic_write(path, _serialise([r for r in records if r.id != token_id]), mode=0o600)


def ensure_file(path: Path) -> None:
    """Create an empty token file (mode 0600) if none exists."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(path):
            if not path.exists():
                atomic_write(path, _serialise([]), mode=0o600)
