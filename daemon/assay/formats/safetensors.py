"""Full validator for safetensors files, stricter than the reference loader.

Why stricter: assay vouches for files that many loaders will open later, so it accepts only
files every careful loader reads the same way. Everything the reference Rust crate
(``safetensors`` 0.8) refuses is refused here too, plus ambiguities it tolerates (duplicate
JSON keys, unknown fields, non-``{`` starts, padding other than spaces). Every byte of the
file is accounted for: 8-byte length, header, then tensors back to back to the last byte.

The header is read whole (bounded before it is read); of the tensor data only BOOL
tensors are read (ST-20), in bounded chunks, since a bool byte other than 0 or 1 is
handed on unchanged by the reference, numpy and torch, and undefined in C++ kernels.
The numbered ST-* checks are listed in docs/formats.md. Pure: no I/O imports.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from assay.formats.errors import FormatRefused
from assay.formats.sniff import ReadAt, read_exact

#: The reference implementation's MAX_HEADER_SIZE.
MAX_HEADER_BYTES = 100_000_000
MAX_TENSORS = 1 << 18
MAX_RANK = 32
MAX_DIM = (1 << 63) - 1  # numpy and torch keep dimensions in a signed 64-bit integer
#: numpy's limit on an array's byte size, zero-sized arrays included (NPY_MAX_INTP).
MAX_ARRAY_BYTES = (1 << 63) - 1
U64_MAX = (1 << 64) - 1
#: Upper bounds on ``:`` (object members: 4 per tensor) and ``,`` (about 4 + rank per
#: tensor) in a header, with room for metadata; they cap what parsing can allocate.
MAX_COLONS = 5 * MAX_TENSORS
MAX_COMMAS = 1 << 22
PREFIX_BYTES = 8
#: How much of a BOOL tensor is read at once (ST-20).
BOOL_CHUNK_BYTES = 1 << 20

#: dtype -> bits per element, as in the reference crate's ``Dtype::bitsize``.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "F64": 64,
    "I64": 64,
    "U64": 64,
}
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_METADATA_KEY = "__metadata__"


def _refuse(what: str, detail: str) -> FormatRefused:
    return FormatRefused(f"safetensors.{what}", detail)


def looks_like_safetensors(head: bytes, size: int) -> bool:
    """Whether to judge the file as safetensors (and so report ``safetensors.*`` reasons).

    A ``{`` right after the 8-byte length; or whitespace there (which the reference would
    skip) when the length also fits the file, so plain text is not mistaken for a header.
    """
    if size <= PREFIX_BYTES or len(head) <= PREFIX_BYTES:
        return False
    first = head[PREFIX_BYTES : PREFIX_BYTES + 1]
    if first == b"{":
        return True
    (n,) = struct.unpack_from("<Q", head)
    return first in (b" ", b"\t", b"\n", b"\r") and n <= size - PREFIX_BYTES


def inspect_safetensors(read_at: ReadAt, size: int) -> dict[str, object]:
    """Validate a whole safetensors file; return its details or raise FormatRefused."""
    # Step 1 (ST-1: length prefix present)
    if size < PREFIX_BYTES:
        raise _refuse("truncated", "shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", read_exact(read_at, 0, PREFIX_BYTES, "safetensors.truncated"))
    # Step 2 (ST-2: header length bounded BEFORE anything is allocated or read)
    if n > MAX_HEADER_BYTES:
        raise _refuse("header_too_large", f"header length {n} exceeds {MAX_HEADER_BYTES}")
    # Step 3 (ST-3: header fits in the file)
    if PREFIX_BYTES + n > size:
        raise _refuse("truncated", f"header length {n} runs past the end of a {size}-byte file")
    raw = read_exact(read_at, PREFIX_BYTES, n, "safetensors.truncated")
    header = _parse_header(raw)
    data_len = size - PREFIX_BYTES - n
    dtypes, spans = _check_tensors(header, data_len)
    _check_bools(read_at, PREFIX_BYTES + n, spans)
    tensor_count = len(spans)
    metadata = header.get(_METADATA_KEY)
    return {
        "tensor_count": tensor_count,
        "header_bytes": n,
        "data_bytes": data_len,
        "dtypes": sorted(dtypes),
        "metadata_count": len(metadata) if isinstance(metadata, dict) else 0,
    }


def _parse_header(raw: bytes) -> dict[str, Any]:
    """ST-4 to ST-8: bytes -> a strictly parsed JSON object."""
    # Step 4 (ST-4: UTF-8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse("bad_utf8", f"header is not UTF-8 at byte {exc.start}") from None
    # Step 5 (ST-5: starts with '{', only space padding after the closing '}')
    body = text.rstrip(" ")
    if not body.startswith("{"):
        raise _refuse("bad_header_start", "header does not start with '{'")
    if not body.endswith("}"):
        raise _refuse("bad_json", "header has bytes other than space padding after '}'")
    # Step 6 (ST-6: tensor count and value count bounded BEFORE parsing, so parsing cannot
    # blow up memory: every tensor entry is an object, every extra value needs a comma)
    if raw.count(b"{") > MAX_TENSORS + 2:
        raise _refuse("too_many_tensors", f"header has more than {MAX_TENSORS} objects")
    if raw.count(b":") > MAX_COLONS or raw.count(b",") > MAX_COMMAS:
        raise _refuse("header_too_complex", "header has too many members or values")
    # Step 7 (ST-7: strict JSON: no duplicate keys, NaN, floats, negatives, huge ints)
    try:
        parsed = json.loads(
            body,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_float,
            parse_int=_u64,
            parse_constant=_no_constant,
        )
    except RecursionError:
        raise _refuse("bad_json", "header nests too deeply") from None
    except ValueError as exc:
        raise _refuse("bad_json", f"header is not valid JSON: {exc}") from None
    # Step 8 (ST-8: the header is an object; ST-5 and ST-7 imply it, this guards refactors)
    if not isinstance(parsed, dict):
        raise _refuse("bad_json", "header JSON is not an object")
    return parsed


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # rare: only then look for the culprit
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _refuse("duplicate_key", f"JSON key {key[:64]!r} appears twice")
            seen.add(key)
    return out


def _check_text(strings: list[str]) -> None:
    """JSON escapes can spell lone surrogates, which are not Unicode text (serde refuses).

    Only strings that survive into a valid header are checked (names, metadata); one
    joined encode keeps it fast. Surrogates never combine in a Python ``str``.
    """
    try:
        "".join(strings).encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse("bad_json", "header string holds a lone surrogate") from None


def _no_float(literal: str) -> Any:
    raise _refuse("bad_json", f"non-integer number {literal[:32]!r} in header")


def _no_constant(literal: str) -> Any:
    raise _refuse("bad_json", f"non-finite constant {literal} in header")


def _u64(literal: str) -> int:
    if literal.startswith("-") or len(literal) > 20 or int(literal) > U64_MAX:
        raise _refuse("bad_json", f"integer {literal[:32]!r} is not an unsigned 64-bit value")
    return int(literal)


Span = tuple[int, int, str, str]  # begin, end, name, dtype


def _check_bools(read_at: ReadAt, data_start: int, spans: list[Span]) -> None:
    """Step 20 (ST-20: every byte of a BOOL tensor is 0 or 1). The reference, numpy and
    torch take the bytes as bool without normalising them, and a bool that is neither
    is undefined behaviour in C and C++ kernels (one tests the byte, another its low
    bit), so the same file means different masks to different loaders. Read in
    ``BOOL_CHUNK_BYTES`` chunks: the spans lie inside the file (ST-15), which ingest
    has already read once to hash."""
    for begin, end, name, dtype in spans:
        if dtype != "BOOL":
            continue
        for at in range(begin, end, BOOL_CHUNK_BYTES):
            length = min(BOOL_CHUNK_BYTES, end - at)
            chunk = read_exact(read_at, data_start + at, length, "safetensors.truncated")
            stray = chunk.translate(None, b"\x00\x01")
            if stray:
                where = at + chunk.index(stray[:1])
                raise _refuse(
                    "bad_bool",
                    f"BOOL tensor {name[:64]!r} holds byte {stray[0]:#04x} at data offset "
                    f"{where}; a bool byte must be 0 or 1",
                )


def _check_tensors(header: dict[str, Any], data_len: int) -> tuple[set[str], list[Span]]:
    """ST-9 to ST-18: metadata, names, every entry, byte-exact coverage of the data region."""
    # Step 9 (ST-9: optional __metadata__ is a str -> str map)
    metadata = header.get(_METADATA_KEY)
    if _METADATA_KEY in header:
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise _refuse("bad_metadata", "__metadata__ must map strings to strings")
        _check_text([*metadata, *metadata.values()])
    _check_text(list(header))
    entries = [(k, v) for k, v in header.items() if k != _METADATA_KEY]
    # Step 18 (ST-18: no NUL in a tensor name or metadata key: C loaders end names at the
    # first NUL, so "a\u0000x" and "a\u0000y" would both be "a", or shadow "__metadata__")
    for name in [*(k for k, _ in entries), *(metadata if isinstance(metadata, dict) else ())]:
        if "\x00" in name:
            raise _refuse("nul_in_name", f"name {name[:64]!r} holds a NUL character")
    spans: list[Span] = []
    dtypes: set[str] = set()
    for name, entry in entries:
        begin, end, dtype = _check_entry(name, entry)
        # Step 15 (ST-15: the tensor lies inside the data region)
        if end > data_len:
            raise _refuse(
                "offsets_out_of_bounds",
                f"tensor {name[:64]!r} ends at {end}, past the {data_len}-byte data region",
            )
        spans.append((begin, end, name, dtype))
        dtypes.add(dtype)
    # Step 16 (ST-16: sorted by offset, tensors are back to back from 0: no overlap, no gap)
    cursor = 0
    for begin, end, name, _dtype in sorted(spans):
        if begin < cursor:
            raise _refuse("offsets_overlap", f"tensor {name[:64]!r} overlaps the previous one")
        if begin > cursor:
            raise _refuse("offsets_gap", f"{begin - cursor} unaccounted bytes before {name[:64]!r}")
        cursor = end
    # Step 17 (ST-17: the last tensor ends exactly at the end of the file)
    if cursor != data_len:
        raise _refuse("trailing_bytes", f"{data_len - cursor} bytes after the last tensor")
    return dtypes, spans


def _check_entry(name: str, entry: Any) -> tuple[int, int, str]:
    """ST-10 to ST-14 and ST-19 for one tensor entry; returns (begin, end, dtype)."""
    label = repr(name[:64])
    # Step 10 (ST-10: exactly dtype, shape, data_offsets)
    if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
        raise _refuse("bad_entry", f"tensor {label} must have exactly {sorted(_ENTRY_KEYS)}")
    # Step 11 (ST-11: known dtype)
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise _refuse("bad_dtype", f"tensor {label} has unknown dtype {str(dtype)[:32]!r}")
    # Step 12 (ST-12: shape is a bounded list of bounded non-negative integers)
    shape = entry["shape"]
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_RANK
        or not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape)
    ):
        raise _refuse("bad_shape", f"tensor {label} shape is not <= {MAX_RANK} dimensions")
    elements = 1
    for dim in shape:
        elements *= dim
        if elements > U64_MAX:  # the reference's checked multiplication, prefix by prefix
            raise _refuse("shape_overflow", f"tensor {label} element count overflows")
    bits = elements * DTYPE_BITS[dtype]
    if bits > U64_MAX:
        raise _refuse("shape_overflow", f"tensor {label} byte size overflows")
    # Step 19 (ST-19: numpy sizes even an empty array: the item size times every nonzero
    # dimension must fit in a signed 64-bit integer, or safetensors.numpy.load crashes)
    nominal = -(-DTYPE_BITS[dtype] // 8)
    for dim in shape:
        nominal *= dim or 1
    if nominal > MAX_ARRAY_BYTES:
        raise _refuse("shape_overflow", f"tensor {label} is too big for numpy, even when empty")
    # Step 13 (ST-13: data_offsets is [begin, end] with begin <= end)
    offsets = entry["data_offsets"]
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise _refuse("bad_offsets", f"tensor {label} data_offsets must be [begin, end]")
    begin, end = offsets
    # Step 14 (ST-14: the byte span is exactly what dtype and shape need)
    if bits % 8:
        raise _refuse("subbyte_misaligned", f"tensor {label} does not end on a byte boundary")
    if end - begin != bits // 8:
        raise _refuse(
            "shape_mismatch",
            f"tensor {label} spans {end - begin} bytes but {dtype}{shape[:8]} needs {bits // 8}",
        )
    return begin, end, dtype
