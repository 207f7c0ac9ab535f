"""Polyglots: valid models that a stock reader of a refused format also opens.

The rule under test (docs/formats.md, "Where readers look"): whenever ``zipfile``,
``tarfile``, ``gzip`` or ``pickletools`` opens the bytes from an offset that reader really
uses, the inspector refuses the file. Each attack below is one member of that class; the
property tests in ``test_formats_polyglot_property.py`` search the rest.
"""

from __future__ import annotations

import collections
import gzip
import io
import json
import pickle
import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from assay.formats import safetensors as st_module
from assay.formats import sniff, zipend
from assay.formats.errors import FormatRefused
from assay.formats.inspect import inspect_bytes
from assay.formats.sniff import HDF5_SIGNATURE
from tests.formats_factory import (
    GGUF,
    STRING,
    UINT32,
    entry,
    reference_loads_gguf,
    reference_loads_safetensors,
    st_file,
    st_raw,
    valid_st,
)
from tests.formats_polyglots import (
    EVIL_PICKLE,
    Evil,
    gzip_opens,
    hdf5_bytes,
    hdf5_opens,
    plant_tar_header,
    readers_that_open,
    tar_opens,
    zip64_with_decoy_eocd,
    zip_bytes,
    zip_opens,
    zip_opens_in_go_s_window,
)


def refusal(data: bytes) -> str:
    """``reason: detail`` of the inspector's refusal (it must refuse)."""
    with pytest.raises(FormatRefused) as caught:
        inspect_bytes(data)
    return f"{caught.value.reason}: {caught.value.detail}"


def in_last_tensor(archive: bytes) -> bytes:
    """A valid safetensors file whose last tensor's bytes are exactly ``archive``."""
    data = valid_st({"weight": ("F32", [2]), "z": ("U8", [len(archive)])})
    return data[: -len(archive)] + archive


def test_zip64_polyglot_in_tail_tensor_is_refused() -> None:
    # The outside review's finding, verbatim: the classic end record holds ordinary values
    # that point nowhere; zipfile follows the ZIP64 locator and record just before it.
    archive = zip64_with_decoy_eocd(zip_bytes({"archive/data.pkl": EVIL_PICKLE}))
    data = in_last_tensor(archive)
    assert reference_loads_safetensors(data) == 2  # a valid model...
    with zipfile.ZipFile(io.BytesIO(data)) as opened:  # ...that zipfile opens
        member = opened.read("archive/data.pkl")
    assert "REDUCE" in {op.name for op, _, _ in pickletools.genops(member)}
    assert refusal(data) == "polyglot: valid safetensors that is also a zip file"


# --- tar: a header at offset 0 ------------------------------------------------------------------


def test_tar_header_at_offset_0_that_is_also_a_safetensors_length_prefix_is_refused() -> None:
    # The 8-byte length is the start of the tar member's name; a metadata string carries
    # the numeric fields and a checksum that matches: tarfile.open (torch.load's legacy
    # path) lists a member, the Rust reference loads the model.
    model = st_file({"__metadata__": {"x": "a" * 600}, "t": entry("U8", [4], 0, 4)}, b"abcd")
    data = plant_tar_header(model)
    assert reference_loads_safetensors(data) == 1
    assert tar_opens(data)
    assert refusal(data) == "polyglot: valid safetensors that is also a tar file"


def test_tar_header_over_a_gguf_preamble_is_refused() -> None:
    # The string value runs from byte 47 to 647, over every numeric field of the header.
    model = GGUF().kv("pad", STRING, "b" * 600).tensor("a.weight", [8]).build()
    data = plant_tar_header(model)
    reference_loads_gguf(data)
    assert tar_opens(data)
    assert refusal(data) == "polyglot: valid gguf that is also a tar file"


def test_tar_checksum_is_read_as_tarfile_and_libarchive_read_it() -> None:
    block = bytearray(plant_tar_header(b"x" * 512))
    assert sniff.tar_header_at_start(bytes(block))
    total = 256 + sum(block[:148]) + sum(block[156:])
    spellings = [
        b"%o\0" % total,  # tarfile: NUL-terminated
        b"  %o  " % total,  # stripped
        b"0o%o" % total,  # Python's int(text, 8) takes the prefix too
        b"\x80" + total.to_bytes(7, "big"),  # GNU base-256
        b"%o\x01\x02" % total,  # libarchive: the leading octal digits
    ]
    for field in spellings:
        block[148:156] = field.ljust(8, b"\0")[:8]
        assert sniff.tar_header_at_start(bytes(block)), field
    block[148:156] = b"%07o " % (total + 1)
    assert not sniff.tar_header_at_start(bytes(block))
    assert not sniff.tar_header_at_start(bytes(512))  # an end-of-archive block


# --- HDF5: a superblock at 0 or 512 * 2**k ---------------------------------------------------


