"""Ctrl-C: exit 130 (README's exit-code table), no traceback, nothing else printed.

The command is caught while it waits on a pipe that carries nothing yet (a
``--token-file`` FIFO whose writer is silent). SIGINT is sent only once the process
holds the FIFO open (read from ``/proc/PID/fd``), so it arrives in the command's own
code, never during interpreter start-up: deterministic, no sleeps as assertions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _holds_open(pid: int, path: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


def _interruptible() -> None:
    """The child as a terminal starts it: SIGINT at its default. A suite run from a
    background job (``.ci/run &``) inherits SIGINT ignored, which Python then keeps, as
    any program should (nohup); that would test the runner, not the CLI."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_while_a_command_waits_exits_130_without_a_traceback(tmp_path: Path) -> None:
    fifo = tmp_path / "token.fifo"
    os.mkfifo(fifo)
    keep = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer open at once
    writer = os.open(fifo, os.O_WRONLY)  # a writer that never writes
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "assay", "list", "--url", "http://127.0.0.1:1",
             "--token-file", str(fifo)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            preexec_fn=_interruptible,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        for _ in range(3000):
            if _holds_open(proc.pid, fifo) or proc.poll() is not None:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(writer)
        os.close(keep)
    assert proc.returncode == 130, err
    assert b"Traceback" not in out + err
