"""Full validator for GGUF files (versions 2 and 3, little-endian).

Why so strict: GGUF headers are a chain of attacker-chosen lengths and counts that C
loaders trust. Every count and length is bounded before it drives a loop or a read, the
header is read in bounded chunks under a total budget, and every byte after the header is
accounted for: tensors back to back at their aligned offsets, with only alignment padding
between them and at the end. Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md

The numbered GG-* checks are listed in docs/formats.md. Pure: no I/O imports.
"""

from __future__ import annotations

import struct

from assay.formats.errors import FormatRefused
from assay.formats.sniff import ReadAt, read_exact

GGUF_MAGIC = b"GGUF"
#: Magic numbers of GGUF's predecessors (ggml, ggmf, ggjt, ggla) and byte-order mistakes.
LOOKALIKE_MAGICS = frozenset({b"lmgg", b"fmgg", b"tjgg", b"algg", b"FUGG", b"gguf"})
SUPPORTED_VERSIONS = frozenset({2, 3})
MAX_TENSORS = 1 << 20
MAX_KV = 1 << 16
MAX_STRING_BYTES = 1 << 20
MAX_KEY_BYTES = 0xFFFF  # the spec's limit on key length
MAX_TENSOR_NAME_BYTES = 63  # ggml's GGML_MAX_NAME (64) includes the terminating NUL
MAX_ARRAY_LEN = 1 << 24
MAX_ARRAY_DEPTH = 4
#: Arrays inside arrays, in the whole file. llama.cpp refuses nested arrays outright; this
#: keeps the per-element walk over them cheap.
MAX_NESTED_ARRAYS = 1 << 16
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ALIGNMENT = 1 << 16
DEFAULT_ALIGNMENT = 32
#: Total bytes of magic, counts, key/values and tensor infos the reader will walk.
MAX_HEADER_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 1 << 20
I64_MAX = (1 << 63) - 1
_U64 = struct.Struct("<Q")

# Value types (gguf.md "gguf_metadata_value_type").
_UINT32, _BOOL, _STRING, _ARRAY = 4, 7, 8, 9
# u8, i8, u16, i16, u32, i32, f32, bool, (string, array), u64, i64, f64
_SCALAR_BYTES: dict[int, int] = dict(
    zip((0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12), (1, 1, 2, 2, 4, 4, 4, 1, 8, 8, 8), strict=True)
)
_MIN_VALUE_BYTES: dict[int, int] = {**_SCALAR_BYTES, _STRING: 8, _ARRAY: 12}

#: ggml type id -> (name, elements per block, bytes per block). The table of
#: ``gguf.constants.GGML_QUANT_SIZES`` (gguf-py 0.19); ids of removed types are absent.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
}


def _refuse(what: str, detail: str) -> FormatRefused:
    return FormatRefused(f"gguf.{what}", detail)


def looks_like_gguf(head: bytes) -> bool:
    """Whether to judge the file as GGUF: its magic, or a predecessor's / mangled one."""
    return head[:4] == GGUF_MAGIC or head[:4] in LOOKALIKE_MAGICS


