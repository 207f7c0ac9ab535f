"""Archives, and the stock readers that open them: the two halves of the polyglot tests.

Why separate from ``formats_factory``: these builders make *foreign* formats (zip in its
classic, ZIP64, commented and prepended shapes; tar headers planted in a model's header;
gzip; pickles; HDF5) and the oracles ask the real readers (``zipfile``, ``tarfile``,
``gzip``, the unpickler, ``h5py``) whether they open the bytes. A test then only has to
say: whenever a reader opens it, the inspector refuses it.
"""

from __future__ import annotations

import gzip
import io
import pickle
import pickletools
import struct
import tarfile
import zipfile
from collections.abc import Callable

import h5py
import numpy as np

ZIP_EOCD = struct.Struct("<4sHHHHIIH")
ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
ZIP64_LOCATOR = struct.Struct("<4sIQI")


class Evil:
    """Unpickling this calls a function: the whole reason pickle is refused. Never loaded."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


EVIL_PICKLE = pickle.dumps(Evil(), protocol=2)


# --- zip -------------------------------------------------------------------------------------


def zip_bytes(members: dict[str, bytes], *, comment: bytes = b"") -> bytes:
    """An ordinary zip from ``zipfile`` (stored members, so sizes stay predictable)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
        archive.comment = comment
    return buf.getvalue()


def split_eocd(archive: bytes) -> tuple[bytes, tuple[int, ...], bytes]:
    """(everything before the EOCD, the EOCD's fields, the comment)."""
    at = archive.rfind(b"PK\x05\x06")
    fields = ZIP_EOCD.unpack_from(archive, at)
    return archive[:at], fields, archive[at + ZIP_EOCD.size :]


def zip64_with_decoy_eocd(
    archive: bytes, *, decoy: tuple[int, int, int] = (1, 0x1234, 0x10)
) -> bytes:
    """The outside review's shape: a ZIP64 record and locator just before a classic EOCD
    whose fields hold ordinary-looking values (``decoy``: entries, cd_size, cd_offset) that
    point nowhere. ``zipfile`` takes the directory from the ZIP64 record instead.
    """
    body, fields, comment = split_eocd(archive)
    entries, cd_size, cd_offset = fields[4], fields[5], fields[6]
    record = ZIP64_EOCD.pack(b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, cd_size, cd_offset)
    locator = ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, len(body), 1)
    n, size, offset = decoy
    eocd = ZIP_EOCD.pack(b"PK\x05\x06", 0, 0, n, n, size, offset, len(comment))
    return body + record + locator + eocd + comment


def zip_with_absolute_offsets(archive: bytes, base: int) -> bytes:
    """The archive rewritten as if it sat at file offset ``base`` (what miniz expects)."""
    body, fields, comment = split_eocd(archive)
    cd_offset = fields[6]
    out = bytearray(body)
    pos = cd_offset
    while out[pos : pos + 4] == b"PK\x01\x02":
        (local,) = struct.unpack_from("<I", out, pos + 42)
        struct.pack_into("<I", out, pos + 42, local + base)
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", out, pos + 28)
        pos += 46 + name_len + extra_len + comment_len
    eocd = ZIP_EOCD.pack(*fields[:6], cd_offset + base, fields[7])
    return bytes(out) + eocd + comment


# --- tar -------------------------------------------------------------------------------------


def plant_tar_header(data: bytes, *, member_size: int = 0) -> bytes:
    """Rewrite bytes 100..345 of ``data`` into tar header fields with a valid checksum.

    The caller makes sure those bytes lie inside a string it controls (a safetensors
    metadata value, a GGUF string) and that printable ASCII there keeps the file valid.
    """
    block = bytearray(data[:512])
    fields = {
        100: b"0000644 ",  # mode
        108: b"0000000 ",  # uid
        116: b"0000000 ",  # gid
        124: b"%011o " % member_size,  # size
        136: b"00000000000 ",  # mtime
        148: b" " * 8,  # checksum, summed as spaces
        156: b"0",  # regular file
        329: b"0000000 ",  # devmajor
        337: b"0000000 ",  # devminor
    }
    for at, value in fields.items():
        block[at : at + len(value)] = value
    block[148:156] = b"%07o " % (256 + sum(block[:148]) + sum(block[156:]))
    return bytes(block) + data[512:]


