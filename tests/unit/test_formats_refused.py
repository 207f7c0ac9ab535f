"""Refused formats (pickle, zip, gzip, 7z, empty, unknown), polyglots, and read discipline.

File names never matter: every test hands the inspector bytes only, so "renamed" attacks
are simply the foreign bytes themselves.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import io
import json
import pickle
import pickletools
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from assay.formats import pickles, sniff
from assay.formats.errors import FormatRefused
from assay.formats.inspect import MAX_HEAD_BYTES, Inspection, inspect_bytes, inspect_file
from tests.formats_factory import (
    GGUF,
    Recorder,
    SparseFile,
    entry,
    gguf_tensor_info,
    reference_loads_safetensors,
    small_gguf,
    st_raw,
    valid_st,
)
from tests.formats_polyglots import hdf5_bytes

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


def reason(data: bytes) -> str:
    with pytest.raises(FormatRefused) as caught:
        inspect_bytes(data)
    return caught.value.reason


class Evil:
    """Unpickling this calls a function: the whole reason pickle is refused. Never loaded."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def torch_like_zip() -> bytes:
    """A PyTorch-style checkpoint: real ``torch.save`` when installed, else its layout."""
    try:
        import torch  # type: ignore[import-not-found]
    except ImportError:
        return zip_bytes(
            {
                "archive/data.pkl": pickle.dumps({"w": Evil()}, protocol=2),
                "archive/version": b"3\n",
                "archive/data/0": bytes(16),
            }
        )
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buf)
    return buf.getvalue()


# --- refused formats -------------------------------------------------------------------------


def test_empty_file_is_refused() -> None:
    assert reason(b"") == "empty"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
@pytest.mark.parametrize(
    "payload",
    [{"a": [1, 2, 3]}, collections.OrderedDict(a=1), 7, "x" * 70_000, Evil()],
    ids=["dict", "ordereddict", "int", "long-string", "reduce"],
)
def test_pickle_at_every_protocol_is_refused(protocol: int, payload: object) -> None:
    assert reason(pickle.dumps(payload, protocol=protocol)) == "pickle"


@pytest.mark.parametrize(
    "text",
    [b"(dp0\nVa\np1\nI1\ns.", b"ccopy_reg\n_reconstructor\np0\n(c__main__\nX\n", b"]q\x00.", b"}."],
)
def test_text_pickles_are_refused(text: bytes) -> None:
    assert reason(text) == "pickle"


def test_pickle_renamed_to_safetensors_is_refused() -> None:
    assert reason(pickle.dumps({"weight": [0.0] * 64}, protocol=4)) == "pickle"