class _Cursor:
    """Sequential reader over ``read_at`` in bounded chunks, under a total header budget."""

    def __init__(self, read_at: ReadAt, size: int) -> None:
        self._read_at = read_at
        self._size = size
        self._limit = min(size, MAX_HEADER_BYTES)
        self._buf = b""
        self._buf_start = 0
        self.pos = 0
        self.nested_arrays = 0

    def need(self, n: int) -> None:
        """Refuse unless ``n`` more header bytes exist in the file and in the budget."""
        if self.pos + n > self._size:
            raise _refuse("truncated", f"header needs {n} bytes at {self.pos}, past the end")
        if self.pos + n > self._limit:
            raise _refuse("header_too_large", f"header exceeds {MAX_HEADER_BYTES} bytes")

    def take(self, n: int) -> bytes:
        self.need(n)
        offset = self.pos - self._buf_start
        if offset < 0 or offset + n > len(self._buf):
            want = min(max(n, CHUNK_BYTES), self._limit - self.pos)
            self._buf = read_exact(self._read_at, self.pos, want, "gguf.truncated")
            self._buf_start, offset = self.pos, 0
        self.pos += n
        return self._buf[offset : offset + n]

    def skip(self, n: int) -> None:
        self.need(n)
        self.pos += n

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack("<Q", self.take(8))[0]
        return value

    def string(self, limit: int, what: str) -> str:
        """A u64-length-prefixed UTF-8 string, its length bounded before it is read."""
        length = self.u64()
        if length > limit:
            raise _refuse("string_too_long", f"{what} of {length} bytes exceeds {limit}")
        raw = self.take(length)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _refuse("bad_utf8", f"{what} at {self.pos - length} is not UTF-8") from None

    def skip_strings(self, count: int, limit: int) -> None:
        """``count`` strings in a row (a tokenizer vocabulary): the hot loop, kept tight.

        Strings wholly inside the buffer are checked in place; anything else (a refill, an
        over-long or non-UTF-8 string) goes through ``string``, which reads or refuses it.
        """
        unpack = _U64.unpack_from
        done = 0
        while done < count:
            self.string(limit, "string value")
            done += 1
            buf, p = self._buf, self.pos - self._buf_start
            end = len(buf)
            while done < count and p + 8 <= end:
                (length,) = unpack(buf, p)
                if length > limit or p + 8 + length > end:
                    break
                try:
                    buf[p + 8 : p + 8 + length].decode("utf-8")
                except UnicodeDecodeError:
                    break
                p += 8 + length
                done += 1
            self.pos = self._buf_start + p


def inspect_gguf(read_at: ReadAt, size: int) -> dict[str, object]:
    """Validate a whole GGUF file; return its details or raise FormatRefused."""
    cur = _Cursor(read_at, size)
    # Step 1 (GG-1: magic)
    magic = cur.take(4)
    if magic != GGUF_MAGIC:
        raise _refuse("bad_magic", f"magic {magic!r} is not GGUF")
    # Step 2 (GG-2: version 2 or 3, little-endian; big-endian files read as huge versions)
    version = cur.u32()
    if version not in SUPPORTED_VERSIONS:
        raise _refuse("bad_version", f"version {version} is not 2 or 3 (little-endian)")
    # Step 3 (GG-3: counts bounded BEFORE they drive any loop)
    tensor_count, kv_count = cur.u64(), cur.u64()
    if tensor_count > MAX_TENSORS or kv_count > MAX_KV:
        raise _refuse(
            "count_too_large",
            f"{tensor_count} tensors / {kv_count} key-values exceed {MAX_TENSORS} / {MAX_KV}",
        )
    alignment, architecture = _read_kvs(cur, kv_count)
    tensors, types = _read_tensor_infos(cur, tensor_count, alignment)
    header_end = cur.pos
    data_start = _align(header_end, alignment)
    padding = _check_layout(tensors, header_end, data_start, alignment, size)
    # Step 18 (GG-18: alignment padding is zeros)
    _check_padding(read_at, padding)
    details: dict[str, object] = {
        "version": version,
        "tensor_count": tensor_count,
        "metadata_count": kv_count,
        "alignment": alignment,
        "header_bytes": header_end,
        "data_offset": data_start,
        "tensor_types": sorted(types),
    }
    if architecture is not None:
        details["architecture"] = architecture
    return details


