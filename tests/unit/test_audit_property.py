"""Property tests: every single mutation of a valid log is detected.

Mutations: a byte changed, inserted or deleted anywhere; a line deleted, duplicated,
swapped with another, or a line from elsewhere inserted anywhere (a replay).

The log is written once by ``AuditLog`` (two rotated files and the current one) with a
checkpoint covering every record: without one, deleting the last line is undetectable
by construction (the chain has no memory of its own length).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.core.audit.checkpoint import Checkpoint
from tests.unit.audit_util import SIGNING, lines_of, open_log, read_files, verify_bytes, write_log

N = 24
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[str, bytes]], Checkpoint]:
    d: Path = tmp_path_factory.mktemp("prop")
    write_log(d, N, rotate_bytes=5000, batch=2, signing_key=SIGNING, checkpoint_every=N)
    with open_log(d, signing_key=SIGNING) as log:
        cp = log.latest_checkpoint
    assert cp is not None and cp.size == N
    contents = read_files(d)
    assert len(contents) >= 3 and verify_bytes(contents, checkpoint=cp).ok
    return contents, cp


def _all_lines(contents: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    return [(fi, li) for fi, (_n, d) in enumerate(contents) for li in range(len(lines_of(d)))]


@PROPERTY
@given(data=st.data())
def test_any_single_byte_change_is_detected(
    valid: tuple[list[tuple[str, bytes]], Checkpoint], data: st.DataObject
) -> None:
    contents, cp = valid
    fi = data.draw(st.integers(0, len(contents) - 1))
    name, blob = contents[fi]
    pos = data.draw(st.integers(0, len(blob) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != blob[pos]))
    mutated = list(contents)
    mutated[fi] = (name, blob[:pos] + bytes([new]) + blob[pos + 1 :])
    assert not verify_bytes(mutated).ok  # the chain alone catches it, key in hand
    assert not verify_bytes(mutated, checkpoint=cp).ok


@PROPERTY
@given(data=st.data())
def test_any_line_deletion_is_detected(
    valid: tuple[list[tuple[str, bytes]], Checkpoint], data: st.DataObject
) -> None:
    contents, cp = valid
    fi, li = data.draw(st.sampled_from(_all_lines(contents)))
    lines = lines_of(contents[fi][1])
    del lines[li]
    mutated = list(contents)
    mutated[fi] = (contents[fi][0], b"".join(x + b"\n" for x in lines))
    report = verify_bytes(mutated, checkpoint=cp)
    assert not report.ok
    assert report.breaks[0].kind in {"seq_gap", "truncated"}


@PROPERTY
@given(data=st.data())
def test_any_swap_of_two_lines_is_detected(
    valid: tuple[list[tuple[str, bytes]], Checkpoint], data: st.DataObject
) -> None:
    contents, _cp = valid
    positions = _all_lines(contents)
    a, b = data.draw(st.lists(st.sampled_from(positions), min_size=2, max_size=2, unique=True))
    split = [lines_of(d) for _n, d in contents]
    split[a[0]][a[1]], split[b[0]][b[1]] = split[b[0]][b[1]], split[a[0]][a[1]]
    mutated = [
        (n, b"".join(x + b"\n" for x in ls)) for (n, _d), ls in zip(contents, split, strict=True)
    ]
    report = verify_bytes(mutated)
    assert not report.ok and report.breaks[0].kind == "seq_gap"


@PROPERTY
@given(data=st.data())
def test_any_byte_inserted_or_deleted_is_detected(
    valid: tuple[list[tuple[str, bytes]], Checkpoint], data: st.DataObject
) -> None:
    contents, cp = valid
    fi = data.draw(st.integers(0, len(contents) - 1))
    name, blob = contents[fi]
    pos = data.draw(st.integers(0, len(blob) - 1))
    if data.draw(st.booleans()):
        changed = blob[:pos] + bytes([data.draw(st.integers(0, 255))]) + blob[pos:]
    else:
        changed = blob[:pos] + blob[pos + 1 :]
    mutated = list(contents)
    mutated[fi] = (name, changed)
    assert not verify_bytes(mutated, checkpoint=cp).ok


@PROPERTY
@given(data=st.data())
def test_any_duplicated_or_replayed_line_is_detected(
    valid: tuple[list[tuple[str, bytes]], Checkpoint], data: st.DataObject
) -> None:
    contents, cp = valid
    positions = _all_lines(contents)
    src = data.draw(st.sampled_from(positions))  # the line copied (its own spot: a dup)
    dst_file = data.draw(st.integers(0, len(contents) - 1))
    split = [lines_of(d) for _n, d in contents]
    dst_line = data.draw(st.integers(0, len(split[dst_file])))
    split[dst_file].insert(dst_line, split[src[0]][src[1]])
    mutated = [
        (n, b"".join(x + b"\n" for x in ls)) for (n, _d), ls in zip(contents, split, strict=True)
    ]
    report = verify_bytes(mutated, checkpoint=cp)
    assert not report.ok
    assert report.breaks[0].kind in {"seq_gap", "link_mismatch", "checkpoint_mismatch"}


@settings(max_examples=200, deadline=None)
@given(blobs=st.lists(st.binary(max_size=600), min_size=1, max_size=4), chunk=st.integers(1, 97))
def test_arbitrary_bytes_never_crash_the_verifier(blobs: list[bytes], chunk: int) -> None:
    contents = [(f"f{i}", b) for i, b in enumerate(blobs)]
    report = verify_bytes(contents, chunk=chunk)
    assert report.ok == (sum(len(b) for b in blobs) == 0)
    assert verify_bytes(contents).breaks == report.breaks
