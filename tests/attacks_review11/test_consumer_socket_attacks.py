"""Attacks on the consumer socket of the real daemon (review 11).

Each test asserts the SAFE behaviour: it fails while the break it names exists.
"""

from __future__ import annotations

import array
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.consumer_support import (
    CONSUMER_UID,
    OUTSIDER_GID,
    SOCKET_GID,
    UNMAPPED_UID,
    ConsumerDeployment,
    as_user,
    needs_root,
    raw_exchange,
    safetensors_bytes,
)
from tests.consumer_support import consumers as running_consumers
from tests.consumer_support import shared_dir as make_shared_dir

pytestmark = pytest.mark.e2e

ST = safetensors_bytes()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    yield from make_shared_dir()


@pytest.fixture
def consumers(tmp_path: Path, shared_dir: Path) -> Iterator[ConsumerDeployment]:
    yield from running_consumers(tmp_path, shared_dir)


def daemon_fds(cd: ConsumerDeployment) -> int:
    assert cd.dep.proc is not None
    return len(os.listdir(f"/proc/{cd.dep.proc.pid}/fd"))


def object_path(cd: ConsumerDeployment, digest: str) -> Path:
    return cd.dep.dir / "state" / "store" / "objects" / "sha256" / digest[7:]


@needs_root
def test_attack_object_chmodded_writable_is_never_handed_out_reopenable_for_write(
    consumers: ConsumerDeployment,
) -> None:
    """The fd is O_RDONLY, but /proc/self/fd/N is a magic link that skips the 0700
    store directory: only the object's own mode stops a consumer reopening it O_RDWR.
    A chmod changes ctime, the handoff re-hashes, the bytes still match, and the fd goes
    out. The handoff must refuse an object that is not 0444 (or restore the mode)."""
    digest = consumers.trusted(ST, "demo/tiny")
    obj = object_path(consumers, digest)
    os.chmod(obj, 0o666)  # an operator slip, a restore from backup, a bad tar -x
    # A raw client (a runtime in another language; assay.consumer's own client checks
    # the mode and refuses, which is why this uses the wire protocol directly).
    out = as_user(CONSUMER_UID, CONSUMER_UID, [SOCKET_GID], f"""
res = {{}}
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(30)
s.connect({str(consumers.socket)!r})
s.sendmsg([b'{{"name":"demo/tiny"}}'])
data, anc, _f, _a = s.recvmsg(1 << 16, socket.CMSG_SPACE(16))
res["answer"] = json.loads(data)
fds = array.array("i")
for level, kind, payload in anc:
    fds.frombytes(payload[: len(payload) - len(payload) % 4])
res["reopen"] = "no fd"
for fd in fds:
    try:
        w = os.open(f"/proc/self/fd/{{fd}}", os.O_RDWR)
        os.pwrite(w, b"\\x00", 4096)
        os.close(w)
        res["reopen"] = "writable"
    except OSError as e:
        res["reopen"] = e.errno
report(**res)
""")  # fmt: skip
    assert out["reopen"] != "writable", f"a consumer wrote into a trusted object: {out}"


