"""``init --bind`` writes a config the daemon loads, or refuses before writing anything.

Found in review 9's follow-up: ``assay init --bind 0.0.0.0:8470`` (and ``relay init``,
``serve --init``) wrote a loopback-only config naming a non-loopback address; init's own
last step then refused that config (``config.invalid``) and left the directory behind,
so the retry was refused as "already exists"; an IPv6 ``[::1]:PORT``, which the config
accepts, was written bare and read back as a YAML list. The rule is the config's own
(``assay.core.schema.ServerConfig``): init agrees with it, differentially, on each bind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
import yaml

from assay.core.schema import ServerConfig
from tests.conftest import run_cli


def config_accepts(bind: str) -> bool:
    try:
        ServerConfig(bind=bind)
    except pydantic.ValidationError:
        return False
    return True


BINDS = ["0.0.0.0:8470", "192.0.2.1:80", "[::]:8470", "127.0.0.1:0", "localhost:99999",
         "127.0.0.2:18471", "[::1]:18472"]  # fmt: skip


def _init(kind: str, target: Path, bind: str) -> list[str]:
    if kind == "init":
        return ["init", "--dir", str(target), "--bind", bind, "--json"]
    return ["relay", "init", str(target), "--people", "10", "--bind", bind, "--json"]


@pytest.mark.parametrize("kind", ["init", "relay init"])
@pytest.mark.parametrize("bind", BINDS)
def test_init_succeeds_exactly_for_the_binds_its_config_accepts(
    tmp_path: Path, kind: str, bind: str
) -> None:
    target = tmp_path / "d"
    proc = run_cli(*_init(kind, target, bind), timeout=120)
    if config_accepts(bind):
        assert proc.returncode == 0, proc.stderr[-600:]
        config = yaml.safe_load(next(target.glob("*.yaml")).read_text())
        assert config["server"]["bind"] == bind
    else:
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-600:])
        assert json.loads(proc.stdout)["error"]["code"] == "cli.usage", proc.stdout
        assert not target.exists(), sorted(p.name for p in target.iterdir())


def test_a_refused_bind_leaves_nothing_so_the_retry_with_a_good_one_works(tmp_path: Path) -> None:
    target = tmp_path / "d"
    assert run_cli("init", "--dir", str(target), "--bind", "0.0.0.0:8470").returncode == 2
    again = run_cli("init", "--dir", str(target), "--bind", "127.0.0.1:18473", timeout=120)
    assert again.returncode == 0, again.stderr[-600:]


def test_serve_init_with_a_non_loopback_bind_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "d"
    proc = run_cli("serve", "--init", str(target), "--bind", "0.0.0.0:8470")
    assert proc.returncode == 2 and "[cli.usage]" in proc.stderr, proc.stderr[-600:]
    assert not target.exists()


def test_relay_init_refuses_a_non_loopback_bind_from_the_environment(tmp_path: Path) -> None:
    target = tmp_path / "d"
    proc = run_cli("relay", "init", str(target), "--people", "10",
                   env={"ASSAY_RELAY_BIND": "0.0.0.0:8480"})  # fmt: skip
    assert proc.returncode == 2 and "ASSAY_RELAY_BIND" in proc.stderr, proc.stderr[-600:]
    assert not target.exists()
