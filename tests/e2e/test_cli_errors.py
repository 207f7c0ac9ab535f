"""The CLI's answers to ordinary mistakes, against the real daemon and the real processes.

Each is one line (or, with ``--json``, one problem on stdout) with its stable code and
the exit code README documents: token ids that exist or do not, values that do not
parse, the daemon's own problems kept whole, digest prefixes, bytes under another name,
and a port that is taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, SAMPLES, Deployment, free_port, init_deployment, run_cli
from tests.formats_factory import valid_st

pytestmark = pytest.mark.e2e

ST = SAMPLES / "sample.safetensors"
META = ["--meta", "source=test", "--meta", "license=mit"]


def cli_json(dep: Deployment, *args: str, code: int) -> Any:
    proc = dep.cli(*args, "--json")
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def one_error_line(proc: subprocess.CompletedProcess[str], code: str) -> str:
    """The one error line (a policy refusal or an ambiguity adds ``  - item`` lines)."""
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("  - ")]
    assert len(lines) == 1 and lines[0].startswith(f"assay: error [{code}]: "), proc.stderr
    return lines[0]


def test_token_revoke_of_an_unknown_id_is_not_found_and_create_of_an_existing_id_conflicts(
    tmp_path: Path,
) -> None:
    dep = init_deployment(tmp_path)
    config = str(dep.config)
    proc = run_cli("token", "revoke", "--id", "nobody", "--config", config)
    assert proc.returncode == 4
    one_error_line(proc, "token.not_found")
    proc = run_cli("token", "create", "--id", "admin", "--scope", "artifacts:read",
                   "--config", config, "--json")  # fmt: skip
    assert proc.returncode == 5
    problem = json.loads(proc.stdout)["error"]
    assert problem["code"] == "token.exists" and problem["status"] == 409


@pytest.mark.parametrize(
    "args",
    [
        ("list", "--state", "bogus"),
        ("list", "--url", "notaurl"),
        ("status", "--url", "ftp://127.0.0.1:1/"),
        ("show", "--url", "http://127.0.0.1:99999", "sha256:" + "0" * 64),
        ("add", str(ST)),  # --name is required
        ("list", "--no-such-flag"),
    ],
)
def test_values_that_do_not_parse_are_usage_errors(args: tuple[str, ...]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    one_error_line(proc, "cli.usage")
    proc = run_cli(*args, "--json")
    assert proc.returncode == 2 and not proc.stderr
    out = json.loads(proc.stdout)
    assert out["error"]["code"] == "cli.usage" and out["exit_code"] == 2


def test_an_unreachable_daemon_is_a_problem_too(tmp_path: Path) -> None:
    env = {"ASSAY_URL": f"http://127.0.0.1:{free_port()}", "ASSAY_TOKEN": "x"}
    proc = run_cli("list", env=env)
    assert proc.returncode == 7
    one_error_line(proc, "cli.unreachable")
    proc = run_cli("status", "--json", env=env)
    assert proc.returncode == 7 and not proc.stderr
    assert json.loads(proc.stdout)["error"]["code"] == "cli.unreachable"


def test_the_daemons_problem_is_kept_whole_with_its_status_and_reason(
    deployment: Deployment, tmp_path: Path
) -> None:
    evil = tmp_path / "model.safetensors"
    evil.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    problem = cli_json(deployment, "add", str(evil), "--name", "cli/evil", code=1)["error"]
    assert problem["code"] == "artifact.format_refused"
    assert problem["status"] == 422 and problem["reason"] == "pickle"
    direct = httpx.post(f"{deployment.url}/v1/artifacts", params={"name": "cli/evil"},
                        content=evil.read_bytes(),
                        headers={"Authorization": f"Bearer {deployment.admin_token}"})  # fmt: skip
    per_request = {"instance", "request_id"}
    want = {k: v for k, v in direct.json().items() if k not in per_request}
    assert {k: v for k, v in problem.items() if k not in per_request} == want
    missing = cli_json(deployment, "show", "sha256:" + "0" * 64, code=4)["error"]
    assert missing["code"] == "artifact.not_found" and missing["status"] == 404


def _colliding_pair() -> tuple[bytes, bytes]:
    """Two valid safetensors files whose digests share their first 4 hex digits."""
    first = valid_st({"w": ("F32", [2])}, {"n": "0"})
    want = hashlib.sha256(first).hexdigest()[:4]
    for i in range(1, 2_000_000):  # ~65,536 expected; bounded
        other = valid_st({"w": ("F32", [2])}, {"n": str(i)})
        if hashlib.sha256(other).hexdigest()[:4] == want:
            return first, other
    raise AssertionError("no collision found")


def test_digest_prefixes_resolve_like_git(deployment: Deployment, tmp_path: Path) -> None:
    first, second = _colliding_pair()
    digests = []
    for n, data in enumerate((first, second)):
        path = tmp_path / f"m{n}.safetensors"
        path.write_bytes(data)
        digests.append(cli_json(deployment, "add", str(path), "--name", f"p/m{n}", *META,
                                code=0)["artifact"]["digest"])  # fmt: skip
    a, b = digests
    assert a[:11] == b[:11] and a != b  # "sha256:" + the 4 shared digits

    # What `list` shows is accepted as it is.
    listing = deployment.cli("list", check=True).stdout.splitlines()
    shown = [line.split()[0] for line in listing[1:]]
    assert shown == [a[:19], b[:19]]
    assert cli_json(deployment, "show", shown[0], code=0)["artifact"]["digest"] == a

    # A longer unique prefix, without the scheme and in upper case, names one artifact;
    # so it does for a mutation (and the answer names the full digest).
    unique = next(k for k in range(5, 64) if a[7 : 7 + k] != b[7 : 7 + k])
    promoted = cli_json(deployment, "promote", a[7 : 7 + unique].upper(), code=0)
    assert promoted["artifact"]["digest"] == a and promoted["artifact"]["state"] == "trusted"

    # The shared prefix is ambiguous: exit 2, both listed, nothing changed.
    proc = deployment.cli("revoke", a[:11], "--reason", "which one?")
    assert proc.returncode == 2
    line = one_error_line(proc, "cli.digest_ambiguous")
    assert "matches 2 artifacts" in line and a in proc.stderr and b in proc.stderr
    problem = cli_json(deployment, "revoke", a[7:11], "--reason", "x", code=2)["error"]
    assert problem["code"] == "cli.digest_ambiguous" and len(problem["reasons"]) == 2
    assert cli_json(deployment, "show", a, code=0)["artifact"]["state"] == "trusted"

    # Unknown and too short.
    absent = next(p for p in ("0000", "ffff", "1234") if not a[7:].startswith(p)
                  and not b[7:].startswith(p))  # fmt: skip
    assert cli_json(deployment, "show", absent, code=4)["error"]["code"] == "artifact.not_found"
    assert cli_json(deployment, "show", a[7:10], code=2)["error"]["code"] == "request.bad_digest"
    # fetch takes a prefix too, and verifies the full digest it resolved to.
    out = tmp_path / "fetched.safetensors"
    assert cli_json(deployment, "fetch", a[:19], "-o", str(out), code=0)["digest"] == a
    assert out.read_bytes() == first


def test_add_under_another_name_says_so_and_keeps_the_first(deployment: Deployment) -> None:
    added = cli_json(deployment, "add", str(ST), "--name", "names/first", code=0)
    digest = added["artifact"]["digest"]
    again = cli_json(deployment, "add", str(ST), "--name", "names/first", code=0)
    assert again["created"] is False and again["artifact"]["digest"] == digest

    proc = deployment.cli("add", str(ST), "--name", "names/second")
    assert proc.returncode == 5
    line = one_error_line(proc, "artifact.name_conflict")
    assert "'names/first'" in line and "'names/second'" in line and digest in line
    problem = cli_json(deployment, "add", str(ST), "--name", "names/second", code=5)["error"]
    assert problem["artifact"]["name"] == "names/first"
    assert problem["requested_name"] == "names/second"
    assert cli_json(deployment, "show", digest, code=0)["artifact"]["name"] == "names/first"
    names = [a["name"] for a in cli_json(deployment, "list", code=0)["artifacts"]]
    assert names == ["names/first"]


def test_fetch_into_a_missing_directory_or_onto_a_directory(
    deployment: Deployment, tmp_path: Path
) -> None:
    digest = cli_json(deployment, "add", str(ST), "--name", "f/x", *META, code=0)
    digest = digest["artifact"]["digest"]
    cli_json(deployment, "promote", digest, code=0)
    for target in (tmp_path / "no-such-dir" / "x.safetensors", tmp_path):
        proc = deployment.cli("fetch", digest, "-o", str(target))
        assert proc.returncode == 2
        one_error_line(proc, "cli.output_unwritable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no part file left


def _listening_socket(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


def test_serve_on_a_taken_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    dep = init_deployment(tmp_path)
    with _listening_socket(dep.port):
        proc = run_cli("serve", "--config", str(dep.config), timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("assay: error")]
    assert errors == [
        f"assay: error [server.bind_failed]: cannot listen on 127.0.0.1:{dep.port}: Address "
        "already in use (choose another address with --bind or server.bind)"
    ]
    assert "Traceback" not in proc.stderr and "ExceptionGroup" not in proc.stderr


def _wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        assert proc.poll() is None, f"exited {proc.returncode}"
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{url} never answered")


def test_serve_bind_overrides_the_config_and_keeps_its_rules(tmp_path: Path) -> None:
    dep = init_deployment(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "assay", "serve", "--config", str(dep.config),
         "--bind", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{dep.url}/healthz", timeout=1.0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # A non-loopback --bind needs server.allow_non_loopback, as in the config.
    refused = run_cli("serve", "--config", str(dep.config), "--bind", "0.0.0.0:1")
    assert refused.returncode == 2 and "not loopback" in one_error_line(refused, "config.invalid")


def test_scripts_run_passes_its_arguments_to_serve(tmp_path: Path) -> None:
    """``./scripts/run ARGS`` ends in ``assay serve --init .assay ARGS`` (with a stand-in
    venv, so nothing is installed)."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "run").write_bytes((ROOT / "scripts" / "run").read_bytes())
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("#!/bin/sh\nexit 0\n")
    (venv / "assay").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    for f in (venv / "python", venv / "assay", tmp_path / "scripts" / "run"):
        f.chmod(0o755)
    proc = subprocess.run(
        ["sh", str(tmp_path / "scripts" / "run"), "--bind", "127.0.0.1:9000"],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "PYTHON": "false"},
    )  # fmt: skip
    assert proc.stdout.split() == ["serve", "--init", ".assay", "--bind", "127.0.0.1:9000"]
