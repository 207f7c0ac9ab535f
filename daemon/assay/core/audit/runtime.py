"""Glue from config to a running audit log: the one way daemons and the CLI open it.

Why here: the registry daemon, the relay daemon and the offline CLI commands must all
read the same secrets the same way (fail closed on a weak HMAC key) and open the log
with the same options, or their records would not chain. Edge module (reads secrets).
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from assay.core.audit.keys import hmac_key_from_bytes, private_key_from_pem
from assay.core.audit.log import AuditLog
from assay.core.audit.reader import Position
from assay.core.audit.schema import make_fields
from assay.core.audit.writer import AuditWriter
from assay.core.schema import AuditConfig
from assay.core.secrets import read_secret

CheckpointHook = Callable[[Mapping[str, Any]], None]


@dataclass
class AuditRuntime:
    """An open log and its group-commit writer, plus the hooks the web edge needs."""

    log: AuditLog
    writer: AuditWriter

    def writable(self) -> bool:
        """Blocking probe of the audit directory; call from a worker thread."""
        return self.log.writable()

    def receipt_headers(self, body: dict[str, Any], record: Mapping[str, Any]) -> dict[str, str]:
        """Sign a receipt for a mutation's record: as a header, and in the JSON body."""
        headers = self.writer.receipt_headers(record)
        for value in headers.values():
            body["receipt"] = value
        return headers

    receipt_headers_for_upload = receipt_headers

    def records_after(self, seq: int, anchor: Position | None) -> Iterator[dict[str, Any]]:
        """Authenticated records newer than ``seq`` (blocking; for startup replay)."""
        return self.log.records_after(seq, anchor=anchor)

    def head_position(self) -> Position:
        """Where the head record ends (blocking: takes the log's lock)."""
        return self.log.head_position()


def load_keys(cfg: AuditConfig, *, base: Path) -> tuple[bytes, Ed25519PrivateKey | None]:
    """The HMAC chain key (at least 32 bytes) and the optional Ed25519 signing key."""
    hmac_key = hmac_key_from_bytes(read_secret(cfg.hmac_key, base=base))
    signing = None
    if cfg.signing_key is not None:
        signing = private_key_from_pem(read_secret(cfg.signing_key, base=base, min_bytes=1))
    return hmac_key, signing


def open_log(cfg: AuditConfig, *, base: Path) -> AuditLog:
    """Open (blocking) the log the config names; raises if it needs recovery."""
    hmac_key, signing = load_keys(cfg, base=base)
    directory = Path(cfg.dir) if Path(cfg.dir).is_absolute() else base / cfg.dir
    return AuditLog(
        directory,
        hmac_key,
        log_id=cfg.log_id,
        signing_key=signing,
        rotate_bytes=cfg.rotate_bytes,
        checkpoint_every=cfg.checkpoint_every_records,
    )


def open_audit(
    cfg: AuditConfig, *, base: Path, on_checkpoint: CheckpointHook | None = None
) -> AuditRuntime:
    """Blocking: open the log and build its writer (start ``writer.run`` in a nursery)."""
    log = open_log(cfg, base=base)
    writer = AuditWriter(
        log,
        write_policy=cfg.write_policy,
        checkpoint_every_seconds=cfg.checkpoint_every_seconds,
        on_checkpoint=on_checkpoint,
    )
    return AuditRuntime(log=log, writer=writer)


def append_offline(
    cfg: AuditConfig,
    *,
    base: Path,
    action: str,
    target: str | None,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """Append one record for an offline CLI action, under the log's flock.

    The daemon may be running and appending at the same time; the log's lock and head
    re-read make the two writers chain correctly.
    """
    fields = make_fields(
        action,
        auth_mode="local",
        target=target,
        extra={**extra, "os_user": _os_user()},
    )
    with open_log(cfg, base=base) as log:
        return log.append(fields)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