def _read_kvs(cur: _Cursor, kv_count: int) -> tuple[int, str | None]:
    """GG-4 to GG-9: every key/value; returns (alignment, general.architecture)."""
    keys: set[str] = set()
    alignment = DEFAULT_ALIGNMENT
    architecture: str | None = None
    for _ in range(kv_count):
        # Step 4 (GG-4: keys are bounded, non-empty UTF-8 strings without NUL, each key
        # once; ggml looks keys up with strcmp, so "general.alignment\0x" would be found
        # as "general.alignment" by C loaders and not by Python ones; the spec's keys are
        # dotted segments, so an empty key names nothing any loader looks up)
        key = cur.string(MAX_KEY_BYTES, "key")
        _named(key, "key")
        if key in keys:
            raise _refuse("duplicate_key", f"key {key[:64]!r} appears twice")
        keys.add(key)
        vtype = cur.u32()
        if key == "general.alignment":
            # Step 5 (GG-5: general.alignment is a u32 power of two, bounded)
            if vtype != _UINT32:
                raise _refuse("bad_alignment", f"general.alignment has type {vtype}, not u32")
            alignment = cur.u32()
            if not 0 < alignment <= MAX_ALIGNMENT or alignment & (alignment - 1):
                raise _refuse("bad_alignment", f"alignment {alignment} is not a power of two")
        elif key == "general.architecture" and vtype == _STRING:
            value = cur.string(MAX_STRING_BYTES, "string value")
            architecture = value if len(value) <= 128 else None
        else:
            _skip_value(cur, vtype, 0)
    return alignment, architecture


def _named(text: str, what: str) -> None:
    """A key or tensor name is a name: not empty, and no NUL (C loaders end it there)."""
    if not text:
        raise _refuse("empty_name", f"a {what} is empty")
    if "\x00" in text:
        raise _refuse("nul_in_name", f"{what} {text[:64]!r} holds a NUL byte")


def _skip_value(cur: _Cursor, vtype: int, depth: int) -> None:
    """GG-6 to GG-9: walk one value of type ``vtype`` without keeping it."""
    # Step 6 (GG-6: value type is one of 0..12)
    if vtype in _SCALAR_BYTES:
        if vtype == _BOOL:
            _check_bools(cur.take(1))
        else:
            cur.skip(_SCALAR_BYTES[vtype])
    elif vtype == _STRING:
        # Step 7 (GG-7: strings bounded, inside the file, UTF-8)
        cur.string(MAX_STRING_BYTES, "string value")
    elif vtype == _ARRAY:
        _skip_array(cur, depth)
    else:
        raise _refuse("bad_type", f"value type {vtype} is not a GGUF type")


def _skip_array(cur: _Cursor, depth: int) -> None:
    # Step 8 (GG-8: arrays: nesting and length bounded, and the claimed length must fit
    # the header budget at its element type's smallest size before any element is read)
    if depth >= MAX_ARRAY_DEPTH:
        raise _refuse("array_too_deep", f"arrays nest deeper than {MAX_ARRAY_DEPTH}")
    itype, length = cur.u32(), cur.u64()
    if itype not in _MIN_VALUE_BYTES:
        raise _refuse("bad_type", f"array element type {itype} is not a GGUF type")
    if length > MAX_ARRAY_LEN:
        raise _refuse("array_too_long", f"array of {length} exceeds {MAX_ARRAY_LEN}")
    cur.need(length * _MIN_VALUE_BYTES[itype])
    if itype == _BOOL:
        _check_bools(cur.take(length))
    elif itype in _SCALAR_BYTES:
        cur.skip(length * _SCALAR_BYTES[itype])
    elif itype == _STRING:
        cur.skip_strings(length, MAX_STRING_BYTES)
    else:
        cur.nested_arrays += length
        if cur.nested_arrays > MAX_NESTED_ARRAYS:
            raise _refuse("array_too_long", f"more than {MAX_NESTED_ARRAYS} nested arrays")
        for _ in range(length):
            _skip_array(cur, depth + 1)


def _check_bools(raw: bytes) -> None:
    # Step 9 (GG-9: a bool is 0 or 1; the spec calls anything else invalid)
    if raw.translate(None, b"\x00\x01"):
        raise _refuse("bad_bool", "bool value is neither 0 nor 1")