@needs_root
def test_attack_socket_connected_by_mapped_root_then_used_by_unmapped_uid_gets_no_fd(
    consumers: ConsumerDeployment,
) -> None:
    """SO_PEERCRED is the credential of whoever called connect(), frozen then. A mapped
    process connects and drops to (or hands the socket to) an unmapped uid that sends
    the request: the daemon hands the fd to a process no principal names."""
    consumers.trusted(ST, "demo/tiny")
    script = f"""
import array, json, os, socket
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(30)
s.connect({str(consumers.socket)!r})           # as root: principal 'local'
os.setgroups([]); os.setgid({OUTSIDER_GID}); os.setuid({UNMAPPED_UID})
assert os.getuid() == {UNMAPPED_UID}
s.sendmsg([b'{{"name":"demo/tiny"}}'])
data, anc, _f, _a = s.recvmsg(1 << 16, socket.CMSG_SPACE(16))
print("RESULT " + json.dumps({{"answer": json.loads(data), "fds": len(anc)}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stderr
    out = json.loads(line[-1][7:])
    assert out["fds"] == 0 and not out["answer"].get("ok"), (
        f"uid {UNMAPPED_UID}, no principal, received a trusted fd: {out['answer']}"
    )


@needs_root
def test_attack_zero_length_seqpacket_request_still_leaves_an_audit_record(
    consumers: ConsumerDeployment,
) -> None:
    """ "Every request is audited": a zero-length SEQPACKET message is a request that
    arrived (not a hang-up; the peer is still connected), yet recv() returns b"" for it
    and the daemon closes without an answer or a record."""
    consumers.trusted(ST, "demo/tiny")
    before = len(consumers.opens())
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.settimeout(30)
        s.connect(str(consumers.socket))
        s.sendmsg([b""])
        data = s.recv(1 << 16)
    after = len(consumers.opens())
    assert data != b"" and after == before + 1, (
        f"empty request: answer {data!r}, records {before} -> {after}"
    )


@needs_root
def test_attack_abandoned_requests_and_fd_bombs_leak_no_daemon_fds(
    consumers: ConsumerDeployment,
) -> None:
    """Peers that send a request (with 200 fds attached) and hang up before the answer,
    peers that never read, and malformed requests: the daemon's fd table returns to its
    baseline once they are gone."""
    consumers.trusted(ST, "demo/tiny")
    answer, fds = raw_exchange(consumers.socket, b'{"name":"demo/tiny"}')
    for fd in fds:
        os.close(fd)
    assert answer.get("ok") is True
    time.sleep(0.5)
    baseline = daemon_fds(consumers)
    junk = [os.open("/dev/null", os.O_RDONLY) for _ in range(200)]
    try:
        for i in range(60):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(str(consumers.socket))
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", junk))]
            req = b'{"name":"demo/tiny"}' if i % 3 else b'{"name":' + b"\xff" * 50
            s.sendmsg([req], anc)
            s.close()  # abandoned: the answer (and its fd) is never read
    finally:
        for fd in junk:
            os.close(fd)
    held = []
    for _ in range(6):  # never read: the answers sit in their queues
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(str(consumers.socket))
        s.sendmsg([b'{"name":"demo/tiny"}'])
        held.append(s)
    for s in held:
        s.close()
    count = daemon_fds(consumers)
    for _ in range(200):  # bounded: up to ~20 s for the daemon to finish each
        count = daemon_fds(consumers)
        if count <= baseline + 1:
            break
        time.sleep(0.1)
    assert count <= baseline + 1, f"daemon fds {baseline} -> {count}"


@needs_root
def test_attack_open_racing_a_revoke_never_gets_an_fd_asked_after_the_revoke_answered(
    consumers: ConsumerDeployment,
) -> None:
    """Threads open the name as fast as they can while it is revoked; no open *sent*
    after the revoke's HTTP answer arrived may receive an fd."""
    digest = consumers.trusted(ST, "demo/tiny")
    answered: list[float] = []
    bad: list[tuple[float, float]] = []
    stop = threading.Event()

    def hammer() -> None:
        for _ in range(5000):  # bounded
            if stop.is_set():
                return
            sent = time.monotonic()
            try:
                _ans, fds = raw_exchange(consumers.socket, b'{"name":"demo/tiny"}')
            except OSError:
                continue
            for fd in fds:
                os.close(fd)
            if fds and answered and sent > answered[0]:
                bad.append((sent, answered[0]))

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        with consumers.dep.client() as c:
            r = c.post(f"/v1/artifacts/{digest}/revoke", json={"reason": "race"})
            answered.append(time.monotonic())
            assert r.status_code == 200, r.text
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not bad, f"{len(bad)} fds handed out for opens sent after the revoke answered"


