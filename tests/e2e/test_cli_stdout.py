"""stdout that cannot be written (a full disk, a reader that went away) is an error.

``assay ... > /dev/full`` used to exit 6 "storage.full: an operation failed", and with
``--json`` printed a traceback (the problem could not be printed to stdout either);
``--version > /dev/full`` exited 120 with "Exception ignored". Each must be one line
on stderr, ``cli.output_unwritable`` naming stdout, exit 2, for a full device and for a
closed pipe alike; an error that was already being reported keeps its own code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import SAMPLES

pytestmark = pytest.mark.e2e

SUCCEEDING = [
    ["inspect", str(SAMPLES / "sample.gguf")],
    ["inspect", str(SAMPLES / "sample.gguf"), "--json"],
    ["relay", "generate-api-key", "--id", "x"],
    ["relay", "generate-api-key", "--id", "x", "--json"],
    ["--version"],
    ["--help"],
]


@contextmanager
def unwritable(kind: str) -> Iterator[int]:
    if kind == "full":
        fd = os.open("/dev/full", os.O_WRONLY)
        try:
            yield fd
        finally:
            os.close(fd)
        return
    r, w = os.pipe()
    os.close(r)  # the reader is gone before anything is written: EPIPE
    try:
        yield w
    finally:
        os.close(w)


def _run(argv: list[str], out: int) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "assay", *argv], stdout=out,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip


@pytest.mark.parametrize("kind", ["full", "closed-pipe"])
@pytest.mark.parametrize("argv", SUCCEEDING, ids=lambda a: " ".join(a[:3]).replace("/", "_"))
def test_output_that_cannot_be_written_is_output_unwritable(kind: str, argv: list[str]) -> None:
    if kind == "full" and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with unwritable(kind) as out:
        proc = _run(argv, out)
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert err.count("assay: error [") == 1, err
    assert "[cli.output_unwritable]: cannot write to stdout" in err, err
    assert proc.returncode == 2


def test_an_error_whose_json_cannot_be_printed_is_reported_on_stderr_with_its_code() -> None:
    with unwritable("full") as out:
        proc = _run(["inspect", "/no/such/file", "--json"], out)
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    assert "[cli.input_unreadable]" in err
    assert proc.returncode == 2
