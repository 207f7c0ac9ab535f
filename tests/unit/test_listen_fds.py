"""Socket activation with two sockets: the daemon takes its HTTP socket and its consumer
socket by name (``LISTEN_FDNAMES``), never by position, which systemd does not promise."""

from __future__ import annotations

import os

import pytest

from assay.core.systemd import CONSUMER_FD_NAME, listen_fds, listen_fds_named


def activate(monkeypatch: pytest.MonkeyPatch, names: str | None, count: int = 2) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", str(count))
    if names is None:
        monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    else:
        monkeypatch.setenv("LISTEN_FDNAMES", names)


@pytest.mark.parametrize("order", [("assay.socket", "consumer"), ("consumer", "assay.socket")])
def test_the_consumer_fd_is_found_by_name_in_either_order(
    monkeypatch: pytest.MonkeyPatch, order: tuple[str, str]
) -> None:
    activate(monkeypatch, ":".join(order))
    consumer = 3 + order.index(CONSUMER_FD_NAME)
    assert listen_fds_named(CONSUMER_FD_NAME) == [consumer]
    assert listen_fds() == [7 - consumer]  # HTTP gets the other one, never the consumer's


def test_without_names_every_fd_is_http_and_none_is_the_consumer_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    activate(monkeypatch, None, count=1)
    assert listen_fds() == [3] and listen_fds_named(CONSUMER_FD_NAME) == []
    activate(monkeypatch, "consumer", count=2)  # names that do not match the count: ignored
    assert listen_fds() == [3, 4] and listen_fds_named(CONSUMER_FD_NAME) == []


def test_fds_meant_for_another_process_are_not_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    activate(monkeypatch, "assay.socket:consumer")
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    assert listen_fds() == [] and listen_fds_named(CONSUMER_FD_NAME) == []
