"""``assay fetch -o``: whole and verified or nothing, whatever the output's filesystem does.

Faults are real: the disk fills (a tiny tmpfs, as root), the file size limit is hit
(``RLIMIT_FSIZE``, the kernel's ``EFBIG``, for anyone); neither may report success nor
leave a temp file behind, and the target keeps what it held. ``-o -`` writes the
verified bytes to stdout. Loopback only; every subprocess is bounded by a timeout.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from tests.conftest import Deployment

pytestmark = pytest.mark.e2e

#: Bytes of the artifact: larger than every limit the faults below set.
SIZE = 256 * 1024


def _trusted(dep: Deployment, tmp: Path) -> tuple[str, bytes]:
    data = st_save({"w": np.arange(SIZE // 4, dtype=np.int32)})
    src = tmp / "big.safetensors"
    src.write_bytes(data)
    out = dep.cli("add", str(src), "--name", "fetch/big", "--meta", "source=t",
                  "--meta", "license=mit", "--json", check=True)  # fmt: skip
    digest = str(json.loads(out.stdout)["artifact"]["digest"])
    dep.cli("promote", digest, check=True)
    return digest, data


def _fetch(
    dep: Deployment, *args: str, fsize: int | None = None
) -> subprocess.CompletedProcess[bytes]:
    def limit() -> None:  # in the child, before exec
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        [sys.executable, "-m", "assay", "fetch", *args],
        capture_output=True,
        timeout=60,
        env={**os.environ, "ASSAY_URL": dep.url, "ASSAY_TOKEN": dep.admin_token},
        stdin=subprocess.DEVNULL,
        preexec_fn=limit,  # only signal and setrlimit: nothing that takes a lock
    )


def _problem(proc: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert b"Traceback" not in proc.stdout + proc.stderr, proc.stderr
    out = json.loads(proc.stdout)
    assert out["exit_code"] == proc.returncode
    err: dict[str, Any] = out["error"]
    return err


def test_fetch_past_the_file_size_limit_is_an_error_and_leaves_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    digest, _ = _trusted(deployment, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "model.safetensors"
    target.write_bytes(b"the previous model\n")
    proc = _fetch(deployment, digest, "-o", str(target), "--json", fsize=64 * 1024)
    assert proc.returncode == 2, proc.stdout
    assert _problem(proc)["code"] == "cli.output_unwritable"
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.safetensors"]
    assert target.read_bytes() == b"the previous model\n"


def test_fetch_onto_a_full_disk_is_storage_full_and_leaves_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8): the full disk is a real tmpfs")
    digest, _ = _trusted(deployment, tmp_path)
    mnt = tmp_path / "full"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                             capture_output=True, text=True, timeout=30)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"mounting is not permitted here: {mounted.stderr.strip()}")
    try:
        proc = _fetch(deployment, digest, "-o", str(mnt / "model.safetensors"), "--json")
        assert proc.returncode == 6, proc.stdout
        assert _problem(proc)["code"] == "storage.full"
        assert list(mnt.iterdir()) == [], "a failed fetch left a file behind"
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


def test_fetch_to_stdout_writes_the_verified_bytes(deployment: Deployment, tmp_path: Path) -> None:
    digest, data = _trusted(deployment, tmp_path)
    proc = _fetch(deployment, digest, "-o", "-")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data
    both = _fetch(deployment, digest, "-o", "-", "--json")
    assert both.returncode == 2
    assert _problem(both)["code"] == "cli.usage"
    with open("/dev/full", "wb") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "assay", "fetch", digest, "-o", "-"], stdout=full,
            stderr=subprocess.PIPE, text=True, timeout=60, stdin=subprocess.DEVNULL,
            env={**os.environ, "ASSAY_URL": deployment.url, "ASSAY_TOKEN": deployment.admin_token},
        )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "[cli.output_unwritable]: cannot write to stdout" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fetch_over_a_regular_file_replaces_it_and_never_a_symlink(
    deployment: Deployment, tmp_path: Path
) -> None:
    digest, data = _trusted(deployment, tmp_path)
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    assert _fetch(deployment, digest, "-o", str(target)).returncode == 0
    assert target.read_bytes() == data
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    proc = _fetch(deployment, digest, "-o", str(link), "--json")
    assert proc.returncode == 2
    assert _problem(proc)["code"] == "cli.output_unwritable"
    assert link.is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
