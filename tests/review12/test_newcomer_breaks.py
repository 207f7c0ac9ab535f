"""Review 12: ordinary operator mistakes that still escape README's contract.

Each test asserts the documented, safe behaviour (README "Errors" and the exit-code
table), so it fails while the break exists. Loopback only; every subprocess is bounded
by a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SAMPLES, free_port, init_deployment, run_cli

pytestmark = pytest.mark.e2e

DEAD_URL = "http://127.0.0.1:1"


def problem(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    out = json.loads(proc.stdout)
    assert out["exit_code"] == proc.returncode
    err: dict[str, Any] = out["error"]
    return err


def run_bytes_cli(*args: bytes, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the CLI with raw (possibly non-UTF-8) argv bytes."""
    proc = subprocess.run(
        [sys.executable.encode(), b"-m", b"assay", *args],
        capture_output=True,
        timeout=timeout,
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", "replace"),
        proc.stderr.decode("utf-8", "replace"),
    )


def test_token_file_naming_a_fifo_is_refused_not_waited_on_forever(tmp_path: Path) -> None:
    # README: a directory where a file goes / a file that cannot be read is
    # cli.input_unreadable (2). A FIFO as --token-file today blocks in open() forever.
    fifo = tmp_path / "token.fifo"
    os.mkfifo(fifo)
    try:
        proc = run_cli("list", "--url", DEAD_URL, "--token-file", str(fifo), "--json", timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("assay list --token-file FIFO hung instead of refusing the FIFO")
    assert proc.returncode == 2
    assert problem(proc)["code"] == "cli.input_unreadable"


@pytest.mark.parametrize(
    "argv",
    [
        [b"add", str(SAMPLES / "sample.gguf").encode(), b"--name", b"\xff\xfe"],
        [b"add", str(SAMPLES / "sample.gguf").encode(), b"--name", b"a/b", b"--meta", b"k=\xff"],
        [b"list", b"--name", b"\xff"],
    ],
    ids=["add-name", "add-meta", "list-name"],
)
def test_non_utf8_argument_is_a_usage_error_not_an_internal_error(argv: list[bytes]) -> None:
    # A byte string that is not UTF-8 is a value that does not parse: cli.usage (2),
    # not internal.error (6) "unexpected UnicodeEncodeError".
    proc = run_bytes_cli(*argv, b"--url", DEAD_URL.encode(), b"--json")
    err = problem(proc)
    assert err["code"] != "internal.error", err
    assert proc.returncode == 2, err


@pytest.mark.parametrize("token_id", ["", "a b/../x"])
def test_token_create_with_a_malformed_id_is_a_usage_error_exit_2(
    tmp_path: Path, token_id: str
) -> None:
    # README exit 2: "a bad option or value". An --id outside [A-Za-z0-9._-]{1,64}
    # exits 1 today (request.invalid), the code for a failed check or refused content.
    dep = init_deployment(tmp_path)
    proc = run_cli("token", "create", "--id", token_id, "--scope", "artifacts:read",
                   "--config", str(dep.config), "--json")  # fmt: skip
    problem(proc)
    assert proc.returncode == 2


def test_token_create_with_a_malformed_scope_is_a_usage_error_exit_2(tmp_path: Path) -> None:
    dep = init_deployment(tmp_path)
    proc = run_cli("token", "create", "--id", "ok", "--scope", "admin",
                   "--config", str(dep.config), "--json")  # fmt: skip
    problem(proc)
    assert proc.returncode == 2


def test_relay_generate_api_key_with_a_malformed_id_is_a_usage_error_exit_2() -> None:
    proc = run_cli("relay", "generate-api-key", "--id", "", "--json")
    problem(proc)
    assert proc.returncode == 2


def _closed_fd() -> int:
    """A descriptor number that is not open in the child (stdin/out/err only pass)."""
    return 250


def test_serve_bind_to_a_closed_fd_is_a_bind_failure_not_a_storage_failure(
    tmp_path: Path,
) -> None:
    # README: "an address serve cannot listen on" is server.bind_failed (2). fd://N
    # naming no open socket today says storage.failed (6) "Bad file descriptor".
    dep = init_deployment(tmp_path)
    proc = run_cli("serve", "--config", str(dep.config), "--bind", f"fd://{_closed_fd()}",
                   timeout=60)  # fmt: skip
    assert "Traceback" not in proc.stderr
    assert "[server.bind_failed]" in proc.stderr, proc.stderr[-500:]
    assert proc.returncode == 2


def test_relay_serve_bind_to_a_closed_fd_is_a_bind_failure_not_a_storage_failure(
    tmp_path: Path,
) -> None:
    demo = tmp_path / "relay-demo"
    port = free_port()
    run_cli("relay", "init", str(demo), "--people", "10", "--bind", f"127.0.0.1:{port}",
            check=True)  # fmt: skip
    proc = run_cli("relay", "serve", "--config", str(demo / "relay.yaml"),
                   "--bind", f"fd://{_closed_fd()}", timeout=60)  # fmt: skip
    assert "Traceback" not in proc.stderr
    assert "[server.bind_failed]" in proc.stderr, proc.stderr[-500:]
    assert proc.returncode == 2


def test_relay_init_refused_for_a_bad_bind_leaves_no_half_written_directory(
    tmp_path: Path,
) -> None:
    # relay init checks "as startup would" only after writing data, env and config; a
    # refusal leaves them behind, and the retry with a good --bind is then refused as
    # "not empty". A refused init must leave DIR as it found it (absent or empty).
    demo = tmp_path / "relay-demo"
    proc = run_cli("relay", "init", str(demo), "--people", "10", "--bind", "192.0.2.1:80",
                   "--json")  # fmt: skip
    assert proc.returncode == 2
    problem(proc)
    retry = run_cli("relay", "init", str(demo), "--people", "10",
                    "--bind", f"127.0.0.1:{free_port()}", "--json")  # fmt: skip
    assert retry.returncode == 0, retry.stdout + retry.stderr


def test_doctor_with_a_named_unit_file_that_is_missing_is_input_unreadable(
    tmp_path: Path,
) -> None:
    # README: a file the command was told to read that is missing is
    # cli.input_unreadable (2). `doctor --unit typo.service` today reports the host
    # clean (exit 0, "no unit file found", not applicable): a typo hides the sandbox score.
    dep = init_deployment(tmp_path)
    for unit in (tmp_path / "typo.service", tmp_path):
        proc = run_cli("doctor", "--config", str(dep.config), "--unit", str(unit), "--json")
        assert "Traceback" not in proc.stdout + proc.stderr
        assert proc.returncode == 2, (unit, proc.stdout[:400])
        assert json.loads(proc.stdout)["error"]["code"] == "cli.input_unreadable"


def test_every_option_of_every_command_has_a_help_sentence() -> None:
    # Issue 12 point 5: "Every option needs a sentence". `doctor --json` has none.
    from assay.cli.main import build_parser

    missing: list[str] = []

    def walk(p: argparse.ArgumentParser, path: list[str]) -> None:
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, [*path, name])
            elif not isinstance(a, argparse._HelpAction) and not a.help:
                missing.append(" ".join([*path, *(a.option_strings or [a.dest])]))

    walk(build_parser(), ["assay"])
    assert missing == []


