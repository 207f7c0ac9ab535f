"""assay under a real systemd: socket activation, the sandbox seen from inside, a CLI
lifecycle, journald fields, crash and hang recovery, graceful stop, and credentials.

The tests share one booted namespace (see conftest.py) and run in file order; each leaves
assay.service running or restartable. Waits are bounded; nothing asserts on durations.
"""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.systemd.conftest import URL, BootedSystem, wait_for

pytestmark = pytest.mark.systemd

DYNAMIC_UIDS = range(61184, 65520)  # systemd's DynamicUser= range
MESSAGE_IDS = {
    "promote": "9e4f1c2b7a6d4f3e8b5c0a1d2e3f4a5b",
    "revoke": "1c7d9e8f6a5b4c3d2e1f0a9b8c7d6e5f",
    "checkpoint": "7f6e5d4c3b2a19087f6e5d4c3b2a1908",
    "startup": "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e",
    "shutdown": "4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b",
}
DROPINS = "/etc/systemd/system/assay.service.d"
CONFIG = "/etc/assay/config.yaml"
WORK = "/run/assay-test"

# Runs as an ExecStartPost= of assay.service itself (via a test drop-in), so it gets the
# unit's own sandbox from systemd: the same uid, namespaces, seccomp filter and address
# family restrictions as the daemon. It only reports what it sees.
PROBE = r"""
import json, os, socket
r = {"uid": os.getuid(), "netns": os.readlink("/proc/self/ns/net")}
for name in ("AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"):
    try:
        socket.socket(getattr(socket, name), socket.SOCK_RAW if name == "AF_PACKET" else
                      (socket.SOCK_DGRAM if name == "AF_NETLINK" else socket.SOCK_STREAM)).close()
        r[name] = "allowed"
    except OSError as e:
        r[name] = "refused errno=%d" % e.errno
with open("/proc/net/dev") as f:
    r["interfaces"] = [line.split(":")[0].strip() for line in f.read().splitlines()[2:]]
try:
    open("/usr/lib/assay-probe", "w").close()
    r["usr_write"] = "allowed"
except OSError as e:
    r["usr_write"] = "refused errno=%d" % e.errno
with open("/proc/self/mountinfo") as f:
    r["usr_mount_options"] = [l.split()[5] for l in f if l.split()[4] == "/usr"]
r["visible_pids"] = len([p for p in os.listdir("/proc") if p.isdigit()])
try:
    r["home"] = os.listdir("/root")
except OSError as e:
    r["home"] = "denied errno=%d" % e.errno
print("ASSAY-PROBE " + json.dumps(r), flush=True)
"""


def safetensors_bytes(values: list[float]) -> bytes:
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [len(values)], "data_offsets": [0, 4 * len(values)]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + struct.pack(f"<{len(values)}f", *values)


def status_of(system: BootedSystem, unit: str = "assay.service") -> dict[str, str]:
    return system.show(
        unit, "ActiveState", "SubState", "NRestarts", "MainPID", "StatusText", "Result"
    )


def add(system: BootedSystem, name: str, values: list[float]) -> str:
    path = f"{WORK}/{name.replace('/', '_')}.safetensors"
    system.write(path, safetensors_bytes(values))
    out = system.cli(
        "add", path, "--name", name, "--meta", "source=test", "--meta", "license=mit", "--json"
    )
    doc = json.loads(out.stdout)
    assert doc["artifact"]["state"] == "quarantined", doc
    return str(doc["artifact"]["digest"])


def state_of(system: BootedSystem, digest: str) -> str:
    return str(json.loads(system.cli("show", digest, "--json").stdout)["artifact"]["state"])


def wait_restarted(system: BootedSystem, before: int, timeout: float = 120) -> None:
    wait_for(
        lambda: int(status_of(system)["NRestarts"]) > before,
        what="assay.service to be restarted",
        timeout=timeout,
    )
    system.wait_active()


def audit_verify(system: BootedSystem) -> subprocess.CompletedProcess[str]:
    audit = "/var/lib/private/assay/audit"
    return system.cli(
        "audit", "verify", audit,
        "--key-file", "/etc/assay/credentials/audit-hmac.key",
        "--checkpoint", f"{audit}/checkpoints.jsonl",
        "--public-key", "/etc/assay/audit-signing.pub",
        "--json",
        check=False,
    )  # fmt: skip


