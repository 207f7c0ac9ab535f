"""Requests the HTTP parser refuses still leave a record, and get a problem document.

Why: h11 refuses a malformed request head (a bad request line, a NUL or a space in a
header, a missing ``Host``, conflicting lengths, a transfer coding it does not know, a
head past its incomplete-data bound) before any ASGI app runs, and hypercorn then
answers a bare 400, 431 or 501 with no body and no record. Such a request came from
outside like any other, so it leaves a record (``http.refused``) and is answered with
an RFC 9457 problem at the status h11 hinted (503 ``audit.write_failed`` if the record
cannot be written, as everywhere).

The hook: hypercorn's ``H11Protocol._send_error_response(status_code)`` is the one place
that answers these refusals. It is called only from inside ``except
h11.RemoteProtocolError`` in ``_handle_events`` and only while a response can still be
sent (h11's own state IDLE or SEND_RESPONSE), so the subclass here sees the error as
the exception being handled (``sys.exc_info()``, defined by Python for code running in
an ``except`` block). ``hypercorn.protocol.H11Protocol``, the name each connection's
``ProtocolWrapper`` builds, is pointed at the subclass; the handler itself is looked up
on hypercorn's config, so two daemons in one process keep their own audit logs.

When the head was accepted and the *body* fails (a bad chunk), the request already
reached the app, whose edge writes its one record (``RecordBeforeDisconnect`` keeps the
handler running to it); the problem then goes out without a second record.

The subclass also never switches to HTTP/2 (an ``Upgrade: h2c`` header or the prior-
knowledge preface): both daemons speak HTTP/1.1 only (``alpn_protocols``), and a second
protocol stack would be a second set of refusals that no record covers. Such a request
is served as the HTTP/1.1 request it is, by the app, with its record.

Nor does it ever hand a request to hypercorn's WebSocket stream: a handshake that
stream took either reached the app as a ``websocket`` scope, outside the request
discipline, or (a handshake it judged malformed: no key, another version) was answered
a bare 400 that no app saw and nothing recorded. Every request is an ``http`` one here;
the app's outermost layer refuses a handshake with an audited 400
(``assay.core.asgi.HeaderCap``), and h11, seeing no 101, keeps the connection HTTP/1.1.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
from http import HTTPStatus
from typing import Any

import h11
import hypercorn.protocol as hypercorn_protocol
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.protocol.events import Request
from hypercorn.protocol.h11 import STREAM_ID, H11Protocol
from hypercorn.protocol.http_stream import HTTPStream

from assay.core import problem
from assay.core.errors import AssayError
from assay.core.web import AuditSink, RequestAudit, base_fields

log = logging.getLogger("assay.http")

ACTION = "http.refused"
#: Where ``install`` leaves the handler on hypercorn's config.
_CONFIG_ATTR = "assay_refusals"
#: h11 quotes the offending bytes after its message (``illegal header line: b'...'``);
#: they may hold a credential, so a reason keeps only the message's leading words.
_MESSAGE = re.compile(r"[A-Za-z0-9 ,:;._-]{0,120}")
_QUOTED = re.compile(r":?\s*(?:bytearray\(|b['\"]|['\"]).*", re.DOTALL)


def reason_of(error: BaseException | None) -> str:
    """The parser's complaint without the bytes it quotes: ``illegal header line``."""
    text = _QUOTED.sub("", str(error) if error is not None else "")
    match = _MESSAGE.match(text)
    words = (match.group(0) if match else "").strip(" :;,.")
    return f"refused by the HTTP parser: {words or 'malformed request'}"


class Refusals:
    """Records a refusal and renders its answer; one per daemon, on its hypercorn config."""

    def __init__(self, audit: AuditSink) -> None:
        self.audit = audit

    async def answer(
        self, status: int, error: BaseException | None, *, record: bool = True
    ) -> tuple[int, bytes, str]:
        """Write the refusal's record; the status, problem body and request id to send."""
        request_id = secrets.token_hex(8)
        reason = reason_of(error)
        status, body = problem.from_status(status, reason, instance="", request_id=request_id)
        del body["instance"]  # the target may not even have parsed
        if not record:
            return status, problem.encode(body), request_id
        audit = RequestAudit(action=ACTION, decision="deny", reasons=[reason])
        fields = base_fields(None, audit, status, body["code"], None, request_id, [], None)
        try:
            await self.audit.append(fields)
        except AssayError as exc:
            status, body = problem.from_error(exc, instance="", request_id=request_id)
            del body["instance"]
        return status, problem.encode(body), request_id


