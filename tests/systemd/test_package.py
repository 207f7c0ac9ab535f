"""The installed Debian package, inside the booted namespace: what dpkg put where, the
venv's interpreter, checksums and the SBOM matching what is actually installed, the
maintainer scripts keeping an administrator's choices, and lintian on the .deb itself."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.systemd.conftest import BootedSystem, wait_for

pytestmark = pytest.mark.systemd

ROOT = Path(__file__).resolve().parents[2]
SITE = "/opt/assay/lib/python3.*/site-packages"
LOGSETUP_IDS = {
    "startup": "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e",
    "promote": "9e4f1c2b7a6d4f3e8b5c0a1d2e3f4a5b",
    "revoke": "1c7d9e8f6a5b4c3d2e1f0a9b8c7d6e5f",
    "ingest": "5b0a3c7e1f9d4e52a8f0d4c6b7e2a901",
}


# Run by the venv's own interpreter: per distribution, its RECORD's SHA-256 and the files
# RECORD lists that are missing or differ from their hash; and every file under
# site-packages that no RECORD lists.
RECORD_CHECK = r"""
import base64, hashlib, importlib.metadata as m, json, pathlib, sys
dists, owned = {}, set()
for d in m.distributions():
    record = next(d.locate_file(f) for f in d.files if str(f).endswith(".dist-info/RECORD"))
    bad = []
    for f in d.files:
        path = pathlib.Path(d.locate_file(f))
        owned.add(path.resolve())
        if not path.exists():
            bad.append(str(f))
        elif f.hash:
            got = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest())
            if got.rstrip(b"=").decode() != f.hash.value:
                bad.append(str(f))
    name = d.metadata["Name"].lower().replace("_", "-")
    dists[name] = [hashlib.sha256(pathlib.Path(record).read_bytes()).hexdigest(), bad]
