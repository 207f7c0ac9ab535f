"""Does a file, read from offset 0, unpickle far enough to matter? (Step SN-3.)

Why a walk and not "starts with 0x80": a safetensors header length such as 128 begins
``80 00``, which no unpickler gets past, while a valid model can also be a pickle that
``pickle.loads`` and ``torch.load`` read from the first byte. So the opcodes are decoded
(never executed) the way the unpicklers decode them, arguments converted as they convert
them, until the stream is known to load, known to fail, or the budget runs out (then it
counts as live). docs/formats.md says why each rule is there.

Pure: no I/O imports, no pickle import; the opcode table below is plain data (a unit test
checks it against ``pickletools``).
"""

from __future__ import annotations

import re

from assay.formats.sniff import HEAD_PROBE_BYTES, ReadAt, read_exact

_LINE, _PAIR, _LEN1, _LEN4S, _LEN4U, _LEN8U = -1, -2, -3, -4, -5, -6
# opcode -> argument: a fixed byte count (>= 0) or one of the kinds above. Taken from the
# stdlib pickletools.opcodes table (a unit test checks they agree); copied so this pure
# module need not import the pickle machinery.
_ARGS: dict[int, int] = {
    **dict.fromkeys(b"NR]ae)lt}dsu01(2.bo\x85\x86\x87\x88\x89\x8f\x90\x91\x92\x93\x94", 0),
    **dict.fromkeys(b"\x97\x98\x81Q", 0),
    **dict.fromkeys(b"ILSVFgpP", _LINE),
    **dict.fromkeys(b"ci", _PAIR),
    **dict.fromkeys(b"Khq\x80\x82", 1),
    **dict.fromkeys(b"M\x83", 2),
    **dict.fromkeys(b"Jjr\x84", 4),
    **dict.fromkeys(b"G\x95", 8),
    **dict.fromkeys(b"\x8aUC\x8c", _LEN1),
    **dict.fromkeys(b"\x8bT", _LEN4S),
    **dict.fromkeys(b"BX", _LEN4U),
    **dict.fromkeys(b"\x8e\x96\x8d", _LEN8U),
}
# The C unpickler's INT: strtol(line, base 0), which must stop at the newline or a NUL (or
# convert nothing at all from a line that starts with NUL: that is 0).
_STRTOL = re.compile(rb"\x00|[ \t\v\f\r]*[+-]?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)(?:\x00|\Z)")
# What may come before the newline in each text argument, so a line that can no longer
# convert is dead at its first wrong byte instead of at a length cap an attacker can pass
# (whitespace pads numbers without limit; dotted names chain without limit in protocol 4).
_WS = b" \t\v\f\r"  # C isspace() less the newline
_NOT_IN_LINE: dict[int, re.Pattern[bytes]] = {
    op: re.compile(b"[^" + allowed + b"]")
    for op, allowed in {
        ord("I"): _WS + rb"+\-0-9a-fA-FxXoObB_",  # a NUL lets anything follow (strtol)
        ord("L"): _WS + rb"+\-0-9a-fA-FxXoObB_L",
        ord("F"): _WS + rb"+\-0-9._eEinftyaINFTYA",
        ord("g"): _WS + rb"+\-0-9_",
        ord("p"): _WS + rb"+\-0-9_",
        ord("P"): rb"\x00-\x09\x0b-\x7f",  # ASCII
        ord("c"): rb"A-Za-z0-9_.\x80-\xff",  # dotted identifiers, UTF-8 included
        ord("i"): rb"A-Za-z0-9_.\x80-\xff",
    }.items()
}
_ANY_LINE = re.compile(b"\n")
_STACK_GLOBAL = 0x93  # imports a callable named by two strs on the stack
# Opcodes that can leave a str on the stack: the text pushes (protocol 0-2 strings decode
# to str by default), memo reads, DUP, and persistent ids (a loader's persistent_load may
# return anything). STACK_GLOBAL pops two strs: it needs two of these before it.
_MAY_PUSH_STR = frozenset(b"VX\x8c\x8dSTUghj2PQ")
_STOP = ord(".")
_STRING_NL = ord("S")
_PROTO = 0x80
_HIGHEST_PROTOCOL = 5
_LEN_WIDTH = {_LEN1: 1, _LEN4S: 4, _LEN4U: 4, _LEN8U: 8}
_MAX_OPS = 1 << 16
_MAX_READS = 64
_MAX_LINE_SCAN = 1 << 20


