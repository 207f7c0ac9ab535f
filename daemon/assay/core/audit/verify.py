"""Streaming verification of audit log bytes: every break typed and located.

Steps (numbered in the code and in ``docs/audit-schema.md``; at most one break per line,
the first failing step wins, then the verifier resynchronises on the line's own claims
so one tampered record gives one break instead of a cascade):

  AUD-1 line: non-blank, at most ``max_line`` bytes, no BOM, UTF-8, a JSON object.
  AUD-2 schema: exactly the v1 fields, valid types and enum values.
  AUD-3 self: the line has the writer's layout and its HMAC equals ``record_hash``.
  AUD-4 seq: ``seq`` is the previous seq + 1 (1 for the first record).
  AUD-5 link: ``prev_hash`` equals the previous ``record_hash`` (GENESIS for seq 1).
  AUD-6 tail: every file ends with a newline (else a torn write: ``truncated``).
  AUD-7 checkpoint key: the checkpoint's ``key_id`` is trusted (else ``unknown_key``) and
        its Ed25519 signature verifies (else ``bad_signature``).
  AUD-8 checkpoint size: the log holds at least ``size`` records (else ``truncated``).
  AUD-9 checkpoint head: the record at position ``size`` has ``record_hash == head_hash``.
  AUD-10 checkpoint root: the Merkle root of the first ``size`` lines is ``merkle_root``.

AUD-9/10 catch what the HMAC chain cannot: a rollback, or a rewrite by someone holding the
HMAC key who re-chained every record after their edit.

Input is bytes in chunks per file, so the caller decides how to read (the CLI reads 1 MiB
at a time; tests pass bytes). Lines longer than ``max_line`` are discarded as they stream,
so memory stays bounded whatever the input. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from assay.core.audit.chain import GENESIS, MAX_LINE, Chain, canonical, split_line
from assay.core.audit.checkpoint import Checkpoint, KeyRing, keyring, signature_problem
from assay.core.audit.merkle import CompactRange
from assay.core.audit.schema import record_problem

BreakKind = Literal[
    "malformed_line", "self_mismatch", "link_mismatch", "seq_gap", "truncated",
    "checkpoint_mismatch", "bad_signature", "unknown_key",
]  # fmt: skip
BREAK_KINDS: Final = frozenset(BreakKind.__args__)  # type: ignore[attr-defined]

BOM: Final = b"\xef\xbb\xbf"
#: Stand-in leaf for a line too long to keep: it can never equal a real leaf hash input.
_OVERSIZED_LEAF: Final = hashlib.sha256(b"\x02assay-oversized-line").digest()
_sha256 = hashlib.sha256


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder(
    parse_constant=_no_constants
).scan_once  # type: ignore[attr-defined]


def _decode(text: str) -> Any:
    """One JSON value filling all of ``text`` (no surrounding whitespace), NaN refused.

    The C scanner directly: ``JSONDecoder.decode`` adds two regex passes for whitespace
    the writer never emits.
    """
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        raise ValueError("not a JSON value") from None
    if end != len(text):
        raise ValueError("extra data after the JSON value")
    return value


@dataclass(frozen=True, slots=True)
class Break:
    """One verification failure. ``line`` is 1-based within ``file``; ``seq`` is the
    sequence number that belongs at that line (the expected one: a damaged record's own
    claim cannot be trusted), or the checkpoint size for checkpoint breaks."""

    kind: BreakKind
    seq: int | None
    file: str
    line: int | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        seq = self.seq if self.seq is not None else "?"
        return f"{self.kind} at seq {seq} ({where}): {self.detail}"


@dataclass
class VerifyReport:
    records: int = 0
    files: list[str] = field(default_factory=list)
    head_seq: int = 0
    head_hash: str = GENESIS
    merkle_root: str | None = None
    authenticated: bool = True
    checkpoints_checked: int = 0
    breaks: list[Break] = field(default_factory=list)
    #: All breaks found, including those past ``max_breaks`` that were not kept.
    breaks_total: int = 0

    @property
    def ok(self) -> bool:
        return self.breaks_total == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


class StreamVerifier:
    """Feed files' bytes in order; ``finish()`` returns the report.

    ``start_seq``/``start_hash`` let a caller verify a suffix of the log (records after
    ``start_seq`` whose predecessor hashed to ``start_hash``); checkpoints need the whole
    log and are refused in that mode.
    """

    def __init__(
        self,
        key: bytes | None,
        checkpoints: Sequence[Checkpoint] = (),
        public_keys: Iterable[Ed25519PublicKey] | KeyRing = (),
        *,
        start_seq: int = 0,
        start_hash: str = GENESIS,
        max_line: int = MAX_LINE,
        max_breaks: int = 1000,
        compute_root: bool = False,
    ) -> None:
        if checkpoints and start_seq:
            raise ValueError("checkpoints cover the whole log; start_seq must be 0")
        self._chain = Chain(key) if key is not None else None
        self._max_line = max_line
        self._max_breaks = max_breaks
        self.report = VerifyReport(authenticated=key is not None, head_seq=start_seq,
                                   head_hash=start_hash)  # fmt: skip
        self._file = "<start>"
        self._lineno = 0
        self._pos = 0  # non-blank lines seen: the Merkle leaf count
        self._next_seq = start_seq + 1
        self._prev = start_hash
        self._slack = 0  # lines since the last anchor that made no usable claims
        self._pend: list[bytes] = []
        self._pend_len = 0
        self._skipping = False
        self._range = CompactRange()
        self._cps = self._check_signatures(checkpoints, keyring(public_keys))
        need = max((cp.size for cp in self._cps), default=0)
        self._compute_root = compute_root
        self._leaf_limit = 1 << 62 if compute_root else need
        self._check_checkpoints()  # size-0 checkpoints

    # -- breaks ---------------------------------------------------------------------------

    def _break(self, kind: BreakKind, seq: int | None, detail: str, line: int | None = -1) -> None:
        self.report.breaks_total += 1
        if len(self.report.breaks) < self._max_breaks:
            where = self._lineno if line == -1 else line
            self.report.breaks.append(Break(kind, seq, self._file, where, detail))

    # -- checkpoints ----------------------------------------------------------------------

    def _check_signatures(self, cps: Sequence[Checkpoint], keys: KeyRing) -> list[Checkpoint]:
        good: list[Checkpoint] = []
        for cp in cps:
            # Step 7 (AUD-7: checkpoint key): trusted key_id and a valid Ed25519 signature.
            problem = signature_problem(cp, keys)
            if problem is not None:
                self._file = "<checkpoint>"
                self._break(problem[0], cp.size, problem[1], None)  # type: ignore[arg-type]
            else:
                good.append(cp)
        self._file = "<start>"
        good.sort(key=lambda c: c.size)
        return good

    def _check_checkpoints(self, head: str | None = GENESIS) -> None:
        """Compare every checkpoint whose size equals the current position."""
        while self._cps and self._cps[0].size == self._pos:
            cp = self._cps.pop(0)
            self.report.checkpoints_checked += 1
            # Step 9 (AUD-9: checkpoint head): the record at position size is the head.
            if head != cp.head_hash:
                self._break("checkpoint_mismatch", cp.size,
                            f"record {cp.size} hash {str(head)[:16]}... is not checkpoint head "
                            f"{cp.head_hash[:16]}... (rollback or rewrite)")  # fmt: skip
                continue
            # Step 10 (AUD-10: checkpoint root): Merkle root of lines 1..size matches.
            root = self._range.root().hex()
            if root != cp.merkle_root:
                self._break("checkpoint_mismatch", cp.size,
                            f"Merkle root of records 1..{cp.size} is {root[:16]}..., checkpoint "
                            f"says {cp.merkle_root[:16]}... (records rewritten)")  # fmt: skip

    # -- streaming ------------------------------------------------------------------------

    def begin_file(self, name: str) -> None:
        self._file = name
        self._lineno = 0
        self.report.files.append(name)

    def feed(self, chunk: bytes) -> None:
        """Split ``chunk`` into lines; a partial last line waits for the next chunk."""
        if not chunk:
            return
        if self._skipping:  # inside an oversized line already reported: drop to newline
            nl = chunk.find(b"\n")
            if nl < 0:
                return
            self._skipping = False
            chunk = chunk[nl + 1 :]
        nl = chunk.find(b"\n")
        if nl < 0:
            self._pend.append(chunk)
            self._pend_len += len(chunk)
            self._bound_pending()
            return
        if self._pend:
            self._pend.append(chunk[:nl])
            first = b"".join(self._pend)
            self._pend, self._pend_len = [], 0
            self.check_line(first)
            chunk = chunk[nl + 1 :]
        parts = chunk.split(b"\n")
        tail = parts.pop()
        check = self.check_line
        for line in parts:
            check(line)
        if tail:
            self._pend, self._pend_len = [tail], len(tail)
            self._bound_pending()

    def _bound_pending(self) -> None:
        if self._pend_len > self._max_line:
            head = b"".join(self._pend)[: self._max_line + 1]
            self._pend, self._pend_len = [], 0
            self._skipping = True
            self.check_line(head)  # longer than max_line: reported as malformed

    def end_file(self) -> None:
        """A file's last bytes without a newline are a torn write (AUD-6)."""
        self._skipping = False
        if self._pend:
            line = b"".join(self._pend)
            self._pend, self._pend_len = [], 0
            self.check_line(line, torn=True)

    # -- one line -------------------------------------------------------------------------

    def check_line(self, line: bytes, torn: bool = False) -> dict[str, Any] | None:
        """Verify one line (without its newline). Returns the record if it has no break."""
        self._lineno += 1
        if not line:
            # Step 1 (AUD-1: line): the writer never writes a blank line.
            self._break("malformed_line", None, "blank line")
            return None
        self._pos += 1
        too_long = len(line) > self._max_line
        if self._pos <= self._leaf_limit:
            self._range.push(_OVERSIZED_LEAF if too_long else _sha256(b"\x00" + line).digest())
        rec, problem = inspect_line(self._chain, line, self._max_line)
        claims = _claims(rec)
        hint = self._next_seq + self._slack  # the seq this line should carry
        if claims is None:
            self._slack += 1
        else:
            seq, prev_hash, rhash = claims
            # Fast path first: the common case is a record exactly where it belongs.
            if problem is None and not (seq == hint and prev_hash == self._prev):
                problem = self._order_check(seq, prev_hash)
            self._next_seq, self._prev, self._slack = seq + 1, rhash, 0
        if torn:
            # Step 6 (AUD-6: tail): no newline at the end of a file: a torn write.
            extra = f"; and {problem[1]}" if problem else ""
            problem = ("truncated", f"last line has no newline (torn write){extra}")
        if problem is not None:
            self._break(problem[0], hint, problem[1])
        if self._cps and self._cps[0].size == self._pos:
            self._check_checkpoints(claims[2] if claims else None)
        return rec if problem is None else None

    def _order_check(self, seq: int, prev_hash: str) -> tuple[BreakKind, str] | None:
        expected = self._next_seq
        # Step 4 (AUD-4: seq): contiguous. After k unparseable lines, any seq in
        # [expected, expected + k] is accepted (they may have been records or insertions).
        if not expected <= seq <= expected + self._slack:
            if seq > expected:
                missing = seq - expected - self._slack
                return ("seq_gap", f"expected seq {expected}, found {seq} ({missing} missing)")
            return ("seq_gap", f"expected seq {expected}, found {seq} (out of order or replayed)")
        # Step 5 (AUD-5: link): prev_hash is the previous record's record_hash.
        if seq == expected and prev_hash != self._prev:
            return ("link_mismatch", f"prev_hash {prev_hash[:16]}... is not the previous "
                                     f"record_hash {self._prev[:16]}...")  # fmt: skip
        return None

    def finish(self) -> VerifyReport:
        self.end_file()
        self.report.records = self._pos
        self.report.head_seq, self.report.head_hash = self._next_seq - 1, self._prev
        for cp in self._cps:
            # Step 8 (AUD-8: checkpoint size): the log is shorter than a checkpoint.
            self.report.checkpoints_checked += 1
            self._break("truncated", self._pos + 1,
                        f"log ends after {self._pos} records but checkpoint covers {cp.size}",
                        self._lineno + 1)  # fmt: skip
        self._cps = []
        if self._compute_root:
            self.report.merkle_root = self._range.root().hex()
        return self.report


