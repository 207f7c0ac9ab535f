"""Find a zip archive the way zip readers do: from the end of the file.

Why its own module: a zip reader never looks at offset 0 first. It scans back from the
end for the end-of-central-directory record (EOCD, up to a 64 KiB comment after it),
looks for a ZIP64 locator 20 bytes before it, follows that to a ZIP64 record, and from
one of them to the central directory, tolerating data prepended to the archive. A file
whose central directory a reader can reach that way *is* a zip to that reader, whatever
else it is. So this module parses those records as the readers do and decides only by
their fields (the ZC-* steps in docs/formats.md), never by a loose signature count.

Readers differ; every place any of them looks is tried, so the union is refused:

* Python ``zipfile``: the EOCD at ``size - 22`` with an empty comment, else the last
  signature in the tail; the ZIP64 record right before the locator; the central directory
  right before its record (``record - cd_size``), the ``cd_offset`` field only shifting
  member offsets ("concat").
* miniz (PyTorch), libzip, Info-ZIP, Go, Java: the ``cd_offset`` field taken as absolute;
  the ZIP64 record at the locator's absolute offset; Java and Go also try every earlier
  signature and the prepended-data position.

Pure: reads only through ``read_at``, at most the tail plus a few 4-byte peeks.
"""

from __future__ import annotations

import struct

from assay.formats.sniff import ReadAt, read_exact

#: A zip end-of-central-directory record is 22 bytes plus a comment of up to 64 KiB.
EOCD_BYTES = 22
#: How far back from the end readers search for the EOCD: 65,557 bytes (miniz, Java), 65,558
#: (zipfile: 64 KiB + 22), 65,577 (libzip), 66,560 (Go's 65 KiB). The widest one wins.
TAIL_PROBE_BYTES = 65 * 1024
#: More EOCD signatures than this in the tail is refused outright (ZC-1).
MAX_EOCD_CANDIDATES = 64

_EOCD = struct.Struct("<4sHHHHIIH")
_LOCATOR = struct.Struct("<4sIQI")
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")
_EOCD_SIG = b"PK\x05\x06"
_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_CDH_SIG = b"PK\x01\x02"
CDH_BYTES = 46  # the fixed part of a central-directory file header


class _Window:
    """The tail, read once, plus 4-byte peeks elsewhere in the file."""

    def __init__(self, read_at: ReadAt, size: int) -> None:
        self.read_at = read_at
        self.size = size
        self.start = max(0, size - TAIL_PROBE_BYTES)
        self.tail = read_exact(read_at, self.start, size - self.start, "unknown")

    def at(self, offset: int, length: int) -> bytes | None:
        """``length`` bytes at ``offset``, or None when they are not all in the file."""
        if offset < 0 or offset + length > self.size:
            return None
        if offset >= self.start:
            return self.tail[offset - self.start : offset - self.start + length]
        return read_exact(self.read_at, offset, length, "unknown")


def zip_directory_reachable(read_at: ReadAt, size: int) -> bool:
    """Whether some zip reader, reading back from the end, finds a central directory.

    True means the file opens as a zip archive with at least one member for one of the
    readers named in the module docstring. An EOCD that leads nowhere (a chance signature
    in tensor data, an archive with an empty directory) is not an archive anyone can load.
    """
    window = _Window(read_at, size)
    # Step 1 (ZC-1: every EOCD signature in the last 65 KiB, newest first; more than the
    # budget is refused as if it were an archive, since no model needs them)
    pos = window.tail.rfind(_EOCD_SIG)
    for _ in range(MAX_EOCD_CANDIDATES):
        if pos < 0:
            return False
        if _eocd_leads_to_directory(window, window.start + pos):
            return True
        pos = window.tail.rfind(_EOCD_SIG, 0, pos)
    return pos >= 0


def _eocd_leads_to_directory(window: _Window, eocd: int) -> bool:
    # Step 2 (ZC-2: the whole 22-byte record lies in the file; its comment length is not
    # trusted, since zipfile ignores it and Java falls back when it disagrees)
    record = window.at(eocd, EOCD_BYTES)
    if record is None:
        return False
    *_, cd_size, cd_offset, _ = _EOCD.unpack(record)
    # Step 3 (ZC-3: the classic directory: before its record, or at its absolute offset)
    places = {eocd - cd_size, cd_offset}
    # Step 4 (ZC-4: a ZIP64 locator exactly 20 bytes before the EOCD, whatever the EOCD's
    # own fields say; its record right before it (zipfile) or at its offset (the others))
    locator = window.at(eocd - _LOCATOR.size, _LOCATOR.size)
    if locator is not None and locator[:4] == _LOCATOR_SIG:
        _, _, record64_offset, _ = _LOCATOR.unpack(locator)
        for where in {eocd - _LOCATOR.size - _ZIP64_EOCD.size, record64_offset}:
            record64 = window.at(where, _ZIP64_EOCD.size)
            if record64 is None or record64[:4] != _ZIP64_EOCD_SIG:
                continue
            *_, cd_size64, cd_offset64 = _ZIP64_EOCD.unpack(record64)
            # Step 5 (ZC-5: the ZIP64 directory: before its record, or absolute)
            places |= {where - cd_size64, cd_offset64}
    # Step 6 (ZC-6: a directory counts when a full central-directory header starts there)
    return any(_is_directory_header(window, where) for where in places)


def _is_directory_header(window: _Window, where: int) -> bool:
    header = window.at(where, CDH_BYTES)
    return header is not None and header[:4] == _CDH_SIG
