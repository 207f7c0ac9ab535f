"""Static checks of the shipped units: exposure score, ``systemd-analyze verify``, and the
settings the appliance relies on. No systemd is booted; ``systemd-analyze`` is needed for
the first two (skipped without it)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "units"
SERVICES = ["assay.service", "assay-relay.service"]
SOCKETS = {"assay.socket": "127.0.0.1:8470", "assay-relay.socket": "127.0.0.1:8480"}
MAX_EXPOSURE = 0.5
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")

pytestmark = pytest.mark.systemd


def directives(unit: str) -> dict[str, list[str]]:
    """``Key=value`` lines of a unit file (all sections), in order, keyed by name."""
    out: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def exposure(unit: str) -> tuple[float, str]:
    proc = subprocess.run(
        [
            ANALYZE or "systemd-analyze",
            "security",
            "--offline=yes",
            "--no-pager",
            str(UNITS / unit),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout)
    assert match, f"no exposure line:\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1)), proc.stdout


@needs_analyze
@pytest.mark.parametrize("unit", SERVICES)
def test_exposure_is_at_most_half(unit: str) -> None:
    score, report = exposure(unit)
    assert score <= MAX_EXPOSURE, f"{unit} scores {score} > {MAX_EXPOSURE}:\n{report}"


@needs_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    """Verify in a scratch root: the real unit directory for dependencies (sysinit.target,
    sockets.target...), the units as a package installs them, and stand-ins for the
    executables verify insists exist (/opt/assay/bin/assay; the booted tests run the real
    one)."""
    root = tmp_path / "root"
    system_dir = Path("/lib/systemd/system")
    if not (system_dir / "sysinit.target").exists():
        pytest.skip("no system unit directory with sysinit.target to verify against")
    (root / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree(system_dir, root / "lib" / "systemd" / "system", symlinks=True)
    names = [*SERVICES, *SOCKETS, CONSUMER_SOCKET]
    for name in names:
        for key, values in directives(name).items():
            if not key.startswith("Exec"):
                continue
            for value in values:
                exe = root / value.lstrip("-+!@:").split()[0].lstrip("/")
                exe.parent.mkdir(parents=True, exist_ok=True)
                exe.write_text("#!/bin/sh\nexit 0\n")
                exe.chmod(0o755)
    target = root / "etc" / "systemd" / "system"
    target.mkdir(parents=True)
    for name in names:
        shutil.copy(UNITS / name, target / name)
    proc = subprocess.run(
        [ANALYZE or "systemd-analyze", "verify", f"--root={root}", "--man=no", *names],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


CONSUMER_SOCKET = "assay-consumer.socket"


def test_the_consumer_socket_is_a_group_gated_seqpacket_passed_to_the_registry_by_name() -> None:
    """Only root and assay-consumers may connect (0660); one message each way; the
    registry finds it among its fds by name; the group is a static sysusers.d one."""
    d = directives(CONSUMER_SOCKET)
    assert d["ListenSequentialPacket"] == ["/run/assay-consumer.sock"]
    assert (d["SocketUser"], d["SocketGroup"], d["SocketMode"]) == (
        ["root"], ["assay-consumers"], ["0660"])  # fmt: skip
    assert d["FileDescriptorName"] == ["consumer"] and d["Service"] == ["assay.service"]
    assert d.get("Accept", ["no"]) == ["no"]
    assert directives("assay.service")["Sockets"] == ["assay.socket assay-consumer.socket"]
    sysusers = (ROOT / "packaging" / "sysusers.d" / "assay.conf").read_text().splitlines()
    assert [line.split()[:2] for line in sysusers if line and line[0] != "#"] == [
        ["g", "assay-consumers"]]  # fmt: skip
    dropin = (UNITS / "consumer.conf").read_text()
    assert "SupplementaryGroups=assay-consumers" in dropin
    assert "After=assay-consumer.socket" in dropin


@pytest.mark.parametrize(("unit", "listen"), sorted(SOCKETS.items()))
def test_sockets_listen_on_loopback(unit: str, listen: str) -> None:
    d = directives(unit)
    assert d["ListenStream"] == [listen]
    assert d.get("Accept", ["no"]) == ["no"]
    assert d["Service"] == [unit.replace(".socket", ".service")]


REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "Restart": "on-failure",
    "DynamicUser": "yes",
    "UMask": "0077",
    "PrivateNetwork": "yes",
    "RestrictAddressFamilies": "AF_UNIX",
    "IPAddressDeny": "any",
    "MemoryDenyWriteExecute": "yes",
    "CapabilityBoundingSet": "",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "NoNewPrivileges": "yes",
    "RestrictNamespaces": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectProc": "invisible",
    "SystemCallArchitectures": "native",
    "ConfigurationDirectory": "assay",
}
STATE = {"assay.service": "assay", "assay-relay.service": "assay-relay"}


#: The registry runs without a private user namespace: in one, SO_PEERCRED reports every
#: consumer peer as nobody, and the consumer socket maps peers to principals by uid and
#: groups (units/assay.service says so). The relay has no such socket and keeps it.
PRIVATE_USERS = {"assay.service": None, "assay-relay.service": "yes"}


@pytest.mark.parametrize("unit", SERVICES)
def test_service_carries_the_required_settings(unit: str) -> None:
    d = directives(unit)
    for key, value in REQUIRED.items():
        assert d.get(key) == [value], f"{unit}: {key}={d.get(key)} (want {value!r})"
    want = PRIVATE_USERS[unit]
    assert d.get("PrivateUsers") == ([want] if want else None), unit
    assert d["StateDirectory"] == d["LogsDirectory"] == [STATE[unit]]
    assert d["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert d["WatchdogSec"], "WatchdogSec= missing"
    for limit in ("MemoryMax", "TasksMax", "LimitNOFILE"):
        assert d.get(limit), f"{unit}: {limit}= missing"
    assert d["Requires"] == [unit.replace(".service", ".socket")]


def credential_refs(obj: object) -> set[str]:
    found: set[str] = set()
    if isinstance(obj, dict):
        if set(obj) == {"credential"}:
            found.add(str(obj["credential"]))
        for value in obj.values():
            found |= credential_refs(value)
    elif isinstance(obj, list):
        for value in obj:
            found |= credential_refs(value)
    return found


@pytest.mark.parametrize(
    ("unit", "config"), [("assay.service", "config.yaml"), ("assay-relay.service", "relay.yaml")]
)
def test_every_credential_the_config_names_is_loaded(unit: str, config: str) -> None:
    """Each ``{credential: NAME}`` in the packaged config has a LoadCredential=NAME:... line
    whose source is root-only /etc/assay/credentials/NAME; no secret comes from a file path
    or the environment in the packaged configs."""
    path = ROOT / "packaging" / config
    if not path.exists():
        pytest.skip(f"packaging/{config} not shipped yet")
    doc = yaml.safe_load(path.read_text())
    refs = credential_refs(doc)
    assert refs, f"{config} names no credentials"
    loaded = dict(v.split(":", 1) for v in directives(unit).get("LoadCredential", []))
    for name in refs:
        # LoadCredential=ID:DIR loads every file of DIR as ID_<file>.
        prefix, sep, rest = name.partition("_")
        if sep and prefix in loaded and name not in loaded:
            assert loaded[prefix] == f"/etc/assay/credentials/{prefix}", (unit, name, loaded)
            assert "/" not in rest
            continue
        assert loaded.get(name) == f"/etc/assay/credentials/{name}", (unit, name, loaded)
    for source in loaded.values():
        assert source.startswith("/etc/assay/credentials/"), source
    text = path.read_text()
    assert "{file:" not in text and "{env:" not in text


def test_packaged_registry_config_validates() -> None:
    from assay.registry.config import parse_config

    path = ROOT / "packaging" / "config.yaml"
    cfg = parse_config(path.read_bytes(), source=path)
    assert cfg.audit.dir.startswith("/var/lib/assay/")
    assert cfg.registry.store_dir.startswith("/var/lib/assay/")
    assert cfg.registry.db_path.startswith("/var/lib/assay/")
    assert cfg.registry.policies_dir == "/etc/assay/policies"
    assert not cfg.watchdog.allow_fault_injection


def test_packaged_relay_config_validates() -> None:
    """The template, with the commitments relay-init fills in, passes the relay's parser
    (shape and cross-references); its sources lie under the read-only dataset path."""
    relay_config = pytest.importorskip("assay.relay.config")
    text = (ROOT / "packaging" / "relay.yaml").read_text()
    filled = re.sub(r"@COMMITMENT_[a-z]+@", "commit:sha256:" + "ab" * 32, text)
    cfg = relay_config.parse_config(filled, source="packaging/relay.yaml")
    for ds in cfg.datasets:
        for table in ds.tables:
            assert table.source.path.startswith("/srv/assay/datasets/"), table.source.path
    assert cfg.audit.dir.startswith("/var/lib/assay-relay/")
