"""Attacks on startup replay's checkpoint anchor (``reader._checkpoint_anchor``) (review14).

The attacker can write the audit directory but has no HMAC key: ``checkpoints.jsonl`` is
an unsigned index they can append to. They know every record's position, seq and hash
(all public in the files), so forged index lines are built from real positions with
lying labels: a seq off by a few, another record's hash, another segment's number. Replay
after any mark must still yield exactly the log's tail, or refuse; never skip a record
or start elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.core.audit import files, reader
from assay.core.audit.verify import StreamVerifier
from tests.unit.audit_util import SIGNING, fields, open_log, write_log


def positions(directory: Path) -> list[tuple[int, int, int, str]]:
    """``(segment, end offset, seq, record_hash)`` of every line, read off the files."""
    indexes = files.rotated_indexes(directory)
    names = [(i, files.rotated_name(i)) for i in indexes]
    names.append(((indexes[-1] + 1) if indexes else 1, files.CURRENT))
    out = []
    for index, name in names:
        data = (directory / name).read_bytes()
        end = 0
        for line in data.split(b"\n")[:-1]:
            end += len(line) + 1
            rec = json.loads(line)
            out.append((index, end, int(rec["seq"]), str(rec["record_hash"])))
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(5, 80),
    rotate=st.sampled_from([1500, 4000, 10**9]),
    every=st.sampled_from([4, 1000]),
    data=st.data(),
)
def test_a_forged_checkpoint_index_never_makes_replay_skip_or_invent_a_record(
    tmp_path_factory: Any, n: int, rotate: int, every: int, data: Any
) -> None:
    tmp = tmp_path_factory.mktemp("anchor")
    records = write_log(tmp, n, rotate_bytes=rotate, signing_key=SIGNING,
                        checkpoint_every=every)  # fmt: skip
    pos = positions(tmp)
    segments = sorted({p[0] for p in pos})
    forged: list[bytes] = []
    for _ in range(data.draw(st.integers(1, 6))):
        seg, off, seq, digest = data.draw(st.sampled_from(pos))
        lie = data.draw(st.sampled_from(["none", "seq", "hash", "segment", "offset"]))
        if lie == "seq":
            seq += data.draw(st.sampled_from([-2, -1, 1, 2]))
        elif lie == "hash":
            digest = data.draw(st.sampled_from(pos))[3]
        elif lie == "segment":
            seg = data.draw(st.sampled_from(segments))
        elif lie == "offset":
            off = data.draw(st.sampled_from(pos))[1]
        forged.append(json.dumps({"size": seq, "head_hash": digest,
                                  "state": {"segment": seg, "offset": off}}).encode())  # fmt: skip
    after = data.draw(st.integers(0, n))
    with open_log(tmp, signing_key=SIGNING) as log:
        # Tampered after open: the anchor re-reads the index at each replay.
        with (tmp / files.CHECKPOINTS).open("ab") as f:
            f.write(b"\n".join(forged) + b"\n")
        got = list(log.records_after(after))
    assert got == records[after:]


class CountingJson:
    """``json`` for ``reader``, counting the index lines the anchor search parses."""

    def __init__(self) -> None:
        self.loads_calls = 0

    def loads(self, raw: Any) -> Any:
        self.loads_calls += 1
        return json.loads(raw)


def test_the_anchor_search_does_not_parse_every_checkpoint_ever_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon signs a checkpoint every 1000 records or every 60 s with traffic, so
    ``checkpoints.jsonl`` grows with M and with uptime (a year is ~500k lines of ~1-2 KB:
    the compact range rides along). ``_checkpoint_anchor`` reads and JSON-parses the
    whole file at every start to find the one line before the mark, which is near its
    end: the restart cost grows with all traffic ever logged, not with the records
    after the mark."""
    write_log(tmp_path, 2000, signing_key=SIGNING, checkpoint_every=2)
    lines = (tmp_path / files.CHECKPOINTS).read_bytes().count(b"\n")
    assert lines == 1000
    spy = CountingJson()
    monkeypatch.setattr(reader, "json", spy)
    with open_log(tmp_path, signing_key=SIGNING) as log:
        assert len(list(log.records_after(1999))) == 1
    assert spy.loads_calls <= 16, (
        f"replaying 1 record after the mark parsed {spy.loads_calls} of {lines} "
        "checkpoint index lines"
    )


class CountingVerifier(StreamVerifier):
    """The real verifier, counting the lines replay authenticates."""

    lines = 0

    def check_line(self, line: bytes, torn: bool = False) -> dict[str, Any] | None:
        CountingVerifier.lines += 1
        return super().check_line(line, torn)


def test_without_a_signing_key_replay_starts_at_the_saved_anchor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``audit.signing_key`` is optional; without it no checkpoint is ever written, so
    the checkpoint index cannot say where the mark is. The registry saves the head's
    position with its mark (``head_position``), and replay reads from there: one record
    after the mark costs its own line, not the segment's (64 MiB by default)."""
    write_log(tmp_path, 1999)  # no signing key: no checkpoints.jsonl
    assert not (tmp_path / files.CHECKPOINTS).exists()
    with open_log(tmp_path) as log:
        anchor = log.head_position()
        log.append(fields(1999))
    monkeypatch.setattr(reader, "StreamVerifier", CountingVerifier)
    CountingVerifier.lines = 0
    with open_log(tmp_path) as log:
        assert len(list(log.records_after(1999, anchor=anchor))) == 1
    assert CountingVerifier.lines <= 2, (
        f"replaying 1 record after the mark authenticated {CountingVerifier.lines} lines"
    )
    # Without the anchor, the old cost: the whole segment.
    CountingVerifier.lines = 0
    with open_log(tmp_path) as log:
        assert len(list(log.records_after(1999))) == 1
    assert CountingVerifier.lines == 2000


def test_an_anchor_the_log_does_not_hold_replays_from_the_start(tmp_path: Path) -> None:
    """A log replaced or cut under the registry: the saved anchor names a record that is
    not there, so every record of this log is read (and applied if missing), never
    skipped because of a mark from another log."""
    records = write_log(tmp_path, 30)
    with open_log(tmp_path) as log:
        real = log.head_position()
    for lie in (real._replace(record_hash="0" * 64), real._replace(offset=real.offset - 1),
                real._replace(segment=7), real._replace(seq=real.seq + 5)):  # fmt: skip
        with open_log(tmp_path) as log:
            assert list(log.records_after(30, anchor=lie)) == records, lie
