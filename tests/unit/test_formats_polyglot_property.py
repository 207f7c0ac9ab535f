"""Differential search for polyglots: whenever a stock reader opens a model, it is refused.

Hypothesis builds archives (zip classic, ZIP64 behind a decoy end record, commented, with
absolute offsets, tar, gzip, 7z, pickle) and plants them where an attacker can put bytes:
inside tensor data with other data before and after, at the very end of the file, in GGUF
alignment padding, in a GGUF metadata string, in a safetensors header's padding. The real
readers (``zipfile``, ``tarfile``, ``gzip``, ``pickletools``) are the oracle:

* if one of them opens the bytes, the inspector must refuse them;
* if none does and the placement left a valid model (tensor data), the inspector must
  accept: refusing is not free, and the checks must not refuse what no reader opens.
"""

from __future__ import annotations

import gzip
import io
import pickle
import random
import tarfile
from collections.abc import Callable

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from assay.formats.errors import FormatRefused
from assay.formats.inspect import inspect_bytes
from tests.formats_factory import GGUF, STRING, UINT32, align, entry, st_file, st_raw
from tests.formats_polyglots import (
    EVIL_PICKLE,
    hdf5_bytes,
    pickle_loads,
    pickle_syntax_walks,
    readers_that_open,
    zip64_with_decoy_eocd,
    zip_bytes,
    zip_with_absolute_offsets,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Archive = Callable[[int], bytes]  # file offset the archive lands at -> its bytes


def tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        info = tarfile.TarInfo("storages")
        info.size = len(EVIL_PICKLE)
        archive.addfile(info, io.BytesIO(EVIL_PICKLE))
    return buf.getvalue()


@st.composite
def archives(draw: st.DrawFn) -> tuple[str, Archive]:
    kinds = ["zip", "zip64", "zip_abs", "tar", "gzip", "7z", "pickle", "hdf5"]
    kind = draw(st.sampled_from(kinds))
    members = {draw(st.sampled_from(["data.pkl", "archive/data.pkl", "a"])): EVIL_PICKLE}
    comment = b"c" * draw(st.integers(0, 64) | st.sampled_from([0xFFFF - 30, 0xFFFF]))
    plain = zip_bytes(members, comment=comment)
    protocol = draw(st.integers(0, 5))
    builders: dict[str, Archive] = {
        "zip": lambda _: plain,
        "zip64": lambda _: zip64_with_decoy_eocd(plain),
        "zip_abs": lambda base: zip_with_absolute_offsets(plain, base),
        "tar": lambda _: tar_bytes(),
        "gzip": lambda _: gzip.compress(EVIL_PICKLE),
        "7z": lambda _: b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(24),
        "pickle": lambda _: pickle.dumps({"w": [1.0] * 4}, protocol=protocol),
        "hdf5": lambda _: HDF5,
    }
    return kind, builders[kind]


HDF5 = hdf5_bytes()


def filler(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


# --- placements: each returns (bytes, whether the model around the archive is still valid) --


def in_safetensors_tensor(
    archive: Archive, lead: int, trail: int, first: int, seed: int
) -> tuple[bytes, bool]:
    """The archive inside the last tensor, ``lead`` bytes in and ``trail`` bytes before its end.

    ``first`` sizes a tensor before it, which moves the header length (the first 8 bytes).
    """
    header = {"a.weight": entry("F32", [first], 0, 4 * first)}
    size_guess = 0
    for _ in range(3):  # the archive's bytes can depend on where it lands
        blob = filler(lead, seed) + archive(size_guess) + filler(trail, seed + 1)
        header["z"] = entry("U8", [len(blob)], 4 * first, 4 * first + len(blob))
        data = st_file(header, filler(4 * first, seed + 2) + blob)
        landed = len(data) - len(blob) + lead
        if landed == size_guess:
            break
        size_guess = landed
    return data, True


def in_safetensors_tensor_at_a_power_of_two(
    archive: Archive, lead: int, trail: int, first: int, seed: int
) -> tuple[bytes, bool]:
    """As ``in_safetensors_tensor``, with the archive moved to a 512 * 2**k file offset:
    where the HDF5 library looks for a superblock."""
    size = len(archive(0))
    lead = 0
    for _ in range(8):  # the header's length can change with the tensor's: settle it
        data, _ = in_safetensors_tensor(archive, lead, trail, first, seed)
        data_start = len(data) - (lead + size + trail)
        target = max(512, 1 << (data_start - 1).bit_length())
        if data_start + lead == target:
            break
        lead = target - data_start
    return data, True


def in_gguf_tensor(
    archive: Archive, lead: int, trail: int, first: int, seed: int
) -> tuple[bytes, bool]:
    g = GGUF().kv("general.architecture", STRING, "llama").tensor("a.weight", [first + 1])
    base = g.build()
    base_len = len(base)
    blob = filler(lead, seed) + archive(base_len + lead) + filler(trail, seed + 1)
    g.tensor("z", [len(blob)], "I8")
    data = bytearray(g.build())
    start = len(data) - align(len(blob), 32)
    data[start : start + len(blob)] = blob
    landed = start + lead
    if landed != base_len + lead:  # rebuild with the offset the archive really got
        blob = filler(lead, seed) + archive(landed) + filler(trail, seed + 1)
        data[start : start + len(blob)] = blob
    return bytes(data), True


def in_gguf_padding(
    archive: Archive, lead: int, trail: int, first: int, seed: int
) -> tuple[bytes, bool]:
    """Right after the header, inside 64 KiB alignment padding (GG-18 refuses it)."""
    g = GGUF(alignment=1 << 16).kv("general.alignment", UINT32, 1 << 16)
    g.kv("general.architecture", STRING, "llama").tensor("a.weight", [first + 1])
    data = bytearray(g.build())
    header_end = int(str(inspect_bytes(bytes(data)).details["header_bytes"]))
    room = align(header_end, 1 << 16) - header_end
    blob = archive(header_end)[:room]
    at = header_end + min(lead, room - len(blob))
    data[at : at + len(blob)] = blob
    return bytes(data), False


def in_gguf_string(
    archive: Archive, lead: int, trail: int, first: int, seed: int
) -> tuple[bytes, bool]:
    """The archive as a metadata string value, the file ending right after it (no tensors).

    Valid GGUF exactly when the archive's bytes happen to be UTF-8 (GG-7).
    """
    key_and_type = 8 + len("blob") + 4 + 8
    blob = archive(24 + key_and_type)
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        return GGUF().kv("blob", STRING, blob).build(), False
    return GGUF().kv("blob", STRING, blob).build(), True


def in_safetensors_header_padding(
    archive: Archive, lead: int, trail: int, first: int, seed: int
) -> tuple[bytes, bool]:
    raw = b'{"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    blob = archive(8 + len(raw))
    return st_raw(raw + blob + b" " * 7, b"x"), False


PLACEMENTS = {
    "safetensors_tensor": in_safetensors_tensor,
    "safetensors_tensor_at_a_power_of_two": in_safetensors_tensor_at_a_power_of_two,
    "gguf_tensor": in_gguf_tensor,
    "gguf_padding": in_gguf_padding,
    "gguf_string": in_gguf_string,
    "safetensors_header_padding": in_safetensors_header_padding,
}
# Trailing data after the archive: zip readers search the last 64 KiB + 22 bytes (zipfile:
# 65,558) to 65 KiB (Go), so sizes around those edges matter most.
trails = st.integers(0, 300) | st.sampled_from([65_400, 65_470, 65_490, 65_510, 65_536, 66_000])


@SETTINGS
@given(
    archives(),
    st.sampled_from(sorted(PLACEMENTS)),
    st.integers(0, 200),
    trails,
    st.integers(1, 40),
    st.integers(0, 1 << 16),
)
@example(
    ("zip64", lambda _: zip64_with_decoy_eocd(zip_bytes({"a": EVIL_PICKLE}))),
    "safetensors_tensor",
    0,
    0,
    2,
    0,
)
def test_a_model_any_stock_reader_opens_is_refused(
    archive: tuple[str, Archive],
    placement: str,
    lead: int,
    trail: int,
    first: int,
    seed: int,
) -> None:
    kind, build = archive
    data, valid_model = PLACEMENTS[placement](build, lead, trail, first, seed)
    opened = readers_that_open(data)
    try:
        found = inspect_bytes(data)
    except FormatRefused as refused:
        event(f"refused: opened by {opened or 'none'}")
        assert opened or not valid_model, f"{kind} in {placement}: no reader opens it, {refused}"
        return
    event("accepted")
    assert not opened, f"{kind} in {placement} accepted as {found.format}, but {opened} open it"
    assert valid_model, f"{kind} in {placement} accepted, yet that placement breaks the model"


# --- pickles from offset 0 -------------------------------------------------------------------

# The first three bytes of a small header length (the rest are zeros): either anything, or
# an opcode whose argument jumps over those zeros to the k-th character of the first tensor
# name (byte 10 + k), or a text opcode whose line ends at a newline in the data.
JUMPS = [(ord("U"), 8), (ord("C"), 8), (0x8C, 8), (ord("B"), 5), (ord("X"), 5), (ord("T"), 5)]
LEADS = st.one_of(
    st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 3)),
    st.tuples(st.sampled_from(JUMPS), st.integers(0, 2)).map(
        lambda jump: (jump[0][0], jump[0][1] + jump[1], 0)
    ),
    st.sampled_from(JUMPS).map(lambda jump: (jump[0], jump[1], 0)),  # onto the first char
    st.tuples(st.sampled_from([ord("V"), ord("P")]), st.integers(0, 127), st.integers(0, 3)),
)
WHOLE_PICKLES = st.from_regex(r"[N)\]}(0]{0,3}[.tl]{1,2}", fullmatch=True)
OPCODE_TEXT = st.one_of(
    st.text(st.sampled_from(list("(.0NR]}aelt)KJMGBXCUTVSIpghqd")), max_size=8),
    WHOLE_PICKLES,
    WHOLE_PICKLES,
)
DATA_BYTES = st.binary(max_size=64) | st.lists(
    st.sampled_from(list(b"\n.(N)]}aeltK01Vcos.system")), max_size=64
).map(bytes)


