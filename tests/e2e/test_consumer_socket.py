"""The consumer socket against the real daemon: verified fds handed to other users, and
every way around it refused and recorded.

Consumers run as uids other than the daemon's (see ``tests/consumer_support.py``), so
they cannot read the store and get bytes only as the fd the daemon hands them; the real
loaders (``safetensors.safe_open``, ``gguf.GGUFReader``) open its ``/proc/self/fd/N``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Deployment, init_deployment
from tests.consumer_support import (
    CONSUMER_UID,
    FLEET_GID,
    FLEET_UID,
    GGUF,
    LISTER_UID,
    OUTSIDER_GID,
    OUTSIDER_UID,
    SOCKET_GID,
    UNMAPPED_UID,
    ConsumerDeployment,
    as_user,
    configure,
    digest_of,
    gguf_values,
    needs_root,
    raw_exchange,
    safetensors_bytes,
    start,
    tensors,
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


def load_safetensors(socket_path: Path, target: str) -> str:
    return f"""
with open_trusted({target!r}, socket_path={str(socket_path)!r}) as f:
    with safe_open(f.path, framework="numpy") as st:
        got = {{k: st.get_tensor(k).tolist() for k in st.keys()}}
        meta = st.metadata()
    try:
        open("{socket_path.parent}/../../probe", "rb")
    except OSError:
        pass
    report(tensors=got, metadata=meta, digest=f.digest, size=f.size, name=f.name,
           format=f.format, verified_at=f.verified_at, path=f.path)
"""


@needs_root
def test_a_service_of_another_uid_loads_the_safetensors_through_safe_open(
    consumers: ConsumerDeployment,
) -> None:
    digest = consumers.trusted(ST, "demo/tiny")
    for target in ("demo/tiny", digest):
        out = as_user(CONSUMER_UID, CONSUMER_UID, [SOCKET_GID],
                      load_safetensors(consumers.socket, target))  # fmt: skip
        assert out["tensors"] == {k: v.tolist() for k, v in tensors().items()}
        assert out["metadata"] == {"source": "test"}
        assert (out["digest"], out["size"], out["name"], out["format"]) == (
            digest, len(ST), "demo/tiny", "safetensors")  # fmt: skip
        assert out["verified_at"] and out["path"].startswith("/proc/self/fd/")


@needs_root
def test_a_service_of_another_uid_reads_the_gguf_with_gguf_reader(
    consumers: ConsumerDeployment,
) -> None:
    consumers.trusted(GGUF, "demo/gguf")
    out = as_user(CONSUMER_UID, CONSUMER_UID, [SOCKET_GID], f"""
with open_trusted("demo/gguf", socket_path={str(consumers.socket)!r}) as f:
    reader = GGUFReader(f.path)
    report(values={{t.name: [float(x) for x in np.asarray(t.data).ravel()[:8]]
                    for t in reader.tensors}})
""")  # fmt: skip
    assert out["values"] == gguf_values(GGUF) and out["values"]


@needs_root
def test_the_store_is_unreadable_to_a_consumer_and_its_fd_cannot_write(
    consumers: ConsumerDeployment,
) -> None:
    digest = consumers.trusted(ST, "demo/tiny")
    store_path = consumers.dep.dir / "state" / "store" / "objects" / "sha256" / digest[7:]
    out = as_user(CONSUMER_UID, CONSUMER_UID, [SOCKET_GID], f"""
res = {{}}
try:
    open({str(store_path)!r}, "rb")
    res["store"] = "readable"
except OSError as e:
    res["store"] = e.errno
with open_trusted("demo/tiny", socket_path={str(consumers.socket)!r}) as f:
    try:
        os.write(f.fd, b"x")
        res["write"] = "written"
    except OSError as e:
        res["write"] = e.errno
    try:
        open(f.path, "r+b")
        res["reopen_rw"] = "opened"
    except OSError as e:
        res["reopen_rw"] = e.errno
    res["mode"] = oct(stat.S_IMODE(os.fstat(f.fd).st_mode))
report(**res)
""")  # fmt: skip
    assert out == {"store": 13, "write": 9, "reopen_rw": 13, "mode": "0o444"}  # EACCES, EBADF


@needs_root
def test_a_peer_outside_the_consumer_group_cannot_even_connect(
    consumers: ConsumerDeployment,
) -> None:
    consumers.trusted(ST, "demo/tiny")
    before = len(consumers.opens())
    out = as_user(OUTSIDER_UID, OUTSIDER_GID, [OUTSIDER_GID], f"""
