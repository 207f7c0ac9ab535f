"""Review 9: format-gate members that validate but hand loaders values they misread.

Most of the gate held (see the report): duplicate keys, __metadata__ shapes, padding,
BOM, offsets, overflow, GGUF versions, duplicate KVs/tensors, NUL keys. Two remain:

* a BOOL tensor whose bytes are not 0 or 1: numpy and torch view the buffer as bool
  without normalising, and a bool byte other than 0/1 is undefined behaviour in
  torch/C++ kernels. Low severity: refuse it, or document that BOOL bytes are not
  checked;
* a GGUF metadata key that is empty: the spec's keys are dotted lower_snake_case
  segments, so an empty key is no valid name; low severity (hygiene), but the gate
  refuses NUL in keys already and this is the same class (keys loaders may treat
  differently).
"""

from __future__ import annotations

import pytest

from assay.formats.errors import FormatRefused
from assay.formats.inspect import inspect_bytes
from tests.formats_factory import STRING, UINT32, small_gguf, st_raw


def test_safetensors_bool_tensor_holding_non_boolean_bytes_is_refused() -> None:
    header = b'{"a":{"dtype":"BOOL","shape":[4],"data_offsets":[0,4]}}'
    data = st_raw(header + b" " * (-len(header) % 8), b"\x00\x01\x02\xff")
    with pytest.raises(FormatRefused):
        inspect_bytes(data)


def test_gguf_empty_metadata_key_is_refused() -> None:
    g = small_gguf()
    g.kv("", UINT32, 32)
    with pytest.raises(FormatRefused):
        inspect_bytes(g.build())


def test_gguf_empty_key_with_string_value_is_refused() -> None:
    g = small_gguf()
    g.kv("", STRING, "general.alignment")
    with pytest.raises(FormatRefused):
        inspect_bytes(g.build())