@SETTINGS
@given(LEADS, OPCODE_TEXT, DATA_BYTES)
@example((0x80, 2, 0x47), ".b", b"x")  # PROTO 2, BINFLOAT, STOP in the name
@example((0x28, 0x93, 0), "", b"")  # MARK, STACK_GLOBAL: nothing to import; genops walks on
def test_a_model_that_unpickles_from_offset_0_is_refused(
    lead: tuple[int, int, int], name: str, tail: bytes
) -> None:
    b0, b1, b2 = lead
    length = b0 | b1 << 8 | b2 << 16
    header = st_file({name or "x": entry("U8", [len(tail)], 0, len(tail))}, pad=False)[8:]
    if length < len(header):
        short = len(header) - length
        length += short + (-short % 256)  # longer by whole 256s: b0 stays
    data = st_raw(header + b" " * (length - len(header)), tail)
    loads, parses = pickle_loads(data), pickle_syntax_walks(data)
    try:
        inspect_bytes(data)
    except FormatRefused as refused:
        event(f"refused ({'loads' if loads else 'parses' if parses else 'neither'})")
        # Never refused as a pickle unless pickletools at least parses a whole pickle.
        assert refused.reason != "polyglot" or parses, refused.detail
        return
    event(f"accepted ({'parses' if parses else 'neither'})")
    assert not loads, "accepted, but the unpickler reads it from offset 0"
