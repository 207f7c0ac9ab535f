"""Bounded reads, and what a file looks like from offset 0 to the readers assay refuses.

Why this module exists: the safetensors and GGUF validators decide whether a file *is* a
model; this module (with ``zipend`` for zip, which readers find from the end) decides what
else it *also* is to a stock reader (pickle, tar, zip, gzip, 7z, HDF5). A file that
validates as a model but also opens in another reader is a polyglot: a different loader
pointed at the same bytes would read something else, so it is refused.

Every reader checked here starts at a fixed offset (see "Where readers look" in
docs/formats.md): ``pickle``/``torch.load`` unpickle from the first byte, ``tarfile`` and
GNU tar read a 512-byte header there, gzip and 7z readers want their magic there, and the
HDF5 library tries 0, 512, 1024, 2048 and on.

Everything here reads through a caller-supplied ``read_at`` and never asks it for more than
``MAX_HEAD_BYTES`` at once; every probe is bounded (see the SN-* checks in docs/formats.md).
The pickle opcode walk (SN-3) lives in ``pickles``. Pure: no I/O imports.
"""

from __future__ import annotations

from typing import Protocol

from assay.formats.errors import FormatRefused


class ReadAt(Protocol):
    """Read up to ``length`` bytes at ``offset`` (fewer only at end of file)."""

    def __call__(self, offset: int, length: int) -> bytes: ...


#: The most any inspector asks ``read_at`` for in one call: the largest safetensors header
#: the reference implementation accepts (its MAX_HEADER_SIZE). Every other read is smaller.
MAX_HEAD_BYTES = 100_000_000
#: How much of the start of a file is probed for signatures.
HEAD_PROBE_BYTES = 64 * 1024


def read_exact(read_at: ReadAt, offset: int, length: int, truncated: str) -> bytes:
    """Read exactly ``length`` bytes or refuse with reason ``truncated``.

    Short reads are retried (an adapter may return less than asked); a read that returns
    nothing before ``length`` is reached means the file is shorter than it claimed.
    """
    if not 0 <= length <= MAX_HEAD_BYTES:
        raise FormatRefused(truncated, f"refusing to read {length} bytes at once")
    parts: list[bytes] = []
    got = 0
    while got < length:
        chunk = bytes(read_at(offset + got, length - got)[: length - got])
        if not chunk:
            raise FormatRefused(truncated, f"file ended {length - got} bytes early")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


# --- Signatures at offset 0 ----------------------------------------------------------------

_START_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "zip"),  # local file header: every ordinary zip, PyTorch .pt/.bin
    (b"PK\x05\x06", "zip"),  # end of central directory first: an empty zip
    (b"PK\x07\x08", "zip"),  # spanned/split archive marker
    (b"\x1f\x8b", "gzip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
)


def signature_at_start(head: bytes) -> str | None:
    """Step SN-1: the refused-format reason whose magic bytes open the file, if any."""
    for magic, reason in _START_SIGNATURES:
        if head.startswith(magic):
            return reason
    return None


def starts_with_pickle_proto(head: bytes) -> bool:
    """Step SN-2: a PROTO opcode (0x80) naming a protocol the unpickler accepts (0-5)."""
    return len(head) >= 2 and head[0] == 0x80 and head[1] <= 5


# --- Tar header at offset 0 ----------------------------------------------------------------

TAR_BLOCK = 512
_CHKSUM = slice(148, 156)
_OCTAL = b"01234567"


def tar_header_at_start(head: bytes) -> bool:
    """Step SN-5: does the first 512-byte block pass a tar reader's header checksum?

    ``tarfile.open`` (and so ``torch.load``'s legacy tar path), GNU tar and libarchive all
    accept a first block exactly when its checksum field matches the sum of the block's
    bytes (the field itself counted as spaces, bytes unsigned or signed). The field is read
    the two ways those readers read it: ``tarfile``'s (NUL-terminated, stripped, Python's
    ``int(text, 8)``, or GNU base-256), and libarchive's (spaces, then the leading octal
    digits). The other fields are not required to parse: refusing a superset is safe.
    """
    block = head[:TAR_BLOCK]
    if len(block) < TAR_BLOCK or not block.strip(b"\0"):
        return False  # tarfile: truncated header, or an end-of-archive block
    body = block[: _CHKSUM.start] + block[_CHKSUM.stop :]
    unsigned = 256 + sum(body)
    signed = unsigned - 256 * sum(1 for b in body if b >= 0x80)
    return bool({unsigned, signed} & _checksum_readings(block[_CHKSUM]))


def _checksum_readings(field: bytes) -> set[int]:
    """The values tar readers take the 8-byte checksum field to hold."""
    readings: set[int] = set()
    first, rest = field[0], field[1:]
    # tarfile.nti: base-256 when the first byte is 0o200 or 0o377, else octal text
    if first in (0o200, 0o377):
        value = int.from_bytes(rest, "big")
        readings.add(value - 256 ** len(rest) if first == 0o377 else value)
    else:
        text = field.split(b"\0", 1)[0]
        if text.isascii() and _octal_literal(text.decode("ascii").strip() or "0"):  # str.strip
            readings.add(int(text.decode("ascii").strip() or "0", 8))
    if first & 0x80:
        # libarchive's tar_atol256: the high bit marks base-256, 0x40 the sign
        top = bytes([first | 0x80]) if first & 0x40 else bytes([first & 0x7F])
        readings.add(int.from_bytes(top + rest, "big", signed=bool(first & 0x40)))
    else:
        # libarchive's tar_atol8, GNU tar's from_header: spaces, then leading octal digits
        digits = field.lstrip(b" \t")
        run = len(digits) - len(digits.lstrip(_OCTAL))
        readings.add(int(digits[:run] or b"0", 8))
    return readings


# --- HDF5 superblock at 0 or 512 * 2**k ----------------------------------------------------

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
HDF5_FIRST_USER_BLOCK = 512


def hdf5_offsets(size: int) -> list[int]:
    """Where the HDF5 library looks for a superblock: 0, then 512, 1024, 2048, ...

    The library (H5FD_locate_signature, used by ``h5py.File`` and so by Keras's
    ``load_model`` on .h5 files) tries every power of two from 512 below the end of the
    file, so a model whose tensor data holds an HDF5 file at such an offset opens, whole,
    as that file; a Keras one can carry a Lambda layer's code.
    """
    offsets: list[int] = []
    where = 0
    while where + len(HDF5_SIGNATURE) <= size:
        offsets.append(where)
        where = max(HDF5_FIRST_USER_BLOCK, where * 2)
    return offsets


def hdf5_superblock(read_at: ReadAt, size: int, head: bytes) -> bool:
    """Step SN-6: an HDF5 signature at one of the offsets the library searches."""
    for where in hdf5_offsets(size):
        if where + len(HDF5_SIGNATURE) <= len(head):
            found = head[where : where + len(HDF5_SIGNATURE)]
        else:
            found = read_exact(read_at, where, len(HDF5_SIGNATURE), "unknown")
        if found == HDF5_SIGNATURE:
            return True
    return False


def _octal_literal(text: str) -> bool:
    """Whether Python's ``int(text, 8)`` (tarfile's reading) accepts ``text``."""
    try:
        int(text, 8)
    except ValueError:
        return False
    return True