def test_legacy_torch_pickle_with_persistent_ids_is_refused() -> None:
    assert reason(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.") == "pickle"


def test_pytorch_zip_checkpoint_is_refused() -> None:
    assert reason(torch_like_zip()) == "zip"


def test_empty_zip_and_zip_behind_junk_are_refused() -> None:
    assert reason(zip_bytes({})) == "zip"
    assert reason(b"#!/bin/sh\nexec python\n" * 40 + zip_bytes({"data.pkl": b"x"})) == "zip"


def test_tar_archives_are_refused_as_tar() -> None:
    # torch.load's legacy format is a tar whose 'storages' member is a pickle.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as archive:
        payload = pickle.dumps(Evil())
        info = tarfile.TarInfo("storages")
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    assert reason(buf.getvalue()) == "tar"
    assert reason(buf.getvalue()[:512]) == "tar"  # the header alone is enough
    assert reason(gzip.compress(buf.getvalue())) == "gzip"


def test_hdf5_files_are_refused_as_hdf5() -> None:
    assert reason(hdf5_bytes()) == "hdf5"
    assert reason(bytes(512) + hdf5_bytes()) == "hdf5"  # behind a 512-byte user block


def test_gzip_and_7z_are_refused() -> None:
    assert reason(gzip.compress(pickle.dumps([1, 2]))) == "gzip"
    assert reason(b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(40)) == "7z"


@pytest.mark.parametrize(
    "data",
    [b"x", b"hello world, plain text", b'"""Write the docs', bytes(range(256)), b"{}", bytes(9)],
    ids=repr,
)
def test_unrecognised_bytes_are_refused_as_unknown(data: bytes) -> None:
    assert reason(data) == "unknown"


def test_invalid_safetensors_that_is_also_a_pickle_is_named_as_pickle() -> None:
    # 0x80 0x02 (PROTO 2), 0x47 (BINFLOAT, eats 8 bytes), then '.' STOP inside the header.
    header = b'{"a.' + b"x" * 100
    data = st_raw(header + b" " * (0x470280 - len(header)))
    assert reason(data) == "pickle"


# --- polyglots: valid models that are also something else -------------------------------------


def pickle_polyglot() -> bytes:
    """Valid safetensors AND a loadable pickle: the header length 0x470280 is, byte by byte,
    PROTO 2 then BINFLOAT, whose 8-byte argument swallows the rest of the length and '{"a',
    landing on '.' (STOP) inside the first tensor name."""
    header = json.dumps({"a.b": entry("U8", [1], 0, 1)}, separators=(",", ":")).encode()
    return st_raw(header + b" " * (0x470280 - len(header)), b"x")


def test_file_both_safetensors_and_pickle_is_refused_as_polyglot() -> None:
    data = pickle_polyglot()
    assert isinstance(pickle.loads(data), float)  # it really is a pickle
    assert reference_loads_safetensors(data) == 1  # and really valid safetensors
    assert reason(data) == "polyglot"


def test_safetensors_with_a_zip_in_its_last_tensor_is_refused_as_polyglot() -> None:
    archive = zip_bytes({"archive/data.pkl": pickle.dumps(Evil())})
    data = valid_st({"w": ("F32", [2]), "z": ("U8", [len(archive)])})
    data = data[: -len(archive)] + archive
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["archive/data.pkl"]
    assert reason(data) == "polyglot"


def test_gguf_with_a_zip_in_its_tensor_data_is_refused_as_polyglot() -> None:
    archive = zip_bytes({"archive/data.pkl": pickle.dumps(Evil())})
    size = -(-len(archive) // 32) * 32
    g = GGUF().tensor("z", [size], "I8")
    data = g.build()
    data = data[:-size] + archive + bytes(size - len(archive))
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["archive/data.pkl"]
    assert reason(data) == "polyglot"


def test_safetensors_starting_with_gzip_magic_is_refused_as_polyglot() -> None:
    n = int.from_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "little")
    header = json.dumps({"a": entry("U8", [1], 0, 1)}, separators=(",", ":")).encode()
    data = st_raw(header + b" " * (n - len(header)), b"x")
    assert reference_loads_safetensors(data) == 1
    assert reason(data) == "polyglot"


def test_safetensors_starting_with_zip_local_header_is_refused_as_polyglot() -> None:
    n = int.from_bytes(b"PK\x03\x04\x00\x00\x00\x00", "little")  # a 67 MB header
    header = json.dumps({"a": entry("U8", [1], 0, 1)}, separators=(",", ":")).encode()
    assert reason(st_raw(header + b" " * (n - len(header)), b"x")) == "polyglot"


def test_fake_zip_signature_in_tensor_data_is_not_a_polyglot() -> None:
    # A bare end-of-central-directory signature turns up by chance in weights; without a
    # central directory it points at, no zip reader can use it.
    blob = b"PK\x05\x06" + bytes(18) + b"PK\x05\x06\x00\x00\x00\x00\x01\x00\x01\x00" + bytes(10)
    data = valid_st({"w": ("U8", [len(blob)])})
    assert inspect_bytes(data[: -len(blob)] + blob).format == "safetensors"


@pytest.mark.parametrize("length", [0x80, 0x280, 0x580, 0x2E, 0x63, 0x50, 0x56])
def test_header_length_that_merely_starts_like_a_pickle_opcode_is_not_a_polyglot(
    length: int,
) -> None:
    # 0x80 0x02 0x00 ... is PROTO 2 followed by an invalid opcode: no unpickler gets past it.
    header = json.dumps({"a": entry("U8", [1], 0, 1)}, separators=(",", ":")).encode()
    data = st_raw(header + b" " * (length - len(header)), b"x") if length > 40 else None
    if data is None:
        data = st_raw(b"{}" + b" " * (length - 2))
    assert inspect_bytes(data).format == "safetensors"


def test_pickle_walk_follows_length_jumps_beyond_the_first_window() -> None:
    # BINBYTES with a 200 KiB argument, then GLOBAL: the walk must follow the jump.
    body = b"\x80\x04B" + (200 * 1024).to_bytes(4, "little") + bytes(200 * 1024)
    data = body + b"cos\nsystem\n" + bytes(100)
    fake = Recorder(data)
    assert pickles.pickle_stream_is_live(fake, len(data), data[: sniff.HEAD_PROBE_BYTES])


@pytest.mark.parametrize(
    ("stream", "live"),
    [
        (b"S'abc'\n.", True),
        (b"Sabc\n.", False),  # STRING's argument must be quoted
        (b"cos\nsystem\n", True),
        (b"c\x00os\nsystem\n", False),  # not an importable module name
        (b"I" + b"1" * 5000 + b"\n.", False),  # int() refuses that many digits
        (b"\x80\x06.", False),  # protocol 6 does not exist
        (b"\x80\x05\x8c\x02os\x8c\x06system\x93", True),
        (b"\x80\x05\x8c\x02os\x94h\x00\x93", True),  # the second str from the memo
        (b"\x80\x05\x93", False),  # STACK_GLOBAL with nothing to pop
        (b"(\x93", False),  # a safetensors length of 0x...9328: a MARK is not a str
        (b".", False),  # STOP on an empty stack
        (b"N.", True),
        (b"\x95" + bytes(8) + b"N", False),  # ends mid-stream
        # Line arguments are converted as the unpicklers convert them (C or Python):
        (b"I017\n.", True),  # C strtol, base 0: octal
        (b"I12\x00junk\n.", True),  # C strtol stops at a NUL
        (b"I 0x1f\n.", True),
        (b"I09\n.", False),
        (b"I\n.", False),
        (b"L12L\n.", True),
        (b"F1_0\n.", True),  # Python's float()
        (b"Fnope\n.", False),
        (b"g1 \n.", True),
        (b"p\x00\x00\x00{\n.", False),  # a safetensors length 0x70 reads as PUT
        (b"Pabc\n.", True),
        (b"P\xff\n.", False),  # persistent ids are ASCII
        (b"S'abc\n.", False),  # quoted at both ends
        # No length cap an attacker can pass: a line is dead at its first wrong byte.
        (b"I\x00anything at all\n.", True),  # C strtol converts nothing: 0
        (b"I" + b" " * 5000 + b"1\n.", True),  # whitespace pads numbers without limit
        (b"I" + b"0" * 5000 + b"1\n.", True),  # octal to strtol, no digit limit
        (b"L" + b" " * 5000 + b"1\n.", True),
        (b"F" + b"1" * 5000 + b"\n.", True),  # Python's float() takes it (as inf)
        (b"I" + b"1" * 10 + b"z\n.", False),
        (b"\x80\x04cbuiltins\n" + b"print.__self__." * 100 + b"len\n.", True),  # 1.5 KB
    ],
)
def test_pickle_walk_verdicts(stream: bytes, live: bool) -> None:
    assert pickles.pickle_stream_is_live(Recorder(stream), len(stream), stream) is live


def test_header_length_that_reads_as_put_with_a_bad_argument_is_not_a_polyglot() -> None:
    # Length 0x70 is PUT, whose line runs to the first newline in the data; int() of that
    # line fails in both unpicklers, so no loader unpickles this valid model.
    header = json.dumps({"t": entry("U8", [3], 0, 3)}, separators=(",", ":")).encode()
    data = st_raw(header + b" " * (0x70 - len(header)), b"\nN.")
    with pytest.raises(ValueError, match="invalid literal for int"):
        list(pickletools.genops(data))
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)
    assert inspect_bytes(data).format == "safetensors"


