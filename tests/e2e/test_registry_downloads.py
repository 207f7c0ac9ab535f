"""Downloads hold an open file: it is closed on every path, however the request ends.

The content route opens the object in its handler and streams it from the response
body. These tests end requests every way that body might never run or never finish:
the client leaves before the answer, the edge answers an error instead, the client
leaves mid-body, or asks with HEAD. The daemon's descriptors on store files are counted
in ``/proc/<pid>/fd`` and must come back to zero.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import Deployment, init_deployment
from tests.e2e.deployments import BIG, ST, Make, get, make, pid, trusted
from tests.e2e.wire import connect, object_fds, settled

pytestmark = pytest.mark.e2e
__all__ = ["make"]  # the fixture, imported for pytest


def test_abandoned_download_leaks_no_fd(deployment: Deployment) -> None:
    digest = trusted(deployment)
    store = deployment.dir / "state" / "store"
    request = get(deployment, f"/v1/artifacts/{digest}/content")
    for _ in range(40):  # ask, then leave before the answer: the handler has opened the file
        with connect(deployment.port) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
    assert settled(lambda: object_fds(pid(deployment), store)) == 0
    with deployment.client() as c:  # and the daemon still serves
        assert c.get(f"/v1/artifacts/{digest}/content").content == ST


def test_download_answered_with_an_error_after_the_open_leaks_no_fd(tmp_path: Path) -> None:
    """The handler has opened the file; then the request's audit record cannot be
    written and the edge answers 503 instead of the download: the body is never sent."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8): the fault is a tiny tmpfs under the audit log")
    dep = init_deployment(tmp_path)
    mounted = False
    try:
        dep.start()
        digest = trusted(dep)
        dep.stop()
        saved = tmp_path / "audit.saved"
        shutil.copytree(dep.audit_dir, saved)
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(dep.audit_dir)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        if proc.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {proc.stderr.strip()}")
        mounted = True
        for f in saved.iterdir():
            shutil.copy2(f, dep.audit_dir / f.name)
        dep.start()
        fd = os.open(dep.audit_dir / "filler", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for _ in range(10_000):  # until the file system is full
                try:
                    os.write(fd, b"\0" * 4096)
                except OSError:
                    break
        finally:
            os.close(fd)
        refused = 0
        with dep.client() as c:
            for _ in range(200):  # the first few still fit the log's last page
                r = c.get(f"/v1/artifacts/{digest}/content")
                if r.status_code == 503:
                    assert r.json()["code"] == "audit.write_failed"
                    refused += 1
                    if refused == 20:
                        break
        assert refused == 20
        store = dep.dir / "state" / "store"
        assert settled(lambda: object_fds(pid(dep), store)) == 0
    finally:
        dep.stop()
        if mounted:
            subprocess.run(["umount", "-l", str(dep.audit_dir)], capture_output=True, timeout=30)


def test_download_abandoned_mid_body_leaks_no_fd(make: Make) -> None:
    dep = make(max_bytes=64 * 1024 * 1024)
    digest = trusted(dep, BIG, name="m/big")
    store = dep.dir / "state" / "store"
    for _ in range(8):
        with connect(dep.port) as sock:
            sock.sendall(get(dep, f"/v1/artifacts/{digest}/content"))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
    assert settled(lambda: object_fds(pid(dep), store)) == 0


def test_head_of_content_answers_its_length_and_holds_nothing(deployment: Deployment) -> None:
    digest = trusted(deployment)
    store = deployment.dir / "state" / "store"
    with httpx.Client(base_url=deployment.url) as c:
        headers = {"Authorization": f"Bearer {deployment.admin_token}"}
        for _ in range(20):
            r = c.head(f"/v1/artifacts/{digest}/content", headers=headers)
            assert r.status_code == 200 and r.content == b""
            assert r.headers["content-length"] == str(len(ST))
    assert settled(lambda: object_fds(pid(deployment), store)) == 0
