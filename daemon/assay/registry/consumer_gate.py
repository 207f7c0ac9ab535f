"""One consumer-socket request, decided and recorded: bytes and a peer in, an answer and
maybe an fd out. The socket itself is ``consumer_socket.py``; this holds no socket.

Order, per request (every request leaves one record, allowed or refused):

  1. parse the request strictly (``consumers.parse_request``);
  2. who: a bearer token if one was sent (the registry's ``Authenticator``, so a
     revoked token fails at once), else the peer's credentials mapped to a consumer
     principal (``consumers.principal_for``); then the ``artifacts:read`` scope;
  3. the handoff: trusted and intact now, fd opened and checked against its fingerprint
     (``handoff.HandoffOps.open_for_consumer``);
  4. the record, durable before the fd leaves (fail closed: no record, no fd);
  5. the state again: a revoke that landed while the record was written refuses the
     fd after all, with a second record saying so.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from assay.consumer.protocol import MAX_REQUEST_BYTES, encode_answer
from assay.core import problem
from assay.core.authn import Authenticator
from assay.core.errors import AssayError, BadRequest, MissingCredential
from assay.core.tokens import Principal
from assay.core.web import AuditSink
from assay.registry.base import record_fields
from assay.registry.consumers import (
    OPEN_SCOPE,
    OpenRequest,
    Peer,
    PeerRule,
    parse_request,
    principal_for,
)
from assay.registry.handoff import Handoff
from assay.registry.service import Registry

log = logging.getLogger("assay.consumer")

#: The ``route`` of every consumer-socket record.
ROUTE = "consumer.socket"
ACTION = "artifact.open"


class ConsumerGate:
    def __init__(
        self,
        registry: Registry,
        *,
        authenticator: Authenticator,
        audit: AuditSink,
        rules: Sequence[PeerRule],
    ) -> None:
        self.registry = registry
        self.authenticator = authenticator
        self.audit = audit
        self.rules = tuple(rules)

    async def answer(self, raw: bytes | None, peer: Peer) -> tuple[bytes, int | None]:
        """The answer to send and the fd to attach (None with a problem); the caller
        sends it and closes the fd. ``raw`` None: the peer sent nothing in time."""
        request_id = secrets.token_hex(8)
        asked = _Asked(peer)
        try:
            handoff = await self._decide(raw, asked, request_id)
        except AssayError as err:
            return await self._refuse(err, asked, request_id), None
        except Exception:  # a bug must still leave a record and an answer, not a hang-up
            log.exception("consumer request %s failed", request_id)
            return await self._refuse(AssayError("internal error"), asked, request_id), None
        try:
            # Step GATE-4 (record): durable before the fd goes out.
            await self._record(asked, request_id, handoff.artifact.digest, 200,
                               extra={"rehashed": handoff.rehashed})  # fmt: skip
            # Step GATE-5 (state again): a revoke during the record wins.
            self.registry.check_consumable(handoff.artifact.digest)
        except AssayError as err:
            os.close(handoff.fd)
            if err.status >= 500:  # the record itself failed: nothing more to write
                return _problem(err, request_id), None
            return await self._refuse(err, asked, request_id, reasons=[
                "the artifact changed state while this open was being recorded"]), None  # fmt: skip
        return encode_answer(handoff.header()), handoff.fd

    async def _decide(self, raw: bytes | None, asked: _Asked, request_id: str) -> Handoff:
        # Step GATE-1 (parse).
        if raw is None:
            raise BadRequest("no request arrived in time", code="request.timeout")
        request: OpenRequest = parse_request(raw, max_bytes=MAX_REQUEST_BYTES)
        asked.target = request.target
        # Step GATE-2 (who): a token decides alone; without one, the peer's credentials.
        if request.token is not None:
            asked.token = True
            asked.principal = self.authenticator.authenticate(
                {"authorization": f"Bearer {request.token}"}
            )
        else:
            asked.principal = principal_for(asked.peer, self.rules)
            if asked.principal is None:
                raise MissingCredential(
                    f"peer uid {asked.peer.uid} gid {asked.peer.gid} is no consumer "
                    "principal, and no token was sent"
                )
        asked.principal.require(OPEN_SCOPE)
        # Step GATE-3 (handoff).
        return await self.registry.open_for_consumer(
            request, principal=asked.principal, route=ROUTE, request_id=request_id,
            extra=asked.peer.fields(),
        )  # fmt: skip

    async def _refuse(
        self, err: AssayError, asked: _Asked, request_id: str, *, reasons: list[str] | None = None
    ) -> bytes:
        """The problem answer, after its record (unless the refusal wrote it already)."""
        if err.written_record is None:
            try:
                await self._record(
                    asked, request_id, asked.target or "", err.status,
                    reasons=reasons or list(err.reasons), error_code=err.code,
                )  # fmt: skip
            except AssayError as failed:  # no record: say so, as HTTP does (503)
                return _problem(failed, request_id)
        return _problem(err, request_id)

    async def _record(
        self,
        asked: _Asked,
        request_id: str,
        target: str,
        status: int,
        *,
        reasons: list[str] | None = None,
        error_code: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        decision = "allow" if status < 400 else "deny" if status < 500 else "error"
        fields = record_fields(
            asked.principal, ACTION, ROUTE, request_id, target, None, None, status,
            reasons=reasons, decision=decision, error_code=error_code,
            extra={**asked.peer.fields(), **(extra or {})},
        )  # fmt: skip
        if asked.principal is None:
            fields["auth_mode"] = "token" if asked.token else "peer"
        await self.audit.append(fields)


class _Asked:
    """What is known of a request so far, for its record."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.principal: Principal | None = None
        self.token = False
        self.target: str | None = None


def _problem(err: AssayError, request_id: str) -> bytes:
    _status, body = problem.from_error(err, instance=ROUTE, request_id=request_id)
    return encode_answer(body)
