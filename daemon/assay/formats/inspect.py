"""The single entry point that decides, by content alone, whether a file is an accepted model.

Why one entry point: the registry must never trust a file name or a client's claim. Only
safetensors and GGUF are accepted, each after a full validation; everything else is
refused with a stable reason code (``empty``, ``pickle``, ``tar``, ``zip``, ``gzip``,
``7z``, ``hdf5``, ``polyglot``, ``unknown``, or a ``safetensors.*`` / ``gguf.*`` code). A
file that validates but also opens in a stock reader of a refused format, from an offset
that reader uses, is a ``polyglot`` and is refused too.

The caller supplies ``read_at`` (an I/O adapter over the real file); this module asks it for
at most ``MAX_HEAD_BYTES`` per call and reads only headers, small probes and the bytes of
safetensors BOOL tensors (ST-20, in 1 MiB chunks), never other tensor data, so multi-GiB
files cost a few bounded reads. Pure: no I/O imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from assay.formats import gguf, pickles, safetensors, sniff, zipend
from assay.formats.errors import FormatRefused
from assay.formats.sniff import HEAD_PROBE_BYTES, MAX_HEAD_BYTES, ReadAt, read_exact

__all__ = ["MAX_HEAD_BYTES", "Inspection", "ReadAt", "inspect_bytes", "inspect_file"]

Format = Literal["safetensors", "gguf"]


@dataclass(frozen=True)
class Inspection:
    """An accepted file: its format, its size, and JSON-serialisable header facts."""

    format: Format
    size: int
    details: dict[str, object]


def inspect_file(read_at: ReadAt, size: int) -> Inspection:
    """Accept a safetensors or GGUF file of ``size`` bytes, or raise FormatRefused.

    ``size`` must be the real file size (a negative size is a programming error and raises
    ValueError); content beyond it is never read.
    """
    if size < 0:
        raise ValueError(f"size must be >= 0, not {size}")
    # Step 1 (IN-1: an empty file is nothing)
    if size == 0:
        raise FormatRefused("empty", "the file is empty")
    head = read_exact(read_at, 0, min(size, HEAD_PROBE_BYTES), "unknown")
    # Step 2 (IN-2: pick the validator by content: GGUF magic, else a safetensors shape)
    judge: Callable[[ReadAt, int], dict[str, object]]
    fmt: Format
    if gguf.looks_like_gguf(head):
        fmt, judge = "gguf", gguf.inspect_gguf
    elif safetensors.looks_like_safetensors(head, size):
        fmt, judge = "safetensors", safetensors.inspect_safetensors
    else:
        # Step 3 (IN-3: neither: name the refused format it looks like, if any)
        reason = _foreign(read_at, size, head, lenient=True) or "unknown"
        raise FormatRefused(reason, _DESCRIBE.get(reason, "not safetensors or GGUF"))
    try:
        details = judge(read_at, size)
    except FormatRefused as refused:
        # Step 4 (IN-4: an invalid model that is really another format is named as such)
        foreign = _foreign(read_at, size, head, lenient=False)
        if foreign is None:
            raise
        raise FormatRefused(foreign, f"{_DESCRIBE[foreign]}; as {fmt}: {refused.detail}") from None
    # Step 5 (IN-5: a valid model that is also another format is a polyglot)
    foreign = _foreign(read_at, size, head, lenient=False)
    if foreign is not None:
        raise FormatRefused("polyglot", f"valid {fmt} that is also a {foreign} file")
    return Inspection(format=fmt, size=size, details=details)


def inspect_bytes(data: bytes) -> Inspection:
    """``inspect_file`` over bytes in memory: for tests and small files."""
    view = bytes(data)

    def read_at(offset: int, length: int) -> bytes:
        return view[offset : offset + length]

    return inspect_file(read_at, len(view))


_DESCRIBE: dict[str, str] = {
    "pickle": "a Python pickle, which runs code when loaded",
    "tar": "a tar archive (e.g. a legacy PyTorch checkpoint)",
    "zip": "a zip archive (e.g. a PyTorch .pt/.bin checkpoint)",
    "gzip": "a gzip stream",
    "7z": "a 7z archive",
    "hdf5": "an HDF5 file (e.g. a Keras .h5 model)",
    "unknown": "not safetensors or GGUF",
}


def _foreign(read_at: ReadAt, size: int, head: bytes, *, lenient: bool) -> str | None:
    """The refused format a stock reader also opens the file as (SN-1 to SN-6, ZC-*), or None.

    ``lenient`` adds the bare PROTO-opcode test, which is right for files that are nothing
    else but would misfire on valid safetensors whose header length starts with 0x80.
    """
    signature = sniff.signature_at_start(head)
    if signature is not None:
        return signature
    if sniff.tar_header_at_start(head):
        return "tar"
    if lenient and sniff.starts_with_pickle_proto(head):
        return "pickle"
    if pickles.pickle_stream_is_live(read_at, size, head):
        return "pickle"
    if zipend.zip_directory_reachable(read_at, size):
        return "zip"
    if sniff.hdf5_superblock(read_at, size, head):
        return "hdf5"
    return None