def tensor_at(offset: int, blob: bytes) -> bytes:
    """A valid safetensors file whose last tensor holds ``blob`` at file offset ``offset``."""
    lead = 0
    for _ in range(8):
        data = in_last_tensor(b"\xaa" * lead + blob)
        start = len(data) - len(blob) - lead
        if start + lead == offset:
            return data
        lead = offset - start
    raise AssertionError("layout did not settle")


@pytest.mark.parametrize("offset", [512, 1024, 4096])
def test_hdf5_file_at_a_power_of_two_inside_tensor_data_is_refused(offset: int) -> None:
    # h5py (so tf.keras.models.load_model, which tests h5py.is_hdf5 on any path) finds
    # the superblock at 512 * 2**k and opens the rest as the whole HDF5 file.
    data = tensor_at(offset, hdf5_bytes())
    assert reference_loads_safetensors(data) == 2
    assert hdf5_opens(data)
    assert refusal(data) == "polyglot: valid safetensors that is also a hdf5 file"


def test_hdf5_file_at_any_other_offset_is_just_tensor_data() -> None:
    data = tensor_at(700, hdf5_bytes())
    assert not hdf5_opens(data)
    assert inspect_bytes(data).format == "safetensors"


# --- the rest of the class, attacked from outside ------------------------------------------------


def test_zip_end_record_found_through_a_full_comment_is_refused() -> None:
    archive = zip_bytes({"data.pkl": EVIL_PICKLE}, comment=b"c" * 0xFFFF)
    data = in_last_tensor(archive)
    assert zip_opens(data)
    assert refusal(data) == "polyglot: valid safetensors that is also a zip file"


@pytest.mark.parametrize("after", [0x10000, 65 * 1024 - 22])
def test_zip_end_record_past_a_64_kib_comment_is_still_found(after: int) -> None:
    # zipfile searches the last 64 KiB + 22 bytes (so an end record 65,558 bytes from the
    # end, one more than the longest comment allows), Go's archive/zip the last 65 KiB: the
    # data after the record need not be a comment at all.
    archive = zip_bytes({"data.pkl": EVIL_PICKLE})
    data = in_last_tensor(archive + b"w" * after)
    assert zip_opens_in_go_s_window(data)
    assert zip_opens(data) is (after + 22 <= 0x10000 + 22)
    assert refusal(data) == "polyglot: valid safetensors that is also a zip file"


def test_zip_end_record_beyond_every_reader_s_window_is_just_tensor_data() -> None:
    data = in_last_tensor(zip_bytes({"data.pkl": EVIL_PICKLE}) + b"w" * (65 * 1024))
    assert not zip_opens(data) and not zip_opens_in_go_s_window(data)
    assert inspect_bytes(data).format == "safetensors"


def test_zip64_record_reached_only_through_the_locator_offset_is_refused() -> None:
    # "Extensible data" after the ZIP64 record: zipfile (which assumes none) misses the
    # record, miniz, Go and libzip follow the locator's absolute offset to it.
    archive = zip64_with_decoy_eocd(zip_bytes({"data.pkl": EVIL_PICKLE}))
    at = archive.rfind(b"PK\x06\x07")
    padded = archive[:at] + b"x" * 16 + archive[at:]
    data = in_last_tensor(padded)
    offset = data.rfind(b"PK\x06\x06")
    locator = data.rfind(b"PK\x06\x07")
    data = data[: locator + 8] + offset.to_bytes(8, "little") + data[locator + 16 :]
    assert not zip_opens(data)  # zipfile finds no record, falls back on the decoy, fails
    assert refusal(data) == "polyglot: valid safetensors that is also a zip file"


def test_more_end_record_signatures_than_the_budget_are_refused() -> None:
    blob = b"PK\x05\x06" * (zipend.MAX_EOCD_CANDIDATES + 1)
    assert refusal(in_last_tensor(blob)) == "polyglot: valid safetensors that is also a zip file"
    assert inspect_bytes(in_last_tensor(blob[4:])).format == "safetensors"


def utf8_zip() -> bytes:
    """A zip whose every byte is ASCII, so it can be a GGUF string: a protocol 0 pickle,
    trailing bytes after STOP varied until the CRC is ASCII too."""
    for nonce in range(10_000):
        content = pickle.dumps(Evil(), protocol=0) + b"#%d" % nonce
        info = zipfile.ZipInfo("a.pkl", (1980, 1, 1, 0, 0, 0))
        info.external_attr = 0x20
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as archive:
            archive.writestr(info, content)
        if buf.getvalue().isascii():
            return buf.getvalue()
    raise AssertionError("no ASCII zip found")


def test_zip_inside_a_gguf_metadata_string_is_refused() -> None:
    data = GGUF().kv("general.architecture", STRING, "llama").kv("x", STRING, utf8_zip()).build()
    reference_loads_gguf(data)
    with zipfile.ZipFile(io.BytesIO(data)) as opened:
        assert "REDUCE" in {op.name for op, _, _ in pickletools.genops(opened.read("a.pkl"))}
    assert refusal(data) == "polyglot: valid gguf that is also a zip file"