# --- HDF5 ------------------------------------------------------------------------------------


def hdf5_bytes() -> bytes:
    """A small HDF5 file shaped like a Keras .h5 model: a dataset and a model_config."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f["model_weights/w"] = np.arange(4, dtype=np.float32)
        f.attrs["model_config"] = '{"class_name": "Sequential", "config": {"layers": []}}'
    return buf.getvalue()


# --- the readers -------------------------------------------------------------------------------


def zip_opens(data: bytes) -> bool:
    """``zipfile`` opens the bytes and lists at least one member."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return bool(archive.namelist())
    except Exception:  # any failure of the reader means it does not open the file
        return False


#: Go's archive/zip searches the last 65 KiB for the end record, zipfile 64 KiB + 22 bytes.
GO_ZIP_WINDOW = 65 * 1024


def zip_opens_in_go_s_window(data: bytes) -> bool:
    """``zipfile`` given Go's wider search: the last EOCD in the last 65 KiB whose comment
    fits (Go's rule), with whatever follows the comment cut off so zipfile finds it too."""
    at = data.rfind(b"PK\x05\x06", max(0, len(data) - GO_ZIP_WINDOW))
    if at < 0 or at + ZIP_EOCD.size > len(data):
        return False
    end = at + ZIP_EOCD.size + ZIP_EOCD.unpack_from(data, at)[7]
    return end <= len(data) and zip_opens(data[:end])


def hdf5_opens(data: bytes) -> bool:
    """``h5py`` (the HDF5 library, which Keras's .h5 loader uses) opens it, with objects."""
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            return bool(list(f)) or bool(f.attrs)
    except Exception:
        return False


def tar_opens(data: bytes) -> bool:
    """``tarfile.open`` (compression auto-detected, as torch's legacy loader) lists a member."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            return bool(archive.getmembers())
    except Exception:
        return False


def gzip_opens(data: bytes) -> bool:
    """``gzip`` decompresses at least the first byte of a member starting at offset 0."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            stream.read(1)
        return True
    except Exception:
        return False


class _Anything:
    """What the stubbed ``find_class`` hands back: accepts any call, any state."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass


class _StubbedUnpickler(pickle.Unpickler):
    """The real (C) unpickler with imports and persistent ids stubbed out, so it runs
    any stream as far as a loader would without importing or calling anything real."""

    imported = False

    def find_class(self, module: str, name: str) -> type[_Anything]:
        if not all(part.isidentifier() for part in f"{module}.{name}".split(".")):
            raise pickle.UnpicklingError(f"cannot import {module!r}.{name!r}")
        self.imported = True  # a loader would import module.name here
        return _Anything

    def persistent_load(self, pid: object) -> None:  # torch.load defines one
        return None


def pickle_loads(data: bytes) -> bool:
    """The unpickler, reading from offset 0, imports something or finishes a pickle.

    ``pickletools.genops`` alone is only syntax: it walks ``(\\x93.`` (MARK, STACK_GLOBAL,
    STOP), which every unpickler refuses (nothing to pop), and which is what one valid
    safetensors header length in about 1,600 looks like. The unpickler is the reader.
    """
    if not pickle_syntax_walks(data):
        return False
    unpickler = _StubbedUnpickler(io.BytesIO(data))
    try:
        unpickler.load()
    except Exception:
        return unpickler.imported
    return True


def pickle_syntax_walks(data: bytes) -> bool:
    """``pickletools.genops`` walks a complete pickle (to STOP, after one opcode) from 0."""
    try:
        for count, (op, _, _) in enumerate(pickletools.genops(data)):
            if op.name == "STOP":
                return count > 0
    except Exception:
        return False
    return False


READERS: dict[str, Callable[[bytes], bool]] = {
    "zip": zip_opens,
    "zip (Go's window)": zip_opens_in_go_s_window,
    "tar": tar_opens,
    "gzip": gzip_opens,
    "pickle": pickle_loads,
    "hdf5": hdf5_opens,
}


def readers_that_open(data: bytes) -> list[str]:
    return [name for name, opens in READERS.items() if opens(data)]
