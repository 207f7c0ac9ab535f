"""API keys: startup fails closed on a missing, malformed or mismatched fingerprint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from assay.cli import relay_cmd
from assay.core import tokenfile
from assay.core.errors import ConfigError, SecretError
from assay.core.tokens import fingerprint
from assay.relay import apikeys
from assay.relay.settings import load_config, load_secrets
from tests.relay.conftest import KEYS, RelayEnv, Running, start


def test_generated_key_fingerprint_and_commitment_agree() -> None:
    made = apikeys.new_key("caseworker")
    assert made["key"].startswith("assayrk_") and len(made["key"]) == 51
    assert made["fingerprint"] == fingerprint(made["key"])
    apikeys.check("caseworker", made["fingerprint"], made["commitment"], where="k")
    assert apikeys.new_key("caseworker")["key"] != made["key"]


def test_commitment_mismatch_fails_startup(relay_env: RelayEnv) -> None:
    relay_env.doc["auth"]["api_keys"][1]["commitment"] = apikeys.new_key("read")["commitment"]
    relay_env.write()
    with pytest.raises(ConfigError) as info:
        load_secrets(load_config(relay_env.config_path))
    assert info.value.code == "auth.api_key_commitment_mismatch"
    assert info.value.extra["path"] == "auth.api_keys[1].commitment"


def test_swapped_fingerprints_between_two_keys_fail_startup(relay_env: RelayEnv) -> None:
    keys = relay_env.doc["auth"]["api_keys"]
    keys[0]["fingerprint"], keys[1]["fingerprint"] = keys[1]["fingerprint"], keys[0]["fingerprint"]
    relay_env.write()
    with pytest.raises(ConfigError, match="commitment"):
        load_secrets(load_config(relay_env.config_path))


def test_missing_fingerprint_env_var_fails_startup(
    relay_env: RelayEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELAY_TEST_MISSING_FP", raising=False)
    relay_env.doc["auth"]["api_keys"][0]["fingerprint"] = {"env": "RELAY_TEST_MISSING_FP"}
    relay_env.write()
    with pytest.raises(SecretError, match=r"auth.api_keys\[0\].fingerprint"):
        load_secrets(load_config(relay_env.config_path))


def test_fingerprint_from_env_var_is_accepted(
    relay_env: RelayEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    fp_file = Path(relay_env.doc["auth"]["api_keys"][0]["fingerprint"]["file"])
    monkeypatch.setenv("RELAY_TEST_META_FP", fp_file.read_text())
    relay_env.doc["auth"]["api_keys"][0]["fingerprint"] = {"env": "RELAY_TEST_META_FP"}
    relay_env.write()
    assert len(load_secrets(load_config(relay_env.config_path)).api_keys) == len(KEYS)


def test_malformed_fingerprint_fails_startup(relay_env: RelayEnv) -> None:
    fp_file = Path(relay_env.doc["auth"]["api_keys"][0]["fingerprint"]["file"])
    fp_file.write_text("md5:abc")
    with pytest.raises(ConfigError) as info:
        load_secrets(load_config(relay_env.config_path))
    assert info.value.code == "auth.api_key_fingerprint_invalid"


def test_world_readable_fingerprint_file_fails_startup(relay_env: RelayEnv) -> None:
    Path(relay_env.doc["auth"]["api_keys"][0]["fingerprint"]["file"]).chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        load_secrets(load_config(relay_env.config_path))


async def test_core_bearer_tokens_work_alongside_api_keys(relay_env: RelayEnv) -> None:
    token_file = relay_env.dir / "secrets" / "tokens.json"
    raw, _ = tokenfile.create(token_file, "ops", ["civil:metadata"])
    relay_env.doc["auth"]["token_file"] = {"file": str(token_file)}
    relay_env.write()
    parts, audit = start(relay_env)
    async with parts.app.test_app() as app:
        client = app.test_client()
        r = await client.get("/v1/datasets/civil", headers={"Authorization": f"Bearer {raw}"})
        assert r.status_code == 200
        r = await client.get(
            "/v1/datasets/civil/entities/household/records/H0000001",
            headers={"Authorization": f"Bearer {raw}"},
        )
        assert r.status_code == 403
    assert [rec["auth_mode"] for rec in audit.records] == ["token", "token"]


async def test_raw_key_never_appears_in_the_audit(running: Running) -> None:
    await running.get("/v1/datasets/civil", key="meta")
    await running.get("/v1/datasets/civil", headers={"X-API-Key": "assayrk_guess"})
    text = json.dumps(running.audit.records)
    assert running.env.keys["meta"] not in text and "assayrk_guess" not in text


def test_cli_generate_api_key_prints_a_matching_commitment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = argparse.ArgumentParser()
    relay_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["relay", "generate-api-key", "--id", "benefits", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"id", "key", "fingerprint", "commitment"}
    apikeys.check("benefits", out["fingerprint"], out["commitment"], where="k")
    args = parser.parse_args(["relay", "generate-api-key", "--id", "benefits"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert (
        'commitment: "commit:sha256:' in text
        and "fingerprint: {env: RELAY_KEY_BENEFITS_FP}" in text
    )
