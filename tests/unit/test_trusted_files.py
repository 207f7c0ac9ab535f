"""Config, the policies directory and each policy are trusted only as far as their modes.

Each attack plants the file the way an attacker with the wrong access would leave it
(a symlink, group or world write, another owner, a writable directory around it, a FIFO
or directory where a policy should be), and startup must refuse it with
``config.file_unsafe`` on one line naming the path. The packaged layout
(``packaging/build-deb.sh``) and ``assay init`` must pass the same checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from assay.core.errors import UnsafeFile
from assay.registry.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = """
auth: {token_file: {file: tokens.json}}
audit: {dir: audit, hmac_key: {env: ASSAY_HMAC}}
registry: {policies_dir: policies, policy: default}
"""
OTHER_UID = 54321


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    d = tmp_path / "dep"
    d.mkdir(mode=0o700)
    (d / "config.yaml").write_text(CONFIG)
    (d / "config.yaml").chmod(0o600)
    (d / "policies").mkdir(mode=0o755)
    (d / "policies" / "default.yaml").write_text("name: default\n")
    (d / "policies" / "default.yaml").chmod(0o644)
    return d


def test_a_clean_deployment_loads(deployment: Path) -> None:
    assert load_config(deployment / "config.yaml").policy.name == "default"


def _as_symlink(path: Path) -> None:
    real = path.parent.parent / f"real-{path.name}"
    shutil.move(path, real)
    path.symlink_to(real)


def _chown_other(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    os.chown(path, OTHER_UID, OTHER_UID, follow_symlinks=False)


ATTACKS: dict[str, Callable[[Path], None]] = {
    "symlink": _as_symlink,
    "group-writable": lambda p: p.chmod(0o664 if p.is_file() else 0o775),
    "world-writable": lambda p: p.chmod(0o646 if p.is_file() else 0o757),
    "other owner": _chown_other,
}
TARGETS = {
    "config": "config.yaml",
    "policies dir": "policies",
    "policy file": "policies/default.yaml",
}


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_an_unsafe_trusted_file_stops_startup_naming_its_path(
    deployment: Path, target: str, attack: str
) -> None:
    path = deployment / TARGETS[target]
    ATTACKS[attack](path)
    with pytest.raises(UnsafeFile) as caught:
        load_config(deployment / "config.yaml")
    err = caught.value
    assert err.code == "config.file_unsafe"
    assert str(path) in err.detail and "\n" not in err.detail, err.detail


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink to a good policy"])
def test_a_policy_that_is_not_a_regular_file_is_refused_without_blocking(
    deployment: Path, kind: str
) -> None:
    path = deployment / "policies" / "extra.yaml"
    if kind == "fifo":
        os.mkfifo(path, 0o644)  # no writer: a blocking open would hang startup
    elif kind == "directory":
        path.mkdir(mode=0o755)
    else:
        path.symlink_to(deployment / "policies" / "default.yaml")
    with pytest.raises(UnsafeFile, match=re.escape(str(path))):
        load_config(deployment / "config.yaml")


@pytest.mark.parametrize("holder", ["deployment dir", "policies parent"])
def test_a_writable_directory_around_a_trusted_file_is_refused(
    deployment: Path, tmp_path: Path, holder: str
) -> None:
    if holder == "deployment dir":
        deployment.chmod(0o777)  # anyone could rename a config of their own over ours
    else:
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o777)
        shared.chmod(0o777)
        shutil.move(deployment / "policies", shared / "policies")
        config = deployment / "config.yaml"
        config.write_text(
            CONFIG.replace("policies_dir: policies", f"policies_dir: {shared}/policies")
        )
    with pytest.raises(UnsafeFile, match="lets group or others replace"):
        load_config(deployment / "config.yaml")


def test_a_sticky_world_writable_directory_is_allowed(deployment: Path) -> None:
    """Like /tmp: others may create files there but not rename over ours."""
    deployment.chmod(0o1777)
    assert load_config(deployment / "config.yaml").policy.name == "default"


def test_the_packaged_etc_assay_layout_passes(tmp_path: Path) -> None:
    """Stage /etc/assay with the modes build-deb.sh installs (root-owned, as
    ``dpkg-deb --root-owner-group`` makes them) and load it."""
    script = (ROOT / "packaging" / "build-deb.sh").read_text()
    (config_mode,) = re.findall(
        r'install -m (\d{4}) "\$ROOT/packaging/config\.yaml" "\$D/etc/assay/config\.yaml"', script
    )
    (policy_mode,) = re.findall(r'install -m (\d{4}) "\$p" "\$D/etc/assay/policies/"', script)
    (dir_mode,) = re.findall(r'find "\$D" -type d -exec chmod (\d{4}) \{\} \+', script)
    assert "--root-owner-group" in script
    etc = tmp_path / "etc" / "assay"
    (etc / "policies").mkdir(parents=True)
    for d in (tmp_path / "etc", etc, etc / "policies"):
        d.chmod(int(dir_mode, 8))
    packaged = (ROOT / "packaging" / "config.yaml").read_text()
    assert "policies_dir: /etc/assay/policies" in packaged
    config = etc / "config.yaml"
    config.write_text(packaged.replace("/etc/assay/policies", str(etc / "policies")))
    config.chmod(int(config_mode, 8))
    for p in (ROOT / "policies").glob("*.yaml"):
        shutil.copyfile(p, etc / "policies" / p.name)
        (etc / "policies" / p.name).chmod(int(policy_mode, 8))
    loaded = load_config(config)
    assert loaded.policy.name == "default" and "two-person" in loaded.policies


def test_assay_init_creates_files_that_pass_whatever_the_umask_and_source_modes(
    tmp_path: Path,
) -> None:
    source = tmp_path / "shipped"
    source.mkdir()
    for p in (ROOT / "policies").glob("*.yaml"):
        shutil.copyfile(p, source / p.name)
        (source / p.name).chmod(0o666)  # a careless checkout
    source.chmod(0o777)
    env = {**os.environ, "ASSAY_POLICIES_DIR": str(source)}
    code = "import os, sys; os.umask(0); from assay.cli.main import main; sys.exit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, "init", "--dir", str(tmp_path / "d"), "--json"],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert load_config(tmp_path / "d" / "config.yaml").policy.name == "default"


def test_assay_init_refuses_a_directory_the_daemon_would_refuse(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    proc = subprocess.run(
        [sys.executable, "-m", "assay", "init", "--dir", str(shared)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "config.file_unsafe" in proc.stderr and str(shared) in proc.stderr
    assert list(shared.iterdir()) == []


def test_the_daemon_refuses_to_start_with_a_clear_one_line_error(
    deployment: Path,
) -> None:
    (deployment / "policies" / "default.yaml").chmod(0o666)
    proc = subprocess.run(
        [sys.executable, "-m", "assay", "serve", "--config", str(deployment / "config.yaml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "config.file_unsafe" in lines[0], proc.stderr
    assert "default.yaml" in lines[0] and "Traceback" not in proc.stderr


def test_the_relay_config_follows_the_same_rules(tmp_path: Path) -> None:
    from assay.relay.settings import load_config as load_relay_config

    config = tmp_path / "relay.yaml"
    config.write_text("{}\n")
    config.chmod(0o666)
    with pytest.raises(UnsafeFile, match=re.escape(str(config))):
        load_relay_config(config)
    config.unlink()
    config.symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(UnsafeFile, match="symlink"):
        load_relay_config(config)
