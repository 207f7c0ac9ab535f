"""`assay relay check-config`: a preflight that fails closed exactly as startup would."""

from __future__ import annotations

import argparse
import json

import pytest

from assay.cli import relay_cmd
from assay.cli.main import EXIT_USAGE, exit_code_for
from assay.core.errors import AssayError
from tests.relay.conftest import EXAMPLE, RelayEnv


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    relay_cmd.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    try:
        return int(args.func(args))
    except AssayError as err:
        return exit_code_for(err)


def test_check_config_loads_secrets_and_every_table(
    relay_env: RelayEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli("relay", "check-config", str(relay_env.config_path), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checked"] == ["schema", "references", "secrets", "api_key_commitments", "sources"]
    assert set(out["tables"]) == {"civil.people", "civil.households", "housing.households"}
    assert out["answer_signing"] is True


def test_shipped_example_passes_static_check_but_fails_closed_on_placeholders() -> None:
    assert _cli("relay", "check-config", str(EXAMPLE / "relay.yaml"), "--static") == 0
    assert _cli("relay", "check-config", str(EXAMPLE / "relay.yaml")) != 0


def test_check_config_with_a_swapped_commitment_exits_as_a_config_error(
    relay_env: RelayEnv,
) -> None:
    keys = relay_env.doc["auth"]["api_keys"]
    keys[0]["commitment"], keys[1]["commitment"] = keys[1]["commitment"], keys[0]["commitment"]
    relay_env.write()
    assert _cli("relay", "check-config", str(relay_env.config_path)) == EXIT_USAGE


def test_check_config_with_a_bad_source_row_names_the_table(
    relay_env: RelayEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    households = relay_env.data / "households.csv"
    households.write_bytes(households.read_bytes() + b"H9999999,M01,many,active,,\n")
    assert _cli("relay", "check-config", str(relay_env.config_path), "--json") == EXIT_USAGE
