"""The ``admin:`` section: off by default, private by default, never sharing a public
socket, and the same model (and the same refusals) in both daemons' configs."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from assay.core.admin_config import ADMIN_SCOPES, AdminConfig, admin_binds, conflicts
from assay.core.errors import ConfigError
from assay.core.schema import validate
from assay.registry.config import parse_config as parse_registry
from assay.relay.config import parse_config as parse_relay
from tests.relay.conftest import example_doc

REGISTRY = """\
auth: {token_file: {file: secrets/tokens.json}}
audit: {dir: state/audit, hmac_key: {file: secrets/audit-hmac.key}}
"""


def registry(extra: str = "") -> Any:
    return parse_registry(REGISTRY + extra, source=Path("config.yaml"))


def relay(admin: dict[str, Any] | None) -> Any:
    doc = example_doc()
    if admin is not None:
        doc["admin"] = admin
    return parse_relay(yaml.safe_dump(doc), source="relay.yaml")


def test_existing_configs_have_no_admin_listener() -> None:
    assert registry().admin is None
    assert relay(None).admin is None


@given(st.ip_addresses())
def test_any_non_loopback_address_is_refused_without_the_opt_in(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    data = {"bind": f"{host}:9100"}
    if ip.is_loopback:
        assert validate(AdminConfig, data).bind == data["bind"]
        return
    with pytest.raises(ConfigError, match="allow_non_loopback"):
        validate(AdminConfig, data)
    assert validate(AdminConfig, {**data, "allow_non_loopback": True}).allow_non_loopback


@pytest.mark.parametrize("host", ["0.0.0.0", "example.org", "127.0.0.1.nip.io", "[::]"])
def test_names_and_wildcards_are_not_loopback(host: str) -> None:
    with pytest.raises(ConfigError, match="not loopback"):
        registry(f"admin: {{bind: '{host}:9100'}}\n")


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o606, 0o700, 0o640, 0o400])
def test_a_unix_socket_mode_other_users_or_exec_bits_could_use_is_refused(mode: int) -> None:
    with pytest.raises(ConfigError, match="unix_socket_mode"):
        validate(AdminConfig, {"unix_socket": "admin.sock", "unix_socket_mode": mode})


def test_an_empty_section_is_refused_rather_than_silently_off() -> None:
    with pytest.raises(ConfigError, match="bind, unix_socket or both"):
        registry("admin: {}\n")
    with pytest.raises(ConfigError):
        relay({"max_connections": 4})


def test_the_admin_listener_never_shares_the_public_address() -> None:
    with pytest.raises(ConfigError, match=r"admin\.bind"):
        registry("server: {bind: '127.0.0.1:8470'}\nadmin: {bind: '127.0.0.1:8470'}\n")
    with pytest.raises(ConfigError, match=r"admin\.bind"):
        relay({"bind": "127.0.0.1:8480"})
    assert conflicts(None, "127.0.0.1:1", None) == []
    both = validate(AdminConfig, {"unix_socket": "s.sock"})
    assert conflicts(both, "127.0.0.1:1", "s.sock") == [
        "admin.unix_socket: the same path as server.unix_socket"
    ]


def test_an_api_key_may_hold_admin_scopes_only_once_there_is_an_admin_listener() -> None:
    doc = example_doc()
    doc["auth"]["api_keys"][0]["scopes"].append("admin:metrics")
    with pytest.raises(ConfigError, match="admin:metrics"):
        parse_relay(yaml.safe_dump(doc), source="relay.yaml")
    doc["admin"] = {"bind": "127.0.0.1:9180"}
    cfg = parse_relay(yaml.safe_dump(doc), source="relay.yaml")
    assert set(cfg.auth.api_keys[0].scopes) & ADMIN_SCOPES == {"admin:metrics"}


def test_the_documented_yaml_octal_modes_parse_as_modes() -> None:
    cfg = registry("admin: {unix_socket: state/admin.sock, unix_socket_mode: 0660}\n")
    assert cfg.admin is not None and cfg.admin.unix_socket_mode == 0o660
    with pytest.raises(ConfigError):  # YAML 1.1 reads 0o600 as a string: refused, not 0
        registry("admin: {unix_socket: state/admin.sock, unix_socket_mode: 0o600}\n")


def test_posture_sees_the_admin_bind_beside_the_public_one(tmp_path: Path) -> None:
    from assay.registry.posture import registry_target

    cfg = registry("admin: {bind: '0.0.0.0:9100', allow_non_loopback: true}\n")
    target = registry_target(cfg, base=tmp_path, source=tmp_path / "config.yaml")
    assert target.binds == ("127.0.0.1:8470", "0.0.0.0:9100")
    assert admin_binds("127.0.0.1:1", None) == ("127.0.0.1:1",)