class AuditedH11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, with audited refusals and no switch to HTTP/2."""

    async def _send_error_response(self, status_code: int) -> None:
        refusals = getattr(self.config, _CONFIG_ATTR, None)
        if not isinstance(refusals, Refusals):
            await super()._send_error_response(status_code)
            return
        error = sys.exc_info()[1]  # the h11.RemoteProtocolError being handled
        # A head h11 accepted is already the app's request (its body failed later, e.g.
        # a bad chunk): the app's edge writes that request's one record, and its answer
        # cannot be sent any more, so this problem goes out without a second record.
        reached_app = self.stream is not None
        if reached_app and _after_close(error):
            # Bytes after a complete request that closes the connection (HTTP/1.0, or
            # ``Connection: close``): RFC 9112 9.6 has the server ignore them, so the
            # app's own answer goes out and only then does hypercorn close.
            with trio.move_on_after(AFTER_CLOSE_ANSWER_SECONDS):
                await self._answered().wait()
            return
        status, body, request_id = await refusals.answer(status_code, error, record=not reached_app)
        headers = [
            (b"content-type", problem.PROBLEM_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-request-id", request_id.encode()),
            *((k.lower().encode(), v.encode()) for k, v in problem.SECURITY_HEADERS),
            *self.config.response_headers("h11"),
        ]
        reason = HTTPStatus(status).phrase.encode()
        await self._send_h11_event(h11.Response(status_code=status, headers=headers, reason=reason))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())

    async def _send_h11_event(self, event: Any) -> None:
        await super()._send_h11_event(event)
        if isinstance(event, h11.EndOfMessage):
            self._answered().set()

    def _answered(self) -> trio.Event:
        """Set once this connection's current answer is sent whole."""
        answered: trio.Event | None = getattr(self, "_assay_answered", None)
        if answered is None:
            answered = self._assay_answered = trio.Event()
        return answered

    async def _check_protocol(self, event: h11.Request) -> None:
        """HTTP/1.1 only: neither ``Upgrade: h2c`` nor ``PRI * HTTP/2.0`` switches."""

    async def _create_stream(self, request: h11.Request) -> None:
        """Every request becomes hypercorn's HTTP stream, a WebSocket handshake too.

        hypercorn's own ``_create_stream`` with its WebSocket branch taken out (it also
        wraps the h11 connection for the switch, which is left out with it).
        """
        if not isinstance(getattr(self.config, _CONFIG_ATTR, None), Refusals):
            await super()._create_stream(request)
            return
        self.stream = HTTPStream(
            self.app,
            self.config,
            self.context,
            self.task_group,
            self.ssl,
            self.client,
            self.server,
            self.stream_send,
            STREAM_ID,
        )
        headers = (
            request.headers.raw_items() if self.config.h11_pass_raw_headers
            else list(request.headers)
        )  # fmt: skip
        await self.stream.handle(
            Request(
                stream_id=STREAM_ID,
                headers=headers,
                http_version=request.http_version.decode(),
                method=request.method.decode("ascii").upper(),
                raw_path=request.target,
                state=self.connection_state,
            )
        )
        self.keep_alive_requests += 1
        await self.context.mark_request()


#: How long bytes after a closing request may wait for the app's answer (a stuck
#: handler is a bug; SIGTERM still ends it).
AFTER_CLOSE_ANSWER_SECONDS = 600.0


def _after_close(error: BaseException | None) -> bool:
    """h11 refused data that came after a request that closes the connection."""
    return "expecting EOF" in str(error)


def install(hc: HyperConfig, audit: AuditSink) -> None:
    """Audit this config's protocol refusals (see the module docstring)."""
    current = getattr(hypercorn_protocol, "H11Protocol", None)
    if current is not H11Protocol and current is not AuditedH11Protocol:
        log.warning("hypercorn's H11Protocol is not the one expected; refusals stay bare")
        return
    setattr(hc, _CONFIG_ATTR, Refusals(audit))
    hypercorn_protocol.H11Protocol = AuditedH11Protocol  # type: ignore[attr-defined]
