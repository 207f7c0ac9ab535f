"""Helpers for the consumer-socket tests: a deployment whose socket other uids can reach,
trusted artifacts, and consumer code run as another user.

Running as another user: the test interpreter lives under /root (0700), which an
unprivileged uid cannot read, so the child starts as root, imports everything the
consumer code needs, and only then drops to the consumer's uid, gid and groups
(``setgroups``, ``setgid``, ``setuid``; irreversible) before it runs that code. From then
on it is that user: it cannot read the store, and gets bytes only through the socket.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from tests.conftest import SAMPLES, Deployment, init_deployment, upload

#: Ids no account uses here (checked): the socket's group, its member consumers, and
#: an outsider.
SOCKET_GID = 54320
CONSUMER_UID = 54321
OUTSIDER_UID, OUTSIDER_GID = 54322, 54323
UNMAPPED_UID = 54326
FLEET_UID, FLEET_GID = 54327, 54328

GGUF = (SAMPLES / "sample.gguf").read_bytes()

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching uid needs root")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {"w": rng.standard_normal((64, 32)).astype(np.float32),
            "b": np.arange(32, dtype=np.int64)}  # fmt: skip


def safetensors_bytes() -> bytes:
    return save(tensors(), metadata={"source": "test"})


CONSUMER_CONFIG = """consumer:
  socket: {socket}
  socket_group: {gid}
  request_timeout_seconds: {timeout}
  max_connections: {slots}
  principals:
    - id: svc
      uids: [{consumer}]
      scopes: [artifacts:read]
    - id: fleet
      gids: [{fleet}]
      scopes: [artifacts:read]
    - id: local
      uids: [0]
      scopes: [artifacts:read]
    - id: lister
      uids: [{lister}]
      scopes: [artifacts:list]
"""
#: A uid mapped to a principal without ``artifacts:read``.
LISTER_UID = 54329


@dataclass
class ConsumerDeployment:
    dep: Deployment
    socket: Path

    def trusted(self, data: bytes, name: str) -> str:
        """Upload and promote ``data`` as ``name``; its digest."""
        with self.dep.client() as c:
            r = upload(c, data, name=name)
            assert r.status_code == 201, r.text
            digest = r.json()["artifact"]["digest"]
            r = c.post(f"/v1/artifacts/{digest}/promote", json={})
            assert r.status_code == 200, r.text
        return str(digest)

    def opens(self) -> list[dict[str, Any]]:
        return [r for r in self.dep.audit_records() if r["route"] == "consumer.socket"]


def configure(dep: Deployment, socket: Path, *, timeout: float = 5.0, slots: int = 8) -> None:
    """Replace the config's ``consumer:`` section, and only it: every other top-level
    section (``trust:`` above all, so the consumer tests run with TUF publishing on)
    stays as ``init`` wrote it. The new section goes last, so a test can append more
    principals to it."""
    lines = dep.config.read_text().splitlines(keepends=True)
    start = lines.index("consumer:\n")
    end = next((i for i in range(start + 1, len(lines))
                if lines[i][:1] not in ("", " ", "\n")), len(lines))  # fmt: skip
    while end > start + 1 and lines[end - 1].startswith("#"):
        end -= 1  # a comment right above the next section belongs to it
    while start > 0 and lines[start - 1].startswith("#"):
        start -= 1  # and the one right above consumer: to it
    section = CONSUMER_CONFIG.format(
        socket=socket, gid=SOCKET_GID, timeout=timeout, slots=slots, consumer=CONSUMER_UID,
        fleet=FLEET_GID, lister=LISTER_UID)  # fmt: skip
    rest = "".join(lines[:start] + lines[end:])
    dep.config.write_text(rest.rstrip("\n") + "\n" + section)


def shared_dir() -> Iterator[Path]:
    """A directory every uid may enter (not under pytest's 0700 tmp); for a fixture."""
    d = Path(tempfile.mkdtemp(prefix="assay-consumer-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start(tmp_path: Path, shared: Path, **kwargs: Any) -> ConsumerDeployment:
    dep = init_deployment(tmp_path, max_bytes=1024 * 1024)
    sock = shared / "consumer.sock"
    configure(dep, sock, **kwargs)
    dep.start()
    return ConsumerDeployment(dep, sock)


def consumers(tmp_path: Path, shared_dir: Path) -> Iterator[ConsumerDeployment]:
    """A running daemon whose consumer socket sits in ``shared_dir``; for a fixture."""
    cd = start(tmp_path, shared_dir)
    try:
        yield cd
    finally:
        cd.dep.stop()


#: Imported before the drop: afterwards the interpreter's own files are unreadable.
PRELUDE = """
import json, os, socket, stat, sys, struct, array, hashlib, errno, traceback, mmap
import numpy as np
import safetensors, safetensors.numpy
from safetensors import safe_open
import gguf
from gguf import GGUFReader
from assay.consumer import open_trusted
from assay.consumer.fd import PeerRefused, SocketUnreachable
from assay.cli.main import main as assay_main
from assay.core.errors import AssayError
# This interpreter's stdlib may sit under /root (a pyenv), which the uid below cannot
# read: load what the CLI imports lazily (argparse's gettext needs locale) while root.
import gettext, locale
np.zeros(1).sum()
uid, gid, groups = json.loads(sys.argv[1])
os.chdir("/")
os.setgroups(groups)
os.setgid(gid)
os.setuid(uid)
assert os.getuid() == uid and os.geteuid() == uid and os.getgid() == gid
def report(**out):
    print("RESULT " + json.dumps(out, sort_keys=True), flush=True)
"""


def as_user(uid: int, gid: int, groups: list[int], code: str, *, timeout: float = 120) -> Any:
    """Run ``code`` (after ``PRELUDE``) as ``uid``; the value it passed to ``report``."""
    proc = subprocess.run(
        [sys.executable, "-c", PRELUDE + code, json.dumps([uid, gid, groups])],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"as uid {uid}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return json.loads(lines[-1][len("RESULT ") :])


def raw_exchange(
    path: Path, request: bytes, *, fds: list[int] | None = None
) -> tuple[dict[str, Any], list[int]]:
    """Send one raw message (maybe with fds attached) and read the answer and its fds."""
    import array
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(30)
        s.connect(str(path))
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        s.sendmsg([request], ancillary)
        data, anc, _flags, _ = s.recvmsg(1 << 16, socket.CMSG_SPACE(64))
    got: list[int] = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(payload[: len(payload) - len(payload) % a.itemsize])
            got.extend(a)
    return json.loads(data), got


def gguf_values(data: bytes) -> dict[str, list[float]]:
    """What gguf's own reader finds in a GGUF file (tensor name -> first values)."""
    from gguf import GGUFReader

    with tempfile.NamedTemporaryFile(suffix=".gguf") as f:
        f.write(data)
        f.flush()
        reader = GGUFReader(f.name)
        return {t.name: [float(x) for x in np.asarray(t.data).ravel()[:8]] for t in reader.tensors}
