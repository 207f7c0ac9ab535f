"""The audit record schema, version 1: field list, enums and validation of a record dict.

Why a hand-written validator instead of pydantic: the verifier runs it on every line of
logs with millions of records (goal >= 100,000 records/s), so it is a flat sequence of
``type(x) is T`` checks that returns the *first* problem as a string and never raises.
Sealing uses the same rules, so the writer can never produce a record the verifier rejects.

Pure: no I/O. See ``docs/audit-schema.md`` for the meaning of each field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final

from assay.core.errors import BadRequest

SCHEMA_VERSION: Final = 1

#: Every field of a sealed record, in documentation order (the line itself is sorted).
FIELDS: Final[tuple[str, ...]] = (
    "v", "seq", "ts", "log_id", "request_id", "principal", "auth_mode", "action", "route",
    "target", "from_state", "to_state", "decision", "reasons", "status", "error_code",
    "params", "purpose", "extra", "prev_hash", "record_hash",
)  # fmt: skip

#: Fields the log fills in when it seals; a caller never supplies them.
SEALED_BY_LOG: Final = frozenset({"v", "seq", "ts", "log_id", "prev_hash", "record_hash"})

#: Fields a caller passes to ``append`` (exactly these, no more, no fewer).
CALLER_FIELDS: Final = frozenset(FIELDS) - SEALED_BY_LOG

_FIELD_SET: Final = frozenset(FIELDS)
_BODY_SET: Final = _FIELD_SET - {"record_hash"}


class AuthMode(StrEnum):
    TOKEN = "token"  # bearer token presented over HTTP
    API_KEY = "api_key"  # relay API key
    NONE = "none"  # unauthenticated request (refused or public route)
    LOCAL = "local"  # offline CLI action by whoever can write the files
    PEER = "peer"  # Unix socket peer credentials (SO_PEERCRED), mapped by config
    OIDC = "oidc"  # relay: a bearer JWT from the operator's OpenID Connect provider


class Decision(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"


AUTH_MODES: Final = frozenset(m.value for m in AuthMode)
DECISIONS: Final = frozenset(d.value for d in Decision)

#: Longest line (without its newline) a writer may produce or a verifier will parse.
MAX_LINE: Final = 1024 * 1024
#: Room for what sealing adds: v, seq, ts, log_id, prev_hash, record_hash and punctuation.
_SEALED_OVERHEAD: Final = 512

#: Bounds keep one record well under the verifier's line limit (``chain.MAX_LINE``).
MAX_SHORT: Final = 512  # ids, actions, states, codes, params
MAX_TEXT: Final = 4096  # route, target, purpose, each reason, each extra value
MAX_ITEMS: Final = 64  # reasons, params, extra entries

_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\Z")
_LOG_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_ACTION = re.compile(r"(?=.{1,512}\Z)[a-z][a-z0-9_]*(\.[a-z0-9_]+)*\Z", re.DOTALL)
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_OP = re.compile(r"[a-z_]{1,16}\Z")


_OPTIONAL: Final[tuple[tuple[str, int], ...]] = (
    ("request_id", MAX_SHORT), ("principal", MAX_SHORT), ("route", MAX_TEXT),
    ("target", MAX_TEXT), ("from_state", MAX_SHORT), ("to_state", MAX_SHORT),
    ("error_code", MAX_SHORT), ("purpose", MAX_TEXT),
)  # fmt: skip

#: Values already seen to match a pattern (timestamps, log ids, actions repeat across
#: records). Only successes are cached, so a cache hit is always a correct answer.
_valid: set[tuple[int, str]] = set()


def _matches(pattern: re.Pattern[str], value: object) -> bool:
    if type(value) is not str:
        return False
    key = (id(pattern), value)
    if key in _valid:
        return True
    if pattern.match(value) is None:
        return False
    if len(_valid) > 4096:
        _valid.clear()
    _valid.add(key)
    return True


def _str_list(value: object, name: str) -> str | None:
    if type(value) is not list:
        return f"{name} must be a list of strings"
    if len(value) > MAX_ITEMS:
        return f"{name} has more than {MAX_ITEMS} items"
    for item in value:
        if type(item) is not str or len(item) > MAX_TEXT:
            return f"{name} items must be strings of at most {MAX_TEXT} characters"
    return None


def _params(value: object) -> str | None:
    problem = _str_list(value, "params")
    if problem is not None:
        return problem
    assert isinstance(value, list)
    for item in value:
        # ``name:op`` only. The op is a short word, so a value smuggled in after the
        # last colon (``q:secret value``) fails the shape check.
        name, sep, op = item.rpartition(":")
        if not sep or not name or len(item) > MAX_SHORT or not _OP.match(op):
            return f"params item {item[:40]!r} is not name:op"
    return None


def _extra(value: object) -> str | None:
    if type(value) is not dict:
        return "extra must be an object"
    if len(value) > MAX_ITEMS:
        return f"extra has more than {MAX_ITEMS} entries"
    for k, v in value.items():
        if type(k) is not str or len(k) > MAX_SHORT:
            return "extra keys must be short strings"
        t = type(v)
        if t is str:
            if len(v) > MAX_TEXT:
                return f"extra.{k} longer than {MAX_TEXT} characters"
        elif t is float:
            if not math.isfinite(v):
                return f"extra.{k} is not a finite number"
        elif v is not None and t is not int and t is not bool:
            return f"extra.{k} must be a JSON scalar (string, number, boolean or null)"
    return None


def _common(rec: Mapping[str, Any]) -> str | None:
    """Checks shared by caller fields and sealed records (every caller field)."""
    mode = rec["auth_mode"]
    if type(mode) is not str or mode not in AUTH_MODES:
        return f"auth_mode {str(mode)[:40]!r} is not one of {sorted(AUTH_MODES)}"
    decision = rec["decision"]
    if type(decision) is not str or decision not in DECISIONS:
        return f"decision {str(decision)[:40]!r} is not one of {sorted(DECISIONS)}"
    if not _matches(_ACTION, rec["action"]):
        return "action must be a dotted lower-case name such as artifact.promote"
    status = rec["status"]
    if status is not None and (type(status) is not int or not 100 <= status <= 599):
        return "status must be an HTTP status (100-599) or null"
    for name, limit in _OPTIONAL:
        value = rec[name]
        if value is not None and (type(value) is not str or len(value) > limit):
            return f"{name} must be a string of at most {limit} characters, or null"
    reasons, params, extra = rec["reasons"], rec["params"], rec["extra"]
    # Empty containers are the common case: skip the per-item walks for them.
    if reasons != [] and (problem := _str_list(reasons, "reasons")):
        return problem
    if params != [] and (problem := _params(params)):
        return problem
    if extra != {} or type(extra) is not dict:
        return _extra(extra)
    return None


def _key_problem(keys: Any, expected: frozenset[str]) -> str:
    present = set(keys)
    missing = sorted(expected - present)
    unknown = sorted(str(u) for u in present - expected)
    parts = []
    if missing:
        parts.append("missing field(s) " + ", ".join(missing))
    if unknown:
        parts.append("unknown field(s) " + ", ".join(u[:40] for u in unknown[:8]))
    return "; ".join(parts)


def record_problem(rec: object) -> str | None:
    """The first reason ``rec`` is not a valid sealed v1 record, or None. Never raises."""
    if type(rec) is not dict:
        return "record is not a JSON object"
    if rec.keys() != _FIELD_SET:
        return _key_problem(rec.keys(), _FIELD_SET)
    if rec["v"] != SCHEMA_VERSION or type(rec["v"]) is not int:
        return f"unsupported schema version {rec['v']!r}"
    seq = rec["seq"]
    if type(seq) is not int or seq < 1:
        return "seq must be a positive integer"
    ts = rec["ts"]
    if type(ts) is not str or _TS.match(ts) is None:  # unique per record: no memo
        return "ts must be RFC 3339 UTC with milliseconds (YYYY-MM-DDTHH:MM:SS.mmmZ)"
    if not _matches(_LOG_ID, rec["log_id"]):
        return "log_id must match [A-Za-z0-9._-]{1,64}"
    for name in ("prev_hash", "record_hash"):
        value = rec[name]
        if type(value) is not str or not _HEX64.match(value):
            return f"{name} must be 64 lower-case hex digits"
    return _common(rec)


def check_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Validate what a caller passes to ``append``; a copy safe to seal, or ``BadRequest``.

    Raised at the edge of ``append`` (before batching) so one bad record fails only its
    own caller, never the other records sharing its fsync.
    """
    if not isinstance(fields, Mapping):
        raise BadRequest("audit fields must be a mapping", code="audit.bad_record")
    if fields.keys() != CALLER_FIELDS:
        problem = _key_problem(fields.keys(), CALLER_FIELDS)
        raise BadRequest(f"audit fields: {problem}", code="audit.bad_record")
    # Copy the containers so a caller mutating its dict later cannot change the record.
    copy = dict(fields)
    for name in ("reasons", "params"):
        if isinstance(copy[name], list | tuple):
            copy[name] = list(copy[name])
    if isinstance(copy["extra"], Mapping):
        copy["extra"] = dict(copy["extra"])
    found = _common(copy) or _encoding_problem(copy)
    if found is not None:
        raise BadRequest(f"audit fields: {found}", code="audit.bad_record", reasons=[found])
    return copy