@needs_root
@pytest.mark.parametrize(
    "request_bytes",
    [
        b'{"digest":"sha256:' + b"0" * 10 + b'"}',  # a digest prefix
        '{"name":"demo/t\u0131ny"}'.encode(),  # dotless i: a look-alike name
        b'{"name":"demo/tiny\\u0000"}',
        b'{"name":"demo/tiny","name":"other/x"}',  # a duplicate key
        b'{"name":"' + b"a/" * 2000 + b'x"}',  # oversize
    ],
)
def test_attack_odd_requests_get_no_fd_and_each_leaves_a_record(
    consumers: ConsumerDeployment, request_bytes: bytes
) -> None:
    consumers.trusted(ST, "demo/tiny")
    before = len(consumers.opens())
    answer, fds = raw_exchange(consumers.socket, request_bytes)
    for fd in fds:
        os.close(fd)
    assert fds == [] and answer.get("status", 0) >= 400, answer
    assert len(consumers.opens()) == before + 1


@needs_root
def test_attack_untrusted_digests_get_no_fd_and_each_refusal_is_recorded(
    consumers: ConsumerDeployment,
) -> None:
    """By digest, not name: quarantined, revoked and deleted objects, and an unknown one."""
    from tests.conftest import upload

    with consumers.dep.client() as c:
        r = upload(c, safetensors_bytes()[:-8] + b"\x00" * 8, name="q/waiting")
        quarantined = r.json()["artifact"]["digest"] if r.status_code == 201 else None
    revoked = consumers.trusted(ST, "r/gone")
    with consumers.dep.client() as c:
        assert c.post(f"/v1/artifacts/{revoked}/revoke", json={"reason": "x"}).status_code == 200
    targets = [revoked, "sha256:" + "ab" * 32]
    if quarantined:
        targets.append(quarantined)
    for digest in targets:
        before = len(consumers.opens())
        answer, fds = raw_exchange(consumers.socket, json.dumps({"digest": digest}).encode())
        for fd in fds:
            os.close(fd)
        assert fds == [] and answer.get("status", 0) >= 400, (digest, answer)
        assert len(consumers.opens()) == before + 1, digest


@pytest.fixture
def consumers_with_trust(tmp_path: Path, shared_dir: Path) -> Iterator[ConsumerDeployment]:
    """The consumer deployment, whose ``trust:`` section ``configure`` now keeps."""
    from tests.conftest import init_deployment
    from tests.consumer_support import configure

    dep = init_deployment(tmp_path, max_bytes=1024 * 1024)
    sock = shared_dir / "consumer.sock"
    configure(dep, sock)
    assert "\ntrust:\n" in dep.config.read_text()
    dep.start()
    try:
        yield ConsumerDeployment(dep, sock)
    finally:
        dep.stop()


@needs_root
def test_attack_bytes_corrupted_behind_the_daemon_leave_the_tuf_set_before_the_refusal(
    consumers_with_trust: ConsumerDeployment,
) -> None:
    """The handoff finds the change (ctime) and the bad bytes; by the time its refusal
    arrives, is_trusted must already say no."""
    from assay.consumer.tuf import TrustCheck

    consumers = consumers_with_trust
    digest = consumers.trusted(ST, "demo/tiny")
    dep = consumers.dep
    root = (dep.dir / "trust" / "root" / "1.root.json").read_bytes()
    check = TrustCheck(dep.dir / "run" / "trust", root, dep.dir / "tuf-cache")
    assert check.is_trusted("demo/tiny", digest)
    obj = object_path(consumers, digest)
    st = obj.stat()
    obj.chmod(0o644)
    with obj.open("r+b") as f:
        f.seek(st.st_size - 1)
        f.write(b"\x01")
    obj.chmod(0o444)
    os.utime(obj, ns=(st.st_atime_ns, st.st_mtime_ns))
    answer, fds = raw_exchange(consumers.socket, b'{"name":"demo/tiny"}')
    for fd in fds:
        os.close(fd)
    assert fds == [] and answer.get("status", 0) >= 400, answer
    assert not check.is_trusted("demo/tiny", digest)