# -- 1. socket activation ---------------------------------------------------------------
def test_first_request_activates_the_service(system: BootedSystem) -> None:
    assert system.show("assay.socket", "ActiveState")["ActiveState"] == "active"
    assert status_of(system)["ActiveState"] == "inactive", "started before any request"

    status, body = system.http("/healthz")
    assert status == 200, body
    system.wait_active()

    state = status_of(system)
    assert state["StatusText"], "no STATUS= was sent"
    text = system.systemctl("status", "assay.service", check=False)
    assert "active (running)" in text, text
    assert f'Status: "{state["StatusText"]}"' in text, text
    status, body = system.http("/readyz")
    assert status == 200, body


# -- 2. the sandbox, from inside ---------------------------------------------------------
@pytest.fixture(scope="module")
def probe(system: BootedSystem) -> Iterator[dict[str, Any]]:
    system.write(f"{WORK}/probe.py", PROBE)
    system.write(
        f"{DROPINS}/50-test-probe.conf",
        f"[Service]\nExecStartPost=-/opt/assay/bin/python3 {WORK}/probe.py\n",
    )
    system.systemctl("daemon-reload")
    system.systemctl("restart", "assay.service")
    system.wait_active()

    def report() -> dict[str, Any] | None:
        for entry in reversed(system.journal("-u", "assay.service")):
            message = entry.get("MESSAGE")
            if isinstance(message, str) and message.startswith("ASSAY-PROBE "):
                return dict(json.loads(message.removeprefix("ASSAY-PROBE ")))
        return None

    try:
        yield wait_for(report, what="the probe's report in the journal", timeout=60)
    finally:
        system.run("rm", "-f", f"{DROPINS}/50-test-probe.conf")
        system.systemctl("daemon-reload")


def test_service_runs_as_a_dynamic_uid(system: BootedSystem, probe: dict[str, Any]) -> None:
    pid = system.main_pid()
    status = system.read(f"/proc/{pid}/status")
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    uid = int(fields["Uid"].split()[0])
    assert uid in DYNAMIC_UIDS, uid
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # a seccomp filter is installed
    assert int(fields["CapBnd"].strip(), 16) == 0
    assert int(fields["CapEff"].strip(), 16) == 0
    # No PrivateUsers= (units/assay.service says why): the host's user namespace, so
    # SO_PEERCRED on the consumer socket reports each peer's real uid and groups.
    assert probe["uid"] == uid
    lines = [line.split() for line in system.read(f"/proc/{pid}/uid_map").splitlines()]
    assert lines == [["0", "0", "4294967295"]], lines


def test_usr_is_read_only_inside(system: BootedSystem, probe: dict[str, Any]) -> None:
    assert probe["usr_write"].startswith("refused"), probe
    assert probe["usr_mount_options"], probe
    assert all(opts.split(",")[0] == "ro" for opts in probe["usr_mount_options"]), probe
    pid = system.main_pid()
    usr = [
        line.split()[5]
        for line in system.read(f"/proc/{pid}/mountinfo").splitlines()
        if line.split()[4] == "/usr"
    ]
    assert usr and all(o.split(",")[0] == "ro" for o in usr), usr


def test_internet_sockets_are_refused_inside(probe: dict[str, Any]) -> None:
    for family in ("AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"):
        assert probe[family].startswith("refused"), (family, probe)


def test_only_loopback_inside(system: BootedSystem, probe: dict[str, Any]) -> None:
    assert probe["interfaces"] == ["lo"], probe
    pid = system.main_pid()
    net_dev = system.read(f"/proc/{pid}/net/dev").splitlines()[2:]
    assert [line.split(":")[0].strip() for line in net_dev] == ["lo"], net_dev
    # The probe and the daemon share the unit's private network namespace...
    daemon_ns = system.run("readlink", f"/proc/{pid}/ns/net").stdout.strip()
    assert probe["netns"] == daemon_ns
    # ...which is not the one the socket unit listens in.
    assert daemon_ns != system.run("readlink", "/proc/1/ns/net").stdout.strip()


def test_other_processes_and_homes_are_hidden(probe: dict[str, Any]) -> None:
    # ProtectProc=invisible: only the unit's own processes; ProtectHome=yes: /root empty.
    assert probe["visible_pids"] <= 4, probe
    assert probe["home"] == [] or str(probe["home"]).startswith("denied"), probe


# -- 3. a full lifecycle through the CLI -------------------------------------------------
@pytest.fixture(scope="module")
def lifecycle(system: BootedSystem) -> dict[str, str]:
    system.activate()
    data = safetensors_bytes([1.0, 2.0, 3.0, 4.0])
    digest = add(system, "systemd/lifecycle", [1.0, 2.0, 3.0, 4.0])
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    promoted = json.loads(system.cli("promote", digest, "--json").stdout)
    assert promoted["artifact"]["state"] == "trusted", promoted
    system.cli("fetch", digest, "-o", f"{WORK}/fetched.safetensors")
    fetched = system.run("sha256sum", f"{WORK}/fetched.safetensors").stdout.split()[0]
    assert "sha256:" + fetched == digest
    revoked = json.loads(system.cli("revoke", digest, "--reason", "systemd test", "--json").stdout)
    assert revoked["artifact"]["state"] == "revoked", revoked
    return {"digest": digest}


