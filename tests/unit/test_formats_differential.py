"""The inspector against the reference libraries: what they write, it accepts; what it
accepts, they load. Strictness only ever goes one way (see the last tests).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import gguf as gguf_py
import numpy as np
import pytest
import safetensors
import safetensors.numpy
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from assay.formats import gguf
from assay.formats import safetensors as st_module
from assay.formats.errors import FormatRefused
from assay.formats.inspect import inspect_bytes
from tests.formats_factory import (
    DTYPE_BITS,
    check_accepted_file_loads,
    entry,
    reference_loads_gguf,
    reference_loads_safetensors,
    st_file,
    st_raw,
    valid_st,
)

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
NUMPY_DTYPES = [
    np.bool_,
    np.uint8,
    np.int8,
    np.int16,
    np.uint16,
    np.float16,
    np.int32,
    np.uint32,
    np.float32,
    np.float64,
    np.int64,
    np.uint64,
    np.complex64,
]


# --- samples ----------------------------------------------------------------------------------


def test_committed_samples_are_exactly_what_generate_writes() -> None:
    run = subprocess.run(
        [sys.executable, str(ARTIFACTS / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def test_generate_check_notices_a_tampered_sample(tmp_path: Path) -> None:
    for name in ("sample.safetensors", "sample.gguf"):
        (tmp_path / name).write_bytes((ARTIFACTS / name).read_bytes())
    (tmp_path / "sample.gguf").write_bytes(b"tampered")
    args = [sys.executable, str(ARTIFACTS / "generate.py"), "--check", "--dir", str(tmp_path)]
    run = subprocess.run(args, capture_output=True, text=True, check=False)
    assert run.returncode == 1 and "sample.gguf" in run.stderr


def test_samples_are_small_and_load_in_the_reference_libraries() -> None:
    for name in ("sample.safetensors", "sample.gguf"):
        data = (ARTIFACTS / name).read_bytes()
        assert len(data) < 4096
        check_accepted_file_loads(inspect_bytes(data), data)
    loaded = safetensors.numpy.load((ARTIFACTS / "sample.safetensors").read_bytes())
    assert loaded["weight"].shape == (2, 3) and loaded["ids"].tolist() == [1, 2, 3, 4]


# --- what the references write, the inspector accepts --------------------------------------------

# NUL is left out: the inspector refuses it in names on purpose (ST-18, pinned below).
names = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12
).filter(lambda name: name != "__metadata__")
shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(names, st.tuples(st.sampled_from(NUMPY_DTYPES), shapes), max_size=6),
    st.none() | st.dictionaries(names, st.text(max_size=20), max_size=4),
)
def test_whatever_safetensors_numpy_saves_is_accepted(
    spec: dict[str, tuple[Any, list[int]]], metadata: dict[str, str] | None
) -> None:
    assume(spec or metadata != {})  # the writer's own bug: see the test below
    rng = np.random.default_rng(0)
    tensors = {
        name: (rng.integers(0, 255, size=shape).astype(dtype))
        for name, (dtype, shape) in spec.items()
    }
    data = safetensors.numpy.save(tensors, metadata=metadata)
    found = inspect_bytes(data)
    assert found.details["tensor_count"] == len(tensors)
    loaded = safetensors.numpy.load(data)
    assert set(loaded) == set(tensors)


def test_reference_writer_bug_empty_metadata_and_no_tensors_is_refused_by_both() -> None:
    # safetensors 0.8 writes '{},"__metadata__":{}}' here: invalid JSON its reader refuses too.
    data = safetensors.numpy.save({}, metadata={})
    with pytest.raises(safetensors.SafetensorError):
        reference_loads_safetensors(data)
    with pytest.raises(FormatRefused):
        inspect_bytes(data)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        names,
        st.tuples(st.sampled_from(sorted(DTYPE_BITS)), st.lists(st.integers(0, 6), max_size=3)),
        max_size=6,
    )
)
def test_every_dtype_layout_the_inspector_accepts_the_rust_reference_accepts(
    spec: dict[str, tuple[str, list[int]]],
) -> None:
    # Sub-byte dtypes need a whole number of bytes; make the element count even.
    spec = {n: (d, [*s, 8] if DTYPE_BITS[d] < 8 else s) for n, (d, s) in spec.items()}
    data = valid_st(spec)
    found = inspect_bytes(data)
    assert reference_loads_safetensors(data) == found.details["tensor_count"] == len(spec)


kv_values = st.one_of(
    st.integers(0, 255).map(lambda v: ("uint8", v)),
    st.integers(-128, 127).map(lambda v: ("int8", v)),
    st.integers(0, 2**32 - 1).map(lambda v: ("uint32", v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: ("int64", v)),
    st.floats(width=32, allow_nan=False).map(lambda v: ("float32", v)),
    st.floats().map(lambda v: ("float64", v)),
    st.booleans().map(lambda v: ("bool", v)),
    st.text(min_size=1, max_size=30).map(lambda v: ("string", v)),
    st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=8).map(lambda v: ("array", v)),
    st.lists(st.text(max_size=8), min_size=1, max_size=8).map(lambda v: ("array", v)),
    st.lists(st.lists(st.booleans(), min_size=1, max_size=3), min_size=1, max_size=3).map(
        lambda v: ("array", v)
    ),
)
PLAIN_GGML = {
    "F32": np.float32,
    "F16": np.float16,
    "F64": np.float64,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
}
gguf_tensors = st.lists(
    st.tuples(
        st.sampled_from(["F32", "F16", "F64", "I8", "I16", "I32", "I64", "Q8_0", "Q4_K"]),
        st.lists(st.integers(1, 4), min_size=0, max_size=3),
    ),
    max_size=5,
)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.from_regex(r"[a-z]{1,8}(\.[a-z_]{1,8}){0,2}", fullmatch=True), kv_values),
    gguf_tensors,
    st.sampled_from([None, 8, 64, 256]),
)
def test_whatever_gguf_writer_writes_is_accepted(
    kvs: dict[str, tuple[str, Any]],
    tensors: list[tuple[str, list[int]]],
    alignment: int | None,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        writer = gguf_py.GGUFWriter(str(path), "llama")
        if alignment is not None:
            writer.add_custom_alignment(alignment)
        for key, (kind, value) in kvs.items():
            if key in ("general.architecture", "general.alignment"):
                continue
            getattr(writer, f"add_{kind}")(key, value)
        for i, (type_name, shape) in enumerate(tensors):
            qtype = gguf_py.GGMLQuantizationType[type_name]
            block, type_size = gguf_py.GGML_QUANT_SIZES[qtype]
            if block == 1:
                writer.add_tensor(f"t{i}", np.ones(shape or [1], dtype=PLAIN_GGML[type_name]))
            else:
                raw = np.full([*shape, type_size], 7, dtype=np.uint8)
                writer.add_tensor(f"t{i}", raw, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        data = path.read_bytes()
    found = inspect_bytes(data)
    assert found.details["tensor_count"] == len(tensors)
    check_accepted_file_loads(found, data)


def test_gguf_type_table_matches_the_gguf_package() -> None:
    reference = {
        int(t): (t.name, *gguf_py.GGML_QUANT_SIZES[t])
        for t in gguf_py.GGMLQuantizationType
        if t in gguf_py.GGML_QUANT_SIZES
    }
    assert gguf.GGML_TYPES == reference


# --- stricter than the references, on purpose (never the other way round) ------------------------


@pytest.mark.parametrize(
    ("header", "why"),
    [
        (' {"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', "leading whitespace"),
        ('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}\n', "newline padding"),
        ('{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":0}}', "unknown field"),
        (
            '{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
            '"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
            "duplicate tensor",
        ),
        ('{"__metadata__":null,"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', "null"),
        ('{"t\\u0000":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', "NUL in a name"),
    ],
)
def test_inspector_is_stricter_than_the_rust_reference_where_files_are_ambiguous(
    header: str, why: str
) -> None:
    data = st_raw(header, b"x")
    assert reference_loads_safetensors(data) == 1, why
    with pytest.raises(FormatRefused):
        inspect_bytes(data)


def test_inspector_refuses_gguf_trailing_bytes_that_the_reader_ignores() -> None:
    data = (ARTIFACTS / "sample.gguf").read_bytes() + json.dumps({"hidden": 1}).encode()
    reference_loads_gguf(data)
    with pytest.raises(FormatRefused) as caught:
        inspect_bytes(data)
    assert caught.value.reason == "gguf.trailing_bytes"


@pytest.mark.parametrize("length", [0x9328, 0x19330, 0x9388, 0x9390, 0x9398])
def test_reference_written_files_whose_length_reads_as_stack_global_are_accepted(
    length: int,
) -> None:
    # safetensors.numpy.save pads the header to 8 bytes, so its lengths end in 0x28 '(',
    # 0x30 '0', 0x88, 0x90 or 0x98 followed by 0x93 STACK_GLOBAL about once in 1,600
    # files; with no str to pop no unpickler imports anything, and the files are models.
    for pad in range(length - 120, length):
        data = safetensors.numpy.save({"w": np.zeros(3, np.float32)}, metadata={"m": "x" * pad})
        if int.from_bytes(data[:8], "little") == length:
            break
    else:
        raise AssertionError(f"no metadata size gives a {length:#x}-byte header")
    assert data[1] == 0x93
    assert inspect_bytes(data).details["tensor_count"] == 1


# --- values the references hand on unchecked (ST-20, GG-4) ---------------------------------

masks = st.one_of(
    st.binary(max_size=48),
    st.lists(st.sampled_from([0, 1]), max_size=48).map(bytes),
    st.tuples(st.lists(st.sampled_from([0, 1]), max_size=24), st.integers(2, 255)).map(
        lambda p: bytes([*p[0], p[1]])
    ),
)


@settings(max_examples=200, deadline=None)
@given(masks, st.binary(min_size=1, max_size=16))
def test_bool_tensor_is_accepted_exactly_when_every_byte_is_0_or_1(
    mask: bytes, other: bytes
) -> None:
    # The U8 tensor beside it holds any bytes: only BOOL has values a byte can miss.
    n = len(mask)
    header = {
        "m": entry("BOOL", [n], 0, n),
        "u": entry("U8", [len(other)], n, n + len(other)),
    }
    data = st_file(header, mask + other)
    # Both references take the file, and numpy hands the stray bytes on unchanged.
    assert reference_loads_safetensors(data) == 2
    assert safetensors.numpy.load(data)["m"].tobytes() == mask
    if set(mask) <= {0, 1}:
        assert inspect_bytes(data).details["tensor_count"] == 2
    else:
        with pytest.raises(FormatRefused) as caught:
            inspect_bytes(data)
        assert caught.value.reason == "safetensors.bad_bool"


@pytest.mark.parametrize("at", [0, st_module.BOOL_CHUNK_BYTES - 1, st_module.BOOL_CHUNK_BYTES, -1])
def test_a_stray_bool_byte_is_found_in_any_chunk_of_a_large_mask(at: int) -> None:
    size = 2 * st_module.BOOL_CHUNK_BYTES + 3
    mask = bytearray(b"\x01" * size)
    valid = valid_st({"m": ("BOOL", [size])}, fill=1)
    assert inspect_bytes(valid).details["tensor_count"] == 1
    mask[at] = 0x02
    data = valid[: len(valid) - size] + bytes(mask)
    with pytest.raises(FormatRefused) as caught:
        inspect_bytes(data)
    assert caught.value.reason == "safetensors.bad_bool"
    assert f"data offset {at % size}" in caught.value.detail


def _gguf_with_key(key: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        writer = gguf_py.GGUFWriter(str(path), "llama")
        writer.add_uint32(key, 7)
        writer.add_tensor("t", np.ones(4, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.just(""), st.text(max_size=12)))
def test_gguf_key_is_refused_exactly_when_empty_or_holding_nul(key: str) -> None:
    assume(key not in ("general.architecture", "general.alignment"))
    data = _gguf_with_key(key)
    # gguf-py writes and reads every one of them back as a field, "" included.
    assert key in reference_loads_gguf(data).fields
    if key and "\x00" not in key:
        assert inspect_bytes(data).details["tensor_count"] == 1
    else:
        with pytest.raises(FormatRefused) as caught:
            inspect_bytes(data)
        assert caught.value.reason == ("gguf.empty_name" if not key else "gguf.nul_in_name")
