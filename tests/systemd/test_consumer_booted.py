"""The consumer socket under a real systemd: a DynamicUser= consumer service, joined by
the packaged drop-in, receives a trusted fd through assay-consumer.socket, loads the
safetensors with safetensors' own reader, and is refused after a revoke.

Shares the booted namespace of conftest.py (the package installed, credentials made).
The consumer's numpy (safetensors' numpy framework needs it; the appliance's venv has
none) is copied in from the test's own environment, as a runtime brings its own.
"""

from __future__ import annotations

import io
import json
import stat
import tarfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from tests.systemd.conftest import BootedSystem, wait_for

pytestmark = pytest.mark.systemd

DYNAMIC_UIDS = range(61184, 65520)
UNIT = "assay-test-consumer.service"
UNIT_DIR = f"/etc/systemd/system/{UNIT}.d"
SCRIPT = "/usr/local/lib/assay-test/consumer.py"
NUMPY = "/opt/assay-test-numpy"
SOCKET = "/run/assay-consumer.sock"
NAME = "booted/consumer"
WEIGHTS = {"w": np.arange(12, dtype=np.float32).reshape(3, 4) / 7, "b": np.arange(3)}

CONSUMER = r"""
import json, os, sys
from assay.consumer import open_trusted
out = {"uid": os.getuid(), "groups": sorted(os.getgroups()), "run": os.environ["RUN"]}
try:
    with open_trusted(sys.argv[1]) as f:  # the socket: $ASSAY_CONSUMER_SOCKET (drop-in)
        from safetensors import safe_open
        with safe_open(f.path, framework="numpy") as st:
            out["values"] = {k: st.get_tensor(k).tolist() for k in st.keys()}
        out.update(ok=True, digest=f.digest, path=f.path)
except Exception as exc:
    out.update(ok=False, code=getattr(exc, "code", type(exc).__name__), detail=str(exc))
print("ASSAY-CONSUMER " + json.dumps(out), flush=True)
sys.exit(0 if out["ok"] else 3)
"""

UNIT_FILE = f"""[Unit]
Description=assay test consumer (a runtime that loads a trusted model)

[Service]
Type=oneshot
DynamicUser=yes
ProtectSystem=strict
ProtectHome=yes
PrivateNetwork=yes
NoNewPrivileges=yes
Environment=PYTHONPATH={NUMPY} PYTHONDONTWRITEBYTECODE=1
ExecStart=/opt/assay/bin/python3 {SCRIPT} ${{TARGET}}
"""


def numpy_tar() -> bytes:
    """numpy and safetensors (the runtime's loader, which the appliance's venv does not
    ship) and their bundled libraries from this interpreter's site-packages."""
    site = Path(np.__file__).resolve().parents[1]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("numpy", "numpy.libs", "safetensors"):
            if (site / name).exists():
                tar.add(site / name, arcname=name,
                        filter=lambda t: None if "/tests" in t.name else t)  # fmt: skip
    return buf.getvalue()


def run_consumer(system: BootedSystem, target: str, *, dropin: bool = True) -> dict[str, Any]:
    """Start the consumer unit once for ``target``; its report and its exit status."""
    run = uuid.uuid4().hex  # which start a report is from (a finished oneshot is unloaded)
    system.write(f"{UNIT_DIR}/target.conf",
                 f"[Service]\nEnvironment=TARGET={target} RUN={run}\n")  # fmt: skip
    if dropin:
        system.run("cp", "/usr/share/assay/systemd/consumer.conf",
                   f"{UNIT_DIR}/assay-consumer.conf")  # fmt: skip
    else:
        system.run("rm", "-f", f"{UNIT_DIR}/assay-consumer.conf")
    system.systemctl("daemon-reload")
    proc = system.run("systemctl", "start", UNIT, check=False, timeout=180)

    def reports() -> list[dict[str, Any]]:  # journald takes the line in its own time
        found = [
            json.loads(str(e["MESSAGE"]).removeprefix("ASSAY-CONSUMER "))
            for e in system.journal("-u", UNIT)
            if str(e.get("MESSAGE", "")).startswith("ASSAY-CONSUMER ")
        ]
        return [r for r in found if r.get("run") == run]

    found = wait_for(reports, what=f"the report of {UNIT} in the journal", timeout=30)
    return {**found[-1], "started": proc.returncode == 0}


