"""Request values to a bounded, typed query plan, or a refusal with a stable code.

Why a separate pure step: every untrusted value is bounded before anything is allocated
for it (the number of parameters, each value's length, an ``in`` list's length counted
before it is split), and the plan that comes out names only declared fields and allowed
operators, so the executor never sees a caller's string where a column name goes.

Refusals never quote a caller's value in ``reasons`` (which reach the audit log).
Pure: no I/O.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from assay.core.caller_text import printable
from assay.core.errors import BadRequest

RESERVED = frozenset({"limit", "cursor", "fields"})
_NAME = re.compile(r"([a-z][a-z0-9_]{0,63})(?:\.(eq|in|gte|lte|between))?")
_INT = re.compile(r"[+-]?[0-9]{1,19}")
_NUM = re.compile(r"[+-]?(?:[0-9]{1,40}(?:\.[0-9]{0,40})?|\.[0-9]{1,40})(?:[eE][+-]?[0-9]{1,3})?")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_LIMIT = re.compile(r"[0-9]{1,7}")
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class FieldSpec:
    """A public field as the planner sees it: its column, type and audit sensitivity."""

    name: str
    column: str
    type: str
    sensitive: bool = False


@dataclass(frozen=True)
class Bounds:
    max_filters: int = 20
    max_in_values: int = 100
    max_value_chars: int = 256


@dataclass(frozen=True)
class Condition:
    field: str
    column: str
    type: str
    op: str
    values: tuple[Any, ...]
    sensitive: bool


@dataclass(frozen=True)
class Plan:
    """What to read: conditions over declared fields, a projection, a page."""

    conditions: tuple[Condition, ...]
    fields: tuple[FieldSpec, ...]
    limit: int
    cursor: str | None

    def normalized(self) -> dict[str, Any]:
        """The canonical query: what cursors bind to and what signed answers claim."""
        return {
            "filters": [[c.field, c.op, [canonical(v) for v in c.values]] for c in self.conditions],
            "fields": [f.name for f in self.fields],
            "limit": self.limit,
        }


def canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _refuse(code: str, detail: str, reason: str | None = None) -> BadRequest:
    return BadRequest(detail, code=code, reasons=[reason or detail])


def parse_value(raw: str, ftype: str, bounds: Bounds) -> Any:
    """One caller string as the field's type; anything else is ``filter_value_invalid``."""
    if len(raw) > bounds.max_value_chars:
        raise _refuse("entity.filter_value_invalid", "a filter value is too long")
    bad = _refuse("entity.filter_value_invalid", f"a filter value is not a valid {ftype}")
    if ftype == "string":
        if not raw or not printable(raw):
            raise bad
        return raw
    if ftype == "integer":
        if not _INT.fullmatch(raw) or not INT64[0] <= int(raw) <= INT64[1]:
            raise bad
        return int(raw)
    if ftype == "number":
        if not _NUM.fullmatch(raw) or not math.isfinite(float(raw)):
            raise bad
        return float(raw)
    if ftype == "boolean":
        if raw not in ("true", "false"):
            raise bad
        return raw == "true"
    if ftype == "date":
        try:
            if not _DATE.fullmatch(raw):
                raise ValueError(raw)
            return date.fromisoformat(raw)
        except ValueError:
            raise bad from None
    if ftype == "timestamp":
        try:
            ts = datetime.fromisoformat(raw) if len(raw) <= 40 else None
        except ValueError:
            ts = None
        if ts is None or ts.tzinfo is None:
            raise bad
        try:
            # At the ends of the range an offset carries the instant out of it
            # (0001-01-01T00:00+01:00 is in year 0 in UTC): a bad value, not a 500.
            return ts.astimezone(UTC)
        except (OverflowError, ValueError):
            raise bad from None
    raise bad


def _values(raw: str, op: str, ftype: str, bounds: Bounds) -> tuple[Any, ...]:
    if op in ("in", "between"):
        # Count separators before splitting, so a huge list is refused unallocated.
        n = raw.count(",") + 1
        if op == "between" and n != 2:
            raise _refuse("entity.filter_value_invalid", "between takes exactly two values: lo,hi")
        if n > bounds.max_in_values:
            raise _refuse(
                "entity.filter_too_many_values",
                f"an in-list has {n} values; at most {bounds.max_in_values} are allowed",
            )
        if len(raw) > n * (bounds.max_value_chars + 1):
            raise _refuse("entity.filter_value_invalid", "a filter value is too long")
        values = tuple(parse_value(v, ftype, bounds) for v in raw.split(","))
        if op == "between" and values[0] > values[1]:
            raise _refuse("entity.filter_value_invalid", "between needs lo <= hi")
        if op == "in":
            values = tuple(dict.fromkeys(values))  # order-preserving de-duplication
        return values
    return (parse_value(raw, ftype, bounds),)