def _read_tensor_infos(
    cur: _Cursor, count: int, alignment: int
) -> tuple[list[tuple[int, int, str]], set[str]]:
    """GG-10 to GG-14: every tensor info; returns [(offset, nbytes, name)] and type names."""
    names: set[str] = set()
    types: set[str] = set()
    tensors: list[tuple[int, int, str]] = []
    for _ in range(count):
        # Step 10 (GG-10: names are short, non-empty UTF-8 strings without NUL, each once)
        name = cur.string(MAX_TENSOR_NAME_BYTES, "tensor name")
        _named(name, "tensor name")
        if name in names:
            raise _refuse("duplicate_tensor", f"tensor {name!r} appears twice")
        names.add(name)
        # Step 11 (GG-11: 0..4 dimensions, each > 0, element count fits in int64)
        n_dims = cur.u32()
        if n_dims > MAX_DIMS:
            raise _refuse("bad_dims", f"tensor {name!r} has {n_dims} dimensions (max {MAX_DIMS})")
        *dims, type_id, offset = struct.unpack(f"<{n_dims}QIQ", cur.take(8 * n_dims + 12))
        elements = 1
        for dim in dims:
            elements *= dim
            if not 0 < dim <= I64_MAX or elements > I64_MAX:
                raise _refuse("bad_dims", f"tensor {name!r} has dimensions {dims}")
        # Step 12 (GG-12: known ggml type)
        if type_id not in GGML_TYPES:
            raise _refuse("bad_tensor_type", f"tensor {name!r} has unknown ggml type {type_id}")
        type_name, block, block_bytes = GGML_TYPES[type_id]
        # Step 13 (GG-13: the first dimension is a whole number of blocks)
        if (dims[0] if dims else 1) % block:
            raise _refuse("bad_block", f"tensor {name!r} row is not a multiple of {block}")
        # Step 14 (GG-14: offset aligned, relative to the data section)
        if offset % alignment:
            raise _refuse("bad_tensor_offset", f"tensor {name!r} offset {offset} is unaligned")
        tensors.append((offset, elements // block * block_bytes, name))
        types.add(type_name)
    return tensors, types


def _check_layout(
    tensors: list[tuple[int, int, str]],
    header_end: int,
    data_start: int,
    alignment: int,
    size: int,
) -> list[tuple[int, int]]:
    """GG-15 to GG-17: tensors inside the file, back to back, nothing after the last.

    Returns the alignment padding, as absolute ``(start, end)`` spans, for GG-18.
    """
    data_len = size - data_start
    # Step 15 (GG-15: each tensor's bytes lie inside the file)
    for offset, nbytes, name in tensors:
        if offset + nbytes > data_len:
            raise _refuse("tensor_out_of_bounds", f"tensor {name!r} ends past the end of the file")
    # Step 16 (GG-16: sorted by offset, each tensor starts at the aligned end of the previous
    # one: no overlap, no gap beyond alignment padding)
    end = 0
    padding = [(header_end, data_start)] if tensors else []
    for offset, nbytes, name in sorted(tensors):
        if offset < end:
            raise _refuse("tensor_overlap", f"tensor {name!r} overlaps the previous one")
        if offset != _align(end, alignment):
            raise _refuse("tensor_gap", f"unaccounted bytes before tensor {name!r}")
        padding.append((data_start + end, data_start + offset))
        end = offset + nbytes
    # Step 17 (GG-17: the file ends within the alignment padding after the last tensor, or
    # of the header when there are no tensors)
    last = data_start + end if tensors else header_end
    if size > _align(last, alignment):
        raise _refuse("trailing_bytes", f"{size - _align(last, alignment)} bytes after the end")
    padding.append((last, size))
    return [(start, stop) for start, stop in padding if stop > start]


def _check_padding(read_at: ReadAt, padding: list[tuple[int, int]]) -> None:
    """GG-18: every alignment padding byte is zero.

    Why: the reference writers (gguf-py, ggml) pad with zeros, and padding is the one
    place in a GGUF file no reader looks at, so anything else there (an archive, a pickle,
    a second header) is a payload smuggled past every check. Each span is shorter than
    the alignment (at most 64 KiB) and read exactly; there is one per tensor at most, so
    the reads stay within the file's size, which ingest has already read once to hash.
    """
    for start, stop in padding:
        raw = read_exact(read_at, start, stop - start, "gguf.truncated")
        if raw.count(0) != len(raw):
            nonzero = next(i for i, byte in enumerate(raw) if byte)
            raise _refuse("nonzero_padding", f"padding byte at {start + nonzero} is not zero")


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment
