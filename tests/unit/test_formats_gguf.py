"""GGUF validation: what is accepted, and every way a header can lie (GG-* checks)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from assay.formats import gguf
from assay.formats.errors import FormatRefused
from assay.formats.inspect import MAX_HEAD_BYTES, inspect_bytes, inspect_file
from tests.formats_factory import (
    ARRAY,
    BOOL,
    FLOAT32,
    GGUF,
    INT8,
    STRING,
    UINT8,
    UINT32,
    UINT64,
    Recorder,
    SparseFile,
    gguf_string,
    gguf_tensor_info,
    reference_loads_gguf,
    small_gguf,
)

SAMPLE = Path(__file__).resolve().parents[2] / "artifacts" / "sample.gguf"


def one_tensor(dims: list[int], type_id: int = 0) -> bytes:
    """A header with one tensor info written by hand (no data: the check comes first)."""
    info = gguf_tensor_info("t", dims, type_id, 0)
    return GGUF(tensor_count=1).build() + info + bytes(-(24 + len(info)) % 32)


def reason(data: bytes) -> str:
    with pytest.raises(FormatRefused) as caught:
        inspect_bytes(data)
    return caught.value.reason


# --- accepted ----------------------------------------------------------------------------------


def test_committed_sample_is_accepted_with_details() -> None:
    found = inspect_bytes(SAMPLE.read_bytes())
    assert found.format == "gguf"
    assert found.details["version"] == 3
    assert found.details["tensor_count"] == 2
    assert found.details["alignment"] == 32
    assert found.details["architecture"] == "sample"
    json.dumps(found.details)


def test_version_2_is_accepted() -> None:
    assert inspect_bytes(small_gguf(version=2).build()).details["version"] == 2


def test_every_value_type_including_nested_arrays_is_accepted() -> None:
    g = small_gguf()
    for vtype, value in [(0, 255), (1, -1), (2, 65535), (3, -2), (4, 7), (5, -7), (6, 1.5)]:
        g.kv(f"k.{vtype}", vtype, value)
    g.kv("k.bool", BOOL, 1).kv("k.str", STRING, "héllo").kv("k.u64", UINT64, 1 << 63)
    g.kv("k.i64", 11, -5).kv("k.f64", 12, 2.5).kv("k.empty", STRING, "")
    g.kv("k.arr", ARRAY, (STRING, ["a", "", "ü"])).kv("k.bools", ARRAY, (BOOL, [0, 1, 1]))
    g.kv("k.nested", ARRAY, (ARRAY, [(UINT8, [1, 2]), (UINT8, [])]))
    assert inspect_bytes(g.build()).details["metadata_count"] == 18


def test_file_with_no_tensors_is_accepted_with_or_without_final_padding() -> None:
    g = GGUF().kv("general.architecture", STRING, "x")
    unpadded = g.build()
    assert inspect_bytes(unpadded).details["tensor_count"] == 0
    padded = unpadded + b"\0" * (-len(unpadded) % 32)
    assert inspect_bytes(padded).details["tensor_count"] == 0


def test_last_tensor_without_final_padding_is_accepted() -> None:
    g = small_gguf(pad_end=False)  # b.weight is 12 bytes: the file ends mid-alignment
    assert inspect_bytes(g.build()).details["tensor_count"] == 2
    assert inspect_bytes(small_gguf().build()[:-1]).details["tensor_count"] == 2


@pytest.mark.parametrize("where", ["after_header", "between_tensors", "at_end", "no_tensors"])
def test_gguf_nonzero_alignment_padding_is_refused(where: str) -> None:
    # GG-18: no reader looks at padding, so a payload there would pass every other check.
    g = GGUF().kv("general.architecture", STRING, "x")
    if where != "no_tensors":
        g.tensor("a.weight", [3]).tensor("b.weight", [5])  # 12 and 20 bytes of F32
    data = g.build()
    if where == "no_tensors":
        data += bytes(-len(data) % 32)
    found = inspect_bytes(data).details
    header_end, data_start = int(str(found["header_bytes"])), int(str(found["data_offset"]))
    spot = {
        "after_header": header_end,
        "between_tensors": data_start + 12,
        "at_end": len(data) - 1,
        "no_tensors": header_end,
    }[where]
    assert header_end % 32 and data[spot] == 0  # really padding, and zero as written
    assert reason(data[:spot] + b"P" + data[spot + 1 :]) == "gguf.nonzero_padding"


@pytest.mark.parametrize(
    "type_name", [name for name, _, _ in gguf.GGML_TYPES.values()], ids=lambda n: n
)
def test_every_ggml_type_is_accepted(type_name: str) -> None:
    _, block, _ = next(v for v in gguf.GGML_TYPES.values() if v[0] == type_name)
    g = GGUF().tensor("t", [block * 2, 3], type_name)
    assert inspect_bytes(g.build()).details["tensor_types"] == [type_name]


def test_custom_alignment_is_honoured() -> None:
    g = small_gguf(alignment=64).kv("general.alignment", UINT32, 64)
    assert inspect_bytes(g.build()).details["alignment"] == 64


def test_tensors_listed_out_of_offset_order_are_accepted() -> None:
    g = small_gguf()
    g.tensors.reverse()
    g.offsets = [32, 0]  # a.weight (32 bytes) first in the data, then b.weight (12 bytes)
    data = g.build()
    data = data[:-64] + b"\x11" * 44 + bytes(20)
    assert inspect_bytes(data).details["tensor_count"] == 2


# --- magic, version, counts ----------------------------------------------------------------------


@pytest.mark.parametrize("magic", [b"tjgg", b"lmgg", b"gguf", b"FUGG"])
def test_gguf_bad_magic_is_refused(magic: bytes) -> None:
    assert reason(small_gguf(magic=magic).build()) == "gguf.bad_magic"
    with pytest.raises(FormatRefused) as caught:
        gguf.inspect_gguf(Recorder(b"GGUG" + bytes(20)), 24)
    assert caught.value.reason == "gguf.bad_magic"


@pytest.mark.parametrize("version", [0, 1, 4, 0x03000000, 0xFFFFFFFF])
def test_gguf_unsupported_or_big_endian_version_is_refused(version: int) -> None:
    assert reason(small_gguf(version=version).build()) == "gguf.bad_version"


@pytest.mark.parametrize("field", ["tensor_count", "kv_count"])
@pytest.mark.parametrize("count", [(1 << 64) - 1, 1 << 40, gguf.MAX_TENSORS + 1])
def test_gguf_huge_tensor_count_is_refused(field: str, count: int) -> None:
    data = small_gguf(**{field: count}).build()
    fake = Recorder(data)
    with pytest.raises(FormatRefused) as caught:
        inspect_file(fake, len(data))
    assert caught.value.reason == "gguf.count_too_large"
    assert len(fake.calls) < 10


def test_gguf_counts_larger_than_the_content_are_refused() -> None:
    assert reason(small_gguf(tensor_count=3).build()).startswith("gguf.")
    assert reason(small_gguf(kv_count=50).build()).startswith("gguf.")
    assert reason(GGUF(tensor_count=1).build()) == "gguf.truncated"
    assert reason(GGUF(kv_count=1).build()) == "gguf.truncated"


def test_gguf_header_cut_short_is_refused() -> None:
    full = small_gguf().build()
    for cut in (5, 12, 23, 30, 60, 150):
        assert reason(full[:cut]) == "gguf.truncated", cut


# --- strings and values --------------------------------------------------------------------------


def test_gguf_string_length_overflowing_file_is_refused() -> None:
    evil = GGUF()
    evil.kvs.append(gguf_string("k", length=1 << 62) + b"k")
    assert reason(evil.build()) == "gguf.string_too_long"
    evil = GGUF()
    evil.kvs.append(gguf_string("general.name") + struct.pack("<I", STRING))
    evil.kvs.append(gguf_string(b"abc", length=1000))
    assert reason(evil.build()) == "gguf.truncated"


def test_gguf_string_value_over_the_limit_is_refused_without_reading_it() -> None:
    front = GGUF(kv_count=1).build() + gguf_string("k") + struct.pack("<I", STRING)
    front += struct.pack("<Q", gguf.MAX_STRING_BYTES + 1)
    fake = SparseFile(front, size=1 << 30)
    with pytest.raises(FormatRefused) as caught:
        inspect_file(fake, fake.size)
    assert caught.value.reason == "gguf.string_too_long"
    assert fake.total < 4 << 20


def test_gguf_key_that_is_not_utf8_is_refused() -> None:
    assert reason(small_gguf().kv(b"bad\xff", UINT8, 1).build()) == "gguf.bad_utf8"
    assert reason(small_gguf().kv("k", STRING, b"\xc3(").build()) == "gguf.bad_utf8"


def test_gguf_key_with_a_nul_that_c_loaders_read_as_another_key_is_refused() -> None:
    # ggml's gguf_find_key compares with strcmp: to llama.cpp this key IS general.alignment
    # (so tensors sit at 64-byte offsets), to gguf-py and a Python check it is not (32).
    g = small_gguf().kv("general.alignment\0x", UINT32, 64)
    assert reference_loads_gguf(g.build()).alignment == 32
    assert reason(g.build()) == "gguf.nul_in_name"
    assert reason(small_gguf().kv("general.name\0", STRING, "t").build()) == "gguf.nul_in_name"


def test_gguf_tensor_names_that_collide_at_a_nul_are_refused() -> None:
    g = GGUF().tensor("a\0x", [4]).tensor("a\0y", [4])  # both "a" to ggml_get_tensor
    assert len(reference_loads_gguf(g.build()).tensors) == 2
    assert reason(g.build()) == "gguf.nul_in_name"


def test_gguf_tensor_name_that_is_not_utf8_or_too_long_is_refused() -> None:
    assert reason(GGUF().tensor(b"\xff", [4]).build()) == "gguf.bad_utf8"
    assert reason(GGUF().tensor("n" * 64, [4]).build()) == "gguf.string_too_long"
    assert inspect_bytes(GGUF().tensor("n" * 63, [4]).build()).details["tensor_count"] == 1


@pytest.mark.parametrize("vtype", [13, 255, 1 << 31])
def test_gguf_unknown_value_type_is_refused(vtype: int) -> None:
    g = small_gguf()
    g.kvs.append(gguf_string("k") + struct.pack("<I", vtype) + bytes(8))
    assert reason(g.build()) == "gguf.bad_type"
    g = small_gguf()
    g.kvs.append(gguf_string("k") + struct.pack("<IIQ", ARRAY, vtype, 1) + bytes(8))
    assert reason(g.build()) == "gguf.bad_type"


def test_gguf_duplicate_key_is_refused() -> None:
    g = small_gguf().kv("general.name", STRING, "again")
    assert reason(g.build()) == "gguf.duplicate_key"


def test_gguf_bool_other_than_0_or_1_is_refused() -> None:
    assert reason(small_gguf().kv("k", BOOL, 2).build()) == "gguf.bad_bool"
    assert reason(small_gguf().kv("k", ARRAY, (BOOL, [1, 0, 7])).build()) == "gguf.bad_bool"


def test_gguf_huge_array_length_is_refused_before_looping() -> None:
    for itype, length in [(INT8, 1 << 60), (STRING, gguf.MAX_ARRAY_LEN + 1)]:
        g = small_gguf()
        g.kvs.append(gguf_string("k") + struct.pack("<IIQ", ARRAY, itype, length))
        assert reason(g.build()) == "gguf.array_too_long"


def test_gguf_array_claiming_more_elements_than_the_file_holds_is_refused_at_once() -> None:
    g = small_gguf()
    g.kvs.append(gguf_string("k") + struct.pack("<IIQ", ARRAY, STRING, 1 << 23))
    data = g.build()
    fake = Recorder(data)
    with pytest.raises(FormatRefused) as caught:
        inspect_file(fake, len(data))
    assert caught.value.reason == "gguf.truncated"


def test_gguf_header_bigger_than_the_budget_is_refused_without_reading_it() -> None:
    front = GGUF(kv_count=1).build() + gguf_string("k")
    front += struct.pack("<IIQ", ARRAY, UINT64, gguf.MAX_ARRAY_LEN)
    fake = SparseFile(front, size=1 << 34)
    with pytest.raises(FormatRefused) as caught:
        inspect_file(fake, fake.size)
    assert caught.value.reason == "gguf.header_too_large"
    assert fake.total < 4 << 20


def test_gguf_bad_string_deep_inside_a_long_string_array_is_refused() -> None:
    vocab = ["tok"] * 5000
    bad = small_gguf().kv("tokens", ARRAY, (STRING, [*vocab, b"\xff\xfe", *vocab])).build()
    assert reason(bad) == "gguf.bad_utf8"
    long = small_gguf().kv("tokens", ARRAY, (STRING, [*vocab, "x" * (gguf.MAX_STRING_BYTES + 1)]))
    assert reason(long.build()) == "gguf.string_too_long"
    cut = GGUF(kv_count=1).build() + gguf_string("k") + struct.pack("<IIQ", ARRAY, STRING, 3)
    assert reason(cut + gguf_string("a") + gguf_string("b") + struct.pack("<Q", 9)) == (
        "gguf.truncated"
    )


def test_gguf_string_array_spanning_many_read_chunks_is_accepted() -> None:
    vocab = [f"token-{i}-" + "é" * (i % 50) for i in range(40_000)]  # ~3 MiB of strings
    g = small_gguf().kv("tokenizer.ggml.tokens", ARRAY, (STRING, vocab))
    assert inspect_bytes(g.build()).details["metadata_count"] == 3


def test_gguf_too_many_nested_arrays_are_refused() -> None:
    inner: tuple[int, list[int]] = (UINT8, [])
    g = small_gguf().kv("k", ARRAY, (ARRAY, [inner] * (gguf.MAX_NESTED_ARRAYS + 1)))
    assert reason(g.build()) == "gguf.array_too_long"


def test_gguf_array_nesting_too_deep_is_refused() -> None:
    value: tuple[int, list[object]] = (UINT8, [1])
    for _ in range(gguf.MAX_ARRAY_DEPTH):
        value = (ARRAY, [value])
    assert reason(small_gguf().kv("k", ARRAY, value).build()) == "gguf.array_too_deep"


# --- alignment -----------------------------------------------------------------------------------


@pytest.mark.parametrize("alignment", [0, 3, 48, 1 << 17, 1 << 31])
def test_gguf_bad_alignment_value_is_refused(alignment: int) -> None:
    g = small_gguf().kv("general.alignment", UINT32, alignment)
    assert reason(g.build()) == "gguf.bad_alignment"


@pytest.mark.parametrize(("vtype", "value"), [(UINT64, 32), (STRING, "32"), (FLOAT32, 32.0)])
def test_gguf_alignment_of_the_wrong_type_is_refused(vtype: int, value: object) -> None:
    assert reason(small_gguf().kv("general.alignment", vtype, value).build()) == (
        "gguf.bad_alignment"
    )


# --- tensor infos --------------------------------------------------------------------------------


def test_gguf_duplicate_tensor_name_is_refused() -> None:
    assert reason(small_gguf().tensor("a.weight", [4]).build()) == "gguf.duplicate_tensor"


@pytest.mark.parametrize(
    "dims", [[1, 1, 1, 1, 1], [0], [4, 0], [1 << 63], [1 << 32, 1 << 32]], ids=str
)
def test_gguf_bad_dimensions_are_refused(dims: list[int]) -> None:
    assert reason(one_tensor(dims)) == "gguf.bad_dims"


def test_gguf_huge_n_dims_is_refused_before_reading_dims() -> None:
    g = GGUF(tensor_count=1)
    data = g.build() + gguf_string("t") + struct.pack("<I", 0xFFFFFFFF)
    assert reason(data) == "gguf.bad_dims"


@pytest.mark.parametrize("type_id", [4, 5, 31, 36, 42, 1 << 31])
def test_gguf_unknown_or_removed_ggml_type_is_refused(type_id: int) -> None:
    assert reason(one_tensor([32], type_id)) == "gguf.bad_tensor_type"


def test_gguf_row_not_a_whole_number_of_blocks_is_refused() -> None:
    assert reason(GGUF().tensor("t", [16, 2], "Q4_0").build()) == "gguf.bad_block"
    assert reason(GGUF().tensor("t", [2, 256], "Q4_K").build()) == "gguf.bad_block"


def test_gguf_unaligned_tensor_offset_is_refused() -> None:
    g = small_gguf()
    g.offsets = [0, 33]
    assert reason(g.build()) == "gguf.bad_tensor_offset"


def test_gguf_tensor_out_of_bounds_is_refused() -> None:
    g = small_gguf()
    g.offsets = [0, 1 << 40]
    assert reason(g.build()) == "gguf.tensor_out_of_bounds"
    assert reason(small_gguf().build()[:-24]) == "gguf.tensor_out_of_bounds"


def test_gguf_overlapping_tensors_are_refused() -> None:
    g = small_gguf()
    g.offsets = [0, 0]
    assert reason(g.build()) == "gguf.tensor_overlap"


def test_gguf_gap_between_tensors_is_refused() -> None:
    g = small_gguf()
    g.offsets = [0, 64]
    data = g.build() + bytes(32)
    assert reason(data) == "gguf.tensor_gap"
    g = small_gguf()
    g.offsets = [32, 64]
    assert reason(g.build() + bytes(32)) == "gguf.tensor_gap"


def test_gguf_trailing_bytes_are_refused() -> None:
    assert reason(small_gguf().build() + b"\0") == "gguf.trailing_bytes"
    assert reason(small_gguf(trailing=b"PAYLOAD" * 10).build()) == "gguf.trailing_bytes"
    g = GGUF().kv("general.architecture", STRING, "x")
    assert reason(g.build() + bytes(64)) == "gguf.trailing_bytes"


def test_gguf_reads_are_bounded_chunks() -> None:
    g = small_gguf().kv("big", ARRAY, (STRING, ["x" * 1000] * 3000))
    data = g.build()
    fake = Recorder(data, chunk=7)  # short reads must be retried, not trusted
    assert inspect_file(fake, len(data)).format == "gguf"
    assert fake.largest <= max(gguf.CHUNK_BYTES * 2, 64 * 1024 + 22) <= MAX_HEAD_BYTES