def _encoding_problem(fields: Mapping[str, Any]) -> str | None:
    """Exact check that sealing cannot fail later (lone surrogates, oversize records)."""
    try:
        size = len(json.dumps(fields, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except (TypeError, ValueError):
        return "fields are not representable as UTF-8 JSON"
    if size + _SEALED_OVERHEAD > MAX_LINE:
        return f"record would exceed {MAX_LINE} bytes"
    return None


def make_fields(
    action: str,
    *,
    auth_mode: str = AuthMode.LOCAL.value,
    principal: str | None = None,
    request_id: str | None = None,
    route: str | None = None,
    target: str | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
    decision: str = Decision.ALLOW.value,
    reasons: list[str] | None = None,
    status: int | None = None,
    error_code: str | None = None,
    params: list[str] | None = None,
    purpose: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Caller fields with defaults for offline actions (``token.create``, ``audit.recover``)."""
    return check_fields(
        {
            "request_id": request_id,
            "principal": principal,
            "auth_mode": auth_mode,
            "action": action,
            "route": route,
            "target": target,
            "from_state": from_state,
            "to_state": to_state,
            "decision": decision,
            "reasons": list(reasons or []),
            "status": status,
            "error_code": error_code,
            "params": list(params or []),
            "purpose": purpose,
            "extra": dict(extra or {}),
        }
    )


def body_problem(rec: Mapping[str, Any]) -> str | None:
    """Like ``record_problem`` for a record *before* sealing (no ``record_hash`` yet)."""
    if rec.keys() != _BODY_SET:
        return _key_problem(rec.keys(), _BODY_SET)
    return record_problem({**rec, "record_hash": "0" * 64})
