"""Request authentication against the token file, reloaded when it changes.

Fail closed: no credential is 401 ``auth.missing_credential``; an unknown or revoked one
is 401 ``auth.invalid_credential``; an unreadable token file at startup stops the daemon.
After startup a token file that turns unreadable keeps the last good set and is reported,
because failing open or dropping all admins would both be worse.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

import trio

from assay.core import tokenfile
from assay.core.errors import AssayError, MissingCredential
from assay.core.tokens import Principal, TokenRecord, authenticate, parse_bearer

log = logging.getLogger("assay.auth")

#: Extra credential schemes (e.g. the relay's API keys): header -> verifier.
ExtraScheme = Callable[[str], Principal]


def _after(created: str, approved_at: str) -> bool:
    """True if a token created at ``created`` did not exist yet at ``approved_at`` (an
    unknown or unparsable time proves nothing, so it is never "after")."""
    try:
        made, approved = datetime.fromisoformat(created), datetime.fromisoformat(approved_at)
    except ValueError:
        return False
    if made.tzinfo is None or approved.tzinfo is None:
        return False
    # ``created`` is kept to the second: a token made in the same second as the approval
    # is taken to predate it.
    return made > approved.replace(microsecond=0)


class Authenticator:
    def __init__(self, token_file: Path, *, extra: Mapping[str, ExtraScheme] | None = None) -> None:
        self.token_file = token_file
        self._records: tuple[TokenRecord, ...] = ()
        self._stamp: tuple[int, int, int] | None = None
        self._extra = dict(extra or {})

    def load(self) -> None:
        """Blocking initial load; raises ``SecretError`` so startup stops."""
        self._records = tuple(tokenfile.load(self.token_file))
        self._stamp = self._current_stamp()

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.token_file, follow_symlinks=False)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload_if_changed(self) -> bool:
        stamp = self._current_stamp()
        if stamp == self._stamp:
            return False
        try:
            self._records = tuple(tokenfile.load(self.token_file))
        except AssayError as exc:
            log.error(  # noqa: TRY400 - the detail is the message; no traceback wanted
                "token file reload failed, keeping previous tokens: %s", exc.detail
            )
            return False
        self._stamp = stamp
        log.info("token file reloaded: %d tokens", len(self._records))
        return True

    async def watch(self, interval: float = 1.0) -> None:
        """Poll the token file so ``token create``/``revoke`` apply without a restart."""
        while True:
            await trio.sleep(interval)
            await trio.to_thread.run_sync(self._reload_if_changed)

    def standing(self, approvals: Mapping[str, str], scope: str) -> dict[str, str]:
        """Why each approval (token id -> when it was given, ISO 8601) no longer counts
        for ``scope``; an approval absent from the answer counts.

        An approval belongs to the credential that gave it: it is void once that token
        is revoked, removed, stripped of ``scope``, or replaced by a token created under
        the same id after the approval. Blocking: the token file is re-read first if it
        changed, so a revocation on disk counts at once, not at the next poll.
        """
        self._reload_if_changed()
        out: dict[str, str] = {}
        for token_id, approved_at in approvals.items():
            records = [r for r in self._records if r.id == token_id]
            live = [r for r in records if not r.revoked]
            if not records:
                out[token_id] = "no token with this id any more"
            elif not live:
                out[token_id] = "token revoked"
            elif not any(scope in r.scopes for r in live):
                out[token_id] = f"token no longer holds {scope}"
            elif all(_after(r.created, approved_at) for r in live):
                out[token_id] = "token re-created under this id after it approved"
        return out

    @property
    def token_count(self) -> int:
        return sum(1 for r in self._records if not r.revoked)

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """Headers are looked up case-insensitively by the caller's mapping."""
        bearer = parse_bearer(headers.get("authorization"))
        if bearer is not None:
            try:
                return authenticate(bearer, self._records)
            except AssayError:
                if "bearer" not in self._extra:
                    raise
                return self._extra["bearer"](bearer)
        for header, scheme in self._extra.items():
            value = headers.get(header)
            if header != "bearer" and value:
                return scheme(value.strip())
        raise MissingCredential("this route requires a bearer token")
