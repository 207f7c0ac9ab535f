"""``serve --bind fd://N`` on every kind of descriptor that is not a listening socket.

README: "an address serve cannot listen on" is ``server.bind_failed`` (exit 2), one line,
no traceback. Each kind below is handed to the real daemon (``pass_fds``), which must
refuse it so, never as ``storage.failed`` or ``internal.error``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import init_deployment

pytestmark = pytest.mark.e2e


@contextmanager
def descriptor(kind: str, tmp: Path) -> Iterator[int]:
    """An open fd of ``kind`` (or, for "closed", a number no descriptor has)."""
    if kind == "closed":
        yield 250
        return
    if kind == "file":
        fd = os.open(tmp / "plain-file", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            yield fd
        finally:
            os.close(fd)
        return
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    with s:
        yield s.fileno()


@pytest.mark.parametrize("kind", ["closed", "file", "datagram"])
def test_serve_on_an_fd_that_is_not_a_listening_socket_is_bind_failed(
    tmp_path: Path, kind: str
) -> None:
    dep = init_deployment(tmp_path)
    with descriptor(kind, tmp_path) as fd:
        passed = [] if kind == "closed" else [fd]
        proc = subprocess.run(
            [sys.executable, "-m", "assay", "serve", "--config", str(dep.config),
             "--bind", f"fd://{fd}"],
            capture_output=True, text=True, timeout=60, pass_fds=passed,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    assert "Traceback" not in proc.stderr
    assert "[server.bind_failed]" in proc.stderr, proc.stderr[-500:]
    assert proc.returncode == 2