def test_client_gone_mid_upload_is_not_logged_as_a_daemon_bug(tmp_path: Path) -> None:
    # A user's Ctrl-C mid `assay add` closes the connection. The daemon logs that as
    # ERROR "direct upload failed" with three chained tracebacks (BrokenResourceError),
    # the path reserved for bugs; the operator's journal should see an ordinary abort.
    dep = init_deployment(tmp_path, max_bytes=64 * 1024 * 1024)
    dep.start()
    try:
        n = 32 * 1024 * 1024
        header = json.dumps({"t": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}})
        header += " " * (-len(header) % 8)
        lead = len(header).to_bytes(8, "little") + header.encode()
        digest = "0" * 64  # checked only at the end, which this upload never reaches
        with socket.create_connection(("127.0.0.1", dep.port), timeout=10) as s:
            head = (
                f"POST /v1/artifacts?name=cut%2Foff&meta=source%3Dx&meta=license%3Dmit"
                f"&digest=sha256%3A{digest} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {dep.admin_token}\r\n"
                f"Content-Type: application/octet-stream\r\n"
                f"Content-Length: {len(lead) + n}\r\n\r\n"
            ).encode()
            s.sendall(head + lead)
            for _ in range(4):
                s.sendall(os.urandom(256 * 1024))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        with dep.client() as c:  # the daemon is still answering, and has seen the abort
            assert c.get("/readyz").status_code == 200
    finally:
        dep.stop()
    log = dep.stderr()
    assert "Traceback" not in log, log[-1500:]
    assert "direct upload failed" not in log
    # ...and the abort still left its record: every request does.
    lines = (dep.audit_dir / "audit.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert any(r["route"] == "POST /v1/artifacts" and r["decision"] == "deny" for r in records)


def _trusted(dep: Any) -> str:
    st = SAMPLES / "sample.safetensors"
    dep.cli("add", str(st), "--name", "r12/tiny", "--meta", "source=t", "--meta",
            "license=mit", check=True)  # fmt: skip
    listed = json.loads(dep.cli("list", "--name", "r12/tiny", "--json", check=True).stdout)
    digest = str(listed["artifacts"][0]["digest"])
    dep.cli("promote", digest, check=True)
    return digest


def test_fetch_onto_a_device_node_does_not_replace_it_with_a_file(deployment: Any) -> None:
    # Found as root with `fetch -o /dev/null`: exit 0, "verified", and /dev/null was then a
    # regular file (os.replace over the node; likewise /dev/full, so "disk full" never
    # shows). Reproduced here on a private node and a FIFO in the test's own directory:
    # an -o that exists and is not a regular file is cli.output_unwritable (2), untouched.
    import stat

    digest = _trusted(deployment)
    root = deployment.dir.parent
    targets = []
    fifo = root / "out.fifo"
    os.mkfifo(fifo)
    targets.append((fifo, stat.S_ISFIFO))
    node = root / "null"
    try:
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        targets.append((node, stat.S_ISCHR))
    except OSError:
        pass  # not root: the FIFO shows the same break
    for target, is_kind in targets:
        proc = deployment.cli("fetch", digest, "-o", str(target), "--json")
        assert is_kind(os.lstat(target).st_mode), f"{target} was replaced by a regular file"
        assert proc.returncode == 2, proc.stdout
        assert problem(proc)["code"] == "cli.output_unwritable"


def test_fetch_does_not_follow_a_planted_part_symlink(deployment: Any) -> None:
    # fetch writes ".NAME.part" beside -o with open("wb"), which follows a symlink. In a
    # shared directory (/tmp) anyone may plant ".NAME.part" -> a file of the (root) user:
    # fetch truncates and overwrites that file with the model's bytes, the digest check
    # reads back through the link and passes, and the link is renamed to -o.
    digest = _trusted(deployment)
    root = deployment.dir.parent
    victim = root / "victim.conf"
    victim.write_text("precious\n")
    (root / ".tiny.safetensors.part").symlink_to(victim)
    deployment.cli("fetch", digest, "-o", str(root / "tiny.safetensors"))
    assert victim.read_bytes() == b"precious\n", "fetch wrote through a planted .part symlink"
