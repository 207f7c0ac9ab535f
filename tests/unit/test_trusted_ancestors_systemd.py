"""The ancestor walk (``trusted_files.check_ancestors``) passes the packaged systemd layout.

Review 9 made every directory on the way to a trusted file or a secret count, not only its
parent. A walk that strict must not refuse what the packaged units give the daemon
(``units/assay.service``, ``units/assay-relay.service``, ``packaging/``): root-owned 0755
``/etc``, ``/etc/assay`` (``ConfigurationDirectory=``, never chowned), root-owned 0644
config and policies, ``/etc/assay/credentials`` (root, 0700) for the root CLI,
``/run/credentials/<unit>`` (systemd's ``LoadCredential=``: the directory 0500 and its
files 0400, both owned by the service's dynamic uid), ``/var/lib/<unit>`` as the symlink
``StateDirectory=`` with ``DynamicUser=`` makes (to ``private/<unit>``, the unit's own,
0700), and ``/run/assay`` (``RuntimeDirectory=``, 0755, the dynamic uid's).

Built for real, not mocked: the layout sits under a directory in ``/tmp`` (root-owned,
0755) that stands for ``/``, and the checks run in a forked child that has become the
dynamic uid with no supplementary groups, as the service runs. Needs root (chown);
skipped otherwise. A control in the same layout shows the walk still refuses a
group-writable ``/etc/assay``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from assay.consumer.cache import cache_problem
from assay.core import tokenfile
from assay.core.errors import AssayError, UnsafeFile
from assay.core.schema import SecretRef
from assay.core.secrets import read_secret
from assay.core.trusted_files import TrustedDir, check_ancestors, read_trusted

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the layout needs chown (root)")

#: A uid in systemd's DynamicUser= range (61184..65519).
DYNAMIC = 61_234
SECRET = b"k" * 48


def _dir(path: Path, mode: int, uid: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, uid)
    path.chmod(mode)
    return path


def _file(path: Path, data: bytes, mode: int, uid: int = 0) -> Path:
    path.write_bytes(data)
    os.chown(path, uid, uid)
    path.chmod(mode)
    return path


@pytest.fixture
def root() -> Iterator[Path]:
    """A stand-in for ``/`` with the packaged layout (real modes and owners)."""
    top = Path(tempfile.mkdtemp(prefix="assay-systemd-layout-", dir="/tmp"))
    try:
        top.chmod(0o755)
        etc = _dir(top / "etc" / "assay", 0o755)
        _dir(top / "etc", 0o755)
        _file(etc / "config.yaml", b"server: {}\n", 0o644)
        _file(etc / "relay.yaml", b"server: {}\n", 0o644)
        _file(_dir(etc / "policies", 0o755) / "default.yaml", b"name: default\n", 0o644)
        _file(_dir(etc / "trust" / "root", 0o755) / "1.root.json", b"{}", 0o644)
        _dir(etc / "trust", 0o755)
        creds = _dir(etc / "credentials", 0o700)
        _file(creds / "audit-hmac.key", SECRET, 0o600)
        _file(creds / "tokens.json", b'{"version": 1, "tokens": []}', 0o600)
        _dir(top / "run", 0o755)
        _dir(top / "run" / "credentials", 0o755)
        for unit in ("assay.service", "assay-relay.service"):
            loaded = top / "run" / "credentials" / unit
            loaded.mkdir()
            _file(loaded / "audit-hmac.key", SECRET, 0o400, DYNAMIC)
            _file(loaded / "tokens.json", b'{"version": 1, "tokens": []}', 0o400, DYNAMIC)
            _file(loaded / "relay_api-keys.yaml", SECRET, 0o400, DYNAMIC)
            _dir(loaded, 0o500, DYNAMIC)  # last: 0500 leaves even its owner no write
        _dir(top / "run" / "assay", 0o755, DYNAMIC)
        _dir(top / "run" / "assay-trust", 0o755, DYNAMIC)
        # As the service sees it: on the host /var/lib/private is root 0700, and in the
        # unit's mount namespace systemd puts a root 0755 tmpfs there holding only the
        # unit's own directory (else the dynamic user could not reach its state at all).
        _dir(top / "var" / "lib" / "private", 0o755)
        _dir(top / "var", 0o755)
        _dir(top / "var" / "lib", 0o755)
        for unit in ("assay", "assay-relay", "llama"):
            _dir(top / "var" / "lib" / "private" / unit, 0o700, DYNAMIC)
            (top / "var" / "lib" / unit).symlink_to(f"private/{unit}")
        _dir(top / "var" / "lib" / "private" / "llama" / "assay-cache", 0o700, DYNAMIC)
        yield top
    finally:
        shutil.rmtree(top)


def _checks(top: Path) -> dict[str, str]:
    """What the services check at start, each ``ok`` or the refusal's detail."""
    results: dict[str, str] = {}

    def attempt(name: str, fn: Callable[[], object]) -> None:
        try:
            fn()
            results[name] = "ok"
        except AssayError as exc:
            results[name] = exc.detail

    etc = top / "etc" / "assay"
    attempt("config", lambda: read_trusted(etc / "config.yaml", max_bytes=1 << 20))
    attempt("relay config", lambda: read_trusted(etc / "relay.yaml", max_bytes=1 << 20))

    def policies() -> None:
        with TrustedDir(etc / "policies") as d:
            d.read("default.yaml", max_bytes=1 << 20)

    attempt("policies", policies)
    attempt("trust root", lambda: check_ancestors(etc / "trust" / "root" / "1.root.json"))
    for unit in ("assay.service", "assay-relay.service"):
        loaded = top / "run" / "credentials" / unit
        os.environ["CREDENTIALS_DIRECTORY"] = str(loaded)
        for name in ("audit-hmac.key", "relay_api-keys.yaml"):
            ref = SecretRef(credential=name)
            attempt(f"{unit} {name}", lambda ref=ref: read_secret(ref, base=etc))
        attempt(f"{unit} tokens.json", lambda loaded=loaded: tokenfile.load(loaded / "tokens.json"))
    for where in ("run/assay-consumer.sock", "run/assay/admin.sock", "run/assay-trust/x"):
        attempt(where, lambda where=where: check_ancestors(top / where))
    for state in ("assay/audit", "assay-relay/row-budgets", "llama/assay-cache/x"):
        attempt(state, lambda state=state: check_ancestors(top / "var" / "lib" / state))
    results["consumer cache"] = cache_problem(top / "var" / "lib" / "llama" / "assay-cache") or "ok"
    return results


