"""Replay after a mark starts at the nearest checkpoint, and stays exact and authenticated.

Why: a crash restart reads the records after the replay mark; with 64 MiB segments,
starting at the segment's first line would cost up to ~100k HMAC checks however close
the mark is to the head. Starting at a checkpoint bounds it by the checkpoint interval.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.core.audit import files, reader
from assay.core.errors import ChainBroken
from tests.unit.audit_util import SIGNING, open_log, write_log


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 120),
    rotate=st.sampled_from([1500, 4000, 10**9]),
    every=st.sampled_from([3, 10, 1000]),
    batch=st.integers(1, 9),
    data=st.data(),
)
def test_records_after_any_mark_are_exactly_the_log_tail(
    tmp_path_factory: Any, n: int, rotate: int, every: int, batch: int, data: Any
) -> None:
    tmp = tmp_path_factory.mktemp("log")
    records = write_log(tmp, n, rotate_bytes=rotate, batch=batch, signing_key=SIGNING,
                        checkpoint_every=every)  # fmt: skip
    after = data.draw(st.integers(0, n))
    with open_log(tmp, signing_key=SIGNING) as log:
        assert list(log.records_after(after)) == records[after:]


def test_replay_begins_at_the_checkpoint_before_the_mark(tmp_path: Path) -> None:
    write_log(tmp_path, 100, signing_key=SIGNING, checkpoint_every=10)
    with open_log(tmp_path, signing_key=SIGNING) as log:
        plan, seq, _hash = reader.replay_plan(tmp_path, 95, log._parse, log._fd, log._known_size)
        try:
            assert seq == 90  # not the segment's first line
            assert plan[-1][1] > 0
            lines = sum(1 for fd, start, end in plan for _ in files.lines(fd, start, end))
            assert lines == 10
        finally:
            for fd, _s, _e in plan:
                os.close(fd)


def test_a_wrong_checkpoint_index_costs_time_not_correctness(tmp_path: Path) -> None:
    """An index pointing at the wrong line is ignored: replay starts from the segment."""
    records = write_log(tmp_path, 60, signing_key=SIGNING, checkpoint_every=10)
    cps = tmp_path / files.CHECKPOINTS
    cps.write_bytes(cps.read_bytes().replace(b'"offset":', b'"offset":1', 3))
    with open_log(tmp_path, signing_key=SIGNING) as log:
        assert list(log.records_after(45)) == records[45:]


def test_a_forged_record_after_the_checkpoint_stops_replay(tmp_path: Path) -> None:
    write_log(tmp_path, 60, signing_key=SIGNING, checkpoint_every=10)
    current = tmp_path / files.CURRENT
    lines = current.read_bytes().split(b"\n")
    lines[55] = lines[55].replace(b"user-", b"usex-", 1)
    current.write_bytes(b"\n".join(lines))
    with open_log(tmp_path, signing_key=SIGNING) as log, pytest.raises(ChainBroken):
        list(log.records_after(52))
