"""A real systemd, booted in fresh pid, mount and network namespaces, with assay installed
into it through the Debian package.

How the namespace is made (root only):

    unshare --pid --mount --net --fork --mount-proc --propagation private sh -c '
        mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /var/tmp
        <overlay /etc /usr /opt /var /srv, upper layers on the namespace's /run tmpfs>
        mount -t tmpfs tmpfs /var/tmp; ip link set lo up; mount --make-rshared /
        exec /lib/systemd/systemd --system --unit=basic.target'

* The tmpfs mounts come first, always: systemd's boot cleanup would otherwise empty the
  host's /tmp.
* The overlays keep every write of the booted system (dpkg's database, /opt/assay,
  /etc/assay, the journal, /var/lib/private/assay) in memory that vanishes with the
  namespace: the host's root is never changed, and a second run starts clean.
* ``--net`` gives the namespace its own loopback, so 127.0.0.1:8470 never clashes with a
  daemon on the host; commands run inside with ``nsenter -t PID -m -p -n``.

The package is built by ``packaging/build-deb.sh`` (or taken from ``$ASSAY_TEST_DEB``) into
a scratch directory under /var/lib (not /tmp, which the namespace hides, and not /root,
which ``ProtectHome=`` hides), written before the boot so the overlays show it. The
session fixture tears everything down at the end, even when tests fail: ``systemctl
poweroff``, then SIGKILL of the namespace's init as a fallback, then the scratch directory.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = "/lib/systemd/systemd"
OVERLAID = ("etc", "usr", "opt", "var", "srv")
BOOT_TIMEOUT = 90.0
BUILD_TIMEOUT = 1800.0
URL = "http://127.0.0.1:8470"
_SETUP_FAILED: list[str] = []
PR_SET_PDEATHSIG = 1

BOOT_SCRIPT = (
    "set -e; "
    "mount -t tmpfs tmpfs /tmp; mount -t tmpfs tmpfs /run; mount -t tmpfs tmpfs /var/tmp; "
    f"for d in {' '.join(OVERLAID)}; do "
    "  mkdir -p /run/.assay-test-overlay/$d/upper /run/.assay-test-overlay/$d/work; "
    "  mount -t overlay overlay "
    "    -o lowerdir=/$d,upperdir=/run/.assay-test-overlay/$d/upper,"
    "workdir=/run/.assay-test-overlay/$d/work /$d; "
    "done; "
    "mount -t tmpfs tmpfs /var/tmp; "
    "ip link set lo up; "
    # What a container manager does: systemd (seeing a container) does not make / shared
    # itself, and LoadCredential= needs the mount it prepares in a helper namespace to
    # propagate back. Shared only among this namespace's own copies: the host is untouched.
    "mount --make-rshared /; "
    f"exec {SYSTEMD} --system --unit=basic.target"
)


def skip_reason() -> str | None:
    """Why a real systemd cannot be booted here, or None."""
    if not Path("/proc/self/ns/pid").exists():
        return "not Linux with namespaces"
    if os.geteuid() != 0:
        return "needs root to boot systemd in fresh namespaces"
    for tool in ("unshare", "nsenter", "dpkg", "dpkg-deb", "ip", "systemctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not os.access(SYSTEMD, os.X_OK):
        return f"{SYSTEMD} is missing"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs"
    if not os.access("/usr/bin/python3", os.X_OK):
        return "/usr/bin/python3 is missing (the package's venv is built from it)"
    probe = subprocess.run(
        ["unshare", "--pid", "--mount", "--net", "--fork", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.strip()}"
    return None


def wait_for(
    check: Callable[[], Any], *, what: str, timeout: float = 60.0, every: float = 0.25
) -> Any:
    """Poll ``check`` until it returns something truthy; bounded in tries and in time."""
    deadline = time.monotonic() + timeout
    last: Any = None
    for _ in range(int(timeout / every) + 1):
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            break
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@dataclass
class BootedSystem:
    """A systemd running as pid 1 of its own namespaces, with assay installed."""

    scratch: Path
    unshare: subprocess.Popen[bytes] | None = None
    pid: int = 0
    admin_token: str = ""
    credentials: dict[str, bytes] = field(default_factory=dict)

    # -- running things inside ------------------------------------------------------------
    def run(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        input: str | bytes | None = None,
        check: bool = True,
        timeout: float = 120,
        text: bool = True,
    ) -> subprocess.CompletedProcess[Any]:
        base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": ""}
        proc = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-p", "-n", "--wd=/", "--", *argv],
            env={**base, **(env or {})},
            input=input,
            capture_output=True,
            text=text,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} -> {proc.returncode}\nstdout: {proc.stdout}\n"
                f"stderr: {proc.stderr}"
            )
        return proc

    def systemctl(self, *args: str, check: bool = True) -> str:
        return str(self.run("systemctl", "--no-pager", *args, check=check).stdout)

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, *[f"--property={p}" for p in props])
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def main_pid(self, unit: str = "assay.service") -> int:
        return int(self.show(unit, "MainPID")["MainPID"])

    def write(self, path: str, data: str | bytes, mode: str = "0644") -> None:
        self.run(
            "sh",
            "-c",
            'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
            "sh",
            path,
            mode,
            input=data,
            text=isinstance(data, str),
        )

    def read(self, path: str) -> str:
        return str(self.run("cat", path).stdout)

    def cli(
        self, *args: str, token: str | None = None, check: bool = True, root_creds: bool = False
    ) -> subprocess.CompletedProcess[str]:
        env = {"ASSAY_URL": URL, "ASSAY_TOKEN": token or self.admin_token}
        if root_creds:
            env["CREDENTIALS_DIRECTORY"] = "/etc/assay/credentials"
        return self.run("/opt/assay/bin/assay", *args, env=env, check=check)

    def http(
        self,
        path: str,
        token: str | None = None,
        *,
        base: str = URL,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """One GET on loopback inside the namespace; (status, body)."""
        code = (
            "import json, sys, urllib.request, urllib.error\n"
            "req = urllib.request.Request(sys.argv[1], headers=json.loads(sys.argv[2]))\n"
            "try:\n"
            "    r = urllib.request.urlopen(req, timeout=60)\n"
            "    print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n"
            "    print(e.code); print(e.read().decode())\n"
        )
        sent = dict(headers or {})
        if token:
            sent["Authorization"] = f"Bearer {token}"
        out = self.run("/opt/assay/bin/python3", "-c", code, base + path, json.dumps(sent)).stdout
        status, _, body = str(out).partition("\n")
        return int(status), body

    def journal(self, *args: str) -> list[dict[str, Any]]:
        out = self.run("journalctl", "--no-pager", "-o", "json", *args, check=False).stdout
        return [json.loads(line) for line in str(out).splitlines() if line.startswith("{")]

    def journal_text(self, unit: str = "assay.service", lines: int = 80) -> str:
        return str(
            self.run("journalctl", "--no-pager", "-u", unit, "-n", str(lines), check=False).stdout
        )

    def wait_active(self, unit: str = "assay.service", timeout: float = 120.0) -> None:
        def active() -> bool:
            state = self.show(unit, "ActiveState", "SubState")
            if state.get("ActiveState") == "failed":
                raise AssertionError(f"{unit} failed:\n{self.journal_text(unit)}")
            return state.get("ActiveState") == "active" and state.get("SubState") == "running"

        wait_for(active, what=f"{unit} active (running)", timeout=timeout)

    def activate(self) -> None:
        """Make a request, so the socket starts the service, and wait until it runs."""
        status, body = self.http("/healthz")
        assert status == 200, body
        self.wait_active()

    # -- lifecycle ------------------------------------------------------------------------
    def boot(self) -> None:
        self.unshare = subprocess.Popen(
            [
                "unshare",
                "--kill-child=SIGKILL",
                "--pid",
                "--mount",
                "--net",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
                "sh",
                "-c",
                BOOT_SCRIPT,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(self.scratch / "boot.log").open("wb"),
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

        def child() -> int | None:
            assert self.unshare is not None
            if self.unshare.poll() is not None:
                log = (self.scratch / "boot.log").read_text(errors="replace")
                raise AssertionError(f"unshare exited {self.unshare.returncode}: {log}")
            with contextlib.suppress(OSError):
                kids = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children")
                for pid in kids.read_text().split():
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
            return None

        self.pid = wait_for(child, what="systemd to start in the namespace", timeout=30)

        def booted() -> bool:
            out = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            return out in {"running", "degraded"}

        wait_for(booted, what="the namespace's systemd to finish booting", timeout=BOOT_TIMEOUT)

    def install(self, deb: Path) -> None:
        self.run("dpkg", "-i", str(deb), timeout=600)
        out = self.run("assay-init-system", "--json").stdout
        self.admin_token = json.loads(out)["admin_token"]
        for name in ("audit-hmac.key", "audit-signing.key", "tokens.json"):
            self.credentials[name] = self.run(
                "cat", f"/etc/assay/credentials/{name}", text=False
            ).stdout
        self.systemctl("start", "assay.socket")

    def teardown(self) -> None:
        proc, self.unshare = self.unshare, None
        if proc is not None and proc.poll() is None:
            if self.pid:
                with contextlib.suppress(Exception):
                    self.run("systemctl", "poweroff", "--no-block", check=False, timeout=30)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                # The namespace's init: killing it ends every process in the namespace.
                with contextlib.suppress(ProcessLookupError):
                    if self.pid:
                        os.kill(self.pid, signal.SIGKILL)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=30)
        shutil.rmtree(self.scratch, ignore_errors=True)


def _die_with_parent() -> None:
    """In the unshare child: SIGKILL when pytest dies, however it dies. With unshare's
    ``--kill-child`` (the same for its child, the namespace's init) no booted system
    outlives the test run even when teardown never gets to run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def build_deb(scratch: Path) -> Path:
    given = os.environ.get("ASSAY_TEST_DEB")
    if given:
        target = scratch / Path(given).name
        shutil.copy(given, target)
        return target
    out = scratch / "dist"
    log = scratch / "build.log"
    with log.open("wb") as f:
        proc = subprocess.run(
            [str(ROOT / "packaging" / "build-deb.sh"), "--out", str(out)],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=BUILD_TIMEOUT,
        )
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise AssertionError(f"packaging/build-deb.sh failed ({proc.returncode}):\n{tail}")
    debs = sorted(out.glob("assay_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


@pytest.fixture(scope="session")
def system() -> Iterator[BootedSystem]:
    """The booted namespace with the package installed, credentials made and
    assay.socket listening (the service itself not yet started)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    if _SETUP_FAILED:
        # pytest retries a failed session fixture for every test; one boot is enough.
        pytest.fail(f"the booted system could not be set up: {_SETUP_FAILED[0]}")
    scratch = Path(tempfile.mkdtemp(prefix="assay-test-", dir="/var/lib"))
    scratch.chmod(0o755)
    sys_ = BootedSystem(scratch=scratch)
    atexit.register(sys_.teardown)
    try:
        try:
            deb = build_deb(scratch)
            sys_.boot()
            sys_.install(deb)
        except BaseException as exc:
            _SETUP_FAILED.append(str(exc).splitlines()[0] if str(exc) else repr(exc))
            raise
        yield sys_
    finally:
        sys_.teardown()