def inspect_line(
    chain: Chain | None, line: bytes, max_line: int = MAX_LINE
) -> tuple[Any, tuple[BreakKind, str] | None]:
    """Steps AUD-1..3 for one line: ``(parsed value or None, first problem or None)``.

    Needs no state, so the log uses it to authenticate its head record on open.
    """
    if len(line) > max_line:
        # Step 1 (AUD-1: line): bounded length, so a hostile file cannot exhaust memory.
        return None, ("malformed_line", f"line longer than {max_line} bytes")
    problem: tuple[BreakKind, str] | None = None
    if line[:3] == BOM:
        # Step 1 (AUD-1: line): a BOM is tampering; strip it to resynchronise.
        problem = ("malformed_line", "UTF-8 byte order mark")
        line = line[3:]
    try:
        rec = _decode(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, problem or ("malformed_line", "invalid UTF-8")
    except (ValueError, RecursionError):
        return None, problem or ("malformed_line", "not a JSON value")
    if problem is not None:
        return rec, problem
    # Step 2 (AUD-2: schema): exact field set, types, enum values.
    why = record_problem(rec)
    if why is not None:
        return rec, ("malformed_line", why)
    # Step 3 (AUD-3: self): the writer's layout, and HMAC(body) equals record_hash.
    parts = split_line(line)
    if parts is None or parts[1].decode("ascii", "replace") != rec["record_hash"]:
        return rec, ("malformed_line", "not in the writer's line layout (record_hash last)")
    if chain is None:
        # Without the key, at least insist on the exact canonical bytes.
        body = {k: v for k, v in rec.items() if k != "record_hash"}
        if canonical(body) != parts[0]:
            return rec, ("malformed_line", "record is not canonical JSON")
        return rec, None
    if chain.mac(parts[0]) != rec["record_hash"]:
        return rec, ("self_mismatch", "record_hash does not match the record's content")
    return rec, None


def _claims(rec: Any) -> tuple[int, str, str] | None:
    """``(seq, prev_hash, record_hash)`` when the parsed value carries usable ones."""
    if type(rec) is not dict:
        return None
    seq, prev_hash, rhash = rec.get("seq"), rec.get("prev_hash"), rec.get("record_hash")
    if type(seq) is int and seq >= 1 and type(prev_hash) is str and type(rhash) is str:
        return seq, prev_hash, rhash
    return None


def verify_stream(
    files: Iterable[tuple[str, Iterable[bytes]]],
    key: bytes | None,
    checkpoint: Checkpoint | Sequence[Checkpoint] | None = None,
    public_keys: Iterable[Ed25519PublicKey] | Mapping[str, Ed25519PublicKey] = (),
    *,
    max_line: int = MAX_LINE,
    max_breaks: int = 1000,
    compute_root: bool = False,
) -> VerifyReport:
    """Verify a whole log given as ``(file name, chunks)`` pairs in rotation order.

    ``key`` None skips AUD-3's MAC (records are then only checked for canonical form,
    order and links, and against checkpoints): useful for a public auditor.
    """
    cps: Sequence[Checkpoint] = (
        ()
        if checkpoint is None
        else [checkpoint]
        if isinstance(checkpoint, Checkpoint)
        else checkpoint
    )
    v = StreamVerifier(key, cps, public_keys, max_line=max_line, max_breaks=max_breaks,
                       compute_root=compute_root)  # fmt: skip
    for name, chunks in files:
        v.begin_file(name)
        for chunk in chunks:
            v.feed(chunk)
        v.end_file()
    return v.finish()