(site,) = [p for p in sys.path if p.endswith("site-packages")]
files = [p for p in pathlib.Path(site).rglob("*") if p.is_file()]
unowned = [str(p) for p in files if p.resolve() not in owned]
print(json.dumps({"dists": dists, "unowned": unowned}))
"""


def the_deb(system: BootedSystem) -> Path:
    """The .deb this session installed (built into scratch/dist, or ASSAY_TEST_DEB's copy)."""
    debs = sorted(system.scratch.glob("assay_*.deb")) + sorted(
        system.scratch.glob("dist/assay_*.deb")
    )
    assert len(debs) == 1, debs
    return debs[0]


def unit_state(system: BootedSystem, unit: str) -> tuple[str, str]:
    enabled = system.run("systemctl", "is-enabled", unit, check=False).stdout.strip()
    active = system.run("systemctl", "is-active", unit, check=False).stdout.strip()
    return enabled, active


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


def test_files_follow_debian_conventions(system: BootedSystem) -> None:
    """Nothing in /srv (the site's), shared objects not executable, only assay's own
    entry point in the venv's bin/, no test suites or C++ headers, docs and licence where
    Debian looks for them."""
    listed = system.run("dpkg", "-L", "assay").stdout.splitlines()
    assert not [p for p in listed if p == "/srv" or p.startswith("/srv/")], "files in /srv"
    executable_so = system.run(
        "find", "/opt/assay", "-type", "f", "(", "-name", "*.so", "-o", "-name", "*.so.*", ")",
        "-perm", "/111",
    ).stdout.split()  # fmt: skip
    assert executable_so == [], executable_so
    bin_dir = sorted(system.run("ls", "/opt/assay/bin").stdout.split())
    assert [b for b in bin_dir if not re.fullmatch(r"python(3(\.\d+)?)?", b)] == ["assay"], bin_dir
    pruned = system.run(
        "sh", "-c", f"ls -d {SITE}/pyarrow/tests {SITE}/pyarrow/include 2>/dev/null || true"
    ).stdout.split()
    assert pruned == [], pruned
    for path in (
        "/usr/share/doc/assay/copyright",
        "/usr/share/doc/assay/changelog.gz",
        "/usr/share/man/man1/assay.1.gz",
        "/usr/share/man/man1/assay-promote.1.gz",
        "/usr/share/man/man1/assay-relay-serve.1.gz",
        "/usr/share/man/man8/assay-system.8.gz",
        "/usr/share/man/man8/assay-init-system.8.gz",
        "/usr/share/bash-completion/completions/assay",
        "/usr/share/zsh/vendor-completions/_assay",
        "/lib/systemd/system/assay-consumer.socket",
        "/usr/lib/sysusers.d/assay.conf",
        "/usr/share/assay/systemd/consumer.conf",
    ):
        system.run("test", "-e", path)
    copyright_text = system.read("/usr/share/doc/assay/copyright")
    assert copyright_text.startswith("Format: https://www.debian.org/doc/packaging-manuals/")
    assert "/usr/share/common-licenses/Apache-2.0" in copyright_text
    changelog = system.run("sh", "-c", "zcat /usr/share/doc/assay/changelog.gz").stdout
    version = system.run("dpkg-query", "-W", "-f=${Version}", "assay").stdout
    assert changelog.startswith(f"assay ({version}) "), changelog[:80]
    meta = system.run("sh", "-c", f"cat {SITE}/assay-*.dist-info/METADATA").stdout
    assert "License-Expression: Apache-2.0" in meta and "Project-URL: Homepage, https://" in meta


def test_dependencies_name_libc_and_the_interpreter(system: BootedSystem) -> None:
    depends = system.run("dpkg-query", "-W", "-f=${Depends}", "assay").stdout
    for needed in (r"libc6 \(>= 2\.\d+\)", r"python3\.\d+", r"libsystemd0 \(>= \d+\)",
                   r"init-system-helpers"):  # fmt: skip
        assert re.search(needed, depends), (needed, depends)
    # /usr/sbin/assay-system is a shell script that runs the venv's interpreter.
    assert system.read("/usr/sbin/assay-system").startswith("#!/bin/sh\n")
    helped = system.run("assay-system", "--help").stdout
    assert "relay-init" in helped and "token" in helped


def test_man_page_and_completion_work(system: BootedSystem) -> None:
    page = system.run("sh", "-c", "zcat /usr/share/man/man1/assay.1.gz").stdout
    # assay.1 lists every command and names its own page (assay-promote(1), ...).
    assert page.startswith(".TH ASSAY 1 ") and "\\fBassay\\-promote\\fR(1)" in page
    promote = system.run("sh", "-c", "zcat /usr/share/man/man1/assay-promote.1.gz").stdout
    assert promote.startswith(".TH ASSAY\\-PROMOTE 1 ") and "\\-\\-signature" in promote
    registered = system.run(
        "bash", "-c", ". /usr/share/bash-completion/completions/assay && complete -p assay"
    ).stdout
    assert registered.startswith("complete ") and registered.strip().endswith(" assay")


def test_sbom_components_have_hashes_that_match_what_is_installed(system: BootedSystem) -> None:
    """Every component names its wheel by SHA-256, and the installed RECORD its SBOM entry
    hashes still lists, with matching hashes, every file of the distribution on disk."""
    sbom = json.loads(system.read("/usr/share/doc/assay/sbom.cdx.json"))
    components = [sbom["metadata"]["component"], *sbom["components"]]
    expected = {}
    for c in components:
        (h,) = c["hashes"]
        assert h["alg"] == "SHA-256" and re.fullmatch(r"[0-9a-f]{64}", h["content"]), c["name"]
        props = {p["name"]: p["value"] for p in c["properties"]}
        assert props["assay:wheel"].endswith(".whl"), props
        expected[c["name"].lower().replace("_", "-")] = props["assay:record-sha256"]
    found = json.loads(system.run("/opt/assay/bin/python3", "-I", "-c", RECORD_CHECK).stdout)
    # Every file under site-packages is some distribution's: nothing unvouched-for.
    assert found["unowned"] == [], found["unowned"][:10]
    installed = found["dists"]
    assert set(installed) == set(expected)
    for name, (record_sha256, bad) in installed.items():
        assert bad == [], (name, bad[:10])
        assert record_sha256 == expected[name], name


def test_journal_names_the_code_that_made_each_event(system: BootedSystem) -> None:
    """CODE_FILE/LINE/FUNC (from systemd-python's JournalHandler) name the call site: the
    daemon's startup in registry/daemon.py:run, registry events in the registry module
    that made them, never the logging wrapper or the daemon's forwarding callback."""
    system.activate()
    entries = [
        e
        for kind, mid in LOGSETUP_IDS.items()
        for e in system.journal("-u", "assay.service", f"MESSAGE_ID={mid}")
    ]
    startups = [e for e in entries if e["MESSAGE_ID"] == LOGSETUP_IDS["startup"]]
    assert startups, "no startup event in the journal"
    for e in entries:
        assert not e["CODE_FILE"].endswith("/core/logsetup.py"), e["CODE_FILE"]
        assert e["CODE_FUNC"] not in {"event", "_events", "events"}, e["CODE_FUNC"]
        assert int(e["CODE_LINE"]) > 0
    for e in startups:
        assert e["CODE_FILE"].endswith("/assay/registry/daemon.py"), e["CODE_FILE"]
        assert e["CODE_FUNC"] == "run"
    for e in entries:
        if e["MESSAGE_ID"] != LOGSETUP_IDS["startup"]:
            assert "/assay/registry/" in e["CODE_FILE"], e["CODE_FILE"]
            assert not e["CODE_FILE"].endswith("/registry/daemon.py"), e["CODE_FILE"]


@pytest.fixture
def socket_restored(system: BootedSystem) -> Iterator[None]:
    """Whatever a test does to assay.socket, the next one finds it enabled and listening."""
    try:
        yield
    finally:
        system.run("systemctl", "unmask", "assay.socket", check=False)
        system.systemctl("enable", "--now", "assay.socket")
        wait_for(
            lambda: unit_state(system, "assay.socket") == ("enabled", "active"),
            what="assay.socket enabled and active again",
            timeout=60,
        )


def reinstall(system: BootedSystem) -> str:
    """dpkg -i of the same .deb: prerm upgrade, then postinst configure OLD-VERSION."""
    out = system.run("dpkg", "-i", str(the_deb(system)), timeout=600)
    return str(out.stdout) + str(out.stderr)


def test_a_disabled_socket_stays_disabled_and_stopped_across_a_reinstall(
    system: BootedSystem, socket_restored: None
) -> None:
    assert unit_state(system, "assay.socket") == ("enabled", "active")
    system.systemctl("disable", "--now", "assay.socket")
    assert unit_state(system, "assay.socket") == ("disabled", "inactive")
    reinstall(system)
    assert unit_state(system, "assay.socket") == ("disabled", "inactive")
    assert unit_state(system, "assay.service")[1] == "inactive"
    # deb-systemd-helper still knows the unit (its state file), so purge cleans it up.
    system.run("test", "-e", "/var/lib/systemd/deb-systemd-helper-enabled/assay.socket.dsh-also")
    # Nothing listens on the registry's port.
    status = system.run(
        "/opt/assay/bin/python3", "-c",
        "import socket; s = socket.socket(); print(s.connect_ex(('127.0.0.1', 8470)))",
    ).stdout.strip()  # fmt: skip
    assert status != "0", "something still listens on 127.0.0.1:8470"


def test_a_masked_socket_stays_masked_across_a_reinstall(
    system: BootedSystem, socket_restored: None
) -> None:
    system.systemctl("stop", "assay.socket")
    system.systemctl("mask", "assay.socket")
    reinstall(system)
    assert unit_state(system, "assay.socket") == ("masked", "inactive")


def test_an_enabled_socket_is_enabled_and_listening_after_a_reinstall(
    system: BootedSystem, socket_restored: None
) -> None:
    assert unit_state(system, "assay.socket") == ("enabled", "active")
    reinstall(system)
    assert unit_state(system, "assay.socket") == ("enabled", "active")
    # Units the package does not enable stay as they were: the relay is not enabled.
    assert unit_state(system, "assay-relay.socket")[0] == "disabled"
    system.activate()


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian is not installed")
def test_lintian_reports_nothing_but_what_the_overrides_explain(system: BootedSystem) -> None:
    """Errors and warnings: none. Overridden tags (the venv under /opt) must each still be
    raised by lintian, so an override never outlives its reason."""
    deb = the_deb(system)
    proc = subprocess.run(
        ["lintian", "--tag-display-limit", "0", "--show-overrides", str(deb)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    lines = [x for x in proc.stdout.splitlines() if re.match(r"[EWIPXO]: ", x)]
    raised = [x for x in lines if x[0] in "EW"]
    assert raised == [], "\n".join(raised)
    overridden = {x.split()[2] for x in lines if x.startswith("O: ")}
    overrides = (ROOT / "packaging" / "debian" / "lintian-overrides").read_text()
    named = {m.group(1) for m in re.finditer(r"^assay: (\S+)", overrides, re.M)}
    assert named <= overridden, f"overrides lintian no longer needs: {named - overridden}"
