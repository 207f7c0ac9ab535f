"""A real PostgreSQL server for the tests: Debian's binaries, a temp cluster, TLS, roles.

Why real: read-only sessions, statement timeouts, COPY and TLS are the server's to
enforce; a fake would only repeat our assumptions. The server runs as a non-root OS user
(``postgres`` from the Debian package, or one created with ``useradd --system``), in a
fresh data directory, listening on 127.0.0.1 only on a free port with ``ssl=on`` and a
self-signed certificate made here with ``cryptography``; ``pg_hba.conf`` accepts only
TLS with SCRAM passwords over TCP (``hostnossl`` is rejected). Two roles: an owner that
makes the fixtures, and a relay role that may only SELECT. Every wait is bounded; the
server is stopped (fast shutdown, then kill) and its directory removed afterwards.

If the binaries are missing the tests FAIL with how to install them (``.ci/systemd-deps.sh``
installs ``postgresql``): a Postgres source that was never tested is not a pass.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

START_SECONDS = 60.0
STOP_SECONDS = 30.0
DB = "registry"


def binaries() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        pytest.fail(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: install "
            "Debian's `postgresql` package (.ci/systemd-deps.sh does, as root)",
            pytrace=False,
        )
    return Path(found[-1]).parent


def _os_user() -> pwd.struct_passwd | None:
    """The non-root user the server runs as (None: we are not root, run as ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             "assay-pgtest"],
            check=True, timeout=30,
        )  # fmt: skip
        return pwd.getpwnam("assay-pgtest")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed_tls(dir_: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    crt, pem = dir_ / "server.crt", dir_ / "server.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pem.chmod(0o600)
    return crt, pem


@dataclass
class PgServer:
    """A running cluster and the DSNs of its roles (all TLS, all loopback)."""

    dir: Path
    port: int
    process: subprocess.Popen[bytes]
    user: pwd.struct_passwd | None
    bin: Path
    passwords: dict[str, str]

    def dsn(self, role: str, *, sslmode: str = "require", **extra: str) -> str:
        parts = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "dbname": DB if role != "postgres" else "postgres",
            "user": role,
            "password": self.passwords[role],
            "sslmode": sslmode,
            **extra,
        }
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def connect(self, role: str = "fixture_owner") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(role), autocommit=True, connect_timeout=10)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Fast shutdown (SIGINT), bounded; then SIGKILL."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=STOP_SECONDS)

    def start(self) -> None:
        """(Re)start on the same port and directory; return once it accepts TLS logins."""
        assert self.process.poll() is not None
        self.process = _spawn(self.bin, self.dir, self.port, self.user)
        _wait_ready(self)


def _as_user(user: pwd.struct_passwd | None) -> dict[str, object]:
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _spawn(
    bin_: Path, dir_: Path, port: int, user: pwd.struct_passwd | None
) -> subprocess.Popen[bytes]:
    log = open(dir_ / "server.log", "ab")  # noqa: SIM115 - the server owns it while it runs
    try:
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            [
                str(bin_ / "postgres"), "-D", str(dir_ / "data"),
                "-p", str(port), "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={dir_}",
                "-c", "ssl=on",
                "-c", f"ssl_cert_file={dir_ / 'server.crt'}",
                "-c", f"ssl_key_file={dir_ / 'server.key'}",
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "shared_buffers=16MB", "-c", "max_connections=40",
                "-c", "log_min_messages=warning",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            **_as_user(user),
        )  # fmt: skip
    finally:
        log.close()


def _wait_ready(server: PgServer) -> None:
    deadline = time.monotonic() + START_SECONDS
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with psycopg.connect(server.dsn("postgres"), connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.2)
    log = (server.dir / "server.log").read_text(errors="replace")[-2000:]
    server.stop()
    pytest.fail(f"PostgreSQL did not start: {last}\n{log}", pytrace=False)


def _initdb(bin_: Path, dir_: Path, user: pwd.struct_passwd | None, password: str) -> None:
    pwfile = dir_ / "pw"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    if user is not None:
        os.chown(pwfile, user.pw_uid, user.pw_gid)
    subprocess.run(
        [str(bin_ / "initdb"), "-D", str(dir_ / "data"), "-U", "postgres",
         f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
         "--no-instructions"],
        check=True, timeout=120, capture_output=True, **_as_user(user),
    )  # type: ignore[call-overload]  # fmt: skip
    pwfile.unlink()
    (dir_ / "data" / "pg_hba.conf").write_text(
        "# TLS with SCRAM over loopback TCP only; everything else is rejected.\n"
        "hostssl all all 127.0.0.1/32 scram-sha-256\n"
        "hostnossl all all 127.0.0.1/32 reject\n"
        "local all all reject\n"
    )


def _roles(server: PgServer) -> None:
    owner, relay = server.passwords["fixture_owner"], server.passwords["relay_ro"]
    with server.connect("postgres") as conn:
        conn.execute(f"CREATE ROLE fixture_owner LOGIN PASSWORD '{owner}'")
        conn.execute(f"CREATE ROLE relay_ro LOGIN PASSWORD '{relay}'")
        conn.execute(f"CREATE DATABASE {DB} OWNER fixture_owner")
    with psycopg.connect(server.dsn("fixture_owner"), autocommit=True) as conn:
        conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        conn.execute("GRANT USAGE ON SCHEMA public TO relay_ro")
        conn.execute("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO relay_ro")


@contextlib.contextmanager
def pg_server() -> Iterator[PgServer]:
    bin_ = binaries()
    user = _os_user()
    dir_ = Path(tempfile.mkdtemp(prefix="assay-pgtest-"))
    process: subprocess.Popen[bytes] | None = None
    server: PgServer | None = None
    try:
        if user is not None:
            os.chown(dir_, user.pw_uid, user.pw_gid)
        passwords = {r: secrets.token_hex(16) for r in ("postgres", "fixture_owner", "relay_ro")}
        _initdb(bin_, dir_, user, passwords["postgres"])
        crt, key = self_signed_tls(dir_)
        if user is not None:
            for path in (crt, key, dir_ / "data" / "pg_hba.conf"):
                os.chown(path, user.pw_uid, user.pw_gid)
        port = _free_port()
        process = _spawn(bin_, dir_, port, user)
        server = PgServer(dir_, port, process, user, bin_, passwords)
        _wait_ready(server)
        _roles(server)
        yield server
    finally:
        if server is not None:
            server.stop()
        elif process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=STOP_SECONDS)
        shutil.rmtree(dir_, ignore_errors=True)
