"""Fuzzing: whatever the bytes, the inspector returns an Inspection or raises FormatRefused.

Any other exception (IndexError, struct.error, UnicodeDecodeError, RecursionError,
MemoryError, ...) is a bug. And whenever a mutated file is still accepted, the reference
library must load it too (differential under fuzz).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.formats import pickles, sniff, zipend
from assay.formats.errors import FormatRefused
from assay.formats.inspect import Inspection, inspect_bytes
from tests.formats_factory import (
    ARRAY,
    GGUF,
    STRING,
    Recorder,
    check_accepted_file_loads,
    gguf_string,
    small_gguf,
    st_file,
    st_raw,
    valid_st,
)

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SAMPLES = [
    (ARTIFACTS / "sample.safetensors").read_bytes(),
    (ARTIFACTS / "sample.gguf").read_bytes(),
    valid_st({"a": ("F16", [3, 5]), "b": ("F4", [4]), "c": ("BOOL", [0])}, {"k": "v"}),
    small_gguf().kv("k", ARRAY, (STRING, ["x", "y"])).build(),
]
REASON = re.compile(
    r"(empty|pickle|tar|zip|gzip|7z|hdf5|polyglot|unknown|safetensors\.[a-z0-9_]+|gguf\.[a-z0-9_]+)"
)
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def judge(data: bytes) -> Inspection | None:
    """Run the inspector; enforce the contract on whatever happens."""
    try:
        found = inspect_bytes(data)
    except FormatRefused as refused:
        assert REASON.fullmatch(refused.reason), refused.reason
        return None
    assert found.size == len(data)
    json.dumps(found.details)
    check_accepted_file_loads(found, data)
    return found


# --- unstructured ------------------------------------------------------------------------------


@settings(FAST, max_examples=800)
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(data: bytes) -> None:
    judge(data)


@settings(FAST, max_examples=300)
@given(st.sampled_from([2, 3]), st.integers(0, 40), st.integers(0, 40), st.binary(max_size=1024))
def test_random_bytes_behind_a_gguf_preamble_never_crash(
    version: int, tensors: int, kvs: int, rest: bytes
) -> None:
    judge(b"GGUF" + struct.pack("<IQQ", version, tensors, kvs) + rest)


@settings(FAST, max_examples=300)
@given(st.integers(0, 1200), st.binary(max_size=1200))
def test_random_bytes_behind_a_safetensors_length_never_crash(length: int, rest: bytes) -> None:
    judge(struct.pack("<Q", length) + b"{" + rest)


# --- mutations of valid files --------------------------------------------------------------------

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 16)),
    st.tuples(
        st.just("int"),
        st.integers(0, 1 << 20),
        st.sampled_from([0, 1, 0x7F, 0xFF, 1 << 31, (1 << 32) - 1, 1 << 63, (1 << 64) - 1]),
    ),
)


def mutate(data: bytes, steps: list[tuple[str, int, Any]]) -> bytes:
    out = bytearray(data)
    for kind, where, arg in steps:
        if not out:
            break
        at = where % len(out)
        if kind == "flip":
            out[at] ^= arg
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = arg
        elif kind == "delete":
            del out[at : at + arg]
        else:
            out[at : at + 8] = struct.pack("<Q", arg)
    return bytes(out)


@settings(FAST, max_examples=1000)
@given(st.sampled_from(SAMPLES), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_valid_files_are_accepted_only_if_the_reference_loads_them(
    sample: bytes, steps: list[tuple[str, int, Any]]
) -> None:
    judge(mutate(sample, steps))


# --- structured: headers that are almost right ---------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
dtypes = st.sampled_from(["F32", "U8", "F4", "BF16", "C64", "X", ""]) | st.text(max_size=4)
dims = st.integers(0, 6) | st.integers(-2, 2**65)
entries = (
    st.fixed_dictionaries(
        {
            "dtype": dtypes,
            "shape": st.lists(dims, max_size=4),
            "data_offsets": st.lists(dims, max_size=3),
        }
    )
    | json_values
)


@settings(FAST, max_examples=300)
@given(
    st.dictionaries(st.text(max_size=6) | st.just("__metadata__"), entries, max_size=5),
    st.integers(0, 300),
    st.booleans(),
)
def test_random_json_headers_never_crash(header: dict[str, Any], data_len: int, pad: bool) -> None:
    try:
        data = st_file(header, b"\x01" * data_len, pad=pad)
    except ValueError:  # NaN floats and such do serialise; circular ones cannot occur
        return
    judge(data)


@settings(FAST, max_examples=200)
@given(st.text(max_size=200), st.integers(0, 64))
def test_random_header_text_never_crashes(text: str, data_len: int) -> None:
    judge(st_raw("{" + text, b"\0" * data_len))


kv_types = st.integers(0, 14)
scalars = st.binary(min_size=0, max_size=9)


@st.composite
def gguf_kv(draw: st.DrawFn) -> bytes:
    key = draw(
        st.sampled_from(["general.alignment", "general.name", "k", "k2"]) | st.text(max_size=4)
    )
    vtype = draw(kv_types)
    if vtype == STRING:
        body = gguf_string(draw(st.text(max_size=8)), length=draw(st.none() | st.integers(0, 20)))
    elif vtype == ARRAY:
        itype = draw(kv_types)
        count = draw(st.integers(0, 6) | st.sampled_from([1 << 24, 1 << 63]))
        body = struct.pack("<IQ", itype, count) + draw(st.binary(max_size=64))
    else:
        body = draw(scalars)
    return gguf_string(key) + struct.pack("<I", vtype) + body


@settings(FAST, max_examples=300)
@given(
    st.lists(gguf_kv(), max_size=5),
    st.lists(
        st.tuples(
            st.text(max_size=6),
            st.lists(st.integers(0, 70) | st.just(1 << 63), max_size=5),
            st.integers(0, 45),
            st.integers(0, 256),
        ),
        max_size=4,
    ),
    st.integers(0, 512),
    st.booleans(),
)
def test_random_gguf_headers_never_crash(
    kvs: list[bytes],
    infos: list[tuple[str, list[int], int, int]],
    data_len: int,
    align_header: bool,
) -> None:
    head = GGUF(tensor_count=len(infos), kv_count=len(kvs)).build() + b"".join(kvs)
    for name, dims, type_id, offset in infos:
        head += gguf_string(name) + struct.pack(
            f"<I{len(dims)}QIQ", len(dims), *dims, type_id, offset
        )
    if align_header:
        head += bytes(-len(head) % 32)
    judge(head + b"\x02" * data_len)


# --- the signature probes ---------------------------------------------------------------------

opcodes = st.sampled_from(list(b"(.0cimNR]}aeltKJMGBXCUTVSIpghq\x80\x8c\x8d\x93\x94\x95"))


@settings(FAST, max_examples=300)
@given(st.lists(opcodes | st.integers(0, 255), max_size=64), st.binary(max_size=64))
def test_random_pickle_opcode_streams_never_crash(ops: list[int], tail: bytes) -> None:
    judge(bytes(ops) + b"\n".join([b"os", b"system", tail]))


@settings(FAST, max_examples=300)
@given(
    st.sampled_from(SAMPLES),
    st.integers(1, 200),
    st.integers(0, 0xFFFF),
    st.integers(0, (1 << 32) - 1),
    st.integers(0, (1 << 32) - 1),
)
def test_zip_directory_records_planted_in_valid_files_never_crash(
    sample: bytes, back: int, entries: int, cd_size: int, cd_offset: int
) -> None:
    record = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, entries, entries, cd_size, cd_offset, 0)
    at = max(0, len(sample) - back)
    judge(sample[:at] + record + sample[at + len(record) :])
    judge(sample[:at] + record)


@settings(FAST, max_examples=300)
@given(
    st.sampled_from(SAMPLES),
    st.integers(0, 300),
    st.sampled_from([0, 1, 56, 76, 1 << 31, (1 << 64) - 1]) | st.integers(0, (1 << 64) - 1),
    st.integers(0, (1 << 64) - 1),
    st.integers(0, (1 << 64) - 1),
    st.booleans(),
)
def test_zip64_locators_and_records_planted_in_valid_files_never_crash(
    sample: bytes, back: int, record_at: int, cd_size: int, cd_offset: int, adjacent: bool
) -> None:
    # ZC-4/ZC-5: a locator pointing anywhere (past the end, into itself, at 2**64 - 1),
    # a ZIP64 record with any sizes, then a classic end record, near the end of the file.
    record = b"PK\x06\x06" + struct.pack("<QHHIIQQQQ", 44, 45, 45, 0, 0, 1, 1, cd_size, cd_offset)
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, record_at % (1 << 64), 1)
    eocd = b"PK\x05\x06" + struct.pack("<HHHHIIH", 0, 0, 1, 1, 0, 0, 0)
    tail = (record if adjacent else b"") + locator + eocd
    at = max(0, len(sample) - back)
    judge(sample[:at] + tail + sample[at + len(tail) :])
    judge(sample + tail)


checksum_fields = st.one_of(
    st.binary(min_size=8, max_size=8),
    st.integers(0, 1 << 21).map(lambda n: b"%07o " % n),
    st.integers(0, (1 << 56) - 1).map(lambda n: b"\x80" + n.to_bytes(7, "big")),
    st.integers(0, (1 << 56) - 1).map(lambda n: b"\xff" + n.to_bytes(7, "big")),
)


@settings(FAST, max_examples=300)
@given(st.sampled_from(SAMPLES), checksum_fields, st.booleans())
def test_tar_checksum_fields_planted_at_offset_148_never_crash(
    sample: bytes, field: bytes, match: bool
) -> None:
    # SN-5: the checksum read every way a tar reader reads it, matching or not.
    data = bytearray(sample.ljust(512, b"\0"))
    data[148:156] = b" " * 8 if match else field
    if match:
        data[148:156] = b"%07o\0" % (256 + sum(data[:148]) + sum(data[156:512]))
    judge(bytes(data))


@settings(FAST, max_examples=200)
@given(st.sampled_from(SAMPLES), st.integers(0, 12), st.binary(max_size=8))
def test_hdf5_signatures_planted_at_library_offsets_never_crash(
    sample: bytes, power: int, spoil: bytes
) -> None:
    # SN-6: at 0, 512, 1024, ... a whole, a partial, or a spoiled superblock signature.
    where = 0 if power == 0 else 256 << power
    signature = (b"\x89HDF\r\n\x1a\n"[: 8 - len(spoil)] + spoil)[:8]
    data = sample.ljust(where, b"\0")
    judge(data[:where] + signature + data[where + len(signature) :])


@settings(FAST, max_examples=300)
@given(st.binary(max_size=4096), st.integers(0, 4096))
def test_end_relative_and_offset_probes_alone_never_crash(data: bytes, cut: int) -> None:
    # The probes read through read_at on their own, on files shorter than their records.
    data = data[:cut]
    read_at = Recorder(data)
    assert zipend.zip_directory_reachable(read_at, len(data)) in (True, False)
    assert sniff.tar_header_at_start(data[:512]) in (True, False)
    if data:
        head = data[: sniff.HEAD_PROBE_BYTES]
        assert sniff.hdf5_superblock(read_at, len(data), head) in (True, False)
        assert pickles.pickle_stream_is_live(read_at, len(data), head) in (True, False)
