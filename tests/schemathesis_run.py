"""Run schemathesis (its CLI, every check) against a daemon on loopback; bounded.

Why the CLI in a subprocess: it runs every phase (examples, coverage, fuzzing,
stateful) and every check the way an outside reviewer would, against the real daemon
process and its own ``/openapi.json``. Deterministic (``generation.deterministic``, no
example database), a few examples per operation, a time cap, one worker: the same run
every time, each run within its time cap (``--max-time``: on a loaded machine the
last cases of a run may be cut, never the checks on the cases run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HOOKS = "tests.e2e.schemathesis_hooks"
MAX_EXAMPLES = 3
#: The default time cap of one run. The runs of the suite share about two and a half
#: minutes (each passes its own cap); on an idle machine they finish within theirs.
MAX_SECONDS = 40

#: The checks run: every check this schemathesis has (``--checks all``).
CHECKS = "all"


def run(
    url: str,
    doc: dict[str, Any],
    *,
    token: str | None,
    config: str,
    report: Path,
    extra: tuple[str, ...] = (),
    max_seconds: int = MAX_SECONDS,
    timeout: float = 240,
) -> subprocess.CompletedProcess[str]:
    """``schemathesis run`` of ``doc`` (the daemon's own ``/openapi.json``, fetched with
    a credential so an unauthenticated run tests the same document) against ``url``;
    ``config`` is TOML (per-operation settings), written next to ``report``."""
    cfg = report.parent / "schemathesis.toml"
    cfg.write_text(config)
    spec = report.parent / "openapi.json"
    spec.write_text(json.dumps(doc))
    args = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(cfg), "run",
        str(spec), "--url", url, "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES),
        "--generation-deterministic", "--workers", "1",
        "--request-timeout", "30", "--max-time", str(max_seconds), "--no-color",
        "--report", "junit", "--report-junit-path", str(report),
    ]  # fmt: skip
    args += extra
    if token is not None:
        args += ["-H", f"Authorization: Bearer {token}"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "NO_PROXY": "127.0.0.1",
           "PYTHONPATH": f"{ROOT / 'daemon'}{os.pathsep}{ROOT}"}  # fmt: skip
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, env=env, cwd=report.parent,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
