"""Builders for good and evil safetensors / GGUF files, and fake ``read_at`` callables.

Why hand-rolled builders: the reference writers refuse to produce broken files, and the
attack tests need exactly one thing wrong at a time. Refused-case files are built here at
test time and never committed.
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gguf as gguf_py
import safetensors

from assay.formats.gguf import GGML_TYPES
from assay.formats.inspect import Inspection

# --- safetensors -----------------------------------------------------------------------------

DTYPE_BITS = {
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


def st_raw(header: bytes | str, data: bytes = b"", *, length: int | None = None) -> bytes:
    """Length prefix (the real one unless ``length`` overrides it) + header + data."""
    raw = header.encode("utf-8") if isinstance(header, str) else header
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def st_file(header: dict[str, Any], data: bytes = b"", *, pad: bool = True) -> bytes:
    """A safetensors file from a header dict, padded with spaces to 8 bytes like the reference."""
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if pad:
        raw += b" " * (-len(raw) % 8)
    return st_raw(raw, data)


def entry(dtype: str, shape: Sequence[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, end]}


def nbytes(dtype: str, shape: Sequence[int]) -> int:
    elements = 1
    for dim in shape:
        elements *= dim
    return elements * DTYPE_BITS[dtype] // 8


def valid_st(
    tensors: Mapping[str, tuple[str, Sequence[int]]],
    metadata: dict[str, str] | None = None,
    fill: int = 0x3C,
) -> bytes:
    """A valid safetensors file: tensors back to back in the given order, each filled with
    ``fill`` (BOOL tensors with ``fill & 1``: a bool byte is 0 or 1, ST-20)."""
    header: dict[str, Any] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    data = bytearray()
    for name, (dtype, shape) in tensors.items():
        size = nbytes(dtype, shape)
        header[name] = entry(dtype, shape, offset, offset + size)
        data += bytes([fill & 1 if dtype == "BOOL" else fill]) * size
        offset += size
    return st_file(header, bytes(data))


# --- GGUF ------------------------------------------------------------------------------------

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL = range(8)
STRING, ARRAY, UINT64, INT64, FLOAT64 = range(8, 13)
_PACK = {
    UINT8: "B",
    INT8: "b",
    UINT16: "H",
    INT16: "h",
    UINT32: "I",
    INT32: "i",
    FLOAT32: "f",
    BOOL: "B",
    UINT64: "Q",
    INT64: "q",
    FLOAT64: "d",
}
GGML_BY_NAME = {name: type_id for type_id, (name, _, _) in GGML_TYPES.items()}


def gguf_string(value: str | bytes, *, length: int | None = None) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def gguf_value(vtype: int, value: Any) -> bytes:
    """Encode a value (no type tag). Arrays: ``value`` is (item_type, [items])."""
    if vtype == STRING:
        return gguf_string(value)
    if vtype == ARRAY:
        itype, items = value
        body = b"".join(gguf_value(itype, item) for item in items)
        return struct.pack("<IQ", itype, len(items)) + body
    return struct.pack("<" + _PACK[vtype], value)


def gguf_kv(key: str | bytes, vtype: int, value: Any) -> bytes:
    return gguf_string(key) + struct.pack("<I", vtype) + gguf_value(vtype, value)


def gguf_tensor_info(name: str | bytes, dims: Sequence[int], type_id: int, offset: int) -> bytes:
    return (
        gguf_string(name)
        + struct.pack("<I", len(dims))
        + struct.pack(f"<{len(dims)}Q", *dims)
        + struct.pack("<IQ", type_id, offset)
    )


def tensor_bytes(dims: Sequence[int], type_id: int) -> int:
    _, block, block_bytes = GGML_TYPES[type_id]
    elements = 1
    for dim in dims:
        elements *= dim
    return elements // block * block_bytes


def align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


@dataclass
class GGUF:
    """A GGUF file under construction; ``build()`` lays it out (correctly unless told not to)."""

    kvs: list[bytes] = field(default_factory=list)
    tensors: list[tuple[str | bytes, list[int], int]] = field(default_factory=list)
    version: int = 3
    alignment: int = 32
    magic: bytes = b"GGUF"
    tensor_count: int | None = None
    kv_count: int | None = None
    offsets: list[int] | None = None  # override computed tensor offsets
    trailing: bytes = b""
    pad_end: bool = True
    fill: int = 0x11

    def kv(self, key: str | bytes, vtype: int, value: Any) -> GGUF:
        self.kvs.append(gguf_kv(key, vtype, value))
        return self

    def tensor(self, name: str | bytes, dims: list[int], type_name: str = "F32") -> GGUF:
        self.tensors.append((name, dims, GGML_BY_NAME[type_name]))
        return self

    def build(self) -> bytes:
        offsets: list[int] = []
        data = bytearray()
        for _, dims, type_id in self.tensors:
            data += b"\0" * (align(len(data), self.alignment) - len(data))
            offsets.append(len(data))
            data += bytes([self.fill]) * tensor_bytes(dims, type_id)
        if self.pad_end:
            data += b"\0" * (align(len(data), self.alignment) - len(data))
        if self.offsets is not None:
            offsets = self.offsets
        head = bytearray(self.magic)
        head += struct.pack(
            "<IQQ",
            self.version,
            len(self.tensors) if self.tensor_count is None else self.tensor_count,
            len(self.kvs) if self.kv_count is None else self.kv_count,
        )
        head += b"".join(self.kvs)
        for (name, dims, type_id), offset in zip(self.tensors, offsets, strict=True):
            head += gguf_tensor_info(name, dims, type_id, offset)
        if self.tensors:
            head += b"\0" * (align(len(head), self.alignment) - len(head))
        return bytes(head + data) + self.trailing


def small_gguf(**kwargs: Any) -> GGUF:
    """The usual valid shape: architecture, name, two F32 tensors."""
    g = GGUF(**kwargs)
    g.kv("general.architecture", STRING, "llama").kv("general.name", STRING, "t")
    return g.tensor("a.weight", [4, 2]).tensor("b.weight", [3])


# --- read_at fakes ---------------------------------------------------------------------------


class Recorder:
    """A ``read_at`` over bytes that records every call; optionally serves short reads."""

    def __init__(self, data: bytes, *, chunk: int | None = None) -> None:
        self.data = data
        self.chunk = chunk
        self.calls: list[tuple[int, int]] = []

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        if self.chunk is not None:
            length = min(length, self.chunk)
        return self.data[offset : offset + length]

    @property
    def largest(self) -> int:
        return max((length for _, length in self.calls), default=0)

    @property
    def total(self) -> int:
        return sum(length for _, length in self.calls)


class SparseFile(Recorder):
    """A huge virtual file: real bytes at the front, zeros after, never materialised."""

    def __init__(self, front: bytes, size: int) -> None:
        super().__init__(front)
        self.size = size

    def __call__(self, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        assert length <= 200_000_000, f"asked for {length} bytes at once"
        end = min(offset + length, self.size)
        real = self.data[offset:end]
        return real + b"\0" * (end - offset - len(real)) if end > offset else b""


# --- reference libraries ---------------------------------------------------------------------


#: The reference Rust parser (its stub is untyped).
deserialize: Callable[[bytes], list[Any]] = safetensors.deserialize


def reference_loads_safetensors(data: bytes) -> int:
    """Tensor count per the reference Rust parser (raises if it refuses the file)."""
    return len(deserialize(data))


def reference_loads_gguf(data: bytes) -> Any:
    """A ``gguf.GGUFReader`` over the bytes, with every tensor's data fully present."""
    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        reader = gguf_py.GGUFReader(f.name)
        for tensor in reader.tensors:
            assert tensor.data.nbytes == tensor.n_bytes  # the data really is all there
        return reader


def check_accepted_file_loads(found: Inspection, data: bytes) -> None:
    """The one-way guarantee: a file the inspector accepts loads in the reference library."""
    if found.format == "safetensors":
        assert reference_loads_safetensors(data) == found.details["tensor_count"]
    else:
        reader = reference_loads_gguf(data)
        assert len(reader.tensors) == found.details["tensor_count"]
