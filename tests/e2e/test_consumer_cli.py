"""``assay open`` and ``assay exec`` against the real daemon: a runtime gets the verified
object as an inherited fd (``{M}`` -> ``/proc/self/fd/N``), and every refusal is one
line with its stable code and the CLI's exit code."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.consumer_support import (
    CONSUMER_UID,
    GGUF,
    SOCKET_GID,
    ConsumerDeployment,
    as_user,
    digest_of,
    needs_root,
    safetensors_bytes,
    tensors,
)
from tests.consumer_support import consumers as running_consumers
from tests.consumer_support import shared_dir as make_shared_dir

pytestmark = pytest.mark.e2e

ST = safetensors_bytes()


@pytest.fixture
def consumers(tmp_path: Path) -> Iterator[ConsumerDeployment]:
    for shared in make_shared_dir():
        yield from running_consumers(tmp_path, shared)


def assay(cd: ConsumerDeployment, *args: str) -> tuple[int, str, str]:
    proc = run_cli(*args, env={"ASSAY_CONSUMER_SOCKET": str(cd.socket)})
    return proc.returncode, proc.stdout, proc.stderr


def test_exec_hands_the_command_the_verified_fd_in_place_of_its_placeholder(
    consumers: ConsumerDeployment,
) -> None:
    st_digest = consumers.trusted(ST, "demo/tiny")
    gg_digest = consumers.trusted(GGUF, "demo/gguf")
    code, out, err = assay(consumers, "exec", "--model", "M=demo/tiny", "--model",
                           f"G={gg_digest}", "--", "sha256sum", "{M}", "{G}")  # fmt: skip
    assert code == 0, err
    lines = [line.split() for line in out.splitlines()]
    assert [line[0] for line in lines] == [st_digest[7:], gg_digest[7:]]
    assert all(line[1].startswith("/proc/self/fd/") for line in lines)


def test_exec_lets_a_python_runtime_load_the_model_by_path(consumers: ConsumerDeployment) -> None:
    consumers.trusted(ST, "demo/tiny")
    loader = (
        "import sys, json; from safetensors.numpy import load_file; "
        "print(json.dumps({k: v.tolist() for k, v in load_file(sys.argv[1]).items()}))"
    )
    code, out, err = assay(consumers, "exec", "--model", "M=demo/tiny", "--",
                           sys.executable, "-c", loader, "{M}")  # fmt: skip
    assert code == 0, err
    assert json.loads(out) == {k: v.tolist() for k, v in tensors().items()}


def test_exec_passes_on_only_the_model_fds(consumers: ConsumerDeployment) -> None:
    consumers.trusted(ST, "demo/tiny")
    listing = "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"
    code, out, err = assay(consumers, "exec", "--model", "M=demo/tiny", "--", sys.executable,
                           "-c", listing, "{M}")  # fmt: skip
    assert code == 0, err
    fds = json.loads(out)
    # stdin, stdout, stderr, the model, and the directory listdir itself opened.
    assert len(fds) == 5 and fds[:3] == [0, 1, 2], fds


def test_exec_leaves_unknown_placeholders_and_text_around_them_alone(
    consumers: ConsumerDeployment,
) -> None:
    consumers.trusted(ST, "demo/tiny")
    code, out, err = assay(consumers, "exec", "--model", "M=demo/tiny", "--", "echo",
                           "--model={M}", "{N}", "{{M}}", "M")  # fmt: skip
    assert code == 0, err
    model, unknown, doubled, plain = out.split()
    assert model.startswith("--model=/proc/self/fd/") and unknown == "{N}" and plain == "M"
    assert doubled.startswith("{/proc/self/fd/") and doubled.endswith("}")


@pytest.mark.parametrize(
    ("args", "exit_code", "code"),
    [
        (["--model", "M=gone/never", "--", "true"], 4, "artifact.not_found"),
        (["--model", "M=demo/tiny", "--", "/nonexistent/runtime"], 1, "cli.exec_failed"),
        (["--model", "M=demo/tiny"], 2, "cli.no_command"),
        (["--model", "1M=demo/tiny", "--", "true"], 2, "cli.bad_model"),
        (["--model", "M=demo/tiny", "--model", "M=demo/tiny", "--", "true"], 2, "cli.bad_model"),
        (["--model", "M=../x", "--", "true"], 1, "request.bad_name"),
    ],
)
def test_exec_refusals_are_one_line_with_a_stable_code(
    consumers: ConsumerDeployment, args: list[str], exit_code: int, code: str
) -> None:
    consumers.trusted(ST, "demo/tiny")
    rc, out, err = assay(consumers, "exec", *args)
    assert rc == exit_code, err
    assert err.startswith(f"assay: error [{code}]") and "Traceback" not in err
    assert out == ""


def test_exec_of_a_revoked_model_fails_before_the_command_runs(
    consumers: ConsumerDeployment, tmp_path: Path
) -> None:
    digest = consumers.trusted(ST, "demo/tiny")
    with consumers.dep.client() as c:
        assert c.post(f"/v1/artifacts/{digest}/revoke", json={"reason": "x"}).status_code == 200
    marker = tmp_path / "ran"
    rc, _out, err = assay(consumers, "exec", "--model", f"M={digest}", "--", "touch", str(marker))
    assert rc == 5 and "[artifact.not_trusted]" in err and not marker.exists()


def test_open_json_prints_the_locator_for_scripts(consumers: ConsumerDeployment) -> None:
    digest = consumers.trusted(ST, "demo/tiny")
    rc, out, err = assay(consumers, "open", "demo/tiny", "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert got["digest"] == digest == digest_of(ST) and got["size"] == len(ST)
    assert (got["name"], got["format"], got["socket"]) == (
        "demo/tiny", "safetensors", str(consumers.socket))  # fmt: skip
    assert got["verified_at"]
    rc, out, _ = assay(consumers, "open", "demo/tiny")
    assert rc == 0 and digest in out


def test_open_with_nothing_listening_exits_7(tmp_path: Path) -> None:
    proc = run_cli("open", "demo/tiny", "--socket", str(tmp_path / "none.sock"))
    assert proc.returncode == 7 and "cannot reach the daemon" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_open_with_a_token_file_is_audited_as_the_token(consumers: ConsumerDeployment,
                                                         tmp_path: Path) -> None:  # fmt: skip
    consumers.trusted(ST, "demo/tiny")
    token_file = tmp_path / "tok"
    token_file.write_text(consumers.dep.admin_token + "\n")
    rc, _out, err = assay(consumers, "open", "demo/tiny", "--token-file", str(token_file))
    assert rc == 0, err
    rec = consumers.opens()[-1]
    assert (rec["auth_mode"], rec["principal"]) == ("token", "admin")


@needs_root
def test_exec_as_another_uid_runs_the_command_on_the_verified_bytes(
    consumers: ConsumerDeployment,
) -> None:
    digest = consumers.trusted(ST, "demo/tiny")
    out = as_user(CONSUMER_UID, CONSUMER_UID, [SOCKET_GID], f"""
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.dup2(w, 1)
    os.environ["ASSAY_CONSUMER_SOCKET"] = {str(consumers.socket)!r}
    os._exit(assay_main(["exec", "--model", "M=demo/tiny", "--", "sha256sum", "{{M}}"]))
os.close(w)
data = b""
while chunk := os.read(r, 4096):
    data += chunk
_pid, status = os.waitpid(pid, 0)
report(out=data.decode(), status=os.waitstatus_to_exitcode(status))
""")  # fmt: skip
    assert out["status"] == 0 and out["out"].split()[0] == digest[7:]
    assert consumers.opens()[-1]["principal"] == "svc"
    assert os.getuid() == 0  # the test itself never dropped


def test_the_exec_help_names_the_placeholder() -> None:
    proc = run_cli("exec", "--help")
    assert proc.returncode == 0 and "/proc/self/fd/N" in proc.stdout
