"""Build caller fields that the schema always accepts, from any input: bound, never refuse.

Why: "every request leaves a record" must hold for the requests an attacker shapes. The
edge copies attacker-chosen text into a record (the path of an unmatched route, query
parameter names, the method, ``X-Purpose``), and ``schema.check_fields`` is strict: an
empty parameter name or a 5,000-character path made it refuse the record, and the
request answered 500 with none. So the edge builds every record through ``bound``, which
shortens what is too long, replaces what has the wrong shape and caps what is too many,
and marks each change in the record itself, so nobody mistakes a cut value for the
whole. The validator stays strict (for the verifier and for programming errors); a
marked record is an ordinary valid v1 record to it.

The marks (documented in ``docs/audit-schema.md``, "Bounded records"):

* a shortened string ends with ``…`` (U+2026) and keeps its limit's length;
* a ``params`` item that is not ``name:op`` becomes ``param:malformed``;
* ``extra["audit.truncated"]``: the names of the fields changed, sorted, comma-joined;
* ``extra["audit.dropped.<field>"]``: how many items of a list (``reasons``, ``params``)
  or entries of ``extra`` were left out past the cap.

The ``audit.`` prefix in ``extra`` belongs to this module: a caller's own ``audit.*``
entry is dropped (and so marked), so a mark can never be forged or hidden by a caller.

Pure: no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from assay.core.audit.schema import (
    _ACTION,
    _OP,
    _SEALED_OVERHEAD,
    AUTH_MODES,
    CALLER_FIELDS,
    DECISIONS,
    MAX_ITEMS,
    MAX_LINE,
    MAX_SHORT,
    MAX_TEXT,
)

MARK: Final = "…"
TRUNCATED: Final = "audit.truncated"
DROPPED: Final = "audit.dropped."
RESERVED_PREFIX: Final = "audit."
MALFORMED_PARAM: Final = "param:malformed"

_SHORT_FIELDS: Final = ("request_id", "principal", "from_state", "to_state", "error_code")
_TEXT_FIELDS: Final = ("route", "target", "purpose")
#: Bounds an ``int`` in ``extra`` to what every JSON reader takes (and ``str()`` can print).
_MAX_INT_BITS: Final = 63
#: Worst case bytes per character in canonical JSON: ``\u0000`` escapes take six.
_BYTES_PER_CHAR: Final = 6


class _Bounder:
    """One record's bounding: the marks it made, then the record."""

    def __init__(self) -> None:
        self.changed: set[str] = set()
        self.dropped: dict[str, int] = {}

    def text(self, value: object, limit: int, field: str) -> str:
        if type(value) is not str:
            self.changed.add(field)
            value = repr(value) if value is not None else ""
        assert isinstance(value, str)
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates cannot be written as UTF-8
                self.changed.add(field)
                value = value.encode("utf-8", "replace").decode("utf-8")
        if len(value) > limit:
            self.changed.add(field)
            value = value[: limit - len(MARK)] + MARK
        return value

    def optional(self, value: object, limit: int, field: str) -> str | None:
        return None if value is None else self.text(value, limit, field)

    def items(self, value: object, field: str) -> list[object]:
        if isinstance(value, list | tuple):
            return list(value)
        self.changed.add(field)
        return [] if value is None else [value]

    def cap(self, values: list[Any], field: str, room: int = MAX_ITEMS) -> list[Any]:
        if len(values) > room:
            self.changed.add(field)
            self.dropped[field] = self.dropped.get(field, 0) + len(values) - room
            return values[:room]
        return values

    def param(self, value: object) -> str:
        if type(value) is not str:
            self.changed.add("params")
            return MALFORMED_PARAM
        # The schema's own reading of ``name:op``: the op follows the last colon.
        name, sep, op = value.rpartition(":")
        if not sep or not name or not _OP.match(op):
            self.changed.add("params")
            return MALFORMED_PARAM
        return f"{self.text(name, MAX_SHORT - len(op) - 1, 'params')}:{op}"

    def scalar(self, value: object, key: str) -> object:
        t = type(value)
        if value is None or t is bool:
            return value
        if t is int:
            assert isinstance(value, int)
            if value.bit_length() <= _MAX_INT_BITS:
                return value
            self.changed.add("extra")
            return f"<integer of {value.bit_length()} bits>"
        if t is float:
            assert isinstance(value, float)
            if math.isfinite(value):
                return value
            self.changed.add("extra")
            return str(value)
        return self.text(value, MAX_TEXT, "extra")

    def entries(self, value: object) -> dict[str, object]:
        if not isinstance(value, Mapping):
            self.changed.add("extra")
            return {}
        out: dict[str, object] = {}
        for k, v in value.items():
            key = self.text(k, MAX_SHORT, "extra")
            if key.startswith(RESERVED_PREFIX) or key in out:
                self.changed.add("extra")
                continue
            out[key] = self.scalar(v, key)
        return out


