"""The ``assay`` CLI against the real daemon: every command, its ``--json`` and exit code.

Exit codes (README): 0 ok, 1 check failed or input refused, 2 usage/config, 3 auth,
4 not found, 5 state conflict, 6 server/storage, 7 unreachable.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SAMPLES, Deployment, free_port, run_cli

pytestmark = pytest.mark.e2e

ST = SAMPLES / "sample.safetensors"
GG = SAMPLES / "sample.gguf"


def cli_json(dep: Deployment, *args: str, token: str = "admin", code: int = 0) -> Any:
    proc = dep.cli(*args, "--json", token=token)
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


def test_artifact_lifecycle_through_the_cli(deployment: Deployment, tmp_path: Path) -> None:
    meta = ["--meta", "source=test", "--meta", "license=mit"]
    added = cli_json(deployment, "add", str(ST), "--name", "cli/model", *meta)
    digest = added["artifact"]["digest"]
    assert added["created"] is True and added["artifact"]["state"] == "quarantined"
    assert added["receipt"]

    listed = cli_json(deployment, "list", "--state", "quarantined")
    assert [a["digest"] for a in listed["artifacts"]] == [digest]
    shown = cli_json(deployment, "show", digest)
    assert shown["artifact"]["name"] == "cli/model" and shown["history"]

    # Not trusted yet: fetch is a state conflict (5), and nothing is written.
    out = tmp_path / "model.safetensors"
    err = cli_json(deployment, "fetch", digest, "-o", str(out), code=5)
    assert err["error"]["code"] == "artifact.not_trusted" and not out.exists()

    promoted = cli_json(deployment, "promote", digest)
    assert promoted["artifact"]["state"] == "trusted" and promoted["receipt"]
    fetched = cli_json(deployment, "fetch", digest, "-o", str(out))
    assert fetched["digest"] == digest and out.read_bytes() == ST.read_bytes()

    verified = cli_json(deployment, "verify", digest)
    assert verified["ok"] is True and verified["receipt"]
    swept = cli_json(deployment, "sweep")
    assert swept["checked"] == 1 and swept["failed"] == []

    status = cli_json(deployment, "status")
    assert status["status"]["counts"]["trusted"] == 1 and status["status"]["version"]
    assert status["status"]["uptime_seconds"] >= 0
    assert status["healthz"]["status"] == "ok" and status["readyz"]["ready"] is True

    revoked = cli_json(deployment, "revoke", digest, "--reason", "key leaked")
    assert revoked["artifact"]["state"] == "revoked"
    # Illegal transition: revoked is terminal -> 5.
    err = cli_json(deployment, "promote", digest, code=5)
    assert err["error"]["code"] == "artifact.state_conflict"
    deleted = cli_json(deployment, "delete", digest, "--reason", "cleanup")
    assert deleted["artifact"]["state"] == "deleted"
    assert cli_json(deployment, "show", digest)["artifact"]["state"] == "deleted"


def test_cli_exit_codes_for_refusals(deployment: Deployment, tmp_path: Path) -> None:
    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    err = cli_json(deployment, "add", str(evil), "--name", "cli/evil", code=1)
    assert err["error"]["code"] == "artifact.format_refused"

    err = cli_json(deployment, "show", "sha256:" + "0" * 64, code=4)
    assert err["error"]["code"] == "artifact.not_found"

    deployment.create_token("reader", "artifacts:read")
    for _ in range(100):  # the daemon picks up the token file within about a second
        if deployment.cli("list", token="reader").returncode == 0:
            break
        time.sleep(0.1)
    err = cli_json(deployment, "add", str(ST), "--name", "cli/x", token="reader", code=3)
    assert err["error"]["code"] == "auth.scope_denied"

    proc = run_cli("list", "--json", env={"ASSAY_URL": f"http://127.0.0.1:{free_port()}",
                                          "ASSAY_TOKEN": deployment.admin_token})  # fmt: skip
    assert proc.returncode == 7, proc.stdout + proc.stderr


def test_inspect_judges_by_content_offline(tmp_path: Path) -> None:
    ok = json.loads(run_cli("inspect", str(GG), "--json").stdout)
    assert ok["accepted"] is True and ok["format"] == "gguf"
    renamed = tmp_path / "weights.gguf"
    renamed.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    proc = run_cli("inspect", str(renamed), "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["reason"] == "pickle"
    # A file that cannot be read was not judged: a path error (2), not a refusal (1).
    proc = run_cli("inspect", str(tmp_path / "missing.safetensors"), "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert json.loads(proc.stdout)["error"]["code"] == "cli.input_unreadable"


def test_serve_with_a_weak_secret_exits_as_a_config_error(tmp_path: Path) -> None:
    from tests.conftest import init_deployment

    dep = init_deployment(tmp_path)
    (dep.dir / "secrets" / "audit-hmac.key").write_bytes(b"short")
    proc = run_cli("serve", "--config", str(dep.config), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "config.secret_invalid" in proc.stderr
