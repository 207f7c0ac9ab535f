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

from assay.formats.errors import FormatRefused
from assay.formats.inspect import inspect_bytes
from tests.formats_factory import reference_loads_safetensors, valid_st
from tests.formats_polyglots import EVIL_PICKLE, zip64_with_decoy_eocd, zip_bytes


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