class _Probe:
    """A cached, budgeted window over ``read_at`` for the opcode walk."""

    def __init__(self, read_at: ReadAt, size: int, head: bytes) -> None:
        self._read_at = read_at
        self.size = size
        self._start = 0
        self._buf = head
        self.reads = 0
        self.scanned = 0

    def spent(self) -> bool:
        return self.reads > _MAX_READS or self.scanned > _MAX_LINE_SCAN

    def take(self, pos: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``pos`` (fewer only at end of file)."""
        if not (self._start <= pos and pos + n <= self._start + len(self._buf)):
            self.reads += 1
            length = max(0, min(max(n, HEAD_PROBE_BYTES), self.size - pos))
            self._buf = read_exact(self._read_at, pos, length, "unknown")
            self._start = pos
        return self._buf[pos - self._start : pos - self._start + n]

    def line_end(self, pos: int, op: int) -> int | None:
        """Offset of the newline ending ``op``'s line argument at ``pos``, or None.

        None when a byte the argument cannot hold comes first, the file ends first, or the
        scan budget runs out first (``spent()`` then tells the last case apart).
        """
        stop = _NOT_IN_LINE.get(op, _ANY_LINE)
        while pos < self.size and not self.spent():
            chunk = self.take(pos, min(HEAD_PROBE_BYTES, self.size - pos))
            found = stop.search(chunk)
            if found is None:
                self.scanned += len(chunk)
                pos += len(chunk)
                continue
            byte = chunk[found.start()]
            if byte == 0x0A:
                return pos + found.start()
            if op == ord("I") and byte == 0:
                stop = _ANY_LINE  # strtol stops at the NUL; the rest of the line is free
                self.scanned += found.start()
                pos += found.start() + 1
                continue
            return None
        return None


def _is_dotted_name(raw: bytes) -> bool:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def pickle_stream_is_live(read_at: ReadAt, size: int, head: bytes) -> bool:
    """Step SN-3: does the file, read from offset 0, unpickle far enough to matter?

    Walks opcodes without executing anything. Live means it reaches an opcode that imports
    a callable (GLOBAL/INST with importable-looking names, STACK_GLOBAL after two opcodes
    that can push a str), reaches STOP after at least one other opcode (a complete pickle),
    or is still valid when the walk's budget runs out (conservative). An unknown opcode, an
    argument the unpickler would reject, a STACK_GLOBAL with no two strs to pop, or the end
    of the file means no unpickler gets anywhere with these bytes.
    """
    probe = _Probe(read_at, size, head)
    pos = 0
    str_pushes = 0
    for count in range(_MAX_OPS):
        if pos >= size:
            return False
        if probe.spent():
            return True
        op = probe.take(pos, 1)[0]
        kind = _ARGS.get(op)
        if kind is None:
            return False
        if op == _STOP:
            return count > 0
        if op == _STACK_GLOBAL:
            return str_pushes >= 2
        str_pushes += op in _MAY_PUSH_STR
        pos += 1
        if op == _PROTO:
            arg = probe.take(pos, 1)
            if not arg or arg[0] > _HIGHEST_PROTOCOL:
                return False
        if kind >= 0:
            pos += kind
        elif kind in (_LINE, _PAIR):
            lines = _lines(probe, pos, op, kind)
            if lines is None:
                return probe.spent()
            if kind == _PAIR:
                return True
            pos = lines
        else:
            width = _LEN_WIDTH[kind]
            raw = probe.take(pos, width)
            if len(raw) < width:
                return False
            n = int.from_bytes(raw, "little", signed=kind == _LEN4S)
            if n < 0:
                return False
            pos += width + n
    return True


def _lines(probe: _Probe, pos: int, op: int, kind: int) -> int | None:
    """Skip an opcode's newline-terminated argument(s); None if the unpickler would fail.

    GLOBAL and INST carry two lines, a module and a name; they only import something when
    both look like dotted Python identifiers.
    """
    for _ in range(2 if kind == _PAIR else 1):
        if op == _STRING_NL and probe.take(pos, 1) not in (b"'", b'"'):
            return None  # STRING's argument must be quoted
        end = probe.line_end(pos, op)
        if end is None:
            return None
        if kind == _PAIR and not _is_dotted_name(probe.take(pos, end - pos)):
            return None
        if kind == _LINE and not _line_argument_loads(op, probe, pos, end):
            return None
        pos = end + 1
    return pos


def _line_argument_loads(op: int, probe: _Probe, pos: int, end: int) -> bool:
    """Whether either unpickler (C ``_pickle`` or Python ``pickle``) takes this line.

    The same conversions they apply: INT is ``int(line, 0)`` or C's ``strtol``; LONG
    drops a trailing ``L`` first; FLOAT is ``float()``; GET and PUT are ``int(line)``;
    PERSID must be ASCII; STRING must be quoted at both ends. UNICODE takes any line.
    """
    if op not in _CHECKED_LINE_OPS:
        return True
    line = probe.take(pos, end - pos)
    try:
        if op == ord("I"):
            return line in (b"00", b"01") or _strtol_takes(line) or _is_int(line, 0)
        if op == ord("L"):
            return _is_int(line[:-1] if line.endswith(b"L") else line, 0)
        if op == ord("F"):
            float(line)
            return True
        if op in b"gp":
            return _is_int(line, 10)
        if op == ord("P"):
            line.decode("ascii")
            return True
    except ValueError:  # UnicodeDecodeError included
        return False
    return len(line) >= 2 and line[0] == line[-1] and line[:1] in (b"'", b'"')


_CHECKED_LINE_OPS = frozenset(b"ILFgpPS")


def _strtol_takes(line: bytes) -> bool:
    """C ``strtol(line, base 0)`` converts up to the newline or a NUL without overflow."""
    found = _STRTOL.match(line)
    if found is None:
        return False
    number = found.group().strip(_WS + b"\x00")
    if not number:
        return True  # nothing converted from a line that starts with NUL: 0
    digits = number.lstrip(b"+-")
    base = 16 if digits[:2] in (b"0x", b"0X") else 8 if digits[:1] == b"0" else 10
    try:
        value = int(digits[2:] if base == 16 else digits, base)
    except ValueError:  # over 4,300 decimal digits: strtol overflows long before
        return False
    return value <= (1 << 63) - (0 if number[:1] == b"-" else 1)


def _is_int(line: bytes | str, base: int) -> bool:
    try:
        int(line, base)
    except ValueError:
        return False
    return True
