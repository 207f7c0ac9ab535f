"""Start-up: a command imports only what it uses; epoch times print as dates.

The time itself is measured by ``benchmarks/bench_cli.py`` (no timed assertions here);
what is tested is the property that makes it small: parsing the command line, and
running a command that only talks to the daemon, never import pydantic, cryptography,
trio, pyarrow, Quart or hypercorn.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from assay.cli.main import main
from assay.cli.options import STATES
from assay.cli.output import iso_time
from assay.registry.states import State
from tests.conftest import free_port

HEAVY = ("pydantic", "cryptography", "trio", "pyarrow", "quart", "quart_trio", "hypercorn",
         "yaml", "safetensors", "numpy", "sqlite3")  # fmt: skip

PROBE = """
import json, os, sys
from assay.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print(json.dumps({{"code": code, "heavy": heavy,
                  "http": "http.client" in sys.modules}}), file=sys.__stderr__)
"""


def _imports(*argv: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=set(HEAVY)), *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": ":".join(sys.path),
            "ASSAY_URL": f"http://127.0.0.1:{free_port()}",
            "ASSAY_TOKEN": "x",
        },
    )
    report: dict[str, object] = json.loads(proc.stderr.strip().splitlines()[-1])
    return report


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--version"], 0),
        (["--help"], 0),
        (["list"], 7),
        (["status", "--json"], 7),
        (["show", "sha256:" + "0" * 64], 7),
        (["list", "--state", "bogus"], 2),
        # The consumer socket, not HTTP: unreachable is exit 7 all the same.
        (["open", "demo/tiny", "--socket", "/nonexistent/assay-consumer.sock"], 7),
        (["exec", "--model", "1M=demo/tiny", "--", "true"], 2),
    ],
)
def test_commands_that_ask_the_daemon_import_nothing_heavy(argv: list[str], code: int) -> None:
    report = _imports(*argv)
    assert report["code"] == code and report["heavy"] == [], report
    over_http = argv[0] in ("list", "status", "show")
    assert report["http"] is (over_http and code == 7)


def test_the_states_the_cli_offers_are_the_registrys() -> None:
    assert STATES == tuple(s.value for s in State)


def test_epoch_times_print_as_utc_dates() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00Z"
    assert iso_time(1_764_000_300.7) == "2025-11-24T16:05:00Z"
    for odd in (None, "soon", True, 10**30, float("nan")):
        assert iso_time(odd) == str(odd)


def test_verify_answer_prints_its_times_as_dates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from assay.relay import jws

    key = Ed25519PrivateKey.generate()
    now = int(time.time())
    claims = {"iss": "relay-1", "iat": now, "exp": now + 300, "jti": "r1", "dataset": "civil",
              "snapshot": "sha256:" + "0" * 64, "query": {"route": "/x"}, "answer": {}}  # fmt: skip
    token = jws.sign(key, "k1", claims)
    pub = tmp_path / "relay.pub"
    pub.write_bytes(jws.public_pem(key))
    assert main(["relay", "verify-answer", token, "--public-key", str(pub)]) == 0
    out = capsys.readouterr().out
    assert f"signed {iso_time(now)}, expires {iso_time(now + 300)}" in out
    assert str(now + 300) not in out
    assert main(["relay", "verify-answer", token, "--public-key", str(pub), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["claims"]["exp"] == now + 300  # JSON keeps epochs