try:
    open_trusted("demo/tiny", socket_path={str(consumers.socket)!r})
    report(refused=None)
except PeerRefused as e:
    report(refused=e.code)
""")  # fmt: skip
    assert out == {"refused": "auth.peer_refused"}
    info = consumers.socket.lstat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_gid == SOCKET_GID
    assert len(consumers.opens()) == before  # never reached the daemon


@needs_root
def test_a_peer_in_the_group_that_is_no_principal_is_refused_and_recorded(
    consumers: ConsumerDeployment,
) -> None:
    consumers.trusted(ST, "demo/tiny")
    out = as_user(UNMAPPED_UID, UNMAPPED_UID, [SOCKET_GID], f"""
try:
    open_trusted("demo/tiny", socket_path={str(consumers.socket)!r})
    report(code=None)
except AssayError as e:
    report(code=e.code)
""")  # fmt: skip
    assert out == {"code": "auth.missing_credential"}
    record = consumers.opens()[-1]
    assert (record["auth_mode"], record["principal"], record["decision"]) == ("peer", None, "deny")
    assert record["error_code"] == "auth.missing_credential"
    assert record["extra"]["peer_uid"] == UNMAPPED_UID and record["target"] == "name:demo/tiny"


@needs_root
def test_a_dynamic_uid_is_known_by_its_supplementary_group(
    consumers: ConsumerDeployment,
) -> None:
    """A DynamicUser= service has a dynamic uid and primary gid: only SupplementaryGroups=
    names it, which SO_PEERCRED alone (primary gid) would miss."""
    consumers.trusted(ST, "demo/tiny")
    out = as_user(FLEET_UID, FLEET_UID, [SOCKET_GID, FLEET_GID], f"""
with open_trusted("demo/tiny", socket_path={str(consumers.socket)!r}) as f:
    report(size=f.size)
""")  # fmt: skip
    assert out == {"size": len(ST)}
    assert consumers.opens()[-1]["principal"] == "fleet"


@needs_root
def test_a_principal_without_the_read_scope_is_refused(consumers: ConsumerDeployment) -> None:
    consumers.trusted(ST, "demo/tiny")
    out = as_user(LISTER_UID, LISTER_UID, [SOCKET_GID], f"""
try:
    open_trusted("demo/tiny", socket_path={str(consumers.socket)!r})
except AssayError as e:
    report(code=e.code)