# --- read discipline ----------------------------------------------------------------------------


def corpus() -> list[bytes]:
    return [
        (ARTIFACTS / "sample.safetensors").read_bytes(),
        (ARTIFACTS / "sample.gguf").read_bytes(),
        pickle.dumps(Evil(), protocol=0),
        torch_like_zip(),
        small_gguf(tensor_count=1 << 60).build(),
        st_raw(b"{}", length=1 << 50),
        pickle_polyglot(),
    ]


def test_inspect_file_never_asks_read_at_for_more_than_max_head_bytes() -> None:
    for data in corpus():
        fake = Recorder(data)
        with contextlib.suppress(FormatRefused):
            inspect_file(fake, len(data))
        assert fake.largest <= MAX_HEAD_BYTES
        assert all(0 <= offset and offset + length <= len(data) for offset, length in fake.calls)


def test_short_reads_are_retried_not_trusted() -> None:
    for name in ("sample.safetensors", "sample.gguf"):
        data = (ARTIFACTS / name).read_bytes()
        assert isinstance(inspect_file(Recorder(data, chunk=3), len(data)), Inspection)


def test_file_shorter_than_its_declared_size_is_refused() -> None:
    data = (ARTIFACTS / "sample.gguf").read_bytes()
    with pytest.raises(FormatRefused):
        inspect_file(Recorder(data), len(data) + 100)