def test_full_lifecycle_through_the_cli(system: BootedSystem, lifecycle: dict[str, str]) -> None:
    digest = lifecycle["digest"]
    assert state_of(system, digest) == "revoked"
    # A revoked artifact is never served again.
    refused = system.cli("fetch", digest, "-o", f"{WORK}/again.safetensors", check=False)
    assert refused.returncode == 5, refused.stdout + refused.stderr  # not trusted: conflict
    status = system.cli("status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("assay "), status.stdout  # version and uptime first
    assert "health: ok  ready: True" in status.stdout, status.stdout
    assert "revoked=" in status.stdout and "trusted=" in status.stdout, status.stdout
    shown = json.loads(system.cli("status", "--json").stdout)
    assert shown["status"]["version"] and shown["status"]["uptime_seconds"] >= 0
    assert shown["status"]["counts"]["revoked"] >= 1
    checks = shown["readyz"]["checks"]
    assert set(checks) == {"store", "database", "audit", "config", "policy", "trust", "posture"}
    # The packaged deployment publishes its trusted set into /run/assay-trust (0755).
    assert checks["trust"]["ok"], checks["trust"]
    # STATUS= follows each change, not only startup and sweeps.
    text = status_of(system)["StatusText"]
    assert f"{shown['status']['counts']['revoked']} revoked" in text, text


# -- 4. journald -----------------------------------------------------------------------
def test_journal_carries_structured_fields(system: BootedSystem, lifecycle: dict[str, str]) -> None:
    digest = lifecycle["digest"]

    def promotions() -> list[dict[str, Any]]:
        return [
            e
            for e in system.journal(f"MESSAGE_ID={MESSAGE_IDS['promote']}")
            if e.get("ASSAY_DIGEST") == digest
        ]

    found = wait_for(promotions, what="the promotion in the journal", timeout=30)
    entry = found[-1]
    assert entry["_SYSTEMD_UNIT"] == "assay.service"
    assert entry["SYSLOG_IDENTIFIER"] == "assay"
    assert entry["PRIORITY"] in {"5", "6"}
    assert entry.get("ASSAY_STATE") == "trusted", entry
    assert entry.get("ASSAY_PRINCIPAL"), entry
    assert int(entry["ASSAY_SEQ"]) > 0, entry
    revokes = system.journal(f"MESSAGE_ID={MESSAGE_IDS['revoke']}", f"ASSAY_DIGEST={digest}")
    assert revokes and revokes[-1].get("ASSAY_STATE") == "revoked", revokes
    startups = system.journal("-u", "assay.service", f"MESSAGE_ID={MESSAGE_IDS['startup']}")
    assert startups, "no startup event"


# -- 5. credentials ----------------------------------------------------------------------
def test_credentials_are_not_in_the_environment(system: BootedSystem) -> None:
    system.activate()
    pid = system.main_pid()
    environ = system.run("cat", f"/proc/{pid}/environ", text=False).stdout
    variables = dict(item.decode().split("=", 1) for item in environ.split(b"\0") if b"=" in item)
    assert variables["CREDENTIALS_DIRECTORY"] == "/run/credentials/assay.service"
    for name, secret in system.credentials.items():
        for chunk in _secret_chunks(secret):
            assert chunk not in environ, f"{name} leaks into /proc/{pid}/environ"
    assert system.admin_token.encode() not in environ
    assert not [k for k in variables if "TOKEN" in k or "SECRET" in k or k.endswith("KEY")]
    shown = system.systemctl("show", "assay.service", "--property=Environment")
    journal = system.run("journalctl", "--no-pager", "-o", "export", text=False).stdout
    for name, secret in system.credentials.items():
        for chunk in _secret_chunks(secret):
            assert chunk.decode(errors="replace") not in shown, name
            assert chunk not in journal, f"{name} appears in the journal"
    assert system.admin_token.encode() not in journal
    # The service reads them from its private credentials directory, owned by its uid.
    listing = system.run("ls", "-ln", "/run/credentials/assay.service").stdout
    uid = system.read(f"/proc/{pid}/status").split("Uid:")[1].split()[0]
    for name in system.credentials:
        line = next(x for x in listing.splitlines() if x.endswith(" " + name))
        assert line.startswith("-r--------"), line
        assert line.split()[2] == uid, line


def _secret_chunks(secret: bytes) -> list[bytes]:
    """Distinctive pieces of a secret: its PEM/hex/JSON lines of 16+ bytes."""
    pieces = [line.strip() for line in secret.splitlines()]
    return [p for p in pieces if len(p) >= 16 and not p.startswith((b"-----", b"{", b"}"))]


# -- 5b. token changes reach the service through its credentials ------------------------
def test_token_created_offline_reaches_the_running_service(system: BootedSystem) -> None:
    system.activate()
    old_pid = system.main_pid()
    out = system.run(
        "assay-system", "token", "create", "--id", "reader", "--scope", "artifacts:read", "--json"
    ).stdout
    reader = json.loads(out)["token"]
    # assay-system restarted the service so systemd copied the new token file in.
    system.wait_active()
    assert system.main_pid() != old_pid
    status, body = system.http("/v1/artifacts", reader)
    assert status == 200, body
    denied = system.cli("sweep", token=reader, check=False)
    assert denied.returncode == 3, denied.stdout + denied.stderr  # scope denied
    # The offline audit record was written as root; its files went back to the service.
    owners = system.run(
        "sh", "-c", "stat -c %u /var/lib/private/assay /var/lib/private/assay/audit/*"
    ).stdout.split()
    assert len(set(owners)) == 1 and owners[0] != "0", owners


# -- 6. SIGKILL: restarted, nothing acknowledged lost, audit chain verifies ---------------
# Uploads keep coming while the daemon is killed. Each one the daemon acknowledged (2xx) is
# written to ACKED; failures are expected around the kill and only counted. With socket
# activation, connections made while the service restarts wait in the socket's backlog.
UPLOADER = r"""
import hashlib, json, struct, sys, time, urllib.error, urllib.parse, urllib.request
url, token, count, acked_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
failed = 0
for i in range(count):
    values = [float(i), 0.25, -2.0, float(i * i)]
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    header += b" " * (-len(header) % 8)
    body = struct.pack("<Q", len(header)) + header + struct.pack("<4f", *values)
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    query = urllib.parse.urlencode(
        [("name", "systemd/inflight-%d" % i), ("meta", "source=test"), ("meta", "license=mit"),
         ("digest", digest)])
    req = urllib.request.Request(url + "/v1/artifacts?" + query, data=body, method="POST",
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            if 200 <= resp.status < 300:
                with open(acked_path, "a") as f:
                    f.write(digest + " quarantined\n")
        if i % 2 == 0:  # every other one is promoted too: a state change to keep
            promote = urllib.request.Request(url + "/v1/artifacts/" + digest + "/promote",
                data=b"{}", method="POST", headers={"Authorization": "Bearer " + token,
                "Content-Type": "application/json"})
            with urllib.request.urlopen(promote, timeout=60) as resp:
                if resp.status == 200:
                    with open(acked_path, "a") as f:
                        f.write(digest + " trusted\n")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        failed += 1
    time.sleep(0.1)
print(json.dumps({"failed": failed}))
"""


def test_sigkill_restarts_with_nothing_acknowledged_lost(system: BootedSystem) -> None:
    system.activate()
    acked_path = f"{WORK}/acked"
    system.write(f"{WORK}/uploader.py", UPLOADER)
    system.run("rm", "-f", acked_path)
    before = int(status_of(system)["NRestarts"])
    old_pid = system.main_pid()
    uploader = subprocess.Popen(
        [
            "nsenter", "-t", str(system.pid), "-m", "-p", "-n", "--wd=/", "--",
            "/opt/assay/bin/python3", f"{WORK}/uploader.py", URL, system.admin_token, "30",
            acked_path,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:

        def acked() -> dict[str, str]:
            """digest -> the last state the daemon acknowledged for it."""
            out = system.run("cat", acked_path, check=False).stdout
            pairs = [line.split() for line in str(out).splitlines() if line.strip()]
            return {digest: state for digest, state in pairs}

        wait_for(lambda: len(acked()) >= 3, what="three acknowledged uploads", timeout=120)
        system.systemctl("kill", "--signal=KILL", "assay.service")
        wait_restarted(system, before)
        out, err = uploader.communicate(timeout=300)
    finally:
        if uploader.poll() is None:
            uploader.kill()
            uploader.wait(timeout=30)
    assert uploader.returncode == 0, err
    assert system.main_pid() != old_pid
    digests = acked()
    assert len(digests) >= 3, (digests, out)
    assert "trusted" in digests.values(), digests  # promotions were acknowledged too

    listed = json.loads(system.cli("list", "--json").stdout)["artifacts"]
    present = {a["digest"]: a["state"] for a in listed}
    # An acknowledged state must hold; a promote in flight at the kill may also have
    # landed (its record was durable), so "quarantined" may have become "trusted".
    allowed = {"quarantined": {"quarantined", "trusted"}, "trusted": {"trusted"}}
    lost = {d: s for d, s in digests.items() if present.get(d) not in allowed[s]}
    assert not lost, f"acknowledged but lost after SIGKILL: {lost}"
    audit_text = system.run("sh", "-c", "cat /var/lib/private/assay/audit/audit*.jsonl").stdout
    for digest in digests:
        assert digest in audit_text, f"{digest} acknowledged without an audit record"
    verify = audit_verify(system)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- 7. a hang is caught by the watchdog ---------------------------------------------------
def test_watchdog_restarts_a_hung_daemon(system: BootedSystem) -> None:
    original = system.read(CONFIG)
    flag = "/var/lib/assay/test-hang"
    system.write(CONFIG, original + "watchdog:\n  allow_fault_injection: true\n")
    system.write(
        f"{DROPINS}/60-test-fault.conf",
        "[Service]\n"
        f"Environment=ASSAY_TEST_FAULTS={flag}\n"
        # Cleared by systemd (as root, outside the sandbox) before every start, so only
        # the run that saw the flag hangs.
        f"ExecStartPre=+/bin/rm -f {flag}\n"
        "WatchdogSec=6s\n",
    )
    try:
        system.systemctl("daemon-reload")
        system.systemctl("restart", "assay.service")
        system.wait_active()
        before = int(status_of(system)["NRestarts"])
        hung_pid = system.main_pid()
        status, _ = system.http("/healthz")
        assert status == 200

        system.run("touch", flag)
        wait_restarted(system, before)

        assert system.main_pid() != hung_pid
        log = system.journal_text(lines=200)
        assert "Watchdog timeout" in log, log
        assert "fault injection: hanging the event loop" in log, log
        status, body = system.http("/readyz")
        assert status == 200, body
    finally:
        system.run("rm", "-f", f"{DROPINS}/60-test-fault.conf", flag)
        system.write(CONFIG, original)
        system.systemctl("daemon-reload")
        system.systemctl("restart", "assay.service")
        system.wait_active()


# -- 8. systemctl stop is graceful and checkpoints ----------------------------------------
def test_stop_is_graceful_and_writes_a_final_checkpoint(system: BootedSystem) -> None:
    system.activate()
    add(system, "systemd/before-stop", [9.0, 8.0])
    invocation = system.show("assay.service", "InvocationID")["InvocationID"]
    assert invocation

    system.systemctl("stop", "assay.service")

    shown = system.show("assay.service", "ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
    assert shown["ActiveState"] == "inactive", shown
    assert shown["Result"] == "success", shown
    assert shown["ExecMainCode"] == "1" and shown["ExecMainStatus"] == "0", shown  # exited 0
    entries = system.journal(f"_SYSTEMD_INVOCATION_ID={invocation}")
    ids = [e.get("MESSAGE_ID") for e in entries]
    assert MESSAGE_IDS["shutdown"] in ids, ids
    last_shutdown = len(ids) - 1 - ids[::-1].index(MESSAGE_IDS["shutdown"])
    checkpoints = [i for i, m in enumerate(ids) if m == MESSAGE_IDS["checkpoint"]]
    assert checkpoints and checkpoints[-1] < last_shutdown, "no checkpoint before shutdown"
    manager = system.journal("-u", "assay.service", f"INVOCATION_ID={invocation}")
    text = "\n".join(str(e.get("MESSAGE", "")) for e in manager)
    assert "SIGKILL" not in text and "timed out" not in text, text
    # The final checkpoint covers every record on disk, and the log verifies against it.
    audit = "/var/lib/private/assay/audit"
    latest = json.loads(system.read(f"{audit}/checkpoint.json"))
    records = system.run("sh", "-c", f"cat {audit}/audit*.jsonl").stdout.splitlines()
    assert latest["size"] == len([r for r in records if r.strip()]), latest
    # The journal carries the whole signed checkpoint, usable off the host's disk.
    journaled = [json.loads(e["ASSAY_CHECKPOINT"]) for e in entries if "ASSAY_CHECKPOINT" in e]
    assert journaled and journaled[-1] == latest, (journaled[-1:], latest)
    verify = audit_verify(system)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # The socket stayed up: the next request starts the service again.
    assert system.show("assay.socket", "ActiveState")["ActiveState"] == "active"
    system.activate()
