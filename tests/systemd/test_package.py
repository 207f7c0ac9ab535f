"""The installed Debian package, inside the booted namespace: what dpkg put where, the
venv's interpreter, checksums and the SBOM matching what is actually installed."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.systemd.conftest import BootedSystem

pytestmark = pytest.mark.systemd


def test_package_is_installed_where_the_units_expect_it(system: BootedSystem) -> None:
    status = system.run("dpkg-query", "-W", "-f=${Status} ${Version}", "assay").stdout
    assert status.startswith("install ok installed"), status
    for path in (
        "/lib/systemd/system/assay.socket",
        "/lib/systemd/system/assay.service",
        "/lib/systemd/system/assay-relay.socket",
        "/lib/systemd/system/assay-relay.service",
        "/etc/assay/config.yaml",
        "/etc/assay/policies/default.yaml",
        "/usr/share/assay/policies/default.yaml",
        "/usr/sbin/assay-init-system",
        "/usr/share/doc/assay/sbom.cdx.json",
    ):
        system.run("test", "-e", path)
    # The venv runs Debian's interpreter, never one under /root (ProtectHome= hides it).
    target = system.run("readlink", "-f", "/opt/assay/bin/python3").stdout.strip()
    assert target.startswith("/usr/bin/python3"), target
    cfg = system.read("/opt/assay/pyvenv.cfg")
    assert "/root" not in cfg, cfg
    # No installer inside the appliance.
    pip = system.run("/opt/assay/bin/python3", "-c", "import pip", check=False)
    assert pip.returncode != 0
    # Credentials: root-only directory and files.
    modes = system.run(
        "stat", "-c", "%a %U %n", "/etc/assay/credentials", *[
            f"/etc/assay/credentials/{n}" for n in ("audit-hmac.key", "audit-signing.key",
                                                     "tokens.json")
        ]
    ).stdout.splitlines()  # fmt: skip
    assert modes[0].startswith("700 root"), modes
    assert all(m.startswith("600 root") for m in modes[1:]), modes


def test_installed_files_match_their_checksums(system: BootedSystem) -> None:
    out = system.run(
        "sh", "-c", "cd / && sha256sum -c --quiet /usr/share/doc/assay/SHA256SUMS", check=False
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    verify = system.run("dpkg", "--verify", "assay", check=False)
    # dpkg --verify lists changed files; conffiles are allowed to differ, nothing else.
    changed = [line for line in verify.stdout.splitlines() if " c " not in line]
    assert not changed, verify.stdout


def test_sbom_lists_exactly_what_is_installed(system: BootedSystem) -> None:
    sbom = json.loads(system.read("/usr/share/doc/assay/sbom.cdx.json"))
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["metadata"]["component"]["name"] == "assay"
    listed = {c["name"].lower().replace("_", "-"): c["version"] for c in sbom["components"]}
    installed = json.loads(
        system.run(
            "/opt/assay/bin/python3",
            "-c",
            "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name']: "
            "d.version for d in m.distributions()}))",
        ).stdout
    )
    installed = {k.lower().replace("_", "-"): v for k, v in installed.items()}
    installed.pop("assay", None)
    assert listed == installed
    for needed in ("pyarrow", "cryptography", "systemd-python", "hypercorn", "trio"):
        assert needed in listed, needed


def test_build_outputs_have_checksums(system: BootedSystem) -> None:
    dist = system.scratch / "dist"
    if not (dist / "SHA256SUMS").exists():
        pytest.skip("package given by ASSAY_TEST_DEB, not built in this run")
    out = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=dist, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    names = {line.split()[1] for line in (dist / "SHA256SUMS").read_text().splitlines()}
    assert any(n.endswith(".deb") for n in names) and any(n.endswith(".cdx.json") for n in names)
