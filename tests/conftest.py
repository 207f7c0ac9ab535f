"""Shared fixtures. The e2e ones start the real daemon as a process on a loopback port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "artifacts"
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run_cli(
    *args: str, env: dict[str, str] | None = None, check: bool = False, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "assay", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"assay {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@dataclass
class Deployment:
    """An ``assay init`` directory plus, once started, a running daemon process."""

    dir: Path
    port: int
    admin_token: str
    proc: subprocess.Popen[bytes] | None = None
    stderr_path: Path | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def audit_dir(self) -> Path:
        return self.dir / "state" / "audit"

    def edit_config(self, old: str, new: str) -> None:
        text = self.config.read_text()
        assert old in text, old
        self.config.write_text(text.replace(old, new))

    def start(self, *, ready_path: str = "/readyz") -> None:
        """Start the daemon and wait until ``ready_path`` answers 200 (``/healthz`` for a
        deployment whose readiness is expected to fail, e.g. a nearly full store)."""
        self.stderr_path = self.dir / "daemon.stderr"
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "assay", "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        deadline = time.monotonic() + START_TIMEOUT
        for _attempt in range(600):
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.stderr()}")
            try:
                if httpx.get(f"{self.url}{ready_path}", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"daemon did not become ready: {self.stderr()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        code = self.proc.returncode
        self.proc = None
        return code

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path else ""

    def client(self, token: str | None = "admin") -> httpx.Client:
        headers = {}
        if token is not None:
            raw = self.admin_token if token == "admin" else self.tokens.get(token, token)
            headers["Authorization"] = f"Bearer {raw}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def create_token(self, token_id: str, *scopes: str) -> str:
        args = ["token", "create", "--config", str(self.config), "--id", token_id, "--json"]
        for s in scopes:
            args += ["--scope", s]
        out = json.loads(run_cli(*args, check=True).stdout)
        self.tokens[token_id] = out["token"]
        return str(out["token"])

    def cli(
        self, *args: str, token: str = "admin", check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        raw = self.admin_token if token == "admin" else self.tokens[token]
        return run_cli(*args, env={"ASSAY_URL": self.url, "ASSAY_TOKEN": raw}, check=check)

    def audit_records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for f in sorted(self.audit_dir.glob("audit*.jsonl")):
            # Lines end at "\n" only: a record may hold U+2028 or U+0085 unescaped (valid
            # JSON), where str.splitlines would cut it.
            lines = f.read_text(encoding="utf-8").split("\n")
            records += [json.loads(line) for line in lines if line.strip()]
        return sorted(records, key=lambda r: r["seq"])

    def objects(self) -> list[Path]:
        return sorted((self.dir / "state" / "store" / "objects" / "sha256").glob("*"))


def init_deployment(tmp: Path, *, max_bytes: int | None = None) -> Deployment:
    port = free_port()
    out = json.loads(
        run_cli(
            "init", "--dir", str(tmp / "d"), "--bind", f"127.0.0.1:{port}", "--json", check=True
        ).stdout
    )
    dep = Deployment(dir=tmp / "d", port=port, admin_token=out["admin_token"])
    if max_bytes is not None:
        dep.edit_config(
            "  sweep_interval_seconds: 3600\n",
            f"  sweep_interval_seconds: 3600\n  max_artifact_bytes: {max_bytes}\n",
        )
    return dep


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A fresh deployment with a running daemon (max artifact size 1 MiB)."""
    dep = init_deployment(tmp_path, max_bytes=1024 * 1024)
    dep.start()
    try:
        yield dep
    finally:
        dep.stop()


@pytest.fixture
def stopped_deployment(tmp_path: Path) -> Iterator[Deployment]:
    dep = init_deployment(tmp_path, max_bytes=1024 * 1024)
    try:
        yield dep
    finally:
        dep.stop()


def list_all(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    """Every listed artifact, following ``next_cursor`` (bounded: 1,000 pages)."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    for _page in range(1000):
        query = {**params, "limit": "1000"} | ({"cursor": cursor} if cursor else {})
        r = client.get("/v1/artifacts", params=query)
        assert r.status_code == 200, r.text
        found += r.json()["artifacts"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return found
    raise AssertionError("listing did not end after 1,000 pages")


def upload(
    client: httpx.Client,
    data: bytes,
    name: str = "m/one",
    digest: str | None = None,
    meta: tuple[str, ...] = ("source=test", "license=mit"),
) -> httpx.Response:
    params: list[tuple[str, str]] = [("name", name)] + [("meta", m) for m in meta]
    if digest:
        params.append(("digest", digest))
    return client.post(
        "/v1/artifacts",
        params=params,
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