def _as_the_service(top: Path) -> dict[str, str]:
    """``_checks`` in a forked child that has become the dynamic user (uid, gid, no
    supplementary groups) for good, as the service is; its answer comes back on a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(DYNAMIC)
            os.setuid(DYNAMIC)
            os.write(write_end, json.dumps(_checks(top)).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read(1 << 20)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and answer, status
    results: dict[str, str] = json.loads(answer)
    return results


def test_the_packaged_systemd_layout_passes_every_ancestor_check(root: Path) -> None:
    results = _as_the_service(root)
    assert len(results) == 17, results
    refused = {name: why for name, why in results.items() if why != "ok"}
    assert not refused, refused


def test_the_root_cli_reads_the_credential_sources_under_etc(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # assay-system and `assay token` run as root with CREDENTIALS_DIRECTORY set to the
    # sources (tests/systemd/conftest.py does the same).
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(root / "etc" / "assay" / "credentials"))
    assert read_secret(SecretRef(credential="audit-hmac.key"), base=root) == SECRET
    check_ancestors(root / "etc" / "assay" / "credentials" / "tokens.json")


def test_the_same_layout_with_a_group_writable_etc_assay_is_refused(root: Path) -> None:
    # The control: the layout passes because of its modes, not because nothing is checked.
    (root / "etc" / "assay").chmod(0o775)
    results = _as_the_service(root)
    assert str(root / "etc" / "assay") in results["config"]
    assert results["policies"] != "ok" and results["trust root"] != "ok"
    assert results["assay.service audit-hmac.key"] == "ok"  # /run is not under /etc
    with pytest.raises(UnsafeFile):
        check_ancestors(root / "etc" / "assay" / "config.yaml")