def test_multi_gigabyte_model_costs_a_few_small_reads() -> None:
    elements = 2 << 30  # 8 GiB of F32, never materialised
    header = GGUF(tensor_count=1).build() + gguf_tensor_info("huge", [elements], 0, 0)
    header += bytes(-len(header) % 32)
    fake = SparseFile(header, size=len(header) + elements * 4)
    assert inspect_file(fake, fake.size).format == "gguf"
    assert fake.total < 4 << 20  # a header chunk, the head and tail probes


def test_negative_size_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="size"):
        inspect_file(Recorder(b""), -1)


def test_pickle_opcode_table_matches_the_stdlib() -> None:
    kinds = {
        pickletools.UP_TO_NEWLINE: {pickles._LINE, pickles._PAIR},
        pickletools.TAKEN_FROM_ARGUMENT1: {pickles._LEN1},
        pickletools.TAKEN_FROM_ARGUMENT4: {pickles._LEN4S},
        pickletools.TAKEN_FROM_ARGUMENT4U: {pickles._LEN4U},
        pickletools.TAKEN_FROM_ARGUMENT8U: {pickles._LEN8U},
    }
    expected = {ord(op.code) for op in pickletools.opcodes}
    assert set(pickles._ARGS) == expected
    for op in pickletools.opcodes:
        mine = pickles._ARGS[ord(op.code)]
        if op.arg is None:
            assert mine == 0, op.name
        elif op.arg.n >= 0:
            assert mine == op.arg.n, op.name
        else:
            assert mine in kinds[op.arg.n], op.name


def test_every_reason_code_in_the_source_is_documented() -> None:
    root = Path(__file__).resolve().parents[2]
    docs = (root / "docs" / "formats.md").read_text()
    codes = {"empty", "pickle", "tar", "zip", "gzip", "7z", "hdf5", "polyglot", "unknown"}
    for module in ("safetensors", "gguf"):
        source = (root / "daemon" / "assay" / "formats" / f"{module}.py").read_text()
        codes |= {f"{module}.{c}" for c in re.findall(r'_refuse\(\s*"([a-z0-9_]+)"', source)}
        codes |= set(re.findall(rf'"({module}\.[a-z0-9_]+)"', source))
    missing = sorted(code for code in codes if f"| `{code}` |" not in docs)
    assert not missing, f"reason codes missing from docs/formats.md: {missing}"
    assert len(codes) > 40
