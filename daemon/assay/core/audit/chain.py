"""Canonical JSON, the HMAC chain, the on-disk line layout and keyed redaction.

``record_hash = HMAC-SHA256(key, b"assay-audit-v1\\x00" + canonical(record - record_hash))``.
The hashed body contains ``seq`` and ``prev_hash``, so each hash commits to the whole
history before it; the domain prefix keeps these MACs from ever colliding with another use
of the same key (redaction below uses its own prefix).

Line layout: the hashed bytes themselves with ``record_hash`` appended as the *last*
member, then ``\\n``::

    {"action":"...",...,"v":1,"record_hash":"<64 hex>"}

Why not re-sort the line: a verifier can then authenticate the exact bytes it read by
cutting off a fixed-size suffix, with no re-serialisation (the slowest step by far), and a
line that is not byte-for-byte what the writer produced cannot authenticate.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from assay.core.audit.schema import MAX_LINE as MAX_LINE
from assay.core.audit.schema import SCHEMA_VERSION, body_problem
from assay.core.errors import BadRequest

DOMAIN: Final = b"assay-audit-v1\x00"
REDACT_DOMAIN: Final = b"assay-redact-v1\x00"
REDACT_PREFIX: Final = "hmac-sha256:"
#: ``prev_hash`` of the first record (seq 1).
GENESIS: Final = "0" * 64

HASH_MEMBER: Final = b',"record_hash":"'
#: ``,"record_hash":"`` + 64 hex + ``"}``: the fixed tail every line ends with.
SUFFIX_LEN: Final = len(HASH_MEMBER) + 64 + 2

Record = dict[str, Any]


def canonical(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (not ASCII-escaped), NaN and Infinity refused."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def format_ts(when: datetime) -> str:
    """RFC 3339 UTC with milliseconds, the only ``ts`` form the schema accepts."""
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


class Chain:
    """The chain MAC with its key schedule done once (HMAC state copied per record).

    Why: keying HMAC-SHA256 costs two compression-function calls, a quarter of the work
    for a typical 600-byte record; the verifier's throughput goal needs it amortised.
    """

    __slots__ = ("_base",)

    def __init__(self, key: bytes) -> None:
        self._base = hmac.new(key, DOMAIN, hashlib.sha256)

    def mac(self, body: bytes) -> str:
        h = self._base.copy()
        h.update(body)
        return h.hexdigest()


def record_hash(key: bytes, body: bytes) -> str:
    """The chain MAC of a record body (canonical bytes of the record minus its hash)."""
    return Chain(key).mac(body)


def split_line(line: bytes) -> tuple[bytes, bytes] | None:
    """``(hashed body, record_hash hex)`` when ``line`` has the writer's layout, else None.

    ``line`` excludes the newline. Only the layout is checked here, not the MAC.
    """
    if len(line) <= SUFFIX_LEN or line[:1] != b"{" or line[-2:] != b'"}':
        return None
    cut = len(line) - SUFFIX_LEN
    if line[cut : cut + len(HASH_MEMBER)] != HASH_MEMBER:
        return None
    return line[:cut] + b"}", line[cut + len(HASH_MEMBER) : -2]


def seal_line(
    chain: Chain | bytes, prev_hash: str, seq: int, ts: str, fields: Mapping[str, Any]
) -> tuple[Record, bytes]:
    """Seal ``fields`` (caller fields plus ``log_id``) as record ``seq``; record and line.

    Raises ``BadRequest`` if the result would not pass the verifier's own schema check or
    would exceed ``MAX_LINE``: the writer must never produce a line the verifier rejects.
    """
    mac = chain if isinstance(chain, Chain) else Chain(chain)
    body: Record = dict(fields)
    body.update(v=SCHEMA_VERSION, seq=seq, ts=ts, prev_hash=prev_hash)
    problem = body_problem(body)
    if problem is not None:
        raise BadRequest(f"audit record: {problem}", code="audit.bad_record", reasons=[problem])
    try:
        body_bytes = canonical(body)
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError (lone surrogate) included
        raise BadRequest(
            f"audit record is not canonical JSON: {exc}", code="audit.bad_record"
        ) from None
    digest = mac.mac(body_bytes)
    line = b"".join((body_bytes[:-1], HASH_MEMBER, digest.encode("ascii"), b'"}\n'))
    if len(line) - 1 > MAX_LINE:
        raise BadRequest(f"audit record longer than {MAX_LINE} bytes", code="audit.bad_record")
    body["record_hash"] = digest
    return body, line


def seal(key: bytes, prev_hash: str, seq: int, ts: str, fields: Mapping[str, Any]) -> Record:
    """The sealed record dict (see ``seal_line`` for the bytes written to the log)."""
    return seal_line(key, prev_hash, seq, ts, fields)[0]


def encode_line(record: Mapping[str, Any]) -> bytes:
    """The log line (with newline) for an already sealed record."""
    body = {k: v for k, v in record.items() if k != "record_hash"}
    digest = str(record["record_hash"]).encode("ascii")
    return b"".join((canonical(body)[:-1], HASH_MEMBER, digest, b'"}\n'))


def redact(key: bytes, value: str | bytes) -> str:
    """A keyed hash (``hmac-sha256:<hex>``) to log instead of a sensitive value.

    Equal values give equal tags, so records stay correlatable, but without the key a
    low-entropy value (an e-mail, a row id) cannot be confirmed by guessing. The domain
    prefix differs from the chain's, so a tag is never a valid ``record_hash``.
    """
    data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    return REDACT_PREFIX + hmac.new(key, REDACT_DOMAIN + data, hashlib.sha256).hexdigest()
