"""The JSON bodies of promote, revoke and delete: strict JSON first, then each shape.

Why its own parser: these bodies are small and fully hostile, and the framework's JSON
helper decodes with an exception it does not catch (a body that is not UTF-8 became a
500), keeps the last of two duplicate keys and nests as deep as the C stack allows.
Here one parser decides, and every refusal is a ``BadRequest`` with the stable code
``request.bad_json`` (syntax) or ``request.invalid`` (a well-formed body of the wrong
shape). Pure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from assay.core.errors import BadRequest
from assay.registry.validate import check_text

#: The deepest nesting a body may have: ``{"signatures": [{...}]}`` is 3.
MAX_DEPTH = 4
#: The longest number literal: no field takes a number, so this only bounds the work.
MAX_NUMBER_CHARS = 32
MAX_REASON_CHARS = 500
MAX_SIGNATURES = 16
MAX_SIGNATURE_CHARS = 200
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def _bad(detail: str) -> BadRequest:
    return BadRequest(f"request body is not strict JSON: {detail}", code="request.bad_json")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _bad(f"duplicate key {key[:40]!r}")
        obj[key] = value
    return obj


def _number(literal: str) -> float | int:
    if len(literal) > MAX_NUMBER_CHARS:
        raise _bad(f"number longer than {MAX_NUMBER_CHARS} characters")
    value = float(literal) if any(c in literal for c in ".eE") else int(literal)
    if isinstance(value, float) and not math.isfinite(value):
        raise _bad(f"number {literal!r} is not finite")
    return value


def _constant(literal: str) -> None:
    raise _bad(f"{literal} is not JSON")


def _depth(value: Any) -> int:
    """Nesting depth of a parsed value, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_object(raw: bytes, *, allowed: frozenset[str]) -> dict[str, Any]:
    """A body as a JSON object whose keys are all in ``allowed``; no body is ``{}``."""
    # Step BODY-1 (empty): no body at all means no fields.
    if not raw:
        return {}
    # Step BODY-2 (UTF-8): strict, no BOM, no UTF-16/32 guessing (RFC 8259 section 8.1).
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad(f"not UTF-8 at byte {exc.start}") from None
    # Step BODY-3 (syntax): duplicate keys, NaN/Infinity and long numbers are refused by
    # the parser itself; nesting past the interpreter's limit is refused, not a crash.
    try:
        value = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_int=_number,
            parse_float=_number,
            parse_constant=_constant,
        )
    except BadRequest:
        raise
    except RecursionError:
        raise _bad("nested too deeply") from None
    except ValueError as exc:
        raise _bad(str(exc)[:200]) from None
    # Step BODY-4 (depth): within the bound every shape here needs.
    if _depth(value) > MAX_DEPTH:
        raise _bad(f"nested deeper than {MAX_DEPTH}")
    # Step BODY-5 (top level): an object with known keys only.
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        names = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise BadRequest(f"unknown body fields: {names} (known: {', '.join(sorted(allowed))})")
    return value


def reason(body: Mapping[str, Any], *, required: bool) -> str:
    """``reason``: one line of text, at most ``MAX_REASON_CHARS``; required for revoke."""
    value = body.get("reason", "")
    if not isinstance(value, str):
        raise BadRequest(f"reason must be a string of at most {MAX_REASON_CHARS} characters")
    check_text(value, what="reason", max_chars=MAX_REASON_CHARS)
    if required and not value.strip():
        raise BadRequest("a reason is required", code="request.reason_required")
    return value


def signatures(body: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """``signatures``: at most 16 ``{key_id, signature}``, ids and base64 by pattern."""
    raw = body.get("signatures", [])
    if not isinstance(raw, list) or len(raw) > MAX_SIGNATURES:
        raise BadRequest(
            f"signatures must be a list of at most {MAX_SIGNATURES} {{key_id, signature}}"
        )
    out: dict[str, str] = {}
    for item in raw:
        if not (
            isinstance(item, dict)
            and set(item) == {"key_id", "signature"}
            and isinstance(item["key_id"], str)
            and isinstance(item["signature"], str)
        ):
            raise BadRequest("each signature is exactly {key_id: string, signature: string}")
        key_id, signature = item["key_id"], item["signature"]
        if not _KEY_ID.fullmatch(key_id):
            raise BadRequest("a signature's key_id must be 1-64 of [A-Za-z0-9._-]")
        if len(signature) > MAX_SIGNATURE_CHARS or not _BASE64.fullmatch(signature):
            raise BadRequest(
                f"a signature must be base64, at most {MAX_SIGNATURE_CHARS} characters"
            )
        if key_id in out:
            raise BadRequest(f"key_id {key_id!r} given twice")
        out[key_id] = signature
    return tuple(out.items())
