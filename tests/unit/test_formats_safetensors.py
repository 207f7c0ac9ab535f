"""safetensors validation: what is accepted, and every way a header can lie (ST-* checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.numpy

from assay.formats import safetensors as st
from assay.formats.errors import FormatRefused
from assay.formats.inspect import MAX_HEAD_BYTES, inspect_bytes, inspect_file
from tests.formats_factory import (
    DTYPE_BITS,
    Recorder,
    SparseFile,
    entry,
    nbytes,
    reference_loads_safetensors,
    st_file,
    st_raw,
    valid_st,
)

SAMPLE = Path(__file__).resolve().parents[2] / "artifacts" / "sample.safetensors"


def reason(data: bytes) -> str:
    with pytest.raises(FormatRefused) as caught:
        inspect_bytes(data)
    return caught.value.reason


def one(dtype: str = "U8", shape: list[int] | None = None, data: bytes | None = None) -> bytes:
    shape = [4] if shape is None else shape
    size = nbytes(dtype, shape)
    return st_file({"t": entry(dtype, shape, 0, size)}, b"\1" * size if data is None else data)


# --- accepted ----------------------------------------------------------------------------------


def test_committed_sample_is_accepted_with_details() -> None:
    found = inspect_bytes(SAMPLE.read_bytes())
    assert found.format == "safetensors"
    assert found.details["tensor_count"] == 2
    assert found.details["dtypes"] == ["F32", "I64"]
    assert found.details["metadata_count"] == 2
    json.dumps(found.details)


@pytest.mark.parametrize("dtype", sorted(DTYPE_BITS))
def test_every_reference_dtype_is_accepted(dtype: str) -> None:
    found = inspect_bytes(one(dtype, [2, 4]))
    assert found.details["dtypes"] == [dtype]


def test_header_only_file_with_no_tensors_is_accepted() -> None:
    assert inspect_bytes(st_file({})).details["tensor_count"] == 0
    assert inspect_bytes(st_file({"__metadata__": {"a": "b"}})).details["metadata_count"] == 1


def test_zero_sized_and_scalar_tensors_are_accepted() -> None:
    data = valid_st({"empty": ("F32", [0, 3]), "also": ("U8", [0]), "scalar": ("F64", [])})
    assert inspect_bytes(data).details["tensor_count"] == 3


def test_unpadded_header_and_any_entry_order_are_accepted() -> None:
    header = {"b": entry("U8", [2], 2, 4), "a": entry("U8", [2], 0, 2)}
    assert inspect_bytes(st_file(header, b"abcd", pad=False)).details["tensor_count"] == 2


# --- length prefix and header bounds -------------------------------------------------------


def test_truncated_safetensors_header_is_refused() -> None:
    full = valid_st({"w": ("F32", [4])})
    assert reason(full[:40]) == "safetensors.truncated"
    assert reason(st_raw(b'{"a":1}' + b" " * 50, length=1000)) == "safetensors.truncated"


def test_oversized_safetensors_header_length_is_refused_before_allocation() -> None:
    claim = 1 << 40
    fake = SparseFile(st_raw(b"{}", length=claim), size=claim * 2)
    with pytest.raises(FormatRefused) as caught:
        inspect_file(fake, fake.size)
    assert caught.value.reason == "safetensors.header_too_large"
    assert fake.largest < 1 << 20 and all(length != claim for _, length in fake.calls)


def test_header_length_one_past_the_reference_limit_is_refused() -> None:
    fake = SparseFile(st_raw(b"{}", length=st.MAX_HEADER_BYTES + 1), size=1 << 30)
    with pytest.raises(FormatRefused) as caught:
        inspect_file(fake, fake.size)
    assert caught.value.reason == "safetensors.header_too_large"
    assert fake.largest < 1 << 20


def test_header_length_past_end_of_file_is_refused_without_reading_it() -> None:
    fake = Recorder(st_raw(b"{}" + b" " * 100, length=90_000_000))
    with pytest.raises(FormatRefused) as caught:
        inspect_file(fake, len(fake.data))
    assert caught.value.reason == "safetensors.truncated"
    assert fake.largest <= len(fake.data)


def test_reads_never_exceed_max_head_bytes_even_for_the_largest_legal_header() -> None:
    fake = SparseFile(st_raw(b"{", length=st.MAX_HEADER_BYTES), size=st.MAX_HEADER_BYTES + 8)
    with pytest.raises(FormatRefused):
        inspect_file(fake, fake.size)  # a '{' then NULs: refused, but only after one read
    assert fake.largest <= MAX_HEAD_BYTES


# --- header text -------------------------------------------------------------------------------


def test_non_utf8_header_is_refused() -> None:
    assert reason(st_raw(b'{"\xff":1}   ')) == "safetensors.bad_utf8"


@pytest.mark.parametrize("header", [b' {"a":1}', b'\n{"__metadata__":{}}'])
def test_header_not_starting_with_brace_is_refused(header: bytes) -> None:
    assert reason(st_raw(header)) == "safetensors.bad_header_start"


@pytest.mark.parametrize("padding", [b"\n", b"\t", b"\x00", b"  x", b"}"])
def test_header_padding_other_than_spaces_is_refused(padding: bytes) -> None:
    assert reason(st_raw(b"{}" + padding)) == "safetensors.bad_json"


def test_header_that_is_not_json_is_refused() -> None:
    assert reason(st_raw(b'{"a":')) == "safetensors.bad_json"
    assert reason(st_raw(b"{'a':1}")) == "safetensors.bad_json"


def test_header_that_is_a_json_array_is_refused() -> None:
    assert reason(st_raw(b"[]")) == "unknown"  # not even shaped like safetensors
    assert reason(st_raw(b" []")) == "safetensors.bad_header_start"


@pytest.mark.parametrize(
    "header",
    [
        '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        '"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
        '{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
        '{"__metadata__":{"k":"1","k":"2"}}',
        '{"__metadata__":{},"__metadata__":{}}',
    ],
)
def test_duplicate_json_keys_are_refused(header: str) -> None:
    assert reason(st_raw(header, b"x")) == "safetensors.duplicate_key"


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_constants_are_refused(constant: str) -> None:
    header = '{"t":{"dtype":"U8","shape":[' + constant + '],"data_offsets":[0,1]}}'
    assert reason(st_raw(header, b"x")) == "safetensors.bad_json"


@pytest.mark.parametrize("number", ["1.0", "1e0", "-0", "-1", "18446744073709551616", "9" * 5000])
def test_numbers_that_are_not_u64_are_refused(number: str) -> None:
    header = '{"t":{"dtype":"U8","shape":[' + number + '],"data_offsets":[0,1]}}'
    assert reason(st_raw(header, b"x")) == "safetensors.bad_json"


def test_deeply_nested_header_is_refused() -> None:
    deep = b'{"t":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    assert reason(st_raw(deep)) == "safetensors.bad_json"


def test_lone_surrogate_in_tensor_name_or_metadata_is_refused() -> None:
    assert reason(st_raw(b'{"\\ud800":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"x")) == (
        "safetensors.bad_json"
    )
    assert reason(st_raw(b'{"__metadata__":{"k":"\\udfff"}}')) == "safetensors.bad_json"


def test_paired_surrogate_escape_is_fine() -> None:
    header = '{"\\ud83d\\ude00":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    assert inspect_bytes(st_raw(header, b"x")).details["tensor_count"] == 1


def test_header_with_too_many_objects_is_refused_before_parsing() -> None:
    metadata = {"__metadata__": {"k": "{" * (st.MAX_TENSORS + 3)}}
    assert reason(st_file(metadata)) == "safetensors.too_many_tensors"


def test_header_with_too_many_values_is_refused_before_parsing() -> None:
    metadata = {"__metadata__": {"k": "," * (st.MAX_COMMAS + 1)}}
    assert reason(st_file(metadata)) == "safetensors.header_too_complex"


# --- structure -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata", [{"a": 1}, {"a": None}, {"a": {"b": "c"}}, {"a": ["b"]}, None, "x", []]
)
def test_metadata_must_map_strings_to_strings(metadata: object) -> None:
    assert reason(st_file({"__metadata__": metadata})) == "safetensors.bad_metadata"


@pytest.mark.parametrize(
    "tensor",
    [
        {"dtype": "U8", "shape": [1], "data_offsets": [0, 1], "extra": 1},
        {"dtype": "U8", "shape": [1]},
        {"shape": [1], "data_offsets": [0, 1]},
        [],
        "U8",
        None,
    ],
)
def test_malformed_tensor_entries_are_refused(tensor: object) -> None:
    assert reason(st_file({"t": tensor}, b"x")) == "safetensors.bad_entry"


@pytest.mark.parametrize("dtype", ["F128", "u8", "Q4_0", "", 8, None, ["U8"]])
def test_unknown_dtype_is_refused(dtype: object) -> None:
    header = {"t": {"dtype": dtype, "shape": [1], "data_offsets": [0, 1]}}
    assert reason(st_file(header, b"x")) == "safetensors.bad_dtype"


@pytest.mark.parametrize(
    "shape", ["4", [True], [[2]], None, [1] * (st.MAX_RANK + 1), [1 << 63], {"0": 1}]
)
def test_bad_shapes_are_refused(shape: object) -> None:
    header = {"t": {"dtype": "U8", "shape": shape, "data_offsets": [0, 1]}}
    assert reason(st_file(header, b"x")) == "safetensors.bad_shape"


@pytest.mark.parametrize("shape", [[1 << 32, 1 << 32, 0], [(1 << 62) + 1, 4, 0]])
def test_shape_whose_element_count_overflows_is_refused(shape: list[int]) -> None:
    assert reason(st_file({"t": entry("U8", shape, 0, 0)})) == "safetensors.shape_overflow"


def test_shape_whose_bit_count_overflows_is_refused() -> None:
    assert reason(st_file({"t": entry("F64", [1 << 62], 0, 0)})) == "safetensors.shape_overflow"


@pytest.mark.parametrize("offsets", [[0, 1, 2], [1], [2, 1], ["0", "1"], [0, True], None, {"0": 1}])
def test_bad_data_offsets_are_refused(offsets: object) -> None:
    header = {"t": {"dtype": "U8", "shape": [1], "data_offsets": offsets}}
    assert reason(st_file(header, b"xx")) == "safetensors.bad_offsets"


def test_offsets_that_disagree_with_shape_and_dtype_are_refused() -> None:
    assert reason(st_file({"t": entry("F32", [2, 2], 0, 15)}, b"x" * 15)) == (
        "safetensors.shape_mismatch"
    )


def test_sub_byte_tensor_not_ending_on_a_byte_boundary_is_refused() -> None:
    assert reason(st_file({"t": entry("F4", [3], 0, 2)}, b"xx")) == "safetensors.subbyte_misaligned"
    assert reason(st_file({"t": entry("F6_E3M2", [3], 0, 3)}, b"xxx")) == (
        "safetensors.subbyte_misaligned"
    )


# --- layout: every byte accounted for ----------------------------------------------------------


def test_overlapping_safetensors_offsets_are_refused() -> None:
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 2, 6)}
    assert reason(st_file(header, b"x" * 6)) == "safetensors.offsets_overlap"


def test_two_tensors_aliasing_the_same_bytes_are_refused() -> None:
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 0, 4)}
    assert reason(st_file(header, b"x" * 4)) == "safetensors.offsets_overlap"


def test_gap_between_tensors_is_refused() -> None:
    header = {"a": entry("U8", [4], 0, 4), "b": entry("U8", [4], 8, 12)}
    assert reason(st_file(header, b"x" * 12)) == "safetensors.offsets_gap"
    assert reason(st_file({"a": entry("U8", [4], 4, 8)}, b"x" * 8)) == "safetensors.offsets_gap"


def test_tensor_reaching_past_the_end_of_file_is_refused() -> None:
    assert reason(st_file({"a": entry("U8", [4], 0, 4)}, b"xx")) == (
        "safetensors.offsets_out_of_bounds"
    )
    huge = 1 << 40
    assert reason(st_file({"a": entry("U8", [huge], 0, huge)}, b"xx")) == (
        "safetensors.offsets_out_of_bounds"
    )


def test_trailing_bytes_after_last_tensor_are_refused() -> None:
    assert reason(valid_st({"a": ("U8", [4])}) + b"hidden payload") == (
        "safetensors.trailing_bytes"
    )
    assert reason(st_file({}, b"x")) == "safetensors.trailing_bytes"


# --- names and shapes C and numpy loaders read differently -------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        {"a\0x": entry("U8", [1], 0, 1), "a\0y": entry("U8", [1], 1, 2)},  # both "a" in C
        {"__metadata__\0": entry("U8", [2], 0, 2)},  # "__metadata__" to a C loader
        {"__metadata__": {"format\0": "pt"}, "t": entry("U8", [2], 0, 2)},
    ],
    ids=["tensors-collide", "shadows-metadata", "metadata-key"],
)
def test_nul_inside_a_tensor_name_or_metadata_key_is_refused(header: dict[str, object]) -> None:
    data = st_file(header, b"xy")
    reference_loads_safetensors(data)  # the Rust reference takes NUL in names
    assert reason(data) == "safetensors.nul_in_name"


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [("U8", [0, 1 << 62, 2]), ("F32", [0, 1 << 61]), ("U8", [1 << 32, 1 << 31, 0])],
    ids=str,
)
def test_empty_tensor_whose_other_dimensions_overflow_numpy_is_refused(
    dtype: str, shape: list[int]
) -> None:
    data = st_file({"t": entry(dtype, shape, 0, 0)})
    reference_loads_safetensors(data)  # the Rust reference's checked product is 0
    with pytest.raises(ValueError, match=r"too big|cannot reshape"):
        safetensors.numpy.load(data)  # numpy sizes the array anyway
    assert reason(data) == "safetensors.shape_overflow"


def test_empty_tensor_at_numpy_s_size_limit_is_accepted() -> None:
    data = st_file(
        {"t": entry("U8", [0, (1 << 63) - 1], 0, 0), "u": entry("F32", [0, 1 << 60], 0, 0)}
    )
    assert safetensors.numpy.load(data)["t"].shape == (0, (1 << 63) - 1)
    assert inspect_bytes(data).details["tensor_count"] == 2