""")  # fmt: skip
    assert out == {"code": "auth.scope_denied"}
    assert consumers.opens()[-1]["principal"] == "lister"


def test_every_open_leaves_one_record_with_the_peer_and_the_digest(
    consumers: ConsumerDeployment,
) -> None:
    from assay.consumer import open_trusted

    digest = consumers.trusted(ST, "demo/tiny")
    before = len(consumers.dep.audit_records())
    with open_trusted("demo/tiny", socket_path=consumers.socket) as f:
        assert os.pread(f.fd, len(ST) + 1, 0) == ST
    records = consumers.dep.audit_records()[before:]
    assert len(records) == 1
    (rec,) = records
    assert (rec["action"], rec["auth_mode"], rec["principal"], rec["decision"]) == (
        "artifact.open", "peer", "local", "allow")  # fmt: skip
    assert (rec["target"], rec["status"], rec["error_code"]) == (digest, 200, None)
    assert rec["extra"]["peer_pid"] == os.getpid() and rec["extra"]["peer_uid"] == 0
    assert rec["extra"]["rehashed"] is False


def test_a_revoked_name_is_refused_on_the_next_open(consumers: ConsumerDeployment) -> None:
    from assay.consumer import open_trusted
    from assay.core.errors import NotFound
    from assay.registry.errors import NotTrusted

    digest = consumers.trusted(ST, "demo/tiny")
    held = open_trusted("demo/tiny", socket_path=consumers.socket)
    with consumers.dep.client() as c:
        r = c.post(f"/v1/artifacts/{digest}/revoke", json={"reason": "leaked"})
        assert r.status_code == 200, r.text
    # The very next request, after the revoke answered: refused, both ways.
    with pytest.raises(NotFound, match="no trusted artifact named"):
        open_trusted("demo/tiny", socket_path=consumers.socket)
    with pytest.raises(NotTrusted):
        open_trusted(digest, socket_path=consumers.socket)
    # What was handed out before stays readable (the kernel cannot take an fd back).
    assert os.pread(held.fd, len(ST) + 1, 0) == ST
    held.close()
    codes = [r["error_code"] for r in consumers.opens()[-2:]]
    assert codes == ["artifact.not_found", "artifact.not_trusted"]


def test_a_name_resolves_to_its_newest_trusted_digest_and_falls_back_when_it_is_revoked(
    consumers: ConsumerDeployment,
) -> None:
    from assay.consumer import open_trusted

    first = consumers.trusted(ST, "demo/tiny")
    second = consumers.trusted(GGUF, "demo/tiny")
    with open_trusted("demo/tiny", socket_path=consumers.socket) as f:
        assert f.digest == second
    with consumers.dep.client() as c:
        assert c.post(f"/v1/artifacts/{second}/revoke", json={"reason": "x"}).status_code == 200
    with open_trusted("demo/tiny", socket_path=consumers.socket) as f:
        assert f.digest == first


def test_bytes_changed_with_size_and_mtime_restored_are_caught_by_ctime_and_never_handed_out(
    consumers: ConsumerDeployment,
) -> None:
    from assay.consumer import open_trusted
    from assay.registry.errors import StoredBytesCorrupt
    from tests.unit.test_handoff import rewrite_keeping_size_and_mtime

    digest = consumers.trusted(ST, "demo/tiny")
    with open_trusted(digest, socket_path=consumers.socket):
        pass
    path = consumers.dep.dir / "state" / "store" / "objects" / "sha256" / digest[7:]
    evil = bytearray(ST)
    evil[-4] ^= 0x40  # one weight, same size
    rewrite_keeping_size_and_mtime(path, bytes(evil))
    for target in (digest, "demo/tiny"):
        with pytest.raises((StoredBytesCorrupt, Exception)) as caught:
            open_trusted(target, socket_path=consumers.socket)
        assert getattr(caught.value, "code", "") in {"artifact.integrity_failed",
                                                      "artifact.not_found"}  # fmt: skip
    failed = [r for r in consumers.opens() if r["action"] == "artifact.integrity_failed"]
    assert len(failed) == 1 and failed[0]["auth_mode"] == "peer"
    assert failed[0]["reasons"] == [f"stored bytes hash to {digest_of(bytes(evil))}"]
    with consumers.dep.client() as c:
        assert c.get(f"/v1/artifacts/{digest}").json()["artifact"]["integrity"] == "failed"


def test_a_bearer_token_opens_alone_and_a_bad_one_never_falls_back_to_the_peer(
    consumers: ConsumerDeployment,
) -> None:
    from assay.consumer import open_trusted
    from assay.core.errors import AuthError, ScopeDenied

    consumers.trusted(ST, "demo/tiny")
    writer = consumers.dep.create_token("writer", "artifacts:write")
    reader = consumers.dep.create_token("runtime", "artifacts:read")
    for _ in range(100):  # the daemon picks up the token file within about a second
        try:
            with open_trusted("demo/tiny", socket_path=consumers.socket, token=reader):
                break
        except AuthError:
            time.sleep(0.1)
    rec = consumers.opens()[-1]
    assert (rec["auth_mode"], rec["principal"], rec["decision"]) == ("token", "runtime", "allow")
    # This process is mapped (uid 0 -> local), but a token that fails decides alone.
    with pytest.raises(AuthError) as caught:
        open_trusted("demo/tiny", socket_path=consumers.socket, token="assay_" + "A" * 43)
    assert caught.value.code == "auth.invalid_credential"
    with pytest.raises(ScopeDenied):
        open_trusted("demo/tiny", socket_path=consumers.socket, token=writer)
    last = consumers.opens()[-2:]
    assert [(r["auth_mode"], r["error_code"]) for r in last] == [
        ("token", "auth.invalid_credential"), ("token", "auth.scope_denied")]  # fmt: skip


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"not json", "request.bad_json"),
        (b'{"name":"../../etc/shadow"}', "request.bad_name"),
        (b'{"digest":"sha256:' + b"0" * 64 + b'"}', "artifact.not_found"),
        (b'{"name":"a","digest":"sha256:' + b"0" * 64 + b'"}', "request.invalid"),
        (b'{"name":"a","x":1}', "request.invalid"),
        (b'{"name":"' + b"a" * 5000 + b'"}', "request.too_large"),
    ],
)
def test_a_malformed_request_is_answered_with_a_problem_and_recorded(
    consumers: ConsumerDeployment, request_bytes: bytes, code: str
) -> None:
    answer, fds = raw_exchange(consumers.socket, request_bytes)
    assert fds == [] and answer["code"] == code and answer["status"] >= 400
    rec = consumers.opens()[-1]
    assert rec["error_code"] == code and rec["request_id"] == answer["request_id"]


def test_fds_a_peer_sends_are_dropped_not_kept_by_the_daemon(
    consumers: ConsumerDeployment, tmp_path: Path
) -> None:
    consumers.trusted(ST, "demo/tiny")
    assert consumers.dep.proc is not None
    daemon_fds = Path(f"/proc/{consumers.dep.proc.pid}/fd")
    baseline = len(list(daemon_fds.iterdir()))
    junk = [os.open(tmp_path, os.O_RDONLY) for _ in range(200)]
    try:
        for _ in range(5):
            answer, fds = raw_exchange(consumers.socket, b'{"name":"demo/tiny"}', fds=junk)
            assert answer["ok"] is True and len(fds) == 1
            os.close(fds[0])
    finally:
        for fd in junk:
            os.close(fd)
    assert len(list(daemon_fds.iterdir())) <= baseline + 2  # nothing of ours was kept


def test_a_silent_peer_holds_its_slot_only_until_its_timeout(
    tmp_path: Path, shared_dir: Path
) -> None:
    from assay.consumer import open_trusted

    cd = start(tmp_path, shared_dir, timeout=0.5, slots=2)
    try:
        cd.trusted(ST, "demo/tiny")
        silent = [socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(2)]
        try:
            for s in silent:
                s.settimeout(30)
                s.connect(str(cd.socket))
            # Both slots are taken by peers that say nothing; this open waits in the
            # backlog until their time is up, then is served.
            with open_trusted("demo/tiny", socket_path=cd.socket, timeout=30) as f:
                assert f.size == len(ST)
            for s in silent:  # each silent peer was told why it was dropped
                answer = json.loads(s.recv(1 << 16))
                assert answer["code"] == "request.timeout"
        finally:
            for s in silent:
                s.close()
        codes = [r["error_code"] for r in cd.opens()]
        assert codes.count("request.timeout") == 2 and codes[-1] is None
    finally:
        cd.dep.stop()


def test_a_socket_left_by_a_killed_daemon_is_replaced_and_a_live_one_is_never_taken(
    tmp_path: Path, shared_dir: Path
) -> None:
    from assay.consumer import open_trusted

    cd = start(tmp_path / "one", shared_dir)
    try:
        cd.trusted(ST, "demo/tiny")
        other = init_deployment(tmp_path / "two")
        configure(other, cd.socket)
        proc = subprocess.run([sys.executable, "-m", "assay", "serve", "--config",
                               str(other.config)], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
        assert proc.returncode == 6, proc.stderr
        assert "served by another process" in proc.stderr and "Traceback" not in proc.stderr
        with open_trusted("demo/tiny", socket_path=cd.socket):
            pass  # the first daemon's socket is still its own
        cd.dep.stop(signal.SIGKILL)
        assert stat.S_ISSOCK(cd.socket.lstat().st_mode)  # left behind
        cd.dep.start()
        with open_trusted("demo/tiny", socket_path=cd.socket) as f:
            assert f.size == len(ST)
    finally:
        cd.dep.stop()
    assert not cd.socket.exists()  # a clean stop removes the socket it made


def test_a_regular_file_at_the_socket_path_is_never_replaced(
    tmp_path: Path, shared_dir: Path
) -> None:
    dep = init_deployment(tmp_path)
    keep = shared_dir / "consumer.sock"
    keep.write_text("not a socket")
    configure(dep, keep)
    argv = [sys.executable, "-m", "assay", "serve", "--config", str(dep.config)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 2 and "config.file_unsafe" not in proc.stderr
    assert "is not a socket" in proc.stderr and keep.read_text() == "not a socket"


def test_a_socket_directory_others_can_write_is_refused_at_startup(
    tmp_path: Path, shared_dir: Path
) -> None:
    """In a directory others may rename things in, the socket's chmod and chown by name
    could be pointed at another file (a symlink swapped in): refused, not attempted."""
    loose = shared_dir / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    dep = init_deployment(tmp_path)
    configure(dep, loose / "consumer.sock")
    argv = [sys.executable, "-m", "assay", "serve", "--config", str(dep.config)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 2 and "config.file_unsafe" in proc.stderr, proc.stderr
    assert list(loose.iterdir()) == []
    loose.chmod(0o1777)  # sticky, like /tmp: nobody else can rename our files in it
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE) as daemon:  # fmt: skip
        try:
            for _ in range(300):
                if (loose / "consumer.sock").exists() or daemon.poll() is not None:
                    break
                time.sleep(0.05)
            assert stat.S_ISSOCK((loose / "consumer.sock").lstat().st_mode)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)


def test_an_unknown_group_stops_startup_before_anything_listens(
    tmp_path: Path, shared_dir: Path
) -> None:
    dep = init_deployment(tmp_path)
    configure(dep, shared_dir / "consumer.sock")
    dep.config.write_text(dep.config.read_text() + "    - id: ghost\n      groups: [no-such-group-"
                          "assay]\n      scopes: [artifacts:read]\n")  # fmt: skip
    argv = [sys.executable, "-m", "assay", "serve", "--config", str(dep.config)]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 2 and "no group named 'no-such-group-assay'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (shared_dir / "consumer.sock").exists()


def test_a_live_stream_socket_at_the_path_is_left_alone(tmp_path: Path, shared_dir: Path) -> None:
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        other.bind(str(shared_dir / "consumer.sock"))
        other.listen(1)
        dep = init_deployment(tmp_path)
        configure(dep, shared_dir / "consumer.sock")
        argv = [sys.executable, "-m", "assay", "serve", "--config", str(dep.config)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)  # fmt: skip
        assert proc.returncode == 2 and "another kind of socket" in proc.stderr, proc.stderr
        assert stat.S_ISSOCK((shared_dir / "consumer.sock").lstat().st_mode)
    finally:
        other.close()


FAKE_SERVER = """
import array, json, os, socket, sys
path, bait, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.bind(path)
os.chmod(path, 0o666)
fd = os.open(bait, os.O_RDONLY)
os.setgroups([]); os.setgid(uid); os.setuid(uid)
s.listen(8)
print("ready", flush=True)
for _ in range(2):
    conn, _ = s.accept()
    try:
        if conn.recv(4096):
            header = {"ok": True, "digest": "sha256:" + "0" * 64, "name": "demo/tiny",
                      "size": os.fstat(fd).st_size, "format": "safetensors", "verified_at": "0"}
            conn.sendmsg([json.dumps(header).encode()],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
    except OSError:
        pass
    conn.close()
"""


@needs_root
def test_a_socket_squatted_by_another_user_is_not_trusted_to_vouch_for_bytes(
    shared_dir: Path,
) -> None:
    """Whoever can put a socket where a consumer looks could hand it any read-only file
    with a plausible header; the kernel's word on the listener's uid refuses it."""
    from assay.consumer import open_trusted
    from assay.consumer.fd import UntrustedServer

    bait = shared_dir / "bait"
    bait.write_bytes(b"not the weights you want")
    bait.chmod(0o444)
    path = shared_dir / "squat.sock"
    argv = [sys.executable, "-c", FAKE_SERVER, str(path), str(bait), str(OUTSIDER_UID)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as fake:
        try:
            assert fake.stdout is not None and fake.stdout.readline().strip() == "ready"
            with pytest.raises(UntrustedServer, match=f"served by uid {OUTSIDER_UID}"):
                open_trusted("demo/tiny", socket_path=path)
            # The uid check is what refused it: trusting that uid lets the bait through.
            with open_trusted("demo/tiny", socket_path=path, server_uids={OUTSIDER_UID}) as f:
                assert os.pread(f.fd, 100, 0) == b"not the weights you want"
        finally:
            fake.kill()


def test_the_consumer_package_imports_no_trio_quart_or_hypercorn(
    consumers: ConsumerDeployment,
) -> None:
    consumers.trusted(ST, "demo/tiny")
    code = f"""
import sys
for name in ("trio", "quart", "quart_trio", "hypercorn", "werkzeug", "httpx", "pydantic"):
    sys.modules[name] = None
from assay.consumer import open_trusted
with open_trusted("demo/tiny", socket_path={str(consumers.socket)!r}) as f:
    print(f.size, f.digest)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in
                {{"trio", "quart", "quart_trio", "hypercorn", "werkzeug", "pydantic"}}
                and sys.modules[m] is not None)
print("LOADED", loaded)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert str(len(ST)) in proc.stdout and "LOADED []" in proc.stdout


def test_deployment_fixture_serves_its_socket_to_its_own_user(deployment: Deployment) -> None:
    """``assay init``'s config (what ``./scripts/run`` uses) has a working socket for the
    user who made it, known by uid with no token."""
    from assay.consumer import open_trusted
    from tests.conftest import upload

    with deployment.client() as c:
        digest = upload(c, ST, name="demo/tiny").json()["artifact"]["digest"]
        assert c.post(f"/v1/artifacts/{digest}/promote", json={}).status_code == 200
    with open_trusted("demo/tiny", socket_path=deployment.dir / "state" / "consumer.sock") as f:
        assert f.digest == digest
