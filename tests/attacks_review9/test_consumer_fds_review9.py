"""Review 9: abandoned requests leaking fds, the consumer-socket member of the class.

Issue 9 fixed the HTTP download that was abandoned before its body ran. The consumer
socket hands out an object fd over SCM_RIGHTS; a peer that asks and leaves before the
answer (or never reads it) must not leave that fd open in the daemon.
"""

from __future__ import annotations

import socket

import pytest

from tests.conftest import Deployment
from tests.e2e.deployments import pid, trusted
from tests.e2e.wire import object_fds, settled

pytestmark = pytest.mark.e2e


def ask(path: str, *, read: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendmsg([b'{"name":"m/one"}'])
        if read:
            s.recvmsg(1, socket.CMSG_SPACE(4))  # truncated: the fd arrives, is never closed
        # leave: close at once, with the answer (and its fd) maybe still in flight


def test_consumer_peer_that_leaves_before_the_answer_leaks_no_fd(
    deployment: Deployment,
) -> None:
    trusted(deployment)
    sock = str(deployment.dir / "state" / "consumer.sock")
    store = deployment.dir / "state" / "store"
    for _ in range(40):
        ask(sock, read=False)
    assert settled(lambda: object_fds(pid(deployment), store)) == 0


def test_consumer_peer_that_shuts_down_its_read_side_leaks_no_fd(
    deployment: Deployment,
) -> None:
    trusted(deployment)
    path = str(deployment.dir / "state" / "consumer.sock")
    store = deployment.dir / "state" / "store"
    for _ in range(40):
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(10)
            s.connect(path)
            s.shutdown(socket.SHUT_RD)
            s.sendmsg([b'{"name":"m/one"}'])
    assert settled(lambda: object_fds(pid(deployment), store)) == 0
    with deployment.client() as c:
        assert c.get("/healthz").status_code == 200
