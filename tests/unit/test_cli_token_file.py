"""``--token-file``: a regular file or a pipe, read in bounded time and size; nothing else.

A FIFO nobody writes to, a pipe whose writer stays silent, a device, a socket: each is
``cli.input_unreadable`` at once or after ``TOKEN_PIPE_SECONDS``, never an ``open()``
or ``read()`` that waits forever. A pipe that does carry a token (``<(pass show ...)``)
still works.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from assay.cli import client
from assay.cli.client import Client, read_token_file
from assay.cli.errors import InputUnreadable


def test_fifo_with_no_writer_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "t.fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputUnreadable, match="not one token"):
        read_token_file(str(fifo))


def test_fifo_whose_writer_stays_silent_is_refused_after_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "TOKEN_PIPE_SECONDS", 0.2)
    fifo = tmp_path / "t.fifo"
    os.mkfifo(fifo)
    reader_ready = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer open
    writer = os.open(fifo, os.O_WRONLY)
    try:
        with pytest.raises(InputUnreadable, match="nothing was written"):
            read_token_file(str(fifo))
    finally:
        os.close(writer)
        os.close(reader_ready)


def test_a_pipe_that_carries_a_token_is_read() -> None:
    # What a shell's <(pass show assay) hands over: /dev/fd/N on a pipe, whose writer
    # writes when it is ready. The first half is there; the rest comes later.
    r, w = os.pipe()
    os.write(w, b"tok-")
    done = threading.Event()

    def rest() -> None:
        done.wait(10)
        os.write(w, b"en\n")
        os.close(w)

    t = threading.Thread(target=rest, daemon=True)
    t.start()
    try:
        threading.Timer(0.05, done.set).start()
        assert read_token_file(f"/dev/fd/{r}") == "tok-en"
    finally:
        done.set()
        t.join(timeout=10)
        os.close(r)


@pytest.mark.parametrize("kind", ["device", "socket", "directory"])
def test_a_device_socket_or_directory_is_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "tok"
    sock = None
    if kind == "device":
        path = Path("/dev/zero")  # would read forever without the bound: refused unread
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    else:
        path.mkdir()
    try:
        with pytest.raises(InputUnreadable):
            read_token_file(str(path))
    finally:
        if sock is not None:
            sock.close()


def test_the_environment_variable_is_named_when_it_named_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ASSAY_TOKEN", raising=False)
    monkeypatch.setenv("ASSAY_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(InputUnreadable, match=r"^cannot read \$ASSAY_TOKEN_FILE "):
        Client.from_args(None, None)
    with pytest.raises(InputUnreadable, match=r"^cannot read --token-file "):
        Client.from_args(None, str(tmp_path / "missing"))