def bound(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Caller fields for ``append`` that ``check_fields`` accepts, whatever ``fields`` holds.

    Missing fields are null or empty; unknown ones are ignored (and marked); every value
    is bounded as the module docstring says. Valid input comes back equal, unmarked.
    """
    b = _Bounder()
    if set(fields) - CALLER_FIELDS:
        b.changed.add("fields")
    out: dict[str, Any] = {}
    for name in _SHORT_FIELDS:
        out[name] = b.optional(fields.get(name), MAX_SHORT, name)
    for name in _TEXT_FIELDS:
        out[name] = b.optional(fields.get(name), MAX_TEXT, name)
    out["auth_mode"] = _choice(b, fields.get("auth_mode"), AUTH_MODES, "none", "auth_mode")
    out["decision"] = _choice(b, fields.get("decision"), DECISIONS, "error", "decision")
    action = fields.get("action")
    if type(action) is not str or _ACTION.match(action) is None:
        b.changed.add("action")
        action = "http.request"
    out["action"] = action
    status = fields.get("status")
    if status is not None and (type(status) is not int or not 100 <= status <= 599):
        b.changed.add("status")
        status = None
    out["status"] = status
    reasons = [b.text(r, MAX_TEXT, "reasons") for r in b.items(fields.get("reasons"), "reasons")]
    out["reasons"] = b.cap(reasons, "reasons")
    params = b.items(fields.get("params"), "params")
    out["params"] = b.cap(list(dict.fromkeys(b.param(p) for p in params)), "params")
    out["extra"] = b.entries(fields.get("extra", {}))
    _fit(b, out)
    return out


def _choice(b: _Bounder, value: object, allowed: Iterable[str], default: str, field: str) -> str:
    if type(value) is str and value in allowed:
        return value
    b.changed.add(field)
    return default


def _marks(b: _Bounder) -> dict[str, object]:
    marks: dict[str, object] = {DROPPED + f: n for f, n in sorted(b.dropped.items())}
    if b.changed:
        marks[TRUNCATED] = ",".join(sorted(b.changed))
    return marks


def _fit(b: _Bounder, out: dict[str, Any]) -> None:
    """Cap ``extra`` with room for the marks, then shrink the long texts until the whole
    record fits a line. Marks are added last, so they always describe the final record."""
    extra: dict[str, object] = out["extra"]
    if len(extra) + len(_marks(b)) > MAX_ITEMS:
        # Room for every mark once this cap adds its own: truncated and dropped.extra.
        room = MAX_ITEMS - len(b.dropped) - 2
        kept = list(extra.items())
        extra = dict(b.cap(kept, "extra", room))
    cap = MAX_TEXT
    while _size_bound(out, extra) + _SEALED_OVERHEAD > MAX_LINE and cap > 16:
        if _exact_size(out, extra, _marks(b)) + _SEALED_OVERHEAD <= MAX_LINE:
            break
        cap //= 4  # reasons and extra texts are the only fields big enough to matter
        out["reasons"] = [b.text(r, cap, "reasons") for r in out["reasons"]]
        extra = {k: b.text(v, cap, "extra") if type(v) is str else v for k, v in extra.items()}
    extra.update(_marks(b))
    out["extra"] = extra


def _size_bound(out: Mapping[str, Any], extra: Mapping[str, object]) -> int:
    """An upper bound on the encoded size, cheap enough for every request."""
    chars = sum(len(v) for v in out.values() if type(v) is str)
    chars += sum(len(s) for s in out["reasons"]) + sum(len(s) for s in out["params"])
    chars += sum(len(k) + (len(v) if type(v) is str else 24) for k, v in extra.items())
    items = len(out["reasons"]) + len(out["params"]) + len(extra)
    return _BYTES_PER_CHAR * chars + 8 * items + 1024


def _exact_size(
    out: Mapping[str, Any], extra: Mapping[str, object], marks: Mapping[str, object]
) -> int:
    body = {**out, "extra": {**extra, **marks}}
    return len(json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8"))