def parse_conditions(
    args: Sequence[tuple[str, str]],
    *,
    fields: dict[str, FieldSpec],
    allowed: dict[str, frozenset[str]],
    required: Sequence[str],
    bounds: Bounds,
    prefix: str = "entity",
) -> tuple[Condition, ...]:
    """Turn ``name[.op]=value`` pairs (reserved names excluded) into conditions."""
    filters = [(k, v) for k, v in args if k not in RESERVED]
    if len(filters) > bounds.max_filters:
        raise _refuse(
            f"{prefix}.too_many_filters",
            f"{len(filters)} filters given; at most {bounds.max_filters} are allowed",
        )
    seen: set[str] = set()
    out: list[Condition] = []
    for name, raw in filters:
        match = _NAME.fullmatch(name)
        if match is None:
            raise _refuse(f"{prefix}.filter_not_allowed", "a parameter name is not a filter")
        field, op = match.group(1), match.group(2) or "eq"
        ops = allowed.get(field)
        if ops is None:
            # Unknown and undeclared fields get the same answer: no oracle for columns.
            raise _refuse(
                f"{prefix}.filter_not_allowed",
                f"field {field!r} cannot be filtered",
                f"field {field} not allowed",
            )
        if op not in ops:
            raise _refuse(
                f"{prefix}.filter_not_allowed",
                f"field {field!r} does not allow op {op!r} (allowed: {', '.join(sorted(ops))})",
                f"op {field}.{op} not allowed",
            )
        if field in seen:
            raise _refuse(
                f"{prefix}.filter_duplicate",
                f"field {field!r} is filtered more than once",
                f"duplicate filter {field}",
            )
        seen.add(field)
        spec = fields[field]
        out.append(
            Condition(
                field,
                spec.column,
                spec.type,
                op,
                _values(raw, op, spec.type, bounds),
                spec.sensitive,
            )
        )
    missing = [r for r in required if r not in seen]
    if missing:
        raise _refuse(
            f"{prefix}.filter_required",
            f"required filters missing: {', '.join(missing)}",
        )
    return tuple(sorted(out, key=lambda c: (c.field, c.op)))


def _single(args: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in args if k == name]
    if len(values) > 1:
        raise _refuse("request.parameter_duplicate", f"{name} is given more than once")
    return values[0] if values else None


def parse_limit(raw: str | None, default: int, maximum: int) -> int:
    if raw is None:
        return default
    if not _LIMIT.fullmatch(raw) or int(raw) < 1:
        raise _refuse("entity.limit_invalid", "limit must be a positive integer")
    if int(raw) > maximum:
        raise _refuse("entity.limit_exceeded", f"limit {int(raw)} exceeds max_limit {maximum}")
    return int(raw)


def parse_projection(raw: str | None, fields: Sequence[FieldSpec]) -> tuple[FieldSpec, ...]:
    """``fields=a,b`` narrows the projection; it can never widen it past the entity."""
    if raw is None:
        return tuple(fields)
    by_name = {f.name: f for f in fields}
    if raw.count(",") >= len(fields):
        raise _refuse("entity.field_not_allowed", "fields lists more names than the entity has")
    wanted = list(dict.fromkeys(raw.split(",")))
    if any(name not in by_name for name in wanted):
        raise _refuse("entity.field_not_allowed", "fields names a field the entity does not expose")
    return tuple(by_name[name] for name in wanted)


def plan_records(
    args: Sequence[tuple[str, str]],
    *,
    fields: Sequence[FieldSpec],
    allowed: dict[str, frozenset[str]],
    required: Sequence[str],
    default_limit: int,
    max_limit: int,
    bounds: Bounds,
    max_cursor_chars: int,
) -> Plan:
    """The whole record-read plan; the cursor is checked later against the snapshot."""
    by_name = {f.name: f for f in fields}
    conditions = parse_conditions(
        args, fields=by_name, allowed=allowed, required=required, bounds=bounds
    )
    limit = parse_limit(_single(args, "limit"), default_limit, max_limit)
    projection = parse_projection(_single(args, "fields"), fields)
    cursor = _single(args, "cursor")
    if cursor is not None and len(cursor) > max_cursor_chars:
        raise _refuse("entity.cursor_invalid", "cursor is not valid for this query")
    return Plan(conditions, projection, limit, cursor)


#: Bounds from the audit record schema: extra values are scalars of at most 4096 chars.
AUDIT_TEXT = 4000
AUDIT_ENTRIES = 40


def audit_extra(conditions: Sequence[Condition], redact: Callable[[str], str]) -> dict[str, str]:
    """Flat audit ``extra`` entries for the filters: names and ops, and values.

    Sensitive values appear only as keyed hashes (``redact``), one per value so an auditor
    holding the key can test "was this id asked for?". Non-sensitive values are kept as
    given, truncated, since an auditor needs to see what was asked when it is not personal.
    Long hash lists are split over numbered keys; the entry count stays bounded.
    """
    out: dict[str, str] = {"filters": ",".join(f"{c.field}:{c.op}" for c in conditions)}
    for c in conditions:
        values = [str(canonical(v)) for v in c.values]
        if len(out) >= AUDIT_ENTRIES:
            out["truncated"] = "true"
            break
        if not c.sensitive:
            out[f"value.{c.field}.{c.op}"] = ",".join(values)[:AUDIT_TEXT]
            continue
        chunk: list[str] = []
        part = 1
        for tag in (redact(v) for v in values):
            if sum(len(t) + 1 for t in chunk) + len(tag) > AUDIT_TEXT:
                out[f"hash.{c.field}.{c.op}.{part}"] = ",".join(chunk)
                chunk, part = [], part + 1
                if len(out) >= AUDIT_ENTRIES:
                    break
            chunk.append(tag)
        out[f"hash.{c.field}.{c.op}.{part}"] = ",".join(chunk)
    return out


def param_names(keys: Sequence[str], limit: int = 64) -> list[str]:
    """``name:op`` pairs for the audit's ``params``: names only, never values."""
    out: list[str] = []
    for key in keys[:limit]:
        if key in RESERVED:
            out.append(f"{key}:page")
            continue
        match = _NAME.fullmatch(key)
        out.append(f"{match.group(1)}:{match.group(2) or 'eq'}" if match else "param:malformed")
    return sorted(set(out))
