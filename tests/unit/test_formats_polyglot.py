"""Polyglots: valid models that a stock reader of a refused format also opens.

The rule under test (docs/formats.md, "Where readers look"): whenever ``zipfile``,
``tarfile``, ``gzip`` or ``pickletools`` opens the bytes from an offset that reader really
uses, the inspector refuses the file. Each attack below is one member of that class; the
property tests in ``test_formats_polyglot_property.py`` search the rest.
"""

from __future__ import annotations

import io
import pickletools
import zipfile

import pytest

from assay.formats import sniff
from assay.formats.errors import FormatRefused
from assay.formats.inspect import inspect_bytes
from tests.formats_factory import (
    GGUF,
    STRING,
    entry,
    reference_loads_gguf,
    reference_loads_safetensors,
    st_file,
    valid_st,
)
from tests.formats_polyglots import (
    EVIL_PICKLE,
    hdf5_bytes,
    hdf5_opens,
    plant_tar_header,
    tar_opens,
    zip64_with_decoy_eocd,
    zip_bytes,
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
