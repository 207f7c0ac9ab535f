"""Every file a command reads, named as a FIFO nobody writes to: refused, never waited on.

A sweep of each reading option of the offline commands over a real deployment (the
walk in ``tests/unit/test_cli_walk.py`` passes a FIFO too, but its plausible values
often stop a command before the option is read; here each command gets far enough).
``--checkpoint`` and ``trust status/export --root`` blocked in ``read_bytes()``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import init_deployment, run_cli

pytestmark = pytest.mark.e2e


def test_no_command_waits_on_a_fifo_it_was_told_to_read(tmp_path: Path) -> None:
    dep = init_deployment(tmp_path)
    fifo = str(tmp_path / "f.fifo")
    os.mkfifo(fifo)
    log, cfg = str(dep.audit_dir), str(dep.config)
    pub = str(dep.dir / "secrets" / "audit-signing.pub")
    runs = [
        ["audit", "verify", log, "--key-file", fifo],
        ["audit", "verify", log, "--public-key", pub, "--checkpoint", fifo],
        ["audit", "verify", log, "--public-key", fifo],
        ["trust", "status", "--config", cfg, "--root", fifo],
        ["trust", "export", str(tmp_path / "exported"), "--config", cfg, "--root", fifo],
        ["doctor", "--config", cfg, "--relay-config", fifo],
        ["doctor", "--config", cfg, "--unit", fifo],
        ["token", "list", "--config", fifo],
        ["relay", "check-config", fifo],
        ["receipt", "verify", "x", "--public-key", fifo],
        ["audit", "recover", log, "--key-file", fifo],
        ["list", "--url", "http://127.0.0.1:1", "--token-file", fifo],
    ]
    for argv in runs:
        try:
            proc = run_cli(*argv, "--json", timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"assay {' '.join(argv)} waited on the FIFO")
        assert "Traceback" not in proc.stdout + proc.stderr, argv
        out = json.loads(proc.stdout)
        assert proc.returncode == 2, (argv, out)
        assert out["exit_code"] == 2, (argv, out)