def test_gzip_member_in_gguf_padding_is_refused_and_inside_tensor_data_is_not() -> None:
    member = gzip.compress(b"payload")
    g = GGUF(alignment=256).kv("general.alignment", UINT32, 256).tensor("a", [4])
    data = g.build()
    header_end = int(str(inspect_bytes(data).details["header_bytes"]))
    padded = data[:header_end] + member + data[header_end + len(member) :]
    assert refusal(padded).startswith("gguf.nonzero_padding")
    # No gzip reader looks anywhere but offset 0: a member in tensor data is only data.
    inside = in_last_tensor(member)
    assert not gzip_opens(inside) and not readers_that_open(inside)
    assert inspect_bytes(inside).format == "safetensors"


def test_gguf_that_pickle_loads_from_offset_0_is_refused() -> None:
    # 'G' (BINFLOAT) eats the magic's "GUF", the version and a byte of tensor_count; the
    # next byte, tensor_count's second, is 'V' (UNICODE) when there are 0x5600 tensors,
    # whose line runs to the first newline: inside a metadata string, where the pickle goes.
    def gguf_with(payload: bytes) -> bytes:
        g = GGUF().kv("p", STRING, payload)
        for i in range(0x5600):
            g.tensor(f"t{i}", [1])
        return g.build()

    data = gguf_with(b"\nccollections\nOrderedDict\n)R.")
    assert pickle.loads(data) == collections.OrderedDict()  # imports and calls a class
    assert refusal(data) == "polyglot: valid gguf that is also a pickle file"
    assert inspect_bytes(gguf_with(b" ccollections OrderedDict )R.")).format == "gguf"


@pytest.mark.parametrize(
    "magic",
    [
        b"BZh9",  # bzip2: tarfile.open tries it
        b"\xfd7zXZ\x00",  # xz
        b"\x28\xb5\x2f\xfd",  # zstd (tarfile in Python 3.14)
        b"\x04\x22\x4d\x18",  # lz4 frame
        b"7z\xbc\xaf\x27\x1c",
        b"\x93NUMPY",  # numpy.load, which can unpickle object arrays
        b"PK\x05\x06",  # an empty zip's end record first
        b"PK\x07\x08",
        b"Rar!\x1a\x07",
        HDF5_SIGNATURE,
    ],
    ids=repr,
)
def test_magics_that_no_valid_model_can_start_with(magic: bytes) -> None:
    # A safetensors length above 100,000,000 is refused (ST-2) and GGUF starts "GGUF", so
    # a model can only begin with a magic whose smallest 8-byte completion is a small
    # length: gzip's and zip's local header are (and SN-1 refuses them); these are not.
    assert int.from_bytes(magic[:8].ljust(8, b"\0"), "little") > st_module.MAX_HEADER_BYTES
    assert not magic.startswith(b"GGUF")
    for small in (b"\x1f\x8b", b"PK\x03\x04"):
        assert int.from_bytes(small.ljust(8, b"\0"), "little") <= st_module.MAX_HEADER_BYTES


def test_gguf_with_0x2e00_tensors_is_a_pickle_of_one_float_and_is_refused() -> None:
    # The documented cost of "whatever the unpickler loads is refused": BINFLOAT eats the
    # magic, tensor_count's second byte (0x2E) is STOP. Harmless, but a complete pickle.
    g = GGUF()
    for i in range(0x2E00):
        g.tensor(f"t{i}", [1])
    data = g.build()
    assert isinstance(pickle.loads(data), float)
    assert refusal(data) == "polyglot: valid gguf that is also a pickle file"


def test_pickle_behind_a_header_length_reaching_a_long_dotted_global_is_refused() -> None:
    # Length 0x..56 is UNICODE, whose line runs through the JSON header to the first
    # newline, at the start of the tensor data; there GLOBAL names builtins.dict through
    # a 1.2 KB chain (print.__self__ is the builtins module), which protocol 4 resolves.
    name = b"print.__self__." * 80 + b"dict"
    payload = b"\n\x80\x04cbuiltins\n" + name + b"\n)R."
    header = json.dumps({"p": entry("U8", [len(payload)], 0, len(payload))}).encode()
    length = 0x56 + 256 * (1 + len(header) // 256)
    data = st_raw(header + b" " * (length - len(header)), payload)
    assert reference_loads_safetensors(data) == 1
    assert pickle.loads(data) == {}  # imports builtins.dict through the chain, calls it
    assert refusal(data) == "polyglot: valid safetensors that is also a pickle file"


def test_safetensors_file_that_python_runs_as_a_zip_app_is_refused(tmp_path: Path) -> None:
    # `python model.safetensors` finds the zip from the end (zipimport) and runs its
    # __main__.py: a valid model that is also a program.
    data = in_last_tensor(zip_bytes({"__main__.py": b"print('ran from a model')"}))
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    run = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.stdout == "ran from a model\n"
    assert reference_loads_safetensors(data) == 2
    assert refusal(data) == "polyglot: valid safetensors that is also a zip file"
