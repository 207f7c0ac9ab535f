"""Strict config: unknown keys and broken cross-references are named by path."""

from __future__ import annotations

from pathlib import Path

import pytest

from assay.core.errors import ConfigError
from assay.core.strict_yaml import load_yaml
from assay.registry.config import load_config, parse_config

MINIMAL = """
auth: {token_file: {file: tokens.json}}
audit: {dir: audit, hmac_key: {env: ASSAY_HMAC}}
"""


def test_minimal_config_gets_safe_defaults() -> None:
    cfg = parse_config(MINIMAL, source=Path("c.yaml"))
    assert cfg.server.bind == "127.0.0.1:8470"
    assert cfg.audit.write_policy == "fail_closed"


def test_unknown_key_is_named_by_its_dotted_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(MINIMAL + "registry: {policy: default, formatz: [x]}\n", source=Path("c.yaml"))
    assert info.value.extra["path"] == "registry.formatz"
    assert "registry.formatz: unknown key" in info.value.detail


def test_nested_unknown_key_in_secret_ref_is_named() -> None:
    bad = MINIMAL.replace("{env: ASSAY_HMAC}", "{env: X, colour: red}")
    with pytest.raises(ConfigError) as info:
        parse_config(bad, source=Path("c.yaml"))
    assert "audit.hmac_key.colour" in info.value.extra["paths"]


def test_duplicate_yaml_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate key"):
        load_yaml("a: 1\na: 2\n")


def test_secret_inline_in_yaml_is_impossible() -> None:
    bad = MINIMAL.replace("{env: ASSAY_HMAC}", "deadbeef" * 8)
    with pytest.raises(ConfigError) as info:
        parse_config(bad, source=Path("c.yaml"))
    assert info.value.extra["path"].startswith("audit.hmac_key")


def test_secret_ref_needs_exactly_one_source() -> None:
    bad = MINIMAL.replace("{env: ASSAY_HMAC}", "{env: A, file: b}")
    with pytest.raises(ConfigError, match="exactly one"):
        parse_config(bad, source=Path("c.yaml"))


def test_non_loopback_bind_is_refused_unless_allowed() -> None:
    with pytest.raises(ConfigError, match="not loopback"):
        parse_config(MINIMAL + "server: {bind: '0.0.0.0:8470'}\n", source=Path("c.yaml"))
    ok = parse_config(
        MINIMAL + "server: {bind: '0.0.0.0:8470', allow_non_loopback: true}\n",
        source=Path("c.yaml"),
    )
    assert ok.server.allow_non_loopback


@pytest.mark.parametrize("bind", ["127.0.0.1:8470", "[::1]:8470", "localhost:1", "fd://3"])
def test_loopback_and_socket_activation_binds_are_accepted(bind: str) -> None:
    parse_config(MINIMAL + f"server: {{bind: '{bind}'}}\n", source=Path("c.yaml"))


def test_policy_cross_reference_must_exist(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "default.yaml").write_text("name: default\n")
    (tmp_path / "c.yaml").write_text(MINIMAL + "registry: {policy: strict}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert info.value.extra["path"] == "registry.policy"


def test_unknown_key_in_policy_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "default.yaml").write_text("name: default\nallowed_formatz: [x]\n")
    (tmp_path / "c.yaml").write_text(MINIMAL)
    with pytest.raises(ConfigError, match="allowed_formatz: unknown key"):
        load_config(tmp_path / "c.yaml")


def test_shipped_policies_load() -> None:
    from assay.registry.config import load_policies

    root = Path(__file__).resolve().parents[2]
    policies = load_policies(root / "policies")
    assert {"default", "two-person"} <= set(policies)
    assert policies["two-person"].approvals_required == 2