def opens(system: BootedSystem) -> list[dict[str, Any]]:
    text = system.read("/var/lib/private/assay/audit/audit.jsonl")
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in records if r["route"] == "consumer.socket"]


@pytest.fixture(scope="module")
def consumer(system: BootedSystem) -> dict[str, str]:
    """The trusted artifact, the consumer unit and its numpy, installed once."""
    system.systemctl("start", "assay-consumer.socket")
    system.run("mkdir", "-p", NUMPY)
    system.run("tar", "-x", "-C", NUMPY, input=numpy_tar(), text=False, timeout=300)
    system.run("chmod", "-R", "a+rX", NUMPY)
    system.write(SCRIPT, CONSUMER)
    system.write(f"/etc/systemd/system/{UNIT}", UNIT_FILE)
    path = "/run/assay-test-consumer.safetensors"
    system.write(path, save(WEIGHTS))
    out = system.cli("add", path, "--name", NAME, "--meta", "source=test", "--meta",
                     "license=mit", "--json")  # fmt: skip
    digest = str(json.loads(out.stdout)["artifact"]["digest"])
    system.cli("promote", digest)
    return {"digest": digest}


def test_the_consumer_socket_admits_root_and_assay_consumers_only(
    system: BootedSystem, consumer: dict[str, str]
) -> None:
    group = system.run("getent", "group", "assay-consumers").stdout.split(":")
    gid = int(group[2])
    assert gid < 1000, group  # a static system group from sysusers.d
    info = system.run("stat", "-c", "%F %U %g %a", SOCKET).stdout.split()
    assert info == ["socket", "root", str(gid), "660"], info
    assert system.show("assay-consumer.socket", "ActiveState")["ActiveState"] == "active"


def test_a_dynamic_user_service_loads_the_trusted_safetensors_through_the_socket(
    system: BootedSystem, consumer: dict[str, str]
) -> None:
    report = run_consumer(system, NAME)
    assert report["ok"] and report["started"], json.dumps(report)
    assert report["values"] == {k: v.tolist() for k, v in WEIGHTS.items()}
    assert report["digest"] == consumer["digest"]
    assert report["uid"] in DYNAMIC_UIDS and report["path"].startswith("/proc/self/fd/")
    rec = opens(system)[-1]
    assert (rec["action"], rec["decision"], rec["auth_mode"], rec["principal"]) == (
        "artifact.open", "allow", "peer", "consumers")  # fmt: skip
    assert rec["extra"]["peer_uid"] == report["uid"] and rec["target"] == consumer["digest"]


def test_the_consumer_socket_starts_the_registry_when_it_is_stopped(
    system: BootedSystem, consumer: dict[str, str]
) -> None:
    system.systemctl("stop", "assay.service")
    assert system.show("assay.service", "ActiveState")["ActiveState"] == "inactive"
    report = run_consumer(system, consumer["digest"])
    assert report["ok"], report
    system.wait_active()


def test_a_service_without_the_drop_in_cannot_connect(
    system: BootedSystem, consumer: dict[str, str]
) -> None:
    report = run_consumer(system, NAME, dropin=False)
    assert not report["ok"] and not report["started"], report
    # Without the drop-in it has neither the group nor the socket path in its
    # environment: it looks at the default path and is refused there.
    assert report["code"] == "auth.peer_refused", report


def test_the_consumer_is_refused_after_a_revoke(
    system: BootedSystem, consumer: dict[str, str]
) -> None:
    system.cli("revoke", consumer["digest"], "--reason", "revoked in the booted test")
    by_name = run_consumer(system, NAME)
    by_digest = run_consumer(system, consumer["digest"])
    assert (by_name["ok"], by_name["code"]) == (False, "artifact.not_found"), by_name
    assert (by_digest["ok"], by_digest["code"]) == (False, "artifact.not_trusted"), by_digest
    assert not by_name["started"] and not by_digest["started"]
    last = opens(system)[-2:]
    assert [(r["decision"], r["error_code"]) for r in last] == [
        ("deny", "artifact.not_found"), ("deny", "artifact.not_trusted")]  # fmt: skip
    # The registry's store stays private to its dynamic user.
    mode = system.run("stat", "-c", "%a", "/var/lib/private").stdout.strip()
    assert not int(mode, 8) & stat.S_IRWXO, mode
