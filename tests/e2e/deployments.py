"""Deployments for the transport tests: server keys set, started under limits, artifacts.

``make`` is a fixture (import it into a test module to use it): a deployment with the
given ``server:`` keys, started (optionally under ``RLIMIT_NOFILE``) and stopped after.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import SAMPLES, START_TIMEOUT, Deployment, init_deployment, upload
from tests.formats_factory import valid_st

ST = (SAMPLES / "sample.safetensors").read_bytes()
BIG = valid_st({"w": ("U8", [12 * 1024 * 1024])})  # larger than both sockets' buffers
Make = Callable[..., Deployment]


def set_server(dep: Deployment, **keys: object) -> None:
    lines = "".join(f"  {key}: {value}\n" for key, value in keys.items())
    dep.edit_config("server:\n", "server:\n" + lines)


def trusted(dep: Deployment, data: bytes = ST, name: str = "m/one") -> str:
    with dep.client() as c:
        r = upload(c, data, name=name)
        assert r.status_code == 201, r.text
        digest: str = r.json()["artifact"]["digest"]
        assert c.post(f"/v1/artifacts/{digest}/promote").status_code == 200
    return digest


def get(dep: Deployment, path: str, *, extra: str = "", version: str = "1.1") -> bytes:
    return (
        f"GET {path} HTTP/{version}\r\nHost: 127.0.0.1:{dep.port}\r\n"
        f"Authorization: Bearer {dep.admin_token}\r\n{extra}\r\n"
    ).encode()


def pid(dep: Deployment) -> int:
    assert dep.proc is not None
    return dep.proc.pid


def wait_for(check: Callable[[], bool], *, rounds: int = 300, pause: float = 0.1) -> bool:
    for _ in range(rounds):
        if check():
            return True
        time.sleep(pause)
    return bool(check())


@pytest.fixture
def make(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Make]:
    """A deployment with the given ``server:`` keys, started; stopped afterwards."""
    started: list[Deployment] = []

    def _make(
        *, max_bytes: int = 1024 * 1024, nofile: int | None = None, **keys: object
    ) -> Deployment:
        dep = init_deployment(tmp_path_factory.mktemp("limits"), max_bytes=max_bytes)
        set_server(dep, **keys)
        started.append(dep)
        if nofile is None:
            dep.start()
        else:
            start_with_fd_limit(dep, nofile)
        return dep

    yield _make
    for dep in started:
        dep.stop()


def start_with_fd_limit(dep: Deployment, nofile: int) -> None:
    """``Deployment.start`` under ``RLIMIT_NOFILE=nofile``: descriptors run out for real."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    dep.stderr_path = dep.dir / "daemon.stderr"
    with dep.stderr_path.open("ab") as err:
        dep.proc = subprocess.Popen(
            [sys.executable, "-m", "assay", "serve", "--config", str(dep.config)],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err, preexec_fn=limit,
        )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT
    for _ in range(600):
        assert dep.proc.poll() is None, dep.stderr()
        try:
            if httpx.get(f"{dep.url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise AssertionError(f"daemon did not become ready: {dep.stderr()}")
